"""Two local processes (4 CPU devices each) joined by jax.distributed run the real fine-tuning
trainer together: both finish the same steps and end with identical parameters."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

import mp_worker

WORKER = pathlib.Path(mp_worker.__file__).resolve()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_in_lockstep(tmp_path):
  port = _free_port()
  env = dict(os.environ)
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2")
  procs = [subprocess.Popen(
      [sys.executable, str(WORKER), "--workdir", str(tmp_path), "--steps", "8",
       "--checkpoint_every", "4", "--coordinator", f"localhost:{port}", "--num_processes", "2",
       "--process_id", str(i)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs, deadline = [], time.time() + 400
  try:
    for p in procs:
      outs.append(p.communicate(timeout=max(1, deadline - time.time()))[0])
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    tails = [p.communicate()[0][-2500:] for p in procs]
    pytest.fail("the two processes did not finish:\n" + "\n----\n".join(tails))
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
  results = [json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][-1][7:])
             for out in outs]
  assert [r["process_index"] for r in results] == [0, 1]
  assert all(r["process_count"] == 2 and r["devices"] == 8 for r in results)
  assert results[0]["digest"] == results[1]["digest"]
  assert results[0]["best"] == results[1]["best"]
  assert results[0]["last_loss"] == results[1]["last_loss"]
  # Evaluation over both processes: 37 rows (not a multiple of anything), each predicted once,
  # and every host holds the same gathered predictions.
  assert all(r["pred_rows"] == 37 and r["pred_row_sums_ok"] for r in results)
  assert results[0]["pred_digest"] == results[1]["pred_digest"]
  # Only process 0 prints progress and writes TensorBoard files.
  assert "[finetune] step 8/8" in outs[0] and "[finetune] step" not in outs[1]
  assert list((tmp_path / "finetune" / "tb").glob("events.out.tfevents.*"))
  ckpt_steps = sorted(int(p.name) for p in (tmp_path / "finetune" / "ckpt").iterdir()
                      if p.name.isdigit())
  assert ckpt_steps == [4, 8]
