"""Trainers end to end on a generated dataset: pretrain -> finetune -> evaluate, and what each
leaves behind (checkpoints, best model, metrics, TensorBoard), plus config validation."""
import importlib
import io
import json
import shutil

import jax
import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import build
from input_pipeline import synthetic
from pass_jax import checkpoint
from pass_jax import config_check
from pass_jax import logging_utils
from pass_jax import sharding
from pass_jax import train_steps
from pass_jax.trainers import evaluate
from pass_jax.trainers import finetune
from pass_jax.trainers import pretrain

pass_config = importlib.import_module("configs.pass")  # `pass` is a keyword
NUM_CLASSES = 4


def tiny_config():
  c = pass_config.get_config("tiny")
  c.data.payload_bytes, c.data.num_lengths, c.data.min_flows_per_class = 32, 8, 2
  c.model.num_layers, c.model.d_model, c.model.ffn_dim = 1, 32, 64
  c.pretrain.num_triples, c.pretrain.batch_size, c.pretrain.lr = 256, 32, 3e-3
  c.finetune.batch_size, c.finetune.epochs, c.finetune.lr = 32, 12.0, 3e-3
  c.finetune.min_steps = 0
  c.log_every, c.checkpoint_every, c.keep_checkpoints = 8, 8, 2
  c.quiet = True
  return c


# ------------------------------------------------------------------ config validation
@pytest.mark.parametrize("variant", pass_config.VARIANTS)
def test_shipped_configs_are_valid(variant):
  config_check.validate(pass_config.get_config(variant))


def test_config_check_lists_every_bad_value():
  c = pass_config.get_config("tiny")
  c.data.split, c.data.label_fraction, c.data.payload_bytes = "random", 1.5, 127
  c.data.features, c.model.pooling, c.model.norm = "rp+pl", "max", "mid"
  c.finetune.loss, c.model.d_model = "mse", 48
  c.data.split_ratios, c.pli.threshold_candidates = (0.5, 0.2, 0.2), (0.9, 1.2)
  c.data.vocab_min_count = -2
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(c)
  msg = str(e.value)
  for needle in ("data.split='random'", "data.label_fraction=1.5", "m must be even",
                 "data.features='rp+pl'", "model.pooling='max'", "model.norm='mid'",
                 "finetune.loss='mse'", "num_heads * head_dim = 2 * 16", "summing to 1",
                 "threshold_candidates holds 1.2", "data.vocab_min_count=-2"):
    assert needle in msg, (needle, msg)
  assert msg.startswith("11 bad value(s)")


