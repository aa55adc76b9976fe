"""tf.data streams that yield numpy batch dicts (docs/design/contracts.md).

Every stream works on in-memory numpy arrays (the dataset dict of a split):
rows are selected by index, the indices are shuffled/batched in tf.data, and
one gather per batch pulls the rows, so cost per flow stays tiny. Each JAX
process yields its local share of the global batch, and the global batches do
not depend on the number of processes (training streams shuffle globally and
each process slices; eval streams give each process a block of the split).
`process_index` / `process_count` default to jax's values, looked up lazily
so this module never imports jax otherwise.

Also here: the host-side sampler of Alg. 1 triples for contrastive
pre-training and the class-inverse resampling used by pseudo-labelling.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import tensorflow as tf

from input_pipeline import vocab as vocab_lib

Batch = dict[str, np.ndarray]


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return int(process_index), int(process_count)


def _local_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} not divisible by {process_count} processes")
  return global_batch // process_count


def _gather_fn(columns: Mapping[str, np.ndarray]):
  """idx[B] -> {name: column[idx]}, with the columns held once as tensors."""
  tensors = {k: tf.constant(v) for k, v in columns.items()}
  return lambda idx: {k: tf.gather(t, idx) for k, t in tensors.items()}


def classify_columns(data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """tokens, label, weight (default 1.0), is_pseudo (default 0.0) of a split."""
  n = len(data["tokens"])
  return {
      "tokens": np.asarray(data["tokens"], np.int32),
      "label": np.asarray(data["label"], np.int32),
      "weight": np.asarray(data.get("weight", np.ones(n)), np.float32),
      "is_pseudo": np.asarray(data.get("is_pseudo", np.zeros(n)), np.float32),
  }


def _process_slice(pi: int, local: int):
  """global batch of indices -> this process's consecutive `local` of them.

  Every process draws the same global batches (same seed) and keeps its slice, so the batch the
  mesh sees (process slices concatenated in process order) is the same for any number of
  processes: a multi-host run trains on exactly what a single-process run with as many devices
  trains on. Each process still gathers only its own rows.
  """
  return lambda idx: idx[pi * local:(pi + 1) * local]


def train_stream(data: Mapping[str, np.ndarray], *, global_batch: int, seed: int = 0,
                 shuffle_buffer: int = 20_000, prefetch: int = 2,
                 sample_weights: np.ndarray | None = None, repeat: bool = True,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> Iterator[Batch]:
  """Shuffled, repeated classify batches {tokens, label, weight, is_pseudo}.

  Rows are shuffled and batched globally (the same on every process; batches drop the
  remainder) and process p takes rows [p * local, (p + 1) * local) of each global batch.
  `sample_weights` (float[N], the hook for imbalance baselines) switches from
  shuffled epochs to sampling rows with replacement in proportion to them,
  drawn on the host with a seeded numpy generator.
  """
  pi, pc = _process(process_index, process_count)
  local = _local_batch(global_batch, pc)
  n = len(data["tokens"])
  columns = classify_columns(data)
  if n < global_batch and sample_weights is None:
    raise ValueError(f"{n} rows are fewer than one global batch of {global_batch}")
  if sample_weights is None:
    idx = tf.data.Dataset.range(n)
    idx = idx.shuffle(min(shuffle_buffer, n) or 1, seed=seed, reshuffle_each_iteration=True)
    if repeat:
      idx = idx.repeat()
    idx = idx.batch(global_batch, drop_remainder=True).map(_process_slice(pi, local))
  else:
    weights = np.asarray(sample_weights, np.float64)
    if weights.sum() <= 0:
      raise ValueError("sample_weights sum to zero")
    cdf = np.cumsum(weights / weights.sum())
    batches_per_epoch = max(1, n // global_batch)

    def draws():   # an epoch of draws at a time: one searchsorted, not one per batch
      rng = np.random.default_rng([seed, 0])
      while True:
        u = rng.random(batches_per_epoch * global_batch) * cdf[-1]
        picks = np.minimum(np.searchsorted(cdf, u, side="right"), n - 1)
        yield from picks.reshape(batches_per_epoch, global_batch)[:, pi * local:(pi + 1) * local]
        if not repeat:
          return
    idx = tf.data.Dataset.from_generator(
        draws, output_signature=tf.TensorSpec([local], tf.int64))
  ds = idx.map(_gather_fn(columns), num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(prefetch).as_numpy_iterator()


def eval_stream(data: Mapping[str, np.ndarray], *, global_batch: int,
                fields: tuple[str, ...] = ("tokens", "label"), prefetch: int = 2,
                process_index: int | None = None, process_count: int | None = None
                ) -> Iterator[Batch]:
  """Every row exactly once, with `_mask` and `index` (row in the split).

  Process p owns the contiguous block p of the split; all processes yield the
  same number of batches, padding rows have `_mask` False and `index` -1.
  Padding token rows are `[CLS]` + `[PAD]`s so no attention row is empty.
  """
  pi, pc = _process(process_index, process_count)
  local = _local_batch(global_batch, pc)
  n = len(data["tokens"])
  per_process = -(-n // pc)
  num_batches = max(1, -(-per_process // local))
  rows = np.arange(pi * per_process, min(n, (pi + 1) * per_process))
  padded = num_batches * local
  index = np.full(padded, -1, np.int32)
  index[:len(rows)] = rows
  take = np.where(index >= 0, index, 0)
  columns = {}
  for name in fields:
    col = np.asarray(data[name])
    if n == 0:
      col = np.zeros((padded,) + col.shape[1:], col.dtype)
    else:
      col = col[take]
    if name == "tokens":
      col = col.copy()
      col[len(rows):] = vocab_lib.PAD_ID
      col[len(rows):, 0] = vocab_lib.CLS_ID
    elif np.issubdtype(col.dtype, np.number):
      col[len(rows):] = 0
    columns[name] = col
  columns["_mask"] = index >= 0
  columns["index"] = index
  ds = tf.data.Dataset.from_tensor_slices(columns).batch(local)
  return ds.prefetch(prefetch).as_numpy_iterator()


def num_eval_batches(num_rows: int, global_batch: int, process_count: int = 1) -> int:
  per_process = -(-num_rows // process_count)
  return max(1, -(-per_process // _local_batch(global_batch, process_count)))


# ---------------------------------------------------------------- Alg. 1 triples
def sample_triples(labels: np.ndarray, comm_keys: np.ndarray, num_triples: int,
                   seed: int = 0, max_tries: int = 500, weak_fraction: float = -1.0
                   ) -> dict[str, np.ndarray]:
  """Anchors and negatives for contrastive pre-training (paper Alg. 1).

  Only rows with label >= 0 take part. Anchors cover the labelled rows evenly
  (a seeded permutation, repeated when num_triples exceeds them).
  weak_fraction < 0 (the paper): y is drawn uniformly; another label makes it
    a strong negative, the same label and another comm key a weak one, the
    same label and comm key a retry.
  weak_fraction in [0, 1]: that share of anchors asks for a weak negative (y
    drawn from the anchor's class, retried while its comm key equals the
    anchor's), the rest get a strong one (y drawn from the other classes).
  After max_tries failed draws an anchor falls back to a strong negative;
  with a single class there is none, and the anchor is skipped.
  Returns {'anchor', 'negative': int64[T], 'strong': float32[T]}, T <= num_triples.
  """
  labels = np.asarray(labels)
  rows = np.flatnonzero(labels >= 0)
  empty = {"anchor": np.zeros(0, np.int64), "negative": np.zeros(0, np.int64),
           "strong": np.zeros(0, np.float32)}
  if len(rows) < 2 or num_triples <= 0:
    return empty
  rng = np.random.default_rng([seed, 3])
  # Rows sorted by class: class c occupies by_class[start[c]:start[c] + size[c]].
  by_class = rows[np.argsort(labels[rows], kind="stable")]
  classes, start, size = np.unique(labels[by_class], return_index=True, return_counts=True)
  cls_pos = np.searchsorted(classes, labels)               # valid for rows >= 0
  _, comm = np.unique(np.asarray(comm_keys, dtype=str), return_inverse=True)
  reps = -(-num_triples // len(rows))
  anchor = np.concatenate([rng.permutation(rows) for _ in range(reps)])[:num_triples]
  a_cls = cls_pos[anchor]

  def other_class(a_cls_sub):   # uniform over rows of every other class
    r = rng.integers(0, len(rows) - size[a_cls_sub])
    r = np.where(r >= start[a_cls_sub], r + size[a_cls_sub], r)
    return by_class[r]

  negative = np.full(len(anchor), -1, np.int64)
  if weak_fraction < 0:
    pending = np.arange(len(anchor))
    for _ in range(max_tries):
      cand = rows[rng.integers(0, len(rows), len(pending))]
      ok = (labels[cand] != labels[anchor[pending]]) | (comm[cand] != comm[anchor[pending]])
      negative[pending[ok]] = cand[ok]
      pending = pending[~ok]
      if not len(pending):
        break
  else:
    want_weak = rng.random(len(anchor)) < weak_fraction
    strong_rows = np.flatnonzero(~want_weak & (size[a_cls] < len(rows)))
    negative[strong_rows] = other_class(a_cls[strong_rows])
    pending = np.flatnonzero(want_weak)
    for _ in range(max_tries):
      c = a_cls[pending]
      cand = by_class[start[c] + rng.integers(0, size[c])]
      ok = comm[cand] != comm[anchor[pending]]
      negative[pending[ok]] = cand[ok]
      pending = pending[~ok]
      if not len(pending):
        break
  # Fallback: a strong negative when the class has any other class to offer.
  fallback = np.flatnonzero((negative < 0) & (size[a_cls] < len(rows)))
  negative[fallback] = other_class(a_cls[fallback])
  keep = negative >= 0
  anchor, negative = anchor[keep], negative[keep]
  strong = (labels[negative] != labels[anchor]).astype(np.float32)
  return {"anchor": anchor, "negative": negative, "strong": strong}


def triple_stream(data: Mapping[str, np.ndarray], triples: Mapping[str, np.ndarray], *,
                  global_batch: int, seed: int = 0, shuffle_buffer: int = 20_000,
                  prefetch: int = 2, repeat: bool = True,
                  process_index: int | None = None, process_count: int | None = None
                  ) -> Iterator[Batch]:
  """Batches {x, y, strong, label} of the triples, each process its slice of a global batch."""
  pi, pc = _process(process_index, process_count)
  local = _local_batch(global_batch, pc)
  n = len(triples["anchor"])
  if n < global_batch:
    raise ValueError(f"{n} triples are fewer than one global batch of {global_batch}")
  columns = {"anchor": triples["anchor"], "negative": triples["negative"],
             "strong": np.asarray(triples["strong"], np.float32)}
  tokens = tf.constant(np.asarray(data["tokens"], np.int32))
  labels = tf.constant(np.asarray(data["label"], np.int32))
  pick = _gather_fn(columns)

  def to_batch(idx):
    t = pick(idx)
    return {"x": tf.gather(tokens, t["anchor"]), "y": tf.gather(tokens, t["negative"]),
            "strong": t["strong"], "label": tf.gather(labels, t["anchor"])}
  idx = tf.data.Dataset.range(n).shuffle(min(shuffle_buffer, n), seed=seed,
                                         reshuffle_each_iteration=True)
  if repeat:
    idx = idx.repeat()
  idx = idx.batch(global_batch, drop_remainder=True).map(_process_slice(pi, local))
  ds = idx.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(prefetch).as_numpy_iterator()


# ------------------------------------------------------ class-inverse resampling
def class_inverse_probs(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """s_i = (1 / p_i) / sum_j (1 / p_j) over classes present in `labels`; 0 elsewhere."""
  counts = np.bincount(np.asarray(labels)[np.asarray(labels) >= 0],
                       minlength=num_classes).astype(np.float64)
  inv = np.zeros(num_classes)
  present = counts > 0
  inv[present] = counts.sum() / counts[present]       # 1 / p_i
  return inv / inv.sum() if inv.sum() else inv


def resample_class_inverse(labels_pseudo: np.ndarray, p_train: np.ndarray, n: int,
                           seed: int = 0, cap: int = 4) -> np.ndarray:
  """Indices into `labels_pseudo`, classes drawn by s from the train distribution.

  s_i = (1/p_i) / sum_j (1/p_j) with p = p_train (class frequencies of the
  labelled training set), restricted to classes that have pseudo-labels.
  Each flow is drawn at most `cap` times; a class whose flows are used up
  passes its remaining draws to the others by s. Returns fewer than n
  indices only when every flow is used `cap` times.
  """
  labels_pseudo = np.asarray(labels_pseudo)
  p_train = np.asarray(p_train, np.float64)
  rng = np.random.default_rng([seed, 4])
  num_classes = len(p_train)
  members = [np.flatnonzero(labels_pseudo == c) for c in range(num_classes)]
  capacity = np.array([cap * len(m) for m in members])
  s = np.where((p_train > 0) & (capacity > 0), 1.0 / np.maximum(p_train, 1e-12), 0.0)
  draws = np.zeros(num_classes, np.int64)
  remaining = min(int(n), int(capacity.sum()))
  while remaining > 0 and s.sum() > 0:
    extra = rng.multinomial(remaining, s / s.sum())
    draws += np.minimum(extra, capacity - draws)
    remaining = min(int(n), int(capacity.sum())) - int(draws.sum())
    s = np.where(draws < capacity, s, 0.0)
  picked = []
  for c in range(num_classes):
    if draws[c]:
      # Each flow appears `cap` times in the urn; drawing without replacement
      # from it bounds every flow's count by `cap`.
      urn = rng.choice(len(members[c]) * cap, size=draws[c], replace=False)
      picked.append(members[c][urn % len(members[c])])
  out = np.concatenate(picked) if picked else np.zeros(0, np.int64)
  return rng.permutation(out).astype(np.int64)
