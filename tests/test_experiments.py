"""The experiment runner on generated data: every arm of Table V, re-runs, shallow arms, failures.

One CLI run of table5 (module-scoped) is shared; it is small enough (3 classes, ~70 flows, 2
fine-tuning epochs) that the file stays within a few minutes on a loaded 2-core machine.
"""
import importlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT

TINY_FLAGS = (
    "--config.data.demo.num_classes=3", "--config.data.demo.max_flows_per_class=40",
    "--config.data.demo.imbalance=4", "--config.data.min_flows_per_class=4",
    "--config.pretrain.num_triples=64", "--config.finetune.epochs=2", "--config.finetune.min_steps=0",
    # RUS cuts every class to the rarest one's ~8 flows: the batch must fit what is left.
    "--config.finetune.batch_size=8", "--config.pli.limit=1", "--config.report.pictures=False",
)


def experiments_cli(workdir, *extra: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "pass_jax.experiments", "--experiment=table5",
       "--config=configs/pass.py:tiny", f"--workdir={workdir}", *TINY_FLAGS, *extra],
      cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)


def tiny_config(**data):
  c = importlib.import_module("configs.pass").get_config("tiny")   # `pass` is a keyword
  for flag in TINY_FLAGS:
    key, value = flag.removeprefix("--config.").split("=")
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else value == "True"
  for key, value in data.items():
    c.data[key] = value
  return c


