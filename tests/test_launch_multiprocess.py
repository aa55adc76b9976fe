"""The multi-host code path end to end, on this machine's CPU.

`launch/local_multiprocess.sh 2` runs the whole pipeline as two processes x 2 CPU devices joined
by jax.distributed: the build reads each process's share of the captures and process 0 merges
them; pre-training, fine-tuning, pseudo-labelling and evaluation run on the 4-device global mesh.
The same config then runs as one process with 4 devices, and the two must agree: the same
dataset byte for byte, and the same report figures.

Why the figures are not bit-identical: the training streams give every process a slice of the
same global batches (input_pipeline/streams.py), so both runs see the same data on the same four
devices, and everything else is seeded. What differs is the gradient all-reduce: across
processes it goes through gloo (JAX's CPU collectives), which adds the four devices' partial
sums in another order than XLA's in-process all-reduce, so parameters differ in the last float
bits (predicted probabilities by ~1e-5 after these few steps). An argmax or a pseudo-label
threshold decision could only flip on a near-exact tie, so the figures are compared with a tiny
tolerance and the probabilities with a loose one that still catches any real mismatch (wrong
rows, wrong model, wrong data).
"""
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from input_pipeline import build as build_lib
from input_pipeline import shard_extract
from input_pipeline import streams
from input_pipeline import synthetic
from tests.conftest import PROJECT_ROOT

STAGES = ("build", "pretrain", "finetune", "pseudo_label", "evaluate")
# Smaller than tests/test_pipeline.py's TINY_FLAGS (two runs share a loaded 2-core machine) but
# enough that the classifier beats chance and PLI accepts some, not all, of the pool.
# workers=1 reads captures in-process: spawning reader pools in 3 processes costs more than
# reading a handful of files.
FLAGS = (
    "--config.data.demo.num_classes=3", "--config.data.demo.max_flows_per_class=60",
    "--config.data.demo.imbalance=2", "--config.data.label_fraction=0.5",
    "--config.data.min_flows_per_class=4", "--config.data.workers=1",
    "--config.pretrain.num_triples=128", "--config.pretrain.batch_size=16",
    "--config.finetune.batch_size=16", "--config.finetune.epochs=4", "--config.finetune.min_steps=0",
    "--config.pli.limit=1", "--config.pli.threshold=0.6",
    "--config.report.tsne_max_points=100",
)
TIMEOUT = 420


def _env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if k not in ("PASS_COORDINATOR", "PASS_NUM_PROCESSES", "PASS_PROCESS_ID",
                      "PASS_DISTRIBUTED", "PASS_PORT", "PASS_VARIANT", "PASS_MODULE")}
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **extra)
  return env


