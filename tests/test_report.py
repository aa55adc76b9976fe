"""report.py writes the metrics it is given exactly, a readable markdown and valid pictures."""
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import ml_collections
import numpy as np
from PIL import Image
import pytest
from sklearn import metrics as skm
import threadpoolctl

from pass_jax import plots
from pass_jax import report

pass_config = importlib.import_module("configs.pass")  # `pass` is a keyword
ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ["netflix", "zoom|meet", "spotify", "whatsapp", "tiny_app"]
TRAIN_COUNTS = [800, 300, 120, 40, 4]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_run(seed=0):
  """A realistic imbalanced 5-class run: noisy predictions, sklearn metrics, histories, PLI."""
  rng = np.random.default_rng(seed)
  test_sizes = [200, 75, 30, 10, 3]
  y_true = np.repeat(np.arange(5), test_sizes)
  logits = rng.normal(size=(y_true.size, 5)) + 2.5 * np.eye(5)[y_true]
  y_pred = logits.argmax(-1)
  p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(5),
                                                   zero_division=0)
  mp, mr, mf, _ = skm.precision_recall_fscore_support(y_true, y_pred, average="macro",
                                                      zero_division=0)
  test_metrics = {
      "accuracy": float(skm.accuracy_score(y_true, y_pred)),
      "macro_precision": float(mp), "macro_recall": float(mr), "macro_f1": float(mf),
      "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                        "support": int(s[i])} for i, n in enumerate(CLASSES)},
      "confusion": skm.confusion_matrix(y_true, y_pred, labels=range(5)).tolist(),
  }
  # Embeddings with class structure, like the classifier's inputs after fine-tuning.
  centers = rng.normal(scale=4.0, size=(5, 32))
  emb = centers[y_true] + rng.normal(size=(y_true.size, 32))
  history = {
      "pretrain": [{"step": i * 10, "loss": 4.0 * np.exp(-i / 5) + 0.1} for i in range(20)],
      "finetune": [{"step": i * 10, "loss": float(1.6 * np.exp(-i / 8))} for i in range(30)],
      "finetune_eval": [{"step": i * 50, "macro_f1": 0.3 + 0.1 * i} for i in range(6)],
  }
  pli_rounds = [
      {"round": t, "pool_size": 900, "accepted": 300 + 100 * t,
       "accepted_per_class": {"netflix": 200, "spotify": 60 + t, "tiny_app": t},
       "accepted_fraction": (300 + 100 * t) / 900, "pseudo_label_accuracy": 0.9 + 0.01 * t,
       "val_macro_f1": 0.7 + 0.02 * t, "w_labeled": 1.0 - 0.05 * t,
       "w_pseudo": 0.5 + 0.05 * t, "seconds": 12.5} for t in range(1, 4)]
  return dict(
      dataset_report={"files": 42, "flows": 1500, "bad_files": 1, "errors": ["a.pcap: truncated"],
                      "flows_per_class": dict(zip(CLASSES, test_sizes))},
      split_sizes={"train": 1264, "unlabeled": 900, "val": 160, "test": 318},
      stage_seconds={"extract": 3.25, "pretrain": 60.5, "finetune": 30.0, "pseudo_label": 37.5},
      test_metrics=test_metrics, class_names=CLASSES, train_class_counts=TRAIN_COUNTS,
      history=history, pli_rounds=pli_rounds,
      tsne={"embeddings": emb.astype(np.float32), "labels": y_true})


def _config(**report_overrides):
  config = pass_config.get_config("tiny")
  config.report.tsne_max_points = 120
  for key, value in report_overrides.items():
    config.report[key] = value
  return config


