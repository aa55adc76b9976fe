"""A fine-tuning run SIGKILLed mid-training resumes from its last checkpoint and ends exactly where
an uninterrupted run ends: same steps, same logged losses, same best model, same parameters."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

import mp_worker

WORKER = pathlib.Path(mp_worker.__file__).resolve()
STEPS, EVERY = 32, 4


def _committed_steps(ckpt_dir: pathlib.Path) -> list[int]:
  if not ckpt_dir.is_dir():
    return []
  return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


def _env():
  env = dict(os.environ)
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2")
  return env


def _result(stdout: str) -> dict:
  lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
  assert lines, f"worker printed no RESULT line:\n{stdout[-3000:]}"
  return json.loads(lines[-1][len("RESULT "):])


def _kill_after_checkpoint(proc: subprocess.Popen, ckpt_dir: pathlib.Path, min_step: int,
                           report: dict) -> None:
  """Watcher thread: SIGKILL the worker as soon as a checkpoint >= min_step is committed."""
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    steps = _committed_steps(ckpt_dir)
    if steps and steps[-1] >= min_step:
      os.kill(proc.pid, signal.SIGKILL)
      report["killed_after"] = steps[-1]
      return
    time.sleep(0.02)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
  workdir = tmp_path / "run"
  ckpt_dir = workdir / "finetune" / "ckpt"
  cmd = [sys.executable, str(WORKER), "--workdir", str(workdir), "--steps", str(STEPS),
         "--checkpoint_every", str(EVERY)]
  first = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
  report = {}
  watcher = threading.Thread(target=_kill_after_checkpoint,
                             args=(first, ckpt_dir, 2 * EVERY, report))
  watcher.start()

  # Meanwhile, the same run uninterrupted, in this process (same 8 devices, same program).
  from pass_jax import sharding
  from pass_jax.trainers import finetune
  config = mp_worker.tiny_config(STEPS, EVERY)
  config.quiet = True
  ref_state, ref_history = finetune.train_classifier(
      config, train_arrays=mp_worker.toy_arrays(160, seed=0),
      val_arrays=mp_worker.toy_arrays(40, seed=1), workdir_stage=str(tmp_path / "ref"),
      mesh=sharding.make_mesh(), num_classes=mp_worker.NUM_CLASSES,
      vocab_size=mp_worker.VOCAB_SIZE)
  ref_digest, _ = mp_worker.params_digest(ref_state.params)

  watcher.join()
  out1, _ = first.communicate(timeout=60)
  assert first.returncode == -signal.SIGKILL, (
      f"the worker was not killed mid-run (rc {first.returncode}):\n{out1[-2000:]}")
  saved_before = _committed_steps(ckpt_dir)
  last_ckpt = saved_before[-1]
  assert report["killed_after"] <= last_ckpt < STEPS
  meta = json.loads((ckpt_dir / str(last_ckpt) / "meta" / "metadata").read_text())
  assert meta["data"]["epoch"] * meta["data"]["steps_per_epoch"] + \
      meta["data"]["batch_in_epoch"] == last_ckpt

  second = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
  assert second.returncode == 0, second.stdout[-3000:]
  assert f"resuming at step {last_ckpt}/{STEPS}" in second.stdout
  # No step at or before the restored checkpoint ran again: the first train line comes after it.
  logged = [int(s) for s in re.findall(r"\[finetune\] step (\d+)/", second.stdout)]
  assert logged and min(logged) > last_ckpt
  assert max(logged) == STEPS

  # Nothing saved was lost: the final step is there, and what retention keeps (the newest 3).
  after = _committed_steps(ckpt_dir)
  assert after[-1] == STEPS
  assert after == sorted(set(saved_before + list(range(last_ckpt + EVERY, STEPS + 1, EVERY))))[-3:]

  res = _result(second.stdout)
  assert res["best"] == ref_history["best"], (res, ref_history, saved_before, second.stdout[-3000:])
  assert res["digest"] == ref_digest
  resumed_meta = json.loads((ckpt_dir / str(STEPS) / "meta" / "metadata").read_text())
  got = [(h["step"], h["loss"]) for h in resumed_meta["history"]["finetune"]]
  want = [(h["step"], h["loss"]) for h in ref_history["finetune"]]
  assert [s for s, _ in got] == [s for s, _ in want]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in want], rtol=1e-6)
  shutil.rmtree(workdir, ignore_errors=True)