def _launch(workdir, *flags: str, timeout: int = TIMEOUT) -> subprocess.Popen:
  """local_multiprocess.sh with 2 processes x 2 devices, using this interpreter as it is."""
  return subprocess.Popen(
      ["bash", "launch/local_multiprocess.sh", "2", str(workdir), *flags], cwd=PROJECT_ROOT,
      env=_env(PASS_PYTHON=sys.executable, PASS_DEVICES_PER_PROCESS="2",
               PASS_TIMEOUT=str(timeout)),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _single(workdir, *flags: str) -> subprocess.Popen:
  """One process with as many devices (4) as the two processes have together."""
  return subprocess.Popen(
      [sys.executable, "-m", "pass_jax.main", "--config=configs/pass.py:tiny",
       f"--workdir={workdir}", *flags], cwd=PROJECT_ROOT,
      env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: dict[str, subprocess.Popen], timeout: int) -> dict[str, tuple[int, str]]:
  deadline, out = time.time() + timeout, {}
  try:
    for name, p in procs.items():
      text, _ = p.communicate(timeout=max(1, deadline - time.time()))
      out[name] = (p.returncode, text)
  except subprocess.TimeoutExpired:
    for p in procs.values():
      p.kill()  # the launcher's own PASS_TIMEOUT stops its python processes
    pytest.fail(f"runs did not finish in {timeout}s: " +
                "; ".join(f"{n}: {p.communicate()[0][-1500:]}" for n, p in procs.items()))
  return out


def _log(workdir, i: int) -> str:
  path = pathlib.Path(workdir) / "logs" / f"process_{i}.log"
  return path.read_text() if path.is_file() else ""


# ----------------------------------------------------------------------------- fast checks
def test_training_streams_do_not_depend_on_the_process_count():
  """Process slices of each global batch, concatenated, are the single-process batch."""
  rng = np.random.default_rng(0)
  data = {"tokens": rng.integers(4, 50, (90, 5)).astype(np.int32),
          "label": (np.arange(90) % 3).astype(np.int32)}
  data["tokens"][:, 0] = np.arange(90)
  one = list(streams.train_stream(data, global_batch=12, seed=3, shuffle_buffer=50, repeat=False,
                                  process_index=0, process_count=1))
  parts = [list(streams.train_stream(data, global_batch=12, seed=3, shuffle_buffer=50,
                                     repeat=False, process_index=p, process_count=3))
           for p in range(3)]
  assert len(one) == 7 and all(len(p) == 7 for p in parts)
  for k, batch in enumerate(one):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([p[k][key] for p in parts]), batch[key])
  triples = streams.sample_triples(data["label"], np.array([f"c{i % 5}" for i in range(90)]),
                                   40, seed=1)
  one = list(streams.triple_stream(data, triples, global_batch=8, seed=2, repeat=False,
                                   process_index=0, process_count=1))
  parts = [list(streams.triple_stream(data, triples, global_batch=8, seed=2, repeat=False,
                                      process_index=p, process_count=2)) for p in range(2)]
  for k, batch in enumerate(one):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([p[k][key] for p in parts]), batch[key])


def test_assign_captures_balances_bytes_and_covers_every_file_once():
  sizes = [100, 5, 5, 5, 60, 40, 5, 0]
  shares = shard_extract.assign_captures(sizes, 3)
  assert sorted(i for s in shares for i in s) == list(range(len(sizes)))
  assert [sum(sizes[i] for i in s) for s in shares] == [100, 60, 60]
  assert shard_extract.assign_captures(sizes, 1) == [list(range(len(sizes)))]
  assert shard_extract.assign_captures([1, 1], 4)[2:] == [[], []]  # more processes than files


