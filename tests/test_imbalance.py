"""ROS, RUS, SMOTE and class weights change class counts exactly as documented."""
import numpy as np
import pytest

from pass_jax.baselines import imbalance

# Class 0: 50 rows, class 1: 10, class 2: 3, class 4: 1 (class 3 absent).
Y = np.array([0] * 50 + [1] * 10 + [2] * 3 + [4] * 1)


def _features(y, seed=0):
  rng = np.random.RandomState(seed)
  return (y[:, None] * 10.0 + rng.normal(size=(len(y), 4))).astype(np.float32)


def _counts(y):
  return dict(zip(*np.unique(y, return_counts=True)))


def test_random_over_sample_brings_every_class_to_the_largest():
  idx = imbalance.random_over_sample(Y, seed=0)
  assert _counts(Y[idx]) == {0: 50, 1: 50, 2: 50, 4: 50}
  assert idx.dtype == np.int64 and idx.min() >= 0 and idx.max() < len(Y)
  # Every original row is kept at least once.
  assert set(idx.tolist()) == set(range(len(Y)))
  np.testing.assert_array_equal(imbalance.random_over_sample(Y, seed=0), idx)


def test_random_under_sample_cuts_every_class_to_the_smallest():
  idx = imbalance.random_under_sample(Y, seed=0)
  assert _counts(Y[idx]) == {0: 1, 1: 1, 2: 1, 4: 1}
  assert len(set(idx.tolist())) == len(idx)        # without replacement
  y = np.array([0] * 9 + [1] * 4)
  idx = imbalance.random_under_sample(y, seed=1)
  assert _counts(y[idx]) == {0: 4, 1: 4}
  assert not np.array_equal(np.sort(idx), np.sort(imbalance.random_under_sample(y, seed=2)))


def test_smote_synthesises_up_to_the_largest_class():
  X = _features(Y)
  X_res, y_res = imbalance.smote(X, Y, seed=0)
  # Class 2 has 3 rows, so k drops to 2; the singleton class 4 cannot grow.
  assert _counts(y_res) == {0: 50, 1: 50, 2: 50, 4: 1}
  np.testing.assert_array_equal(X_res[:len(Y)], X)
  np.testing.assert_array_equal(y_res[:len(Y)], Y)
  # A synthetic row lies inside its class's bounding box.
  for c in (1, 2):
    synth = X_res[len(Y):][y_res[len(Y):] == c]
    own = X[Y == c]
    assert len(synth) == 50 - (Y == c).sum()
    assert (synth >= own.min(axis=0) - 1e-5).all() and (synth <= own.max(axis=0) + 1e-5).all()


def test_smote_on_balanced_data_is_a_copy():
  y = np.array([0, 0, 1, 1])
  X_res, y_res = imbalance.smote(_features(y), y)
  np.testing.assert_array_equal(y_res, y)
  assert X_res.shape == (4, 4)


def test_class_weights_are_inverse_frequency():
  w = imbalance.class_weights(Y, num_classes=6)
  n, present = len(Y), 4
  np.testing.assert_allclose(w, [n / (present * 50), n / (present * 10), n / (present * 3),
                                 0.0, n / present, 0.0], rtol=1e-6)
  # Weighted counts are equal across present classes.
  np.testing.assert_allclose(w[Y].sum(), n, rtol=1e-6)


def test_resample_dispatch():
  X = _features(Y)
  idx, X_res, y_res = imbalance.resample("ros", Y, seed=0, X=X)
  np.testing.assert_array_equal(X_res, X[idx])
  np.testing.assert_array_equal(y_res, Y[idx])
  idx, X_res, y_res = imbalance.resample("none", Y)
  np.testing.assert_array_equal(idx, np.arange(len(Y)))
  assert X_res is None
  idx, X_res, y_res = imbalance.resample("smote", Y, X=X)
  assert idx is None and len(X_res) == len(y_res) == 151
  with pytest.raises(ValueError, match="smote needs"):
    imbalance.resample("smote", Y)
  with pytest.raises(ValueError, match="unknown resampling"):
    imbalance.resample("tomek", Y)
