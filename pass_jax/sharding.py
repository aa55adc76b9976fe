"""Mesh, shardings and host -> device batches.

One mesh axis, `data`, over every device of every process. Batches are split
along it (data parallelism). Parameters and optimizer state are replicated, or
with config.mesh.fsdp sharded over the same axis (ZeRO-3 / FSDP style): each
array is split along its largest dimension that the axis size divides, and XLA
inserts the all-gathers and reduce-scatters. The rule depends on shapes only,
so it gives the same answer for params, Adam moments and abstract values.
"""
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D `data` mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  # Auto axes: shardings propagate through jit as in classic GSPMD; the newer
  # default (Explicit) would make sharding part of every array's type.
  return jax.make_mesh((len(devices),), (DATA,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, other axes whole."""
  return NamedSharding(mesh, P(DATA))


def fsdp_spec(shape: Sequence[int], num_shards: int) -> P:
  """Split the largest dimension divisible by num_shards; replicate otherwise."""
  candidates = [(size, -axis) for axis, size in enumerate(shape)
                if size % num_shards == 0 and size >= num_shards]
  if num_shards == 1 or not candidates:
    return P()
  _, neg_axis = max(candidates)   # ties go to the earlier axis
  spec = [None] * len(shape)
  spec[-neg_axis] = DATA
  return P(*spec)


def param_shardings(mesh: Mesh, tree: Any, *, fsdp: bool) -> Any:
  """NamedShardings for a tree of arrays (or ShapeDtypeStructs) of model state."""
  num_shards = mesh.shape[DATA]

  def one(x):
    if not fsdp:
      return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(np.shape(x), num_shards))

  return jax.tree.map(one, tree)


def _keep(key: str, value: Any) -> bool:
  if key.startswith("_") and key != "_mask":
    return False
  return isinstance(value, np.ndarray) and (
      np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_)


def shard_batch(mesh: Mesh, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
  """This process's numpy batch -> global jax.Arrays split over `data`.

  Every process passes its own rows; the global batch is their concatenation.
  Strings (flow ids, captures) and `_`-prefixed keys other than `_mask` stay
  on the host: devices cannot hold them and the steps do not need them.
  """
  sharding = batch_sharding(mesh)
  local_devices = len(mesh.local_devices)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if not _keep(key, value):
      continue
    if value.ndim == 0 or value.shape[0] % local_devices:
      raise ValueError(
          f"batch[{key!r}] has shape {value.shape}: the local batch size must "
          f"be a multiple of the {local_devices} local devices")
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out
