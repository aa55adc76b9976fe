"""Predictions and test metrics: restore a checkpoint, run every flow of a split exactly once.

The eval stream gives each process a contiguous block of the split, padded so all processes run
the same number of batches; `_mask` marks real rows and `index` their row in the split. Outputs
are gathered to every host and written back by `index`, so `probs[i]` belongs to row i whatever
the number of processes or devices.
"""
import dataclasses
import functools
import json
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from input_pipeline import streams
from input_pipeline import tfds_builder
from pass_jax import checkpoint
from pass_jax import jsonio
from pass_jax import metrics as metrics_lib
from pass_jax import sharding
from pass_jax import train_steps

Arrays = Mapping[str, np.ndarray]


@dataclasses.dataclass
class Data:
  """What the trainers read from a built dataset (W/data): split arrays and their vocabulary.

  Splits are loaded on first use and kept; `Data(...)` can also be made by hand from arrays.
  """
  num_classes: int
  vocab_size: int
  seq_len: int
  class_names: list[str]
  vocab_ref: dict[str, str] | None = None
  splits: dict[str, Arrays] = dataclasses.field(default_factory=dict)
  data_dir: str | None = None

  @classmethod
  def from_dir(cls, data_dir: str) -> "Data":
    meta = tfds_builder.load_metadata(data_dir)
    vocab = tfds_builder.load_vocab(data_dir)
    names = [str(n) for n in meta["class_names"]]
    ref = None
    for candidate in (os.path.join(data_dir, "vocab.txt"),
                      os.path.join(tfds_builder.find_version_dir(data_dir), "metadata.json")):
      if os.path.isfile(candidate):
        ref = checkpoint.file_reference(candidate)
        break
    return cls(num_classes=len(names), vocab_size=len(vocab), seq_len=vocab.seq_len,
               class_names=names, vocab_ref=ref, data_dir=os.path.abspath(data_dir))

  def split(self, name: str) -> Arrays:
    if name not in self.splits:
      if self.data_dir is None:
        raise KeyError(f"split {name!r} not given and no data_dir to load it from")
      self.splits[name] = tfds_builder.load_split_arrays(self.data_dir, name)
    return self.splits[name]


def as_data(data: "Data | str") -> Data:
  return data if isinstance(data, Data) else Data.from_dir(os.fspath(data))


def eval_batch_size(config, mesh) -> int:
  """The fine-tuning batch, rounded up to a multiple of the device count (no grads: any size)."""
  n = mesh.size
  return -(-config.finetune.batch_size // n) * n


@functools.lru_cache(maxsize=8)
def _cached_predict_step(config_json: str, mesh) -> Callable:
  import ml_collections  # pylint: disable=g-import-not-at-top
  return train_steps.make_predict_step(ml_collections.ConfigDict(json.loads(config_json)), mesh)


def predict_step_for(config, mesh) -> Callable:
  """One jitted predict step per (config, mesh), so repeated evaluations do not re-trace."""
  return _cached_predict_step(config.to_json_best_effort(sort_keys=True), mesh)


def predict_arrays(state, arrays: Arrays, config, mesh, *,
                   predict_step: Callable | None = None) -> dict[str, np.ndarray]:
  """{'probs' float32[N, C], 'embedding' float32[N, D]} for every row of `arrays`, on every host."""
  predict_step = predict_step or predict_step_for(config, mesh)
  n = len(arrays["tokens"])
  fields = ("tokens", "label") if "label" in arrays else ("tokens",)
  cols = {k: arrays[k] for k in fields}
  if "label" not in cols:
    cols["label"] = np.full(n, -1, np.int32)
  stream = streams.eval_stream(cols, global_batch=eval_batch_size(config, mesh),
                               fields=("tokens", "label"), prefetch=config.data.prefetch)
  probs, emb = None, None
  for batch in stream:
    global_batch = sharding.shard_batch(mesh, batch)
    out = predict_step(state, global_batch)
    # Gathered per batch; outputs, `_mask` and `index` are split over devices the same way, so
    # their gathered rows line up.
    got = multihost_utils.process_allgather(
        {"probs": out["probs"], "embedding": out["embedding"],
         "mask": global_batch["_mask"], "index": global_batch["index"]}, tiled=True)
    if probs is None:
      probs = np.zeros((n, got["probs"].shape[-1]), np.float32)
      emb = np.zeros((n, got["embedding"].shape[-1]), np.float32)
    keep = np.asarray(got["mask"], bool)
    idx = np.asarray(got["index"])[keep]
    probs[idx] = np.asarray(got["probs"], np.float32)[keep]
    emb[idx] = np.asarray(got["embedding"], np.float32)[keep]
  return {"probs": probs, "embedding": emb}


def evaluate_arrays(state, arrays: Arrays, config, mesh, *, num_classes: int,
                    class_names=None, predict_step: Callable | None = None
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(metrics of the labelled rows, predictions of all rows)."""
  preds = predict_arrays(state, arrays, config, mesh, predict_step=predict_step)
  labels = np.asarray(arrays["label"])
  known = labels >= 0
  y_pred = preds["probs"].argmax(-1) if len(labels) else np.zeros(0, np.int64)
  m = metrics_lib.classification_metrics(labels[known], y_pred[known], num_classes,
                                         class_names=class_names)
  return m, preds


def restore_classifier(config, ckpt_dir: str, *, mesh, num_classes: int, vocab_size: int,
                       seq_len: int, step: int | None = None) -> tuple[Any, dict[str, Any]]:
  """A classify state rebuilt from a checkpoint directory: (state, meta).

  The optimizer schedule is rebuilt with the run's total steps (from meta), so the state could
  even continue training.
  """
  with checkpoint.Checkpointer(ckpt_dir) as ckpt:
    meta = ckpt.restore_meta(step)
    like = train_steps.create_train_state(
        config, task="classify", num_classes=num_classes, vocab_size=vocab_size,
        seq_len=seq_len, mesh=mesh, rng=jax.random.key(config.seed),
        total_steps=int(meta["total_steps"]))
    return ckpt.restore(like, step=meta["step"])


def run_evaluate(config, workdir: str, data: "Data | str", split: str = "test", *,
                 ckpt_dir: str | None = None, mesh=None) -> dict[str, Any]:
  """Metrics of the final fine-tuned model (best on validation) on `split`.

  Reads `ckpt_dir` (default W/finetune/best), writes W/eval/<split>_metrics.json and
  W/eval/<split>_predictions.npz (probs, embedding, label, index order = split rows).
  """
  workdir = os.path.abspath(workdir)
  data = as_data(data)
  mesh = mesh or sharding.make_mesh()
  ckpt_dir = ckpt_dir or os.path.join(workdir, "finetune", "best")
  state, meta = restore_classifier(config, ckpt_dir, mesh=mesh, num_classes=data.num_classes,
                                   vocab_size=data.vocab_size, seq_len=data.seq_len)
  arrays = data.split(split)
  m, preds = evaluate_arrays(state, arrays, config, mesh, num_classes=data.num_classes,
                             class_names=data.class_names)
  m["checkpoint"] = {"dir": os.path.abspath(ckpt_dir), "step": meta["step"]}
  out_dir = os.path.join(workdir, "eval")
  jsonio.write_json(os.path.join(out_dir, f"{split}_metrics.json"), m, process0_only=True)
  if jax.process_index() == 0:
    np.savez(os.path.join(out_dir, f"{split}_predictions.npz"), probs=preds["probs"],
             embedding=preds["embedding"], label=np.asarray(arrays["label"]))
  return m
