"""Mesh, FSDP rule, host->device batches, and 8-device vs 1-device equivalence."""
import importlib

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pass_jax import sharding
from pass_jax import train_steps

B, L, VOCAB = 16, 12, 30


def _config(fsdp=False):
  c = importlib.import_module("configs.pass").get_config("tiny")
  c.mesh.fsdp = fsdp
  return c


def test_mesh_spans_all_devices_with_auto_axis():
  assert jax.device_count() == 8, "conftest should give 8 CPU devices"
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ("data",) and mesh.shape["data"] == 8
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
  assert sharding.make_mesh(jax.devices()[:1]).shape["data"] == 1


@pytest.mark.parametrize("shape,shards,spec", [
    ((512, 1024), 8, P(None, "data")),   # largest divisible dim
    ((1000, 512), 8, P("data", None)),   # 1000 % 8 == 0
    ((1001, 512), 8, P(None, "data")),   # largest dim not divisible -> next one
    ((64, 64), 8, P("data", None)),      # ties -> earlier axis
    ((6,), 8, P()), ((), 8, P()), ((4,), 8, P()), ((512,), 1, P()),
])
def test_fsdp_spec(shape, shards, spec):
  assert sharding.fsdp_spec(shape, shards) == spec


def test_param_shardings_replicated_or_fsdp():
  mesh = sharding.make_mesh()
  tree = {"kernel": np.zeros((32, 6)), "bias": np.zeros((6,))}
  rep = sharding.param_shardings(mesh, tree, fsdp=False)
  assert all(s.spec == P() for s in jax.tree.leaves(rep))
  fsdp = sharding.param_shardings(mesh, tree, fsdp=True)
  assert fsdp["kernel"].spec == P("data", None) and fsdp["bias"].spec == P()


def test_shard_batch_builds_global_arrays_and_drops_host_only_keys():
  mesh = sharding.make_mesh()
  batch = {"tokens": np.arange(B * L, dtype=np.int32).reshape(B, L),
           "label": np.arange(B, dtype=np.int32),
           "_mask": np.arange(B) % 3 > 0,
           "_source": np.zeros(B, np.int32),
           "flow_id": np.array([f"c#{i}" for i in range(B)])}
  out = sharding.shard_batch(mesh, batch)
  assert sorted(out) == ["_mask", "label", "tokens"]
  for key, value in out.items():
    assert value.shape == batch[key].shape
    assert value.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), value.ndim)
    np.testing.assert_array_equal(np.asarray(value), batch[key])
  assert len(out["tokens"].addressable_shards) == 8
  with pytest.raises(ValueError, match="multiple of the 8 local devices"):
    sharding.shard_batch(mesh, {"label": np.zeros(12, np.int32)})


def _batch(task, seed=0):
  rs = np.random.RandomState(seed)
  tokens = lambda: rs.randint(4, VOCAB, (B, L)).astype(np.int32)
  label = rs.randint(0, 4, B).astype(np.int32)
  if task == "pretrain":
    return {"x": tokens(), "y": tokens(), "label": label,
            "strong": (rs.rand(B) > 0.5).astype(np.float32)}
  return {"tokens": tokens(), "label": label, "weight": np.ones(B, np.float32),
          "is_pseudo": (rs.rand(B) > 0.5).astype(np.float32)}


def _train(config, mesh, task, steps=2):
  state = train_steps.create_train_state(
      config, task=task, num_classes=4, vocab_size=VOCAB, seq_len=L, mesh=mesh,
      rng=0, total_steps=10)
  make = (train_steps.make_contrastive_step if task == "pretrain"
          else train_steps.make_classify_step)
  step = make(config, mesh)
  losses = []
  for i in range(steps):
    state, metrics = step(state, sharding.shard_batch(mesh, _batch(task, i)))
    losses.append(float(metrics["loss"]))
  return state, metrics, losses


# Two cases cover both steps and both placements; each costs two compiles.
@pytest.mark.parametrize("task,fsdp", [("pretrain", False), ("classify", True)])
def test_eight_devices_match_one(task, fsdp):
  config = _config(fsdp)
  mesh8 = sharding.make_mesh()
  mesh1 = sharding.make_mesh(jax.devices()[:1])
  state8, metrics8, losses8 = _train(config, mesh8, task)
  state1, metrics1, losses1 = _train(config, mesh1, task)
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  np.testing.assert_allclose(float(metrics8["grad_norm"]), float(metrics1["grad_norm"]),
                             rtol=1e-4)
  # Adam divides by |g|: an entry whose gradient is near float noise (summation
  # order differs across meshes) can move by a noticeable fraction of one lr
  # step, so parameters are compared on that scale.
  lr = float(metrics8["lr"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=0, atol=0.2 * lr),
               state8.params, state1.params)

  # Outputs land where the rule says: params and Adam moments alike.
  def check(x):
    spec = sharding.fsdp_spec(x.shape, 8) if fsdp else P()
    assert x.sharding.is_equivalent_to(NamedSharding(mesh8, spec), x.ndim), (
        x.shape, x.sharding)

  jax.tree.map(check, (state8.params, state8.opt_state))
  specs = [x.sharding.spec for x in jax.tree.leaves(state8.params)]
  assert any(s != P() for s in specs) == fsdp
  for x in (state8.step, state8.rng, *metrics8.values()):
    assert x.sharding.is_fully_replicated
