"""Checkpoints of a training stage; the only module that imports Orbax.

One `Checkpointer` wraps one Orbax `CheckpointManager` directory:

  <dir>/<step>/state/   the train state pytree (params, optimizer state, step, rng), sharded arrays
  <dir>/<step>/meta/    JSON: step, data position, seed, config, vocabulary reference, extras

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous step as the latest one; `latest_step()` never sees a torn
checkpoint. Saves are asynchronous (device->host copy happens before `save` returns, so donating
the state to the next step is safe); `wait()` / `close()` block until files are on disk.
"""
import hashlib
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

# Config fields that may differ between a run and its resumption without changing what is computed.
_RESUME_IGNORED = ("stage", "quiet", "log_every", "eval_every", "checkpoint_every",
                   "keep_checkpoints", "data.workers", "data.prefetch", "report")

# Config fields added after runs were already written, with the value that computes what those
# runs computed: a saved config without the field reads as having it, so old workdirs and
# checkpoints stay usable.
_ADDED_FIELDS = {"data.vocab_min_count": 0}


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: PyTree) -> PyTree:
  """Typed PRNG keys -> their uint32 data: Orbax stores plain arrays only."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract(tree: PyTree) -> PyTree:
  """Shape/dtype/sharding of every leaf: what Orbax restores into (keeps the target's sharding)."""
  def one(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    return np.asarray(x)
  return jax.tree.map(one, _keys_to_data(tree))


def _restore_keys(like: PyTree, restored: PyTree) -> PyTree:
  def one(t, r):
    return jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r
  return jax.tree.map(one, like, restored)


def file_reference(path: str | os.PathLike) -> dict[str, str]:
  """{'path', 'sha256'} of a file (the vocabulary): a checkpoint names the ids it was trained on."""
  path = os.path.abspath(os.fspath(path))
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return {"path": path, "sha256": h.hexdigest()}


def config_to_dict(config) -> dict[str, Any]:
  """A JSON round trip of an ml_collections config (tuples become lists)."""
  return json.loads(config.to_json_best_effort() if hasattr(config, "to_json_best_effort")
                    else json.dumps(config))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def config_differences(saved: dict, current: dict) -> list[str]:
  """Fields whose values differ in a way that changes training (cadence/logging fields ignored)."""
  a, b = _flatten(saved), _flatten(current)
  for added, value in _ADDED_FIELDS.items():
    for side in (a, b):
      side.setdefault(added, value)
  diffs = []
  for key in sorted(set(a) | set(b)):
    if any(key == p or key.startswith(p + ".") for p in _RESUME_IGNORED):
      continue
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      was, now = a.get(key, "<absent>"), b.get(key, "<absent>")
      diffs.append(f"{key}: checkpoint {was!r} vs now {now!r}")
  return diffs


def check_resumable(meta: Mapping[str, Any], config, *, steps_per_epoch: int,
                    total_steps: int, directory: str) -> None:
  """A checkpoint may only be continued by the run that wrote it: same config, same data size."""
  diffs = config_differences(meta["config"], config_to_dict(config))
  if meta["data"]["steps_per_epoch"] != steps_per_epoch or meta["total_steps"] != total_steps:
    diffs.append(f"steps per epoch / total steps: checkpoint {meta['data']['steps_per_epoch']}"
                 f"/{meta['total_steps']} vs now {steps_per_epoch}/{total_steps} (data changed?)")
  if diffs:
    raise ValueError(f"cannot resume from {directory}: the run differs from the one that wrote "
                     "it; use a new workdir or restore the config.\n  " + "\n  ".join(diffs))


class Checkpointer:
  """Save / restore (state, meta) at integer steps in one directory, keeping the newest few."""

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = None,
               async_save: bool = True):
    # Orbax wants absolute paths (relative ones resolve against its own cwd assumptions).
    self.directory = os.path.abspath(os.fspath(directory))
    # Orbax names its cross-process barriers by step; two managers saving the same step at once
    # (latest and best, fine-tuning) would meet at each other's barriers and hang a multi-process
    # run. A prefix from the directory (the same path on every process) keeps them apart.
    prefix = "ckpt_" + hashlib.sha256(self.directory.encode()).hexdigest()[:12]
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix))
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
    """Saves (overwriting nothing: a step already on disk is skipped, it holds the same state)."""
    step = int(step)
    if step in self._mngr.all_steps():
      return
    # A deep copy through JSON: the async writer must not see later changes to the caller's
    # dicts (the trainers keep appending to their history), and non-JSON values fail here.
    meta = json.loads(json.dumps(dict(meta, step=step)))
    self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_keys_to_data(state)),
                                                  meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, like: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
    """Restores into the structure, dtypes and shardings of `like` (a state or its eval_shape)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(like)), meta=ocp.args.JsonRestore()))
    return _restore_keys(like, out["state"]), dict(out["meta"])

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ------------------------------------------------------------------ data position
def epoch_seed(seed: int, epoch: int) -> int:
  """The shuffle seed of one epoch: a pure function of (seed, epoch), so any epoch is rebuilt."""
  return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0] & 0x7FFFFFFF)


def data_position(step: int, steps_per_epoch: int, seed: int) -> dict[str, int]:
  """Where the input stands after `step` completed steps (recorded in every checkpoint)."""
  epoch, batch_in_epoch = divmod(int(step), int(steps_per_epoch))
  return {"seed": int(seed), "epoch": epoch, "batch_in_epoch": batch_in_epoch,
          "steps_per_epoch": int(steps_per_epoch)}


def resumable_batches(make_epoch, *, steps_per_epoch: int, start_step: int, seed: int):
  """Yields the batches of steps start_step+1, start_step+2, ... forever.

  `make_epoch(epoch_seed)` returns a fresh finite iterator over one shuffled epoch. Epoch e always
  uses `epoch_seed(seed, e)` and exactly `steps_per_epoch` batches of it (every process takes the
  same count, whatever its share of rows), so batch k of the run is fixed by (seed, k) and a
  resumed run skips at most one epoch's worth of batches to reach `start_step`.
  """
  pos = data_position(start_step, steps_per_epoch, seed)
  epoch, skip = pos["epoch"], pos["batch_in_epoch"]
  while True:
    it = make_epoch(epoch_seed(seed, epoch))
    for i in range(steps_per_epoch):
      batch = next(it)
      if i >= skip:
        yield batch
    epoch, skip = epoch + 1, 0
