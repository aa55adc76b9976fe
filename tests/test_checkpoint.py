"""checkpoint.py: round trips of sharded state + metadata, retention, torn saves, config drift."""
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from pass_jax import checkpoint

pass_config = importlib.import_module("configs.pass")  # `pass` is a keyword


def _mesh():
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def _state(mesh, seed=0):
  rng = np.random.default_rng(seed)
  rep = NamedSharding(mesh, P())
  row = NamedSharding(mesh, P("data"))
  return {
      "params": {"w_DxK": jax.device_put(rng.normal(size=(8, 3)).astype(np.float32), row),
                 "b_K": jax.device_put(rng.normal(size=(3,)).astype(np.float32), rep)},
      "step": jax.device_put(jnp.asarray(7, jnp.int32), rep),
      "rng": jax.random.key(seed),
  }


def _assert_tree_equal(a, b):
  la = jax.tree.leaves(checkpoint._keys_to_data(a))
  lb = jax.tree.leaves(checkpoint._keys_to_data(b))
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_state_and_meta(tmp_path):
  mesh = _mesh()
  state = _state(mesh)
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n+60\n")
  config = pass_config.get_config("tiny")
  meta = {"data": {"seed": 3, "epoch": 1, "batch_in_epoch": 4},
          "config": checkpoint.config_to_dict(config),
          "vocab": checkpoint.file_reference(vocab)}
  with checkpoint.Checkpointer(tmp_path / "ckpt", max_to_keep=2) as ckpt:
    ckpt.save(5, state, meta)
  like = _state(mesh, seed=1)  # different values, same structure: restore must overwrite them
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.latest_step() == 5
    restored, got = ckpt.restore(like)
  _assert_tree_equal(restored, state)
  assert restored["params"]["w_DxK"].sharding == state["params"]["w_DxK"].sharding
  assert jax.dtypes.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)
  assert got["step"] == 5 and got["data"] == meta["data"]
  assert got["vocab"]["sha256"] == checkpoint.file_reference(vocab)["sha256"]
  assert os.path.isabs(got["vocab"]["path"])
  assert checkpoint.config_differences(got["config"], checkpoint.config_to_dict(config)) == []


def test_restore_from_abstract_target(tmp_path):
  mesh = _mesh()
  state = _state(mesh)
  with checkpoint.Checkpointer(tmp_path / "c") as ckpt:
    ckpt.save(1, state, {})
    abstract = jax.eval_shape(lambda: _state(mesh))
    # eval_shape drops shardings; give the target the ones a real run would have.
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s.sharding), abstract, state)
    restored, _ = ckpt.restore(abstract)
  _assert_tree_equal(checkpoint._keys_to_data(restored), state)


def test_keeps_last_n_and_skips_existing(tmp_path):
  mesh = _mesh()
  with checkpoint.Checkpointer(tmp_path / "c", max_to_keep=2) as ckpt:
    for step in (10, 20, 30):
      ckpt.save(step, _state(mesh, seed=step), {"tag": step})
    ckpt.save(30, _state(mesh, seed=99), {"tag": "again"})  # already there: kept as it was
    ckpt.wait()
    assert ckpt.all_steps() == [20, 30]
    restored, meta = ckpt.restore(_state(mesh), step=30)
    assert meta["tag"] == 30
    _assert_tree_equal(restored, _state(mesh, seed=30))
    assert ckpt.restore_meta(20)["tag"] == 20


def test_torn_save_is_invisible(tmp_path):
  mesh = _mesh()
  with checkpoint.Checkpointer(tmp_path / "c") as ckpt:
    ckpt.save(1, _state(mesh), {})
  # What a SIGKILL during a save leaves: an uncommitted temporary step directory.
  (tmp_path / "c" / "2.orbax-checkpoint-tmp-123").mkdir()
  with checkpoint.Checkpointer(tmp_path / "c") as ckpt:
    assert ckpt.latest_step() == 1


