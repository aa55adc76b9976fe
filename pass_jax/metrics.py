"""Classification metrics on host numpy arrays: accuracy, macro and per-class P/R/F1, confusion.

Definitions follow scikit-learn's defaults (`average='macro'`, `zero_division=0`) so numbers can be
checked against it, computed from one confusion matrix instead of four library calls:

- per class c: precision = TP / predicted_c, recall = TP / support_c, F1 = 2PR / (P + R); a ratio
  with a zero denominator is 0 (no nan, no warning).
- macro averages run over the classes that occur in `y_true` or in `y_pred`. A class absent from
  both (e.g. missing from a capture-grouped test split and never predicted) says nothing about the
  model and is left out; a class that is only predicted counts with P = R = F1 = 0, which is the
  price of its false positives.
"""
from typing import Any, Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
  """int64[C, C]: rows are true classes, columns predicted classes."""
  y_true = np.asarray(y_true, np.int64).reshape(-1)
  y_pred = np.asarray(y_pred, np.int64).reshape(-1)
  if y_true.shape != y_pred.shape:
    raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
  for name, y in (("y_true", y_true), ("y_pred", y_pred)):
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"{name} holds ids outside [0, {num_classes}): "
                       f"min {y.min()}, max {y.max()}")
  flat = y_true * num_classes + y_pred
  return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  out = np.zeros_like(num)
  np.divide(num, den, out=out, where=den > 0)
  return out


def from_confusion(cm: np.ndarray) -> dict[str, Any]:
  """Accuracy, macro and per-class P/R/F1/support from a confusion matrix."""
  cm = np.asarray(cm, np.int64)
  tp = np.diag(cm).astype(np.float64)
  support = cm.sum(axis=1)
  predicted = cm.sum(axis=0)
  precision = _safe_div(tp, predicted)
  recall = _safe_div(tp, support)
  f1 = _safe_div(2 * precision * recall, precision + recall)
  present = (support > 0) | (predicted > 0)
  n_present = int(present.sum())

  def macro(v):
    return float(v[present].mean()) if n_present else 0.0

  total = int(cm.sum())
  return {
      "num_examples": total,
      "accuracy": float(tp.sum() / total) if total else 0.0,
      "macro_precision": macro(precision),
      "macro_recall": macro(recall),
      "macro_f1": macro(f1),
      "per_class": {
          "precision": precision.tolist(),
          "recall": recall.tolist(),
          "f1": f1.tolist(),
          "support": support.tolist(),
          "predicted": predicted.tolist(),
      },
      "classes_in_macro": np.flatnonzero(present).tolist(),
      "confusion_matrix": cm.tolist(),
  }


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int,
                           class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """All metrics of a split as a JSON-ready dict (lists, floats, ints)."""
  out = from_confusion(confusion_matrix(y_true, y_pred, num_classes))
  if class_names is not None:
    if len(class_names) != num_classes:
      raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    out["class_names"] = list(class_names)
  return out


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
  """The model-selection metric of fine-tuning and PLI."""
  return from_confusion(confusion_matrix(y_true, y_pred, num_classes))["macro_f1"]


def bootstrap_macro_f1(y_true: np.ndarray, preds: Sequence[np.ndarray], num_classes: int,
                       num_samples: int = 1000, seed: int = 0) -> np.ndarray:
  """float64[S, K]: macro-F1 of each of K prediction vectors on S resamples of the same flows.

  Every row resamples the flows once (with replacement) and scores all K predictors on that one
  resample, so row-wise differences are paired: the spread of `out[:, 0] - out[:, 1]` is the
  uncertainty of the difference between two models on this test set, which is much smaller than
  either model's own spread when they err on the same flows.
  """
  y_true = np.asarray(y_true, np.int64).reshape(-1)
  preds = [np.asarray(p, np.int64).reshape(-1) for p in preds]
  rng = np.random.default_rng(seed)
  out = np.zeros((num_samples, len(preds)))
  for s in range(num_samples):
    idx = rng.integers(0, y_true.size, y_true.size)
    for k, pred in enumerate(preds):
      out[s, k] = macro_f1(y_true[idx], pred[idx], num_classes)
  return out