def test_paths_are_made_absolute_so_reruns_compare_equal(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  configs = []
  for spelling in ("../data/set", str(tmp_path.parent / "data" / "set")):
    c = pass_config.get_config("tiny")
    c.data.root, c.data.labels_csv = spelling, "labels.csv"
    config_check.absolute_paths(c)
    configs.append(checkpoint.config_to_dict(c))
  assert configs[0] == configs[1]
  assert configs[0]["data"]["root"] == str(tmp_path.parent / "data" / "set")
  assert configs[0]["data"]["labels_csv"] == str(tmp_path / "labels.csv")
  assert configs[0]["data"]["prebuilt"] == "" and configs[0]["data"]["split_file"] == ""


def test_config_check_runtime_batch_split():
  c = pass_config.get_config("tiny")
  config_check.check_runtime(c, num_devices=8, num_processes=2)
  with pytest.raises(config_check.ConfigError, match="not divisible by the 5 devices"):
    config_check.check_runtime(c, num_devices=5, num_processes=1)


def test_progress_line_and_quiet_mode(tmp_path):
  out = io.StringIO()
  log = logging_utils.MetricLogger(str(tmp_path), stage="finetune", total_steps=100,
                                   start_step=40, stream=out)
  log.write(50, {"loss": 0.25, "grad_norm": 3.0}, prefix="finetune", progress=True,
            console=("loss",))
  line = out.getvalue().strip()
  assert line.startswith("[finetune] step 50/100 | finetune/loss 0.25 | ")
  assert "steps/s | ETA " in line and "grad_norm" not in line
  quiet = logging_utils.MetricLogger(None, stage="x", total_steps=1, quiet=True, stream=out)
  quiet.write(1, {"loss": 1.0}, prefix="x", progress=True)
  assert out.getvalue().strip() == line
  log.close()
  (events,) = tmp_path.glob("events.out.tfevents.*")
  tags = {v.tag for raw in tf.data.TFRecordDataset(str(events))
          for v in tf.compat.v1.Event.FromString(raw.numpy()).summary.value}
  assert tags == {"finetune/loss", "finetune/grad_norm"}  # TensorBoard gets everything


# ------------------------------------------------------------------ one pipeline run
@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Generated pcaps -> dataset -> pretrain -> finetune -> evaluate, once for this module."""
  base = tmp_path_factory.mktemp("trainers")
  config = tiny_config()
  synthetic.write_demo_dataset(str(base / "pcaps"), num_classes=NUM_CLASSES,
                               max_flows_per_class=60, imbalance=2.0, seed=0)
  built = build.build_dataset(config.data, base / "pcaps", base / "data", workers=1)
  data = evaluate.Data.from_dir(str(built.out_dir))
  mesh = sharding.make_mesh()
  workdir = str(base / "w")
  encoder, pre_dir = pretrain.run_pretrain(config, workdir, data, mesh=mesh)
  state, history = finetune.run_finetune(config, workdir, data, mesh=mesh)
  test_metrics = evaluate.run_evaluate(config, workdir, data, "test", mesh=mesh)
  return dict(config=config, data=data, mesh=mesh, workdir=base / "w", encoder=encoder,
              pre_dir=pre_dir, state=state, history=history, test=test_metrics, built=built)


def test_end_to_end_beats_chance(run):
  m = run["test"]
  assert m["num_examples"] == len(run["data"].split("test")["label"])
  assert m["macro_f1"] >= 0.6, m  # chance is 1/4
  assert m["accuracy"] >= 0.6, m
  on_disk = json.loads((run["workdir"] / "eval" / "test_metrics.json").read_text())
  assert on_disk["macro_f1"] == m["macro_f1"]
  assert on_disk["confusion_matrix"] == m["confusion_matrix"]
  assert on_disk["class_names"] == run["built"].class_names


def test_checkpoints_best_rule_and_metadata(run):
  w, history = run["workdir"], run["history"]
  total = history["total_steps"]
  steps = lambda d: sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())
  assert steps(w / "finetune" / "ckpt") == [total - 8 if total % 8 == 0 else total - total % 8,
                                            total]
  evals = history["finetune_eval"]
  assert [e["step"] for e in evals] == list(range(4, total + 1, 4))  # eval_every 0: per epoch
  f1 = [e["macro_f1"] for e in evals]
  best = evals[int(np.argmax(f1))]  # the earliest of equal maxima
  assert history["best"] == {"step": best["step"], "val_macro_f1": best["macro_f1"]}
  assert steps(w / "finetune" / "best") == [best["step"]]
  assert int(jax.device_get(run["state"].step)) == best["step"]
  with checkpoint.Checkpointer(w / "finetune" / "ckpt") as ckpt:
    meta = ckpt.restore_meta()
  assert meta["step"] == total and meta["stage"] == "finetune"
  assert meta["data"] == checkpoint.data_position(total, 4, run["config"].seed)
  assert meta["vocab"] == checkpoint.file_reference(run["built"].vocab_path)
  assert checkpoint.config_differences(meta["config"],
                                       checkpoint.config_to_dict(run["config"])) == []
  assert meta["history"]["finetune"] == history["finetune"]


def test_finetune_starts_from_the_pretrained_encoder(run, tmp_path):
  c, data, mesh = run["config"], run["data"], run["mesh"]
  loaded = pretrain.load_encoder_params(c, run["pre_dir"], mesh=mesh,
                                        vocab_size=data.vocab_size, seq_len=data.seq_len)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(run["encoder"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Through the stage itself: with lr 0 the fine-tuned encoder is exactly the pre-trained one.
  shutil.copytree(run["workdir"] / "pretrain", tmp_path / "pretrain")
  c0 = tiny_config()
  c0.finetune.lr, c0.finetune.steps, c0.eval_every = 0.0, 1, 1
  state, _ = finetune.run_finetune(c0, str(tmp_path), data, mesh=mesh)
  for a, b in zip(jax.tree.leaves(train_steps.encoder_params(state)), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # And `w/o CPT` starts from a random encoder without needing a pre-training checkpoint.
  c0.pretrain.enabled = False
  scratch, _ = finetune.run_finetune(c0, str(tmp_path / "scratch"), data, mesh=mesh)
  diff = [np.abs(np.asarray(a) - np.asarray(b)).max()
          for a, b in zip(jax.tree.leaves(train_steps.encoder_params(scratch)),
                          jax.tree.leaves(loaded))]
  assert max(diff) > 0


def test_unfinished_pretraining_is_not_used(run, tmp_path):
  c, data, mesh = run["config"], run["data"], run["mesh"]
  like = train_steps.create_train_state(c, task="pretrain", num_classes=None,
                                        vocab_size=data.vocab_size, seq_len=data.seq_len,
                                        mesh=mesh, rng=0, total_steps=1)
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:  # what a killed run leaves
    ckpt.save(3, like, {"total_steps": 8})
  with pytest.raises(FileNotFoundError, match="stopped at step 3 of 8"):
    pretrain.load_encoder_params(c, str(tmp_path / "ckpt"), mesh=mesh,
                                 vocab_size=data.vocab_size, seq_len=data.seq_len)
  with pytest.raises(FileNotFoundError, match="no pre-training checkpoint"):
    finetune.run_finetune(c, str(tmp_path / "fresh"), data, mesh=mesh)


def test_restored_model_predicts_like_the_one_in_memory(run):
  c, data, mesh = run["config"], run["data"], run["mesh"]
  test = data.split("test")
  restored, meta = evaluate.restore_classifier(
      c, str(run["workdir"] / "finetune" / "best"), mesh=mesh, num_classes=data.num_classes,
      vocab_size=data.vocab_size, seq_len=data.seq_len)
  assert meta["step"] == run["history"]["best"]["step"]
  a = evaluate.predict_arrays(restored, test, c, mesh)
  b = evaluate.predict_arrays(run["state"], test, c, mesh)
  np.testing.assert_allclose(a["probs"], b["probs"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(a["embedding"], b["embedding"], rtol=1e-6, atol=1e-7)
  saved = np.load(run["workdir"] / "eval" / "test_predictions.npz")
  np.testing.assert_allclose(saved["probs"], a["probs"], rtol=1e-6, atol=1e-7)
  y_pred = a["probs"].argmax(-1)
  assert np.asarray(run["test"]["confusion_matrix"]).sum(0).tolist() == \
      np.bincount(y_pred, minlength=NUM_CLASSES).tolist()


def test_predictions_map_back_to_rows(run):
  """The eval stream pads and splits the rows; predict_arrays must put each back in its place."""
  c, mesh, state = run["config"], run["mesh"], run["state"]
  test = run["data"].split("test")
  n = len(test["tokens"])
  batch = {"tokens": np.zeros((32, test["tokens"].shape[1]), np.int32)}
  batch["tokens"][:n] = test["tokens"]
  batch["tokens"][n:, 0] = 2
  direct = train_steps.make_predict_step(c, mesh)(state, sharding.shard_batch(mesh, batch))
  got = evaluate.predict_arrays(state, test, c, mesh)
  assert got["probs"].shape == (n, NUM_CLASSES)
  np.testing.assert_allclose(got["probs"], np.asarray(direct["probs"])[:n], rtol=1e-5, atol=1e-6)


def test_finished_stage_is_not_run_again(run):
  state, history = finetune.run_finetune(run["config"], str(run["workdir"]), run["data"],
                                         mesh=run["mesh"])
  assert history["finetune"] == run["history"]["finetune"]
  assert history["best"] == run["history"]["best"]
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(run["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tensorboard_scalars(run):
  tags = set()
  for f in (run["workdir"] / "tb").glob("*/events.out.tfevents.*"):
    for raw in tf.data.TFRecordDataset(str(f)):
      event = tf.compat.v1.Event.FromString(raw.numpy())
      tags.update(v.tag for v in event.summary.value)
  assert {"pretrain/loss", "finetune/loss", "finetune/accuracy",
          "finetune_val/macro_f1"} <= tags
