"""The paired bootstrap of macro-F1 that benchmarks/compare_runs.py reports."""
import importlib.util
import json
import os

import numpy as np
import pytest

from pass_jax import metrics


def _compare_runs():
  """benchmarks/compare_runs.py as a module (benchmarks/ is not a package)."""
  path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "compare_runs.py")
  spec = importlib.util.spec_from_file_location("compare_runs", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _noisy(y, error_rate, num_classes, rng):
  wrong = rng.random(y.size) < error_rate
  return np.where(wrong, (y + 1 + rng.integers(0, num_classes - 1, y.size)) % num_classes, y)


def test_identical_predictors_have_zero_paired_difference_and_perfect_scores_one():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 5, 200)
  pred = _noisy(y, 0.3, 5, rng)
  out = metrics.bootstrap_macro_f1(y, [pred, pred, y], 5, num_samples=200)
  assert out.shape == (200, 3)
  np.testing.assert_array_equal(out[:, 0], out[:, 1])   # same resample for every predictor
  np.testing.assert_array_equal(out[:, 2], 1.0)
  assert out[:, 0].std() > 0


def test_spread_shrinks_with_more_flows_and_centres_on_the_point_estimate():
  rng = np.random.default_rng(1)
  spreads = []
  for n in (60, 6000):
    y = rng.integers(0, 4, n)
    pred = _noisy(y, 0.2, 4, rng)
    out = metrics.bootstrap_macro_f1(y, [pred], 4, num_samples=300, seed=2)[:, 0]
    point = metrics.macro_f1(y, pred, 4)
    assert abs(out.mean() - point) < 2 * out.std() + 1e-3
    spreads.append(out.std())
  assert spreads[1] < spreads[0] / 5   # ~ 1/sqrt(100) in theory


def test_paired_difference_is_tighter_than_either_spread():
  rng = np.random.default_rng(3)
  y = rng.integers(0, 6, 300)
  a = _noisy(y, 0.25, 6, rng)
  b = a.copy()
  flip = rng.random(y.size) < 0.05       # b differs from a on ~5% of the flows
  b[flip] = y[flip]                      # and gets those right: b is the better model
  out = metrics.bootstrap_macro_f1(y, [a, b], 6, num_samples=400)
  diff = out[:, 1] - out[:, 0]
  # Getting one more flow right never lowers a class's precision or recall.
  assert (diff >= 0).all() and diff.mean() > 0
  assert diff.std() < 0.5 * min(out[:, 0].std(), out[:, 1].std())


def test_compare_runs_reads_both_prediction_formats_and_refuses_other_flows(tmp_path, capsys):
  compare_runs = _compare_runs()
  y = np.array([0, 0, 0, 1, 1, 2])
  deep = tmp_path / "deep"
  (deep / "eval").mkdir(parents=True)
  np.savez(deep / "eval" / "test_predictions.npz", label=y, probs=np.eye(3)[y])   # all right
  (deep / "report.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
  shallow = tmp_path / "shallow"
  shallow.mkdir()
  np.savez(shallow / "predictions.npz", label=y, pred=np.array([0, 0, 0, 1, 1, 1]))  # c missed
  compare_runs.main([str(deep), str(shallow), "--samples=50"])
  out = capsys.readouterr().out
  assert "6 test flows, 3 classes present, 3 of them with <= 3 flows" in out
  assert "| 1.000 | 1.000 |" in out and "| 0.833 | 0.600 |" in out
  assert "lost against the first run: c (n=1, 1.00 -> 0.00), b (n=2, 1.00 -> 0.80)" in out
  other = tmp_path / "other.npz"
  np.savez(other, label=y[::-1], pred=y[::-1])
  with pytest.raises(SystemExit, match="not scored on the same flows"):
    compare_runs.main([str(deep), str(other)])


def test_compare_runs_pools_seeds(tmp_path, capsys):
  compare_runs = _compare_runs()
  rng = np.random.default_rng(0)
  for seed in (0, 1):
    y = rng.integers(0, 3, 40)
    for arm, pred in (("good", y), ("bad", np.zeros_like(y))):
      (tmp_path / arm / f"seed{seed}").mkdir(parents=True)
      np.savez(tmp_path / arm / f"seed{seed}" / "predictions.npz", label=y, pred=pred)
  compare_runs.main([str(tmp_path / "good" / "seed{seed}"), str(tmp_path / "bad" / "seed{seed}"),
                     "--seeds=0,1", "--samples=100"])
  out = capsys.readouterr().out
  assert out.count("## seed") == 2 and "Mean over seeds 0,1" in out
  pooled = out.split("Mean over seeds")[1]
  good_row = next(line for line in pooled.splitlines() if "good" in line)
  bad_row = next(line for line in pooled.splitlines() if "bad" in line)
  assert "| 1.000 1.000 | 1.000 | - |" in good_row
  # Predicting class 0 everywhere: F1 of class 0 only, the others 0; always below the perfect run.
  gap = float(bad_row.split("|")[4].split()[0])
  interval = bad_row.split("[")[1].rstrip("] |").split(", ")
  assert gap < -0.5 and float(interval[1]) < 0
