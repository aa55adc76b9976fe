"""Class-imbalance baselines: random over-/under-sampling, SMOTE, class weights.

The paper compares PASS's pseudo-labelling against the usual remedies for
rare classes. How each changes the class counts of a training set (classes
absent from it stay absent):

- `random_over_sample(y)`: indices into the training set; every class is
  drawn with replacement up to the largest class's count (the originals are
  all kept). Result: every class has max(count).
- `random_under_sample(y)`: indices; every class is cut without replacement
  to the smallest class's count. Result: every class has min(count).
- `smote(X, y)`: feature rows; the N originals first, unchanged and in order,
  then synthetic rows, each on the segment between a row and one of its
  k nearest neighbours of the same class, until every class with >= 2 rows
  has max(count). A class with a single row has no neighbour and keeps its
  count of 1. SMOTE needs features (flat features or encoder embeddings),
  so unlike ROS/RUS it cannot feed the token pipeline.
- `class_weights(y)`: no resampling; weight n / (C * count_c) per class
  ('balanced' in scikit-learn), for a weighted loss.

ROS and RUS return indices so the token pipeline can build its training set
from them; shuffle afterwards, the indices come grouped by class.
"""
from __future__ import annotations

import numpy as np
from imblearn import over_sampling, under_sampling


def _check_labels(y) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1 or len(y) == 0:
    raise ValueError(f"need a non-empty 1-D label array, got shape {y.shape}")
  return y


def random_over_sample(y, seed: int = 0) -> np.ndarray:
  """int64[N'] indices into y: every class up to the largest class's count."""
  y = _check_labels(y)
  sampler = over_sampling.RandomOverSampler(sampling_strategy="all", random_state=seed)
  sampler.fit_resample(np.zeros((len(y), 1)), y)
  return np.asarray(sampler.sample_indices_, np.int64)


def random_under_sample(y, seed: int = 0) -> np.ndarray:
  """int64[N'] indices into y: every class down to the smallest class's count."""
  y = _check_labels(y)
  sampler = under_sampling.RandomUnderSampler(sampling_strategy="all", random_state=seed)
  sampler.fit_resample(np.zeros((len(y), 1)), y)
  return np.asarray(sampler.sample_indices_, np.int64)


def smote(X, y, seed: int = 0, k_neighbors: int = 5):
  """SMOTE on feature rows.

  Returns:
    (X_res float32[N', F], y_res[N']) with X_res[:N] == X and y_res[:N] == y.
  """
  y = _check_labels(y)
  X = np.asarray(X, np.float32)
  classes, counts = np.unique(y, return_counts=True)
  target = counts.max()
  grow = {c: target for c, k in zip(classes, counts) if 2 <= k < target}
  if not grow:
    return X.copy(), y.copy()
  # k is bounded by the smallest class to grow: it needs k neighbours of its own.
  k = min(k_neighbors, min(counts[classes == c][0] for c in grow) - 1)
  sampler = over_sampling.SMOTE(sampling_strategy=grow, k_neighbors=k, random_state=seed)
  X_res, y_res = sampler.fit_resample(X, y)
  return np.asarray(X_res, np.float32), np.asarray(y_res)


def class_weights(y, num_classes: int | None = None) -> np.ndarray:
  """float32[num_classes]: n / (C * count) per present class, 0 for absent ones."""
  y = _check_labels(y).astype(np.int64)
  num_classes = int(y.max()) + 1 if num_classes is None else num_classes
  counts = np.bincount(y, minlength=num_classes).astype(np.float64)
  present = counts > 0
  weights = np.zeros(num_classes, np.float64)
  weights[present] = len(y) / (present.sum() * counts[present])
  return weights.astype(np.float32)


def resample(method: str, y, seed: int = 0, X=None):
  """One entry point for configs: method in {'none', 'ros', 'rus', 'smote'}.

  Returns:
    (indices or None, X_res or None, y_res): indices into the training set for
    'none' / 'ros' / 'rus'; synthetic feature rows for 'smote' (needs X).
  """
  y = _check_labels(y)
  if method == "none":
    idx = np.arange(len(y))
  elif method == "ros":
    idx = random_over_sample(y, seed)
  elif method == "rus":
    idx = random_under_sample(y, seed)
  elif method == "smote":
    if X is None:
      raise ValueError("smote needs feature rows X")
    X_res, y_res = smote(X, y, seed)
    return None, X_res, y_res
  else:
    raise ValueError(f"unknown resampling {method!r}; choose none | ros | rus | smote")
  return idx, (None if X is None else np.asarray(X)[idx]), y[idx]
