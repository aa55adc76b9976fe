"""Pseudo-label iteration on generated data with 10% labels: it must beat M0, resume mid-loop
after a SIGKILL, and never draw its pool from validation or test flows.

One small run (module-scoped, ~2 minutes on a loaded 2-core machine) is shared; each command
runs as a subprocess exactly as a user types it, on one CPU device so the numbers are the ones
measured while choosing the margin (see docs/design.md, PLI rows).
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT

# 4 classes of 400..80 flows (imbalance 5), 10% of the training flows labelled (~70 labels),
# ~800 pool flows. 150 fine-tuning steps for M0 and for each round.
FLAGS = (
    "--config=configs/pass.py:tiny",
    "--config.data.demo.num_classes=4", "--config.data.demo.max_flows_per_class=400",
    "--config.data.demo.imbalance=5", "--config.data.label_fraction=0.1",
    "--config.finetune.steps=150", "--config.pli.limit=1", "--config.report.pictures=False",
    "--config.seed=0", "--config.data.seed=0",
)
# Seeds 0, 1, 2 (config.seed = data.seed) gave round-1 gains of +0.120, +0.023, +0.036 in
# validation macro-F1 over M0 while developing (0.717 -> 0.837 for seed 0, the one asserted);
# before the fix they were +0.008, -0.105, -0.026.
MIN_GAIN = 0.03


def _env() -> dict:
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
              JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")


def _main(workdir, *extra: str) -> list[str]:
  return [sys.executable, "-m", "pass_jax.main", f"--workdir={workdir}", *FLAGS, *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("pli") / "w"
  proc = subprocess.run(_main(workdir), cwd=PROJECT_ROOT, env=_env(), capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return workdir


def test_pli_raises_validation_macro_f1_over_m0(finished_run):
  saved = json.loads((finished_run / "pli" / "state.json").read_text())
  assert saved["done"]
  m0, r1 = saved["rounds"][0], saved["rounds"][1]
  assert r1["val_macro_f1"] - m0["val_macro_f1"] >= MIN_GAIN, saved
  assert saved["best_round"] == 1
  # The round record says how good the pseudo-labels were, overall and per class.
  assert 0.8 <= r1["pseudo_label_accuracy"] <= 1.0
  per_class = r1["pseudo_label_accuracy_per_class"]
  assert set(per_class) == set(r1["accepted_per_class"])
  for name, acc in per_class.items():
    assert acc is None or 0.0 <= acc <= 1.0, name
  # Rounds are picked on validation as often as M0 was, so neither wins by more looks.
  assert saved["m0_val_looks"] >= 1
  # The same round figures went to TensorBoard (W/tb/pli), one point per round.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  points = {}
  for event_file in (finished_run / "tb" / "pli").glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(event_file)):
      for value in event.summary.value:
        points[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
  assert points[("pli/accepted", 1)] == r1["accepted"]
  assert points[("pli/val_macro_f1", 1)] == pytest.approx(r1["val_macro_f1"], abs=1e-6)
  assert points[("pli/pool_size", 1)] == r1["pool_size"]


def test_no_validation_or_test_flow_in_the_pool(finished_run):
  doc = json.loads((finished_run / "data" / "splits.json").read_text())
  pool = set(doc["splits"]["unlabeled"]["flow_id"])
  assert pool, "label_fraction 0.1 must leave an unlabeled pool"
  for split in ("validation", "test"):
    held_out = set(doc["splits"][split]["flow_id"])
    assert held_out and not held_out & pool, split
  # Pool flows with a hidden label are training flows whose label was withheld.
  train = set(doc["splits"]["train"]["flow_id"])
  assert not train & pool


def _round_checkpoints(workdir: pathlib.Path) -> list[int]:
  ckpt = workdir / "pli" / "round_1" / "ckpt"
  if not ckpt.is_dir():
    return []
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())


def test_pseudo_label_stage_resumes_mid_round_after_sigkill(finished_run, tmp_path):
  # Same data and M0 as the finished run, PLI not started: the pseudo_label stage alone.
  w = tmp_path / "w"
  w.mkdir()
  for name in ("config.json", "data", "pretrain", "finetune", "build.done.json",
               "pretrain.done.json", "finetune.done.json"):
    src = finished_run / name
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, w / name)
  cmd = _main(w, "--config.stage=pseudo_label", "--config.checkpoint_every=20")
  # A checkpoint every 20 steps: the kill lands mid-round, well before step 150.
  first = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 600
  killed_after = None
  while time.time() < deadline and first.poll() is None:
    steps = _round_checkpoints(w)
    if steps:
      first.send_signal(signal.SIGKILL)
      killed_after = steps[-1]
      break
    time.sleep(0.05)
  out1, _ = first.communicate(timeout=60)
  assert killed_after is not None, f"round 1 never checkpointed:\n{out1[-3000:]}"
  assert first.returncode == -signal.SIGKILL
  assert not (w / "pseudo_label.done.json").exists()

  second = subprocess.run(cmd, cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  assert "[pli_round1] resuming at step" in second.stdout, second.stdout[-3000:]
  saved = json.loads((w / "pli" / "state.json").read_text())
  assert saved["done"]
  rounds = [r["round"] for r in saved["rounds"]]
  assert rounds == sorted(set(rounds)) == [0, 1]
  assert (w / "pseudo_label.done.json").is_file()
