"""Shallow classifiers the paper's deep models are measured against.

  pred, probs = fit_predict('lgbm', X_train, y_train, X_test, seed=0)

Methods (`METHODS`), each with the feature kind it is meant for
(`DEFAULT_FEATURES`, see baselines/features.py):
- 'rf_stats': random forest on packet-length statistics (AppScanner).
- 'lgbm': LightGBM on the flat lengths + payload bytes.
- 'lgbm_balanced': the same with class weights inverse to class frequency.

`probs` has one column per class id 0..num_classes-1 (num_classes defaults
to max(y_train)+1), zeros for classes the training set lacks, so it lines up
with the deep models' probabilities.
"""
from __future__ import annotations

from typing import Any, Callable

import lightgbm
import numpy as np
from sklearn import ensemble

N_JOBS = 2   # the machines these run on are shared; more threads buy little here


def _random_forest(seed: int, **kw: Any):
  params = dict(n_estimators=300, min_samples_leaf=1, n_jobs=N_JOBS, random_state=seed)
  params.update(kw)
  return ensemble.RandomForestClassifier(**params)


def _lightgbm(seed: int, balanced: bool = False, **kw: Any):
  params = dict(
      n_estimators=300, learning_rate=0.05, num_leaves=31,
      # LightGBM's default 1e-3 let multi-class training on the real traffic
      # sets diverge (datasets README); 1.0 keeps leaves from fitting noise.
      min_child_weight=1.0,
      subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
      class_weight="balanced" if balanced else None,
      n_jobs=N_JOBS, random_state=seed, verbose=-1)
  params.update(kw)
  return lightgbm.LGBMClassifier(**params)


METHODS: dict[str, Callable[..., Any]] = {
    "rf_stats": _random_forest,
    "lgbm": _lightgbm,
    "lgbm_balanced": lambda seed, **kw: _lightgbm(seed, balanced=True, **kw),
}
DEFAULT_FEATURES = {"rf_stats": "stats", "lgbm": "flat", "lgbm_balanced": "flat"}


def make_classifier(method: str, seed: int = 0, **kw: Any):
  """An unfitted scikit-learn style estimator; kw overrides its parameters."""
  if method not in METHODS:
    raise ValueError(f"unknown shallow method {method!r}; choose one of {sorted(METHODS)}")
  return METHODS[method](seed, **kw)


def fit_predict(method: str, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
                seed: int = 0, *, num_classes: int | None = None, **kw: Any):
  """Trains `method` on (X_train, y_train) and predicts X_test.

  Returns:
    (pred int32[N_test], probs float32[N_test, num_classes]).
  """
  y_train = np.asarray(y_train).astype(np.int64)
  if num_classes is None:
    num_classes = int(y_train.max()) + 1
  model = make_classifier(method, seed, **kw)
  model.fit(np.asarray(X_train, np.float32), y_train)
  seen_probs = model.predict_proba(np.asarray(X_test, np.float32))
  probs = np.zeros((len(X_test), num_classes), np.float32)
  probs[:, model.classes_] = seen_probs
  return probs.argmax(axis=1).astype(np.int32), probs
