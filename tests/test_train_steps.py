"""Train state, optimizer and steps on tiny toy tasks (8 CPU devices)."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pass_jax import losses
from pass_jax import sharding
from pass_jax import train_steps

B, L, VOCAB, CLASSES = 16, 12, 30, 4


def _config(**overrides):
  c = importlib.import_module("configs.pass").get_config("tiny")
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh()


def _create(config, mesh, task, rng=0, total_steps=40, **kwargs):
  return train_steps.create_train_state(
      config, task=task, num_classes=CLASSES, vocab_size=VOCAB, seq_len=L,
      mesh=mesh, rng=rng, total_steps=total_steps, **kwargs)


def _class_tokens(labels, rs):
  """Toy flows: class c draws its tokens from its own 6 ids; random PAD tails."""
  tokens = 4 + 6 * labels[:, None] + rs.randint(0, 6, (len(labels), L))
  tokens[:, 0] = 2
  for row, n in enumerate(rs.randint(6, L + 1, len(labels))):
    tokens[row, n:] = 0
  return tokens.astype(np.int32)


def _classify_batch(rs, pseudo_fraction=0.5):
  labels = rs.randint(0, CLASSES, B).astype(np.int32)
  return {"tokens": _class_tokens(labels, rs), "label": labels,
          "weight": np.ones(B, np.float32),
          "is_pseudo": (rs.rand(B) < pseudo_fraction).astype(np.float32)}


def _triples_batch(rs):
  labels = rs.randint(0, CLASSES, B).astype(np.int32)
  other = (labels + rs.randint(1, CLASSES, B)) % CLASSES
  return {"x": _class_tokens(labels, rs), "y": _class_tokens(other, rs),
          "strong": (rs.rand(B) < 0.5).astype(np.float32), "label": labels,
          "y_label": other.astype(np.int32)}


def test_schedules_warm_up_then_decay():
  config = _config(**{"optim.warmup": 0.1})
  for kind, mid in (("linear", 0.5), ("cosine", 0.5), ("constant", 1.0)):
    config.optim.schedule = kind
    # 11 warmup steps, then 100 of decay.
    _, schedule = train_steps.make_optimizer(config, stage="finetune", total_steps=111)
    peak = config.finetune.lr
    assert float(schedule(0)) == 0.0
    assert float(schedule(11)) == pytest.approx(peak)
    assert float(schedule(61)) == pytest.approx(mid * peak, rel=1e-4)
  _, schedule = train_steps.make_optimizer(config, stage="pretrain", total_steps=110)
  assert float(schedule(11)) == pytest.approx(config.pretrain.lr)


def test_weight_decay_shrinks_matrices_only():
  config = _config(**{"optim.weight_decay": 0.1, "optim.warmup": 0.0})
  tx, _ = train_steps.make_optimizer(config, stage="finetune", total_steps=10)
  params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert float(updates["kernel"][0, 0]) < 0 and float(updates["bias"][0]) == 0.0


def test_state_needs_total_steps(mesh):
  with pytest.raises(ValueError, match="total_steps"):
    train_steps.create_train_state(_config(), task="pretrain", num_classes=None,
                                   vocab_size=VOCAB, seq_len=L, mesh=mesh, rng=0)


def test_pretrained_encoder_is_handed_over(mesh):
  config = _config()
  pretrained = _create(config, mesh, "pretrain", rng=3)
  tuned = _create(config, mesh, "classify", encoder_params=train_steps.encoder_params(
      pretrained))
  jax.tree.map(np.testing.assert_array_equal, tuned.params["encoder"],
               pretrained.params["encoder"])
  assert set(tuned.params) == {"encoder", "classifier", "loss_weights"}
  # The tuned state owns its buffers: donating (deleting) them spares the source.
  jax.tree.map(lambda x: x.delete(), tuned.params)
  assert not any(x.is_deleted() for x in jax.tree.leaves(pretrained.params))
  wider = _config(**{"model.ffn_dim": 48})
  with pytest.raises(ValueError, match="encoder_params do not match"):
    _create(wider, mesh, "classify",
            encoder_params=train_steps.encoder_params(pretrained))


def test_contrastive_pretraining_learns_and_is_deterministic(mesh):
  # Pre-norm escapes the early plateau of contrastive training within a few
  # steps (post-norm + [CLS] takes ~30 at 5e-3): a fast, robust check.
  config = _config(**{"pretrain.lr": 2e-3, "model.norm": "pre"})
  step = train_steps.make_contrastive_step(config, mesh)
  batches = [sharding.shard_batch(mesh, _triples_batch(np.random.RandomState(i)))
             for i in range(8)]
  # Same seed, same batch -> same result (dropout keys come from rng + step).
  a, metrics_a = step(_create(config, mesh, "pretrain"), batches[0])
  b, metrics_b = step(_create(config, mesh, "pretrain"), batches[0])
  _, metrics_c = step(_create(config, mesh, "pretrain", rng=1), batches[0])
  assert float(metrics_a["loss"]) == float(metrics_b["loss"])
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  assert float(metrics_c["loss"]) != float(metrics_a["loss"])
  # Dropout makes the two views of an anchor differ: the SimCSE positive pair.
  assert 0.5 < float(metrics_a["pos_sim"]) < 1.0
  assert set(metrics_a) >= {"loss", "accuracy", "grad_norm", "lr"}

  state, history = a, []
  for i in range(40):
    state, metrics = step(state, batches[i % len(batches)])
    history.append(float(metrics["loss"]))
  assert int(state.step) == 41
  assert np.mean(history[-5:]) < 0.1 * np.mean(history[:5]), history


def test_finetuning_learns_with_learnable_weights(mesh):
  config = _config(**{"finetune.lr": 3e-3})
  step = train_steps.make_classify_step(config, mesh)
  state = _create(config, mesh, "classify")
  rs = np.random.RandomState(0)
  history = []
  for i in range(40):
    state, metrics = step(state, sharding.shard_batch(mesh, _classify_batch(rs)))
    history.append(metrics)
    if i == 0:
      assert float(metrics["w_labeled"]) == pytest.approx(1.0, rel=1e-6)
      assert float(metrics["w_pseudo"]) == pytest.approx(0.5, rel=1e-6)
  first = np.mean([float(m["loss_labeled"]) for m in history[:5]])
  last = np.mean([float(m["loss_labeled"]) for m in history[-5:]])
  assert last < 0.2 * first, (first, last)
  assert float(history[-1]["accuracy"]) > 0.9
  for m in history:
    assert min(float(m["w_labeled"]), float(m["w_pseudo"])) >= config.pli.min_weight
  # The weights did move (they are learnt), yet slowly at this learning rate.
  assert float(history[-1]["w_pseudo"]) != float(history[0]["w_pseudo"])

  predict = train_steps.make_predict_step(config, mesh)
  out = predict(state, sharding.shard_batch(mesh, _classify_batch(rs)))
  assert out["logits"].shape == (B, CLASSES) and out["embedding"].shape == (B, 32)
  np.testing.assert_allclose(np.asarray(out["probs"]).sum(-1), 1.0, rtol=1e-5)


def test_fixed_focal_step_equals_hand_computed_loss(mesh):
  config = _config(**{"pli.weights": "fixed", "finetune.loss": "focal",
                      "model.dropout": 0.0, "model.attention_dropout": 0.0})
  state = _create(config, mesh, "classify")
  assert "loss_weights" not in state.params
  batch = _classify_batch(np.random.RandomState(1))
  batch["weight"][:4] = 2.0
  batch["_mask"] = np.arange(B) < B - 2    # two padding rows
  batch = sharding.shard_batch(mesh, batch)
  # Without dropout the train forward equals predict's: recompute the loss.
  logits = np.asarray(train_steps.make_predict_step(config, mesh)(state, batch)["logits"])
  per_example = np.asarray(losses.cross_entropy(logits, batch["label"], gamma=2.0))
  pseudo, weight = np.asarray(batch["is_pseudo"]), np.asarray(batch["weight"])
  valid = np.asarray(batch["_mask"])
  lab = valid & (pseudo == 0)
  psd = valid & (pseudo == 1)
  want = (np.sum((weight * per_example)[lab]) / lab.sum()
          + 0.5 * np.sum((weight * per_example)[psd]) / psd.sum())
  _, metrics = train_steps.make_classify_step(config, mesh)(state, batch)
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
  assert (float(metrics["w_labeled"]), float(metrics["w_pseudo"])) == (1.0, 0.5)


def test_predict_on_a_pretrain_state_gives_embeddings(mesh):
  config = _config()
  state = _create(config, mesh, "pretrain")
  out = train_steps.make_predict_step(config, mesh)(
      state, sharding.shard_batch(mesh, {"tokens": _class_tokens(
          np.zeros(B, np.int64), np.random.RandomState(0))}))
  assert set(out) == {"embedding"} and out["embedding"].shape == (B, 32)