def _assert_png(path: pathlib.Path):
  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC, path
  assert len(data) > 5_000, (path, len(data))  # a real drawing, not an empty canvas
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.size[0] > 300 and im.size[1] > 200
    # Not a single flat colour: something was drawn.
    assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 10


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  run = _fake_run()
  # One OpenMP thread: on a few shared cores t-SNE's default thread count oversubscribes them and
  # runs ten times slower.
  with threadpoolctl.threadpool_limits(limits=1):
    result = report.write_report(
        workdir, config=_config(tsne_classes=("netflix", "spotify", "tiny_app")), **run)
  return workdir, run, result


def test_json_holds_given_metrics_exactly(written):
  workdir, run, result = written
  on_disk = json.loads((workdir / "report.json").read_text())
  assert on_disk == result
  given = run["test_metrics"]
  test = on_disk["test"]
  for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
    assert test[key] == given[key]
  assert list(test["per_class"]) == CLASSES
  for name in CLASSES:
    assert test["per_class"][name] == given["per_class"][name]
  assert test["confusion"] == given["confusion"]
  assert on_disk["classes"] == CLASSES
  assert on_disk["train_class_counts"] == dict(zip(CLASSES, TRAIN_COUNTS))
  assert on_disk["splits"] == run["split_sizes"]
  assert on_disk["stage_seconds"] == run["stage_seconds"]
  assert on_disk["total_seconds"] == pytest.approx(131.25)
  assert on_disk["dataset"] == run["dataset_report"]
  assert [r["round"] for r in on_disk["pli_rounds"]] == [1, 2, 3]
  assert on_disk["pli_rounds"][1]["w_pseudo"] == run["pli_rounds"][1]["w_pseudo"]
  assert on_disk["config"]["report"]["tsne_classes"] == ["netflix", "spotify", "tiny_app"]
  assert on_disk["variant"] == "tiny"


def test_markdown_mentions_every_class_and_links_every_picture(written):
  workdir, _, result = written
  md = (workdir / "report.md").read_text()
  for name in CLASSES:
    assert name.replace("|", "\\|") in md, name
  assert set(result["pictures"]) == {"confusion", "f1_vs_support", "training_curves", "tsne"}
  for file in result["pictures"].values():
    assert f"]({file})" in md
  assert f"{result['test']['macro_f1']:.4f}" in md
  assert "## Pseudo-label iteration" in md
  # The confusion table's rows are the given counts.
  assert "| 0 netflix | " + " | ".join(
      str(v) for v in result["test"]["confusion"][0]) + " |" in md


def test_every_picture_is_a_valid_png(written):
  workdir, _, result = written
  pngs = sorted(p.name for p in workdir.glob("*.png"))
  assert pngs == sorted(result["pictures"].values())
  for name in pngs:
    _assert_png(workdir / name)


def test_tsne_subset_respects_configured_classes(written):
  _, run, result = written
  tsne = result["tsne"]
  assert tsne["classes"] == ["netflix", "spotify", "tiny_app"]
  assert tsne["points"] <= 120
  # 233 candidate flows capped at 120, stratified: every chosen class shows, the small one whole.
  assert set(tsne["points_per_class"]) == {"netflix", "spotify", "tiny_app"}
  assert tsne["points_per_class"]["tiny_app"] == 3
  assert tsne["points_per_class"]["netflix"] > tsne["points_per_class"]["spotify"]


def test_select_tsne_points_is_stratified_and_capped():
  labels = np.repeat(np.arange(4), [1000, 100, 10, 0])
  idx = plots.select_tsne_points(labels, [0, 1, 2, 3], 200, seed=0)
  assert idx.size == 200 and np.unique(idx).size == 200
  counts = np.bincount(labels[idx], minlength=4)
  assert counts[3] == 0 and counts[2] == 10  # floor keeps the tail class whole
  assert counts[0] > counts[1] > counts[2]
  assert np.array_equal(idx, plots.select_tsne_points(labels, [0, 1, 2, 3], 200, seed=0))
  assert plots.select_tsne_points(labels, [1], 500, seed=0).size == 100