def test_missing_checkpoint_and_config_drift(tmp_path):
  with checkpoint.Checkpointer(tmp_path / "empty") as ckpt:
    assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
      ckpt.restore({})
  a = checkpoint.config_to_dict(pass_config.get_config("tiny"))
  c = pass_config.get_config("tiny")
  c.finetune.lr = 0.5
  c.log_every = 3  # cadence only: not a difference
  diffs = checkpoint.config_differences(a, checkpoint.config_to_dict(c))
  assert len(diffs) == 1 and diffs[0].startswith("finetune.lr")
  # A run saved before data.vocab_min_count existed computed what the default (0) computes.
  del a["data"]["vocab_min_count"]
  assert checkpoint.config_differences(a, checkpoint.config_to_dict(c)) == diffs
  c.data.vocab_min_count = 3
  assert any(d.startswith("data.vocab_min_count") for d in
             checkpoint.config_differences(a, checkpoint.config_to_dict(c)))


def test_train_state_round_trip_with_fsdp(tmp_path):
  """The real TrainState (params, Adam moments, step, raw rng) with params sharded over devices."""
  from pass_jax import sharding, train_steps
  config = pass_config.get_config("tiny")
  config.mesh.fsdp = True
  mesh = sharding.make_mesh()
  make = lambda seed: train_steps.create_train_state(
      config, task="classify", num_classes=5, vocab_size=40, seq_len=12, mesh=mesh, rng=seed,
      total_steps=10)
  state = make(0)
  state = state.replace(step=state.step + 3,
                        opt_state=jax.tree.map(lambda x: x + 1, state.opt_state))
  with checkpoint.Checkpointer(tmp_path / "c") as ckpt:
    ckpt.save(3, state, {"note": "fsdp"})
  with checkpoint.Checkpointer(tmp_path / "c") as ckpt:
    restored, meta = ckpt.restore(make(1))
  assert type(restored) is type(state) and meta["note"] == "fsdp"
  assert restored.model_def is not None and restored.tx is not None
  _assert_tree_equal(restored, state)
  sharded = [x for x in jax.tree.leaves(restored.params) if not x.sharding.is_fully_replicated]
  assert sharded, "fsdp should leave some parameters split over devices"
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert a.sharding == b.sharding


def test_resume_refused_for_another_run():
  config = pass_config.get_config("tiny")
  meta = {"config": checkpoint.config_to_dict(config), "total_steps": 40,
          "data": checkpoint.data_position(8, 4, seed=0)}
  checkpoint.check_resumable(meta, config, steps_per_epoch=4, total_steps=40, directory="d")
  config.model.d_model = 64
  with pytest.raises(ValueError, match=r"cannot resume from d(.|\n)*model.d_model: checkpoint 32"):
    checkpoint.check_resumable(meta, config, steps_per_epoch=4, total_steps=40, directory="d")
  config.model.d_model = 32
  with pytest.raises(ValueError, match="checkpoint 4/40 vs now 5/50"):
    checkpoint.check_resumable(meta, config, steps_per_epoch=5, total_steps=50, directory="d")


def test_data_position_and_resumable_batches():
  assert checkpoint.data_position(10, 4, seed=3) == {"seed": 3, "epoch": 2, "batch_in_epoch": 2,
                                                     "steps_per_epoch": 4}
  assert checkpoint.epoch_seed(3, 1) == checkpoint.epoch_seed(3, 1) != checkpoint.epoch_seed(3, 2)
  # Each "epoch" yields (epoch seed, i) for 5 batches; only 4 per epoch are used.
  make = lambda s: iter([(s, i) for i in range(5)])
  run = checkpoint.resumable_batches(make, steps_per_epoch=4, start_step=0, seed=3)
  full = [next(run) for _ in range(12)]
  assert [i for _, i in full] == [0, 1, 2, 3] * 3
  for start in (0, 3, 4, 7):
    resumed = checkpoint.resumable_batches(make, steps_per_epoch=4, start_step=start, seed=3)
    assert [next(resumed) for _ in range(12 - start)] == full[start:]