@pytest.fixture(scope="module")
def table5_run(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("exp") / "w"
  proc = experiments_cli(workdir)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return workdir


def test_every_arm_of_table5_in_the_table(table5_run):
  from pass_jax import experiment_arms  # pylint: disable=g-import-not-at-top
  w = table5_run
  summary = json.loads((w / "table5.json").read_text())
  names = [a.name for a in experiment_arms.table5()]
  assert [row["name"] for row in summary["arms"]] == names
  md = (w / "table5.md").read_text()
  for row in summary["arms"]:
    assert row["seeds_ok"] == ["0"] and not row["errors"], row
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
      assert 0.0 <= row[key]["mean"] <= 1.0
      assert row[key]["std"] == 0.0                        # one seed
    assert row["wall_s"]["mean"] > 0
    assert f"| {row['name']} |" in md
    # Only deep arms pick on validation; the others show "-" in the val column.
    assert ("val_macro_f1" in row) == (not row["shallow"] and not row.get("embed_from")), row
  assert "| val macro-F1 |" in md
  # PASS arms ran the pipeline on the one shared build, with their own overrides.
  for row in summary["arms"]:
    if row["shallow"] or row.get("embed_from"):
      continue
    arm_dir = w / row["name"] / "seed0"
    report = json.loads((arm_dir / "report.json").read_text())
    assert report["test"]["macro_f1"] == pytest.approx(row["macro_f1"]["mean"])
    # The validation score its best checkpoint was picked on (no PLI here: M0's best eval).
    best = (arm_dir / "finetune.done.json").read_text()
    assert row["val_macro_f1"]["mean"] == pytest.approx(
        json.loads(best)["history"]["best"]["val_macro_f1"])
    config = json.loads((arm_dir / "config.json").read_text())
    assert config["data"]["prebuilt"] == str(w / "data_seed0")
    assert config["pretrain"]["enabled"] is False and config["pli"]["enabled"] is False
    for key, value in row["overrides"].items():
      section, field = key.split(".")
      assert config[section][field] == value
    assert not (arm_dir / "data").exists()                # no build of its own
  assert sorted(p.name for p in w.glob("data_seed*")) == ["data_seed0"]


def test_kept_val_macro_f1_is_the_best_validation_score_of_the_run():
  from pass_jax import experiments  # pylint: disable=g-import-not-at-top
  history = {"finetune_eval": [{"step": 10, "macro_f1": 0.4}, {"step": 20, "macro_f1": 0.6}]}
  assert experiments.kept_val_macro_f1({"history": history}) == 0.6
  # PLI kept round 1 (.7 > M0's .6); round 2 (.65) stopped the loop.
  rounds = [{"round": 0, "val_macro_f1": 0.6}, {"round": 1, "val_macro_f1": 0.7},
            {"round": 2, "val_macro_f1": 0.65}]
  assert experiments.kept_val_macro_f1({"history": history, "pli_rounds": rounds}) == 0.7
  # No validation split: fine-tuning records no score, and the cell stays empty.
  assert experiments.kept_val_macro_f1(
      {"history": {"finetune_eval": []}, "pli_rounds": [{"round": 0, "val_macro_f1": None}]}) is None


def test_rerun_skips_finished_arms(table5_run):
  w = table5_run
  finished = sorted(w.glob("*/seed0/report.json")) + sorted(w.glob("*/seed0/result.json"))
  assert len(finished) == 9
  before = {p: p.stat().st_mtime_ns for p in finished}
  ckpts_before = sorted(w.glob("*/seed0/finetune/best/*"))
  table_before = json.loads((w / "table5.json").read_text())
  proc = experiments_cli(w)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
  assert proc.stdout.count("finished before, skipped") == 9, proc.stdout
  assert {p: p.stat().st_mtime_ns for p in finished} == before
  assert sorted(w.glob("*/seed0/finetune/best/*")) == ckpts_before
  table_after = json.loads((w / "table5.json").read_text())
  for a, b in zip(table_before["arms"], table_after["arms"]):
    assert a["macro_f1"] == b["macro_f1"] and a["wall_s"] == b["wall_s"]


def test_a_stored_fit_is_shared_across_tables_but_not_across_settings(tmp_path):
  from pass_jax import experiments  # pylint: disable=g-import-not-at-top
  calls = []

  def fit():
    calls.append(1)
    y = np.array([0, 1, 1, 0], np.int32)
    return y, np.eye(2, dtype=np.float32)[y], y, ["a", "b"], 8, 0.01

  arm = {"name": "lgbm", "description": "LightGBM (Table III)", "shallow": "lgbm",
         "features": "flat", "smote": False}
  params = {"arm": arm, "seed": 0, "data_dir": "/d"}
  first = experiments.run_cached_fit(str(tmp_path), params, fit)
  assert first["macro_f1"] == 1.0 and len(calls) == 1
  # Table V's `lgbm` is the same fit under another description: read back, not refit.
  again = experiments.run_cached_fit(
      str(tmp_path), {**params, "arm": {**arm, "description": "reference for SMOTE"}}, fit)
  assert again["skipped"] and again["macro_f1"] == 1.0 and len(calls) == 1
  # Another feature set is another fit: refused, never silently mixed.
  with pytest.raises(experiments.ArmError, match="other settings"):
    experiments.run_cached_fit(str(tmp_path), {**params, "arm": {**arm, "features": "stats"}}, fit)
  assert len(calls) == 1


def test_a_build_is_reused_across_added_fields_and_refused_for_other_settings(tmp_path):
  from pass_jax import experiments, jsonio  # pylint: disable=g-import-not-at-top
  base = tiny_config(root=str(tmp_path / "pcaps"))
  builds = experiments.Builds(base, str(tmp_path / "w"))
  data_cfg = base.data.copy_and_resolve_references()
  data_cfg.seed = 0
  saved = experiments.build_settings(data_cfg)
  out = tmp_path / "w" / "data_seed0"
  out.mkdir(parents=True)
  # A build written before data.vocab_min_count existed is the same build as vocab_min_count=0.
  del saved["vocab_min_count"]
  jsonio.write_json(str(out / "build.json"), saved)
  assert builds.data_dir(0, {}) == str(out)
  jsonio.write_json(str(out / "build.json"), {**saved, "payload_bytes": 64})
  with pytest.raises(experiments.ArmError, match="payload_bytes"):
    builds.data_dir(0, {})


def test_shallow_arms_are_fit_predict_on_the_shared_split(table5_run):
  from input_pipeline import tfds_builder  # pylint: disable=g-import-not-at-top
  from pass_jax import metrics  # pylint: disable=g-import-not-at-top
  from pass_jax.baselines import features, imbalance, shallow  # pylint: disable=g-import-not-at-top
  data_dir = table5_run / "data_seed0"
  vocab = tfds_builder.load_vocab(data_dir)
  train = tfds_builder.load_split_arrays(data_dir, "train")
  test = tfds_builder.load_split_arrays(data_dir, "test")
  X_tr = features.token_features(train["tokens"], vocab.tokens, "flat",
                                 m=vocab.payload_bytes, n=vocab.num_lengths)
  X_te = features.token_features(test["tokens"], vocab.tokens, "flat",
                                 m=vocab.payload_bytes, n=vocab.num_lengths)
  assert (train["label"] >= 0).all()       # label_fraction 1: every train row is labelled
  num_classes = len(tfds_builder.load_metadata(data_dir)["class_names"])
  summary = {r["name"]: r for r in json.loads((table5_run / "table5.json").read_text())["arms"]}
  for arm, (X, y) in (("lgbm", (X_tr, train["label"])),
                      ("smote", imbalance.smote(X_tr, train["label"], 0))):
    pred, _ = shallow.fit_predict("lgbm", X, y, X_te, 0, num_classes=num_classes)
    stored = np.load(table5_run / arm / "seed0" / "predictions.npz")
    np.testing.assert_array_equal(stored["pred"], pred)
    np.testing.assert_array_equal(stored["label"], test["label"])
    want = metrics.classification_metrics(test["label"], pred, num_classes)
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
      assert summary[arm][key]["mean"] == pytest.approx(want[key], abs=1e-12)
  assert summary["smote"]["seeds"]["0"]["train_rows"] > len(train["label"])   # SMOTE grew it


def test_embedding_arms_refit_a_head_on_the_base_models_embeddings(table5_run, tmp_path):
  from pass_jax import embedding_arm, experiment_arms, experiments  # pylint: disable=g-import-not-at-top
  w = table5_run
  base_cfg = tiny_config(root=str(w / "demo_data"))
  source_cfg = experiments.arm_config(base_cfg, experiment_arms.find("table5", base_cfg, "base"),
                                      0, str(w / "data_seed0"))
  emb = embedding_arm.embed_labelled(source_cfg, str(w / "base" / "seed0"),
                                     str(w / "data_seed0"))
  (X_tr, y_tr), (X_te, y_te) = emb["train"], emb["test"]
  assert X_tr.shape == (len(y_tr), source_cfg.model.d_model) and np.isfinite(X_tr).all()
  # The base run's own test embeddings (its evaluate stage) are the ones the arm used.
  saved = np.load(w / "base" / "seed0" / "eval" / "test_predictions.npz")
  np.testing.assert_allclose(X_te, saved["embedding"][saved["label"] >= 0], rtol=1e-5, atol=1e-5)
  summary = {r["name"]: r for r in json.loads((w / "table5.json").read_text())["arms"]}
  counts = np.bincount(y_tr)
  counts = counts[counts > 0]
  rows = {"embed_linear": len(y_tr),
          # SMOTE grows every class with >= 2 rows to the largest class's count.
          "smote_embed": int(sum(counts.max() if c >= 2 else c for c in counts))}
  assert rows["smote_embed"] > rows["embed_linear"]
  for name, smote in (("embed_linear", False), ("smote_embed", True)):
    pred, _, train_rows = embedding_arm.fit_head(X_tr, y_tr, X_te, seed=0, smote=smote,
                                                 num_classes=3)
    assert train_rows == rows[name] == summary[name]["seeds"]["0"]["train_rows"]
    stored = np.load(w / name / "seed0" / "predictions.npz")
    np.testing.assert_array_equal(stored["pred"], pred)
    np.testing.assert_array_equal(stored["label"], y_te)
  # Without its source arm's finished run an embedding arm fails and says which arm to run.
  lines = []
  out = experiments.run_experiment(base_cfg, tmp_path, "table5", [0], ["smote_embed"],
                                   log=lines.append)
  assert "run base first" in out["arms"][0]["errors"]["0"]


def test_raw_features_equal_token_features_wherever_the_vocabulary_knows_the_token(table5_run):
  from pass_jax import experiment_arms, experiments  # pylint: disable=g-import-not-at-top
  from pass_jax.baselines import features  # pylint: disable=g-import-not-at-top
  w = table5_run
  root = str(w / "demo_data")
  for split in ("train", "test"):
    X_raw, y_raw = experiments.shallow_features(str(w / "data_seed0"), split, "raw_flat", root)
    X_tok, y_tok = experiments.shallow_features(str(w / "data_seed0"), split, "flat")
    np.testing.assert_array_equal(y_raw, y_tok)
    assert X_raw.shape == X_tok.shape
    assert (X_raw != features.ABSENT).mean() > 0.5      # real bytes and lengths, not padding
    known = X_tok != features.ABSENT
    np.testing.assert_array_equal(X_raw[known], X_tok[known])
    if split == "train":
      # The vocabulary is counted over train: no train token is [UNK], the two readings agree.
      np.testing.assert_array_equal(X_raw, X_tok)
  arm = {a.name: a for a in experiment_arms.table3()}["lgbm_raw"]
  assert (arm.shallow, arm.features) == ("lgbm", "raw_flat")


def test_a_failing_arm_is_recorded_and_the_others_run(table5_run, tmp_path):
  from pass_jax import experiment_arms, experiments  # pylint: disable=g-import-not-at-top
  base = tiny_config(root=str(table5_run / "demo_data"))
  arms = [experiment_arms.Arm("bad_config", "invalid model", {"model.name": "nope"}),
          experiment_arms.Arm("bad_features", "unknown feature kind", shallow="lgbm",
                              features="nope"),
          experiment_arms.Arm("lgbm", "LightGBM", shallow="lgbm", features="flat"),
          # Changes the tokens, so it gets its own build (of the same split).
          experiment_arms.Arm("lgbm_rp", "LightGBM on RP only", {"data.features": "rp"},
                              shallow="lgbm", features="flat")]
  lines = []
  summary = experiments.run_experiment(base, tmp_path, "table5", [0], arms, log=lines.append)
  rows = {r["name"]: r for r in summary["arms"]}
  assert "model.name" in rows["bad_config"]["errors"]["0"]
  assert "nope" in rows["bad_features"]["errors"]["0"]
  for name in ("lgbm", "lgbm_rp"):
    assert rows[name]["seeds_ok"] == ["0"] and 0 <= rows[name]["macro_f1"]["mean"] <= 1
  from input_pipeline import tfds_builder  # pylint: disable=g-import-not-at-top
  both, rp = tmp_path / "data_seed0", tmp_path / "data_seed0_features-rp"
  assert tfds_builder.load_vocab(rp).features == "rp"
  for split in ("train", "test"):
    np.testing.assert_array_equal(tfds_builder.load_split_arrays(both, split)["flow_id"],
                                  tfds_builder.load_split_arrays(rp, split)["flow_id"])
  md = (tmp_path / "table5.md").read_text()
  assert "## Errors" in md and "`bad_config` seed 0" in md and "`bad_features` seed 0" in md
  # A re-run retries the failures and keeps the finished arm.
  lines.clear()
  experiments.run_experiment(base, tmp_path, "table5", [0], arms, log=lines.append)
  assert sum("FAILED" in line for line in lines) == 2
  assert sum("skipped" in line for line in lines) == 2


def test_every_arm_of_every_experiment_is_a_valid_config(tmp_path):
  from pass_jax import config_check, experiment_arms, experiments  # pylint: disable=g-import-not-at-top
  base = tiny_config()
  for name in experiment_arms.EXPERIMENTS:
    arms = experiment_arms.arms_for(name, base)
    assert len({a.name for a in arms}) == len(arms), name
    for arm in arms:
      if arm.is_shallow:
        continue
      cfg = experiments.arm_config(base, arm, seed=3, data_dir=str(tmp_path))
      config_check.validate(cfg)
      assert cfg.seed == 3 and cfg.data.seed == 3 and cfg.data.prebuilt == str(tmp_path)
  builds = {a.name: a.build_overrides() for a in experiment_arms.table4()}
  assert builds["wo_pli_cpt_pl"] == {"features": "rp"}
  assert builds["wo_pli_cpt_rp"] == {"features": "pl"} and builds["pass"] == {}
  sens = {a.name: a for a in experiment_arms.sensitivity(base)}
  assert sens["triples_x0.5"].overrides["pretrain.num_triples"] == 32     # of 64
  assert sens["mn_16_8"].build_overrides() == {"payload_bytes": 32, "num_lengths": 8}
  with pytest.raises(ValueError, match="unknown arm"):
    experiment_arms.select(experiment_arms.table3(), ["pass", "nope"])