def test_sharded_build_writes_the_single_process_dataset(tmp_path, monkeypatch):
  """The protocol of pipeline._build_sharded, with the 'processes' played in turn."""
  root = tmp_path / "pcaps"
  synthetic.write_demo_dataset(str(root), num_classes=3, max_flows_per_class=30, imbalance=2,
                               flows_per_file=10)
  cfg = importlib.import_module("configs.pass").get_config("tiny").data  # `pass` is a keyword
  cfg.min_flows_per_class, cfg.label_fraction = 2, 0.5
  single = build_lib.build_dataset(cfg, root, tmp_path / "single", workers=1)
  out = tmp_path / "sharded"
  plan = shard_extract.plan(cfg, root)
  for p in range(3):
    shard_extract.read_share(cfg, plan, out / "parts", process_index=p, process_count=3,
                             workers=1)
  sharded = shard_extract.build_from_shares(cfg, root, out, process_count=3, workers=1)
  for name in ("splits.json", "vocab.txt"):
    assert (out / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
  assert sharded.split_sizes == single.split_sizes
  report = json.loads((out / "extract_report.json").read_text())
  expected = json.loads((tmp_path / "single" / "extract_report.json").read_text())
  assert report.pop("processes") == 3
  for r in (report, expected):
    r.pop("seconds")
  assert report == expected
  assert not (out / "parts").exists()                      # removed once merged
  # A missing part (a process that died before writing it) is an error, not a smaller dataset.
  for p in (0, 2):
    shard_extract.read_share(cfg, plan, out / "parts", process_index=p, process_count=3,
                             workers=1)
  with pytest.raises(ValueError, match="process 1 left no extraction part"):
    shard_extract.merge_shares(plan, out / "parts", 3)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(multi-process workdir, single-process workdir), run side by side, plus their output."""
  base = tmp_path_factory.mktemp("mp")
  multi, single = base / "multi", base / "single"
  start = time.time()
  out = _finish({"multi": _launch(multi, *FLAGS), "single": _single(single, *FLAGS)}, TIMEOUT)
  for name, (rc, text) in out.items():
    logs = "\n".join(_log(multi, i)[-3000:] for i in range(2)) if name == "multi" else ""
    assert rc == 0, f"{name} run failed (rc {rc}):\n{text[-3000:]}\n{logs}"
  print(f"both runs took {time.time() - start:.0f}s")
  logs = [_log(multi, i) for i in range(2)]  # kept: a later launch in `multi` rewrites them
  return multi, single, logs


def test_every_stage_ran_in_both(runs):
  multi, single, (log0, log1) = runs
  for w in (multi, single):
    for stage in STAGES:
      assert (w / f"{stage}.done.json").is_file(), (w, stage)
  # It really was two processes, and only process 0 talked.
  assert "[evaluate] test:" in log0 and "[evaluate]" not in log1
  assert "[pli] round 1" in log0
  assert json.loads((multi / "data" / "extract_report.json").read_text())["processes"] == 2
  assert not (multi / "data" / "parts").exists()


def test_multi_process_build_is_the_single_process_dataset(runs):
  multi, single, _ = runs
  for name in ("splits.json", "vocab.txt"):
    assert (multi / "data" / name).read_bytes() == (single / "data" / name).read_bytes(), name


def test_multi_process_report_matches_single_process(runs):
  multi, single, _ = runs
  rep_m = json.loads((multi / "report.json").read_text())
  rep_s = json.loads((single / "report.json").read_text())
  assert rep_m["splits"] == rep_s["splits"]
  for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
    assert rep_m["test"][key] == pytest.approx(rep_s["test"][key], abs=1e-6), key
  # Pseudo-labelling predicted the pool across both processes: the same flows were accepted.
  rounds_m, rounds_s = rep_m["pli_rounds"], rep_s["pli_rounds"]
  assert len(rounds_m) == len(rounds_s) >= 2
  for a, b in zip(rounds_m[1:], rounds_s[1:]):
    assert a["accepted"] == b["accepted"] and a["accepted_per_class"] == b["accepted_per_class"]
    assert a["val_macro_f1"] == pytest.approx(b["val_macro_f1"], abs=1e-6)
  # Every test row predicted once, by the same model, in split order.
  pred_m = np.load(multi / "eval" / "test_predictions.npz")
  pred_s = np.load(single / "eval" / "test_predictions.npz")
  np.testing.assert_array_equal(pred_m["label"], pred_s["label"])
  np.testing.assert_allclose(pred_m["probs"], pred_s["probs"], atol=1e-3)
  np.testing.assert_allclose(pred_m["probs"].sum(-1), 1.0, atol=1e-5)


def test_rerun_skips_every_finished_stage_on_every_process(runs):
  multi, _, _ = runs
  rc, text = _finish({"rerun": _launch(multi, *FLAGS, timeout=180)}, 240)["rerun"]
  assert rc == 0, text[-2000:] + _log(multi, 0)[-2000:] + _log(multi, 1)[-2000:]
  log0 = _log(multi, 0)
  for stage in STAGES:
    assert f"[{stage}] already done" in log0, stage


def test_a_build_failure_on_process_0_stops_every_process_with_its_reason(tmp_path):
  """Unlabelled captures only: process 0's merge fails; process 1 must not hang at a barrier."""
  demo = tmp_path / "demo"
  synthetic.write_demo_dataset(str(demo), num_classes=2, max_flows_per_class=10, imbalance=1,
                               flows_per_file=5)
  plain = tmp_path / "plain"
  plain.mkdir()
  for i, pcap in enumerate(sorted(demo.rglob("*.pcap"))[:2]):
    shutil.copy(pcap, plain / f"c{i}.pcap")
  workdir = tmp_path / "w"
  rc, text = _finish({"multi": _launch(workdir, f"--config.data.root={plain}",
                                       "--config.data.workers=1", "--config.stage=build",
                                       timeout=180)}, 240)["multi"]
  assert rc == 1, text[-3000:]
  for i in range(2):
    log = _log(workdir, i)
    assert "no labelled flows" in log and "Traceback" not in log, log[-2000:]
  assert not (workdir / "build.done.json").exists()
