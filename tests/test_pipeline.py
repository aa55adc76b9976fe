"""The main job end to end on generated data: stages, skipping, report, classify, bad input.

One tiny run (module-scoped) is shared by the tests that read its outputs; each command runs as a
subprocess exactly as a user types it.
"""
import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT

# Small enough for a 2-core CI machine, big enough that every stage does real work.
TINY_FLAGS = (
    "--config.data.demo.num_classes=4", "--config.data.demo.max_flows_per_class=80",
    "--config.data.demo.imbalance=4", "--config.data.label_fraction=0.5",
    "--config.data.min_flows_per_class=4",
    "--config.pretrain.num_triples=256", "--config.finetune.epochs=4", "--config.finetune.min_steps=0",
    "--config.pli.limit=1", "--config.pli.threshold=0.5", "--config.checkpoint_every=20",
    "--config.report.tsne_max_points=200",
)


def run_cli(module: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def main_cli(workdir, *extra: str) -> subprocess.CompletedProcess:
  return run_cli("pass_jax.main", "--config=configs/pass.py:tiny", f"--workdir={workdir}",
                 *TINY_FLAGS, *extra)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("run") / "w"
  proc = main_cli(workdir)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return workdir


def test_every_stage_finished_and_report_holds_metrics(finished_run):
  w = finished_run
  for stage in ("build", "pretrain", "finetune", "pseudo_label", "evaluate"):
    assert (w / f"{stage}.done.json").is_file(), stage
  report = json.loads((w / "report.json").read_text())
  test = report["test"]
  metrics = json.loads((w / "eval" / "test_metrics.json").read_text())
  for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
    assert test[key] == pytest.approx(metrics[key])
    assert 0.0 <= test[key] <= 1.0
  assert len(report["classes"]) == 4
  assert set(report["stage_seconds"]) >= {"build", "pretrain", "finetune", "pseudo_label"}
  assert report["splits"]["unlabeled"] > 0                 # label_fraction 0.5 fills the pool
  assert len(report["pli_rounds"]) >= 1
  md = (w / "report.md").read_text()
  for png in ("confusion_matrix.png", "f1_vs_class_size.png", "training_curves.png", "tsne.png"):
    assert (w / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png in md


def test_rerun_skips_finished_stages(finished_run):
  proc = main_cli(finished_run)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for stage in ("build", "pretrain", "finetune", "pseudo_label", "evaluate"):
    assert f"[{stage}] already done" in proc.stdout


def test_evaluate_alone_on_validation(finished_run):
  proc = main_cli(finished_run, "--config.stage=evaluate", "--config.eval_split=validation")
  assert proc.returncode == 0, proc.stderr[-2000:]
  metrics = json.loads((finished_run / "eval" / "validation_metrics.json").read_text())
  splits = json.loads((finished_run / "report.json").read_text())["splits"]
  # Every validation flow counted exactly once, and the report now describes that split.
  assert sum(metrics["per_class"]["support"]) == metrics["num_examples"] == splits["validation"]
  report = json.loads((finished_run / "report.json").read_text())
  assert report["test"]["macro_f1"] == pytest.approx(metrics["macro_f1"])


def test_workdir_of_another_variant_is_refused(finished_run):
  proc = run_cli("pass_jax.main", "--config=configs/pass.py:small",
                 f"--workdir={finished_run}", *TINY_FLAGS)
  assert proc.returncode != 0
  assert "another config" in proc.stderr and "Traceback" not in proc.stderr


def test_invalid_config_value_is_a_clear_error(tmp_path):
  proc = main_cli(tmp_path / "w", "--config.data.split=bogus")
  assert proc.returncode == 2
  assert "config.data.split='bogus'" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()                     # refused before any work


def test_missing_data_root_is_a_clear_error(tmp_path):
  proc = main_cli(tmp_path / "w", f"--config.data.root={tmp_path / 'nope'}")
  assert proc.returncode != 0
  assert "data root not found" in proc.stderr and "Traceback" not in proc.stderr


def test_classify_folder_with_a_corrupt_file(finished_run, tmp_path):
  pcaps = tmp_path / "new"
  pcaps.mkdir()
  demo = sorted((finished_run / "demo_data").rglob("*.pcap"))[:2]
  for i, p in enumerate(demo):
    shutil.copy(p, pcaps / f"c{i}.pcap")
  (pcaps / "broken.pcap").write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 7)  # cut-off header
  out = tmp_path / "preds.csv"
  proc = run_cli("pass_jax.classify", f"--workdir={finished_run}", f"--pcaps={pcaps}",
                 f"--output={out}", "--min_confidence=0.99")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "broken.pcap" in proc.stdout                      # reported, the rest classified
  rows = list(csv.DictReader(out.open()))
  assert rows and {r["capture"] for r in rows} == {"c0.pcap", "c1.pcap"}
  classes = set(json.loads((finished_run / "report.json").read_text())["classes"])
  for r in rows:
    assert r["predicted"] in classes | {"unknown"}
    assert len(r["top3"].split(";")) == 3
    if float(r["confidence"]) < 0.99:
      assert r["predicted"] == "unknown"
  assert "flows/s" in proc.stdout


def test_classify_bad_paths(finished_run, tmp_path):
  proc = run_cli("pass_jax.classify", f"--workdir={tmp_path}", f"--pcaps={tmp_path}")
  assert proc.returncode == 1 and "not a pass_jax run" in proc.stderr
  proc = run_cli("pass_jax.classify", f"--workdir={finished_run}",
                 f"--pcaps={tmp_path / 'missing.pcap'}")
  assert proc.returncode == 1 and "not found" in proc.stderr


def test_embedding_probe_reads_every_stage_of_the_run(finished_run, tmp_path):
  out = tmp_path / "probe.json"
  proc = subprocess.run(
      [sys.executable, "benchmarks/embedding_probe.py", str(finished_run), f"--json={out}"],
      cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(out.read_text())[str(finished_run)]
  assert list(got["stages"]) == ["init", "cpt", "final"]
  # The final stage is the kept checkpoint: its own head reproduces the test score the evaluate
  # stage wrote (eval/test_metrics.json; report.json may describe another split by now).
  test_metrics = json.loads((finished_run / "eval" / "test_metrics.json").read_text())
  assert got["final_test_f1"] == pytest.approx(test_metrics["macro_f1"], abs=1e-6)
  assert got["test_rows"] == test_metrics["num_examples"]
  # Pre-training and fine-tuning each moved the encoder: no two stages embed alike.
  sil = [got["stages"][s]["silhouette"] for s in ("init", "cpt", "final")]
  assert len(set(np.round(sil, 6))) == 3
  for stage in got["stages"].values():
    assert 0.0 <= stage["knn_f1"] <= 1.0 and 0.0 <= stage["linear_f1"] <= 1.0
  assert "| init |" in proc.stdout and "| final |" in proc.stdout