def test_tsne_classes_default_to_largest_and_skip_unknown():
  labels = np.repeat(np.arange(12), [5, 50, 7, 7, 30, 1, 2, 3, 4, 6, 8, 0])
  names = [f"c{i}" for i in range(12)]
  ids, unknown = report.choose_tsne_classes((), labels, names)
  assert ids == [1, 4, 10, 2, 3, 9, 0, 8, 7, 6]  # 10 largest, largest first, ties by id
  ids, unknown = report.choose_tsne_classes(("c4", "nope", 0, "c4", 99), labels, names)
  assert ids == [4, 0] and unknown == ["nope", 99]


def test_pictures_false_writes_no_png(tmp_path):
  run = _fake_run()
  result = report.write_report(tmp_path, config=_config(pictures=False), **run)
  assert not list(tmp_path.glob("*.png"))
  assert result["pictures"] == {}
  md = (tmp_path / "report.md").read_text()
  assert ".png" not in md
  assert json.loads((tmp_path / "report.json").read_text())["test"]["macro_f1"] == (
      run["test_metrics"]["macro_f1"])


def test_per_class_as_lists_and_plain_dict_config(tmp_path):
  run = _fake_run()
  given = run["test_metrics"]
  as_lists = {k: v for k, v in given.items() if k != "per_class"}
  as_lists["per_class"] = {m: [given["per_class"][n][m] for n in CLASSES]
                           for m in ("precision", "recall", "f1", "support")}
  as_lists["confusion"] = np.asarray(given["confusion"])
  as_lists["num_examples"] = np.int64(318)
  run["test_metrics"] = as_lists
  config = {"seed": 0, "report": {"pictures": False}}
  result = report.write_report(tmp_path, config=config, **run)
  assert result["test"]["per_class"] == given["per_class"]
  assert result["test"]["num_examples"] == 318
  assert "num_examples" in (tmp_path / "report.md").read_text()
  # Without per-class numbers they come from the confusion matrix, as sklearn would compute them.
  run["test_metrics"] = {"accuracy": given["accuracy"], "confusion": given["confusion"]}
  result = report.write_report(tmp_path / "c", config=config, **run)
  for name in CLASSES:
    for metric in ("precision", "recall", "f1", "support"):
      assert result["test"]["per_class"][name][metric] == pytest.approx(
          given["per_class"][name][metric])


def test_accepts_the_metrics_module_output(tmp_path):
  from pass_jax import metrics  # pylint: disable=g-import-not-at-top
  run = _fake_run()
  given = run["test_metrics"]
  y_true = np.repeat(np.arange(5), [r for r in np.sum(given["confusion"], axis=1)])
  y_pred = np.concatenate([np.repeat(np.arange(5), row) for row in given["confusion"]])
  produced = metrics.classification_metrics(y_true, y_pred, 5, CLASSES)
  run["test_metrics"] = produced
  result = report.write_report(tmp_path, config={"report": {"pictures": False}}, **run)
  test = result["test"]
  assert test["macro_f1"] == produced["macro_f1"]
  assert test["confusion"] == produced["confusion_matrix"] == given["confusion"]
  for i, name in enumerate(CLASSES):
    for metric in ("precision", "recall", "f1", "support"):
      assert test["per_class"][name][metric] == produced["per_class"][metric][i]
      assert test["per_class"][name][metric] == pytest.approx(given["per_class"][name][metric])


def test_mismatched_inputs_are_rejected(tmp_path):
  run = _fake_run()
  run["test_metrics"] = dict(run["test_metrics"], confusion=[[1, 0], [0, 1]])
  with pytest.raises(ValueError, match="confusion matrix"):
    report.write_report(tmp_path, config=ml_collections.ConfigDict(), **run)


def test_training_curves_without_pretraining_or_pli(tmp_path):
  png = plots.training_curves_png({"pretrain": [], "finetune": [{"step": 1, "loss": 1.0}],
                                   "finetune_eval": []}, [])
  (tmp_path / "c.png").write_bytes(png)
  _assert_png(tmp_path / "c.png")


