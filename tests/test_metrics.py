"""metrics.py against scikit-learn and hand-computed values, absent classes included."""
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from pass_jax import metrics


def test_hand_computed_three_classes():
  y_true = np.array([0, 0, 0, 1, 1, 2])
  y_pred = np.array([0, 0, 1, 1, 2, 2])
  m = metrics.classification_metrics(y_true, y_pred, 3)
  assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
  assert m["accuracy"] == pytest.approx(4 / 6)
  np.testing.assert_allclose(m["per_class"]["precision"], [1.0, 0.5, 0.5])
  np.testing.assert_allclose(m["per_class"]["recall"], [2 / 3, 0.5, 1.0])
  f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5]
  np.testing.assert_allclose(m["per_class"]["f1"], f1)
  assert m["per_class"]["support"] == [3, 2, 1]
  assert m["macro_f1"] == pytest.approx(np.mean(f1))


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_random(seed):
  rng = np.random.default_rng(seed)
  c = 7
  y_true = rng.integers(0, c, 300)
  # A skewed predictor so some classes are never predicted.
  y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 3, 300))
  m = metrics.classification_metrics(y_true, y_pred, c)
  p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average="macro",
                                                  zero_division=0)
  assert m["macro_precision"] == pytest.approx(p)
  assert m["macro_recall"] == pytest.approx(r)
  assert m["macro_f1"] == pytest.approx(f)
  assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
  pc = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(c), zero_division=0)
  for got, want in zip(("precision", "recall", "f1", "support"), pc):
    np.testing.assert_allclose(m["per_class"][got], want)
  np.testing.assert_array_equal(m["confusion_matrix"],
                                skm.confusion_matrix(y_true, y_pred, labels=range(c)))


def test_absent_classes_no_nan_no_warning():
  # Class 3 never occurs; class 2 is only predicted; class 4 is only true and never predicted.
  y_true = np.array([0, 0, 1, 1, 4])
  y_pred = np.array([0, 2, 1, 1, 0])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    m = metrics.classification_metrics(y_true, y_pred, 5)
  for key in ("precision", "recall", "f1"):
    assert not np.isnan(m["per_class"][key]).any()
    assert m["per_class"][key][3] == 0.0
  assert m["per_class"]["support"][3] == 0
  assert m["classes_in_macro"] == [0, 1, 2, 4]
  f = skm.f1_score(y_true, y_pred, average="macro", zero_division=0)
  assert m["macro_f1"] == pytest.approx(f)


def test_empty_and_bad_input():
  m = metrics.classification_metrics(np.zeros(0, int), np.zeros(0, int), 3)
  assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0 and m["num_examples"] == 0
  with pytest.raises(ValueError, match="outside"):
    metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
  with pytest.raises(ValueError, match="differ"):
    metrics.confusion_matrix(np.array([0, 1]), np.array([0]), 3)
  with pytest.raises(ValueError, match="class names"):
    metrics.classification_metrics(np.array([0]), np.array([0]), 2, class_names=["a"])


def test_perfect_predictions():
  y = np.array([0, 1, 2, 2, 1])
  assert metrics.macro_f1(y, y, 4) == 1.0
