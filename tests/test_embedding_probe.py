"""Fig. 4 as numbers: the embedding scores on made-up geometry, and the probe of a real run."""
import numpy as np
import pytest

from pass_jax import embedding_probe


def _blobs(seed: int, n_per_class: int = 30, classes: int = 3, spread: float = 0.05):
  """Points on `classes` orthogonal directions with a little noise: perfectly separable."""
  rng = np.random.default_rng(seed)
  X = np.concatenate([np.eye(8)[c] + spread * rng.normal(size=(n_per_class, 8))
                      for c in range(classes)])
  return X, np.repeat(np.arange(classes), n_per_class)


def test_separated_classes_score_near_one():
  (X_tr, y_tr), (X_te, y_te) = _blobs(0), _blobs(1)
  got = embedding_probe.scores(X_tr, y_tr, X_te, y_te, num_classes=3)
  assert got["knn_f1"] == pytest.approx(1.0)
  assert got["linear_f1"] == pytest.approx(1.0)
  assert got["silhouette"] > 0.8


def test_labels_unrelated_to_geometry_score_near_chance():
  (X_tr, y_tr), (X_te, y_te) = _blobs(0), _blobs(1)
  rng = np.random.default_rng(2)
  y_tr, y_te = rng.permutation(y_tr), rng.permutation(y_te)
  got = embedding_probe.scores(X_tr, y_tr, X_te, y_te, num_classes=3)
  assert got["knn_f1"] < 0.6 and got["linear_f1"] < 0.6
  assert abs(got["silhouette"]) < 0.15


def test_silhouette_undefined_for_one_test_class_and_empty_split_refused():
  (X_tr, y_tr), (X_te, _) = _blobs(0), _blobs(1)
  got = embedding_probe.scores(X_tr, y_tr, X_te, np.zeros(len(X_te), int), num_classes=3)
  assert np.isnan(got["silhouette"])
  with pytest.raises(ValueError, match="need labelled train and test rows"):
    embedding_probe.scores(X_tr, y_tr, X_te[:0], y_tr[:0], num_classes=3)