LAUNCH_SCRIPTS = sorted((ROOT / "launch").glob("*.sh")) + sorted(
    (ROOT / "launch").glob("*.sbatch"))


@pytest.mark.parametrize("script", LAUNCH_SCRIPTS, ids=lambda p: p.name)
def test_launch_script_parses(script):
  result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr
  if shutil.which("shellcheck"):
    result = subprocess.run(["shellcheck", "-x", "-S", "warning", "-s", "bash", str(script)],
                            capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout


def test_all_launch_targets_exist():
  names = {p.name for p in LAUNCH_SCRIPTS}
  assert {"single_host.sh", "multi_gpu.sh", "slurm.sbatch", "tpu_pod.sh",
          "local_multiprocess.sh"} <= names


# local_multiprocess.sh, run with a stand-in module so it does not depend on the pipeline.
_PROBE = '''
import argparse, json, os, pathlib, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--config")
parser.add_argument("--workdir")
args, rest = parser.parse_known_args()
pid = int(os.environ["PASS_PROCESS_ID"])
if "--mode=fail" in rest:
  sys.exit(3) if pid == 1 else time.sleep(120)
if "--mode=hang" in rest:
  time.sleep(120)
import jax
import numpy as np
from jax.experimental import multihost_utils
jax.distributed.initialize(os.environ["PASS_COORDINATOR"], int(os.environ["PASS_NUM_PROCESSES"]),
                           pid)
gathered = multihost_utils.process_allgather(np.array([jax.process_index()]))
pathlib.Path(args.workdir, f"probe_{pid}.json").write_text(json.dumps(dict(
    process_count=jax.process_count(), device_count=jax.device_count(),
    local_device_count=jax.local_device_count(), gathered=np.ravel(gathered).tolist(),
    config=args.config, rest=rest)))
'''


def _run_multiprocess(tmp_path, *flags, timeout=0):
  (tmp_path / "mod").mkdir()
  (tmp_path / "mod" / "pass_probe.py").write_text(_PROBE)
  env = dict(os.environ, PYTHONPATH=str(tmp_path / "mod"), PASS_PYTHON=sys.executable,
             PASS_MODULE="pass_probe", PASS_DEVICES_PER_PROCESS="2", PASS_TIMEOUT=str(timeout))
  return subprocess.run(["bash", str(ROOT / "launch" / "local_multiprocess.sh"), "2",
                         str(tmp_path / "w"), *flags], env=env, capture_output=True, text=True,
                        timeout=100, check=False)


def test_local_multiprocess_forms_one_distributed_job(tmp_path):
  result = _run_multiprocess(tmp_path, "--extra=a b", timeout=90)
  assert result.returncode == 0, result.stderr
  for pid in (0, 1):
    probe = json.loads((tmp_path / "w" / f"probe_{pid}.json").read_text())
    assert probe["process_count"] == 2
    assert probe["device_count"] == 4 and probe["local_device_count"] == 2
    assert probe["gathered"] == [0, 1]  # a real collective across the two processes
    assert probe["config"] == "configs/pass.py:tiny"
    assert probe["rest"] == ["--extra=a b"]
  assert (tmp_path / "w" / "logs" / "process_1.log").exists()


def test_local_multiprocess_fails_fast_when_one_process_fails(tmp_path):
  start = time.monotonic()
  result = _run_multiprocess(tmp_path, "--mode=fail")
  assert result.returncode == 1
  assert time.monotonic() - start < 30  # process 0 was stopped, not waited for
  assert "process 1 exited 3" in result.stderr
  assert "process 0 exited" not in result.stderr


def test_local_multiprocess_timeout(tmp_path):
  result = _run_multiprocess(tmp_path, "--mode=hang", timeout=1)
  assert result.returncode == 124
  assert "timed out" in result.stderr
