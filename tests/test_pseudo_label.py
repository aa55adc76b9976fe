"""Host-side rules of pseudo-label iteration, checked against hand computations."""
import numpy as np
import pytest

from input_pipeline import streams
from pass_jax.trainers import pseudo_label


def test_select_confident_keeps_rows_at_or_above_threshold():
  probs = np.array([[0.96, 0.04], [0.50, 0.50], [0.05, 0.95], [0.94, 0.06]], np.float32)
  idx, labels, conf = pseudo_label.select_confident(probs, 0.95)
  np.testing.assert_array_equal(idx, [0, 2])           # 0.95 itself is accepted (>= thr)
  np.testing.assert_array_equal(labels, [0, 1])
  np.testing.assert_allclose(conf, [0.96, 0.95])


def test_select_confident_on_empty_pool():
  idx, labels, conf = pseudo_label.select_confident(np.zeros((0, 3)), 0.9)
  assert idx.shape == labels.shape == conf.shape == (0,)


def test_class_inverse_probabilities_by_hand():
  # p = (0.5, 0.3, 0.2): 1/p = (2, 3.333, 5), sum 10.333 -> s = (0.1935, 0.3226, 0.4839).
  labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
  s = streams.class_inverse_probs(labels, 4)
  np.testing.assert_allclose(s, [2 / (31 / 3), (10 / 3) / (31 / 3), 5 / (31 / 3), 0.0],
                             rtol=1e-6)


def test_resampled_pseudo_labels_follow_class_inverse_shares():
  # The labelled training data is 80% class 0, 20% class 1: s = (0.2, 0.8). The pseudo-labels
  # are half and half; after resampling, class 1 should take about 80% of the rows.
  pool = {"tokens": np.arange(1000 * 4, dtype=np.int32).reshape(1000, 4)}
  idx = np.arange(1000)
  labels = np.array([0] * 500 + [1] * 500)
  rows = pseudo_label.pseudo_label_rows(pool, idx, labels, resample=True,
                                        p_train=np.array([0.8, 0.2]), cap=4, seed=0)
  assert len(rows["label"]) == 1000                     # one draw per accepted flow
  share_1 = np.mean(rows["label"] == 1)
  assert 0.76 < share_1 < 0.84
  # Every row's tokens are the tokens of a pool flow with that pseudo-label.
  src = rows["tokens"][:, 0] // 4
  np.testing.assert_array_equal(labels[src], rows["label"])
  assert np.all(rows["is_pseudo"] == 1.0) and np.all(rows["weight"] == 1.0)


def test_resampling_cap_bounds_repeats():
  pool = {"tokens": np.arange(110, dtype=np.int32).reshape(110, 1)}
  labels = np.array([0] * 100 + [1] * 10)
  rows = pseudo_label.pseudo_label_rows(pool, np.arange(110), labels, resample=True,
                                        p_train=np.array([0.9, 0.1]), cap=3, seed=1)
  counts = np.bincount(rows["tokens"][:, 0], minlength=110)
  assert counts.max() <= 3
  assert counts[100:].sum() == 30                       # the minority class is drawn to its cap


def test_without_resampling_rows_are_the_accepted_flows():
  pool = {"tokens": np.arange(6, dtype=np.int32).reshape(6, 1)}
  rows = pseudo_label.pseudo_label_rows(pool, np.array([1, 4]), np.array([2, 0]), resample=False,
                                        p_train=np.array([0.5, 0.5, 0.0]), cap=4, seed=0)
  np.testing.assert_array_equal(rows["tokens"][:, 0], [1, 4])
  np.testing.assert_array_equal(rows["label"], [2, 0])


@pytest.mark.parametrize("best,new,eps,stop", [(0.80, 0.80, 0.001, True),
                                               (0.80, 0.8005, 0.001, True),
                                               (0.80, 0.802, 0.001, False),
                                               (0.80, 0.70, 0.0, True)])
def test_stop_rule(best, new, eps, stop):
  assert pseudo_label.gain_too_small(best, new, eps) is stop


def test_best_round_never_loses_to_m0():
  assert pseudo_label.best_round([{"val_macro_f1": 0.7}, {"val_macro_f1": 0.6}]) == 0
  assert pseudo_label.best_round([{"val_macro_f1": 0.7}, {"val_macro_f1": 0.7}]) == 0  # tie: M0
  assert pseudo_label.best_round([{"val_macro_f1": 0.7}, {"val_macro_f1": 0.75},
                                  {"val_macro_f1": 0.74}]) == 1


def test_round_record_measures_pseudo_label_accuracy_on_hidden_labels():
  pool = {"tokens": np.zeros((5, 2), np.int32), "hidden_label": np.array([0, 1, 1, -1, 2])}
  idx = np.array([0, 1, 3, 4])
  labels = np.array([0, 0, 1, 2])
  rec = pseudo_label.round_record(
      1, pool=pool, idx=idx, labels=labels, rows={"label": labels},
      class_names=["a", "b", "c"], history={"best": {"val_macro_f1": 0.5, "step": 3},
                                            "pli_round1": [{"w_labeled": 1.0, "w_pseudo": 0.4}]},
      stage="pli_round1", seconds=1.0, threshold=0.9)
  # Rows 0, 1, 4 have hidden labels (0, 1, 2) vs pseudo (0, 0, 2): 2 of 3 right.
  assert rec["pseudo_label_accuracy"] == pytest.approx(2 / 3)
  assert rec["pseudo_label_accuracy_n"] == 3
  assert rec["accepted"] == 4 and rec["accepted_fraction"] == pytest.approx(0.8)
  assert rec["accepted_per_class"] == {"a": 2, "b": 1, "c": 1}
  assert rec["w_pseudo"] == pytest.approx(0.4)
  # Per pseudo-label class: a holds rows 0 (right) and 1 (wrong), b only row 3 (no hidden label),
  # c row 4 (right).
  assert rec["pseudo_label_accuracy_per_class"] == {"a": pytest.approx(0.5), "b": None, "c": 1.0}


@pytest.mark.parametrize("total,eval_every,spe,looks", [(200, 0, 1, 200), (200, 0, 56, 4),
                                                        (150, 4, 2, 38), (10, 0, 20, 1)])
def test_m0_validation_looks(total, eval_every, spe, looks):
  meta = {"total_steps": total, "config": {"eval_every": eval_every},
          "data": {"steps_per_epoch": spe}}
  assert pseudo_label.m0_validation_looks(meta) == looks


def test_labelled_rows_are_repeated_to_their_share():
  train = {"tokens": np.arange(20, dtype=np.int32).reshape(10, 2),
           "label": np.array([0, 1, -1, 0, 1, -1, 0, 1, 0, 1])}   # 8 labelled, 2 not
  out = pseudo_label.balance_labelled(train, num_pseudo=80, labeled_share=0.5)
  assert len(out["label"]) == 80 and np.all(out["label"] >= 0)   # 10 copies of the 8 labelled
  np.testing.assert_array_equal(out["tokens"][:8], train["tokens"][train["label"] >= 0])
  assert len(pseudo_label.balance_labelled(train, 80, 0.0)["label"]) == 8
  assert len(pseudo_label.balance_labelled(train, 2, 0.5)["label"]) == 8  # never fewer than once


def test_min_steps_floors_epoch_durations_only():
  import ml_collections
  from pass_jax.trainers import finetune
  stage = ml_collections.ConfigDict({"epochs": 15.0, "steps": 0, "min_steps": 200})
  # 70 labelled flows, batch 32: 2 steps an epoch, 30 in 15 epochs -> floored to 200.
  assert finetune.steps_for(stage, 70, 32, 1) == (2, 200)
  stage.steps = 50                                          # explicit steps are taken as given
  assert finetune.steps_for(stage, 70, 32, 1) == (2, 50)
  stage.steps, stage.min_steps = 0, 10
  assert finetune.steps_for(stage, 700, 32, 1) == (21, 315)  # already above the floor


def _toy_data(labels_N: np.ndarray, num_classes: int):
  """Token rows whose RP tokens say the class (4 + label): learnable in a few steps."""
  from pass_jax.trainers import evaluate
  n = len(labels_N)
  tokens = np.full((n, 12), 2, np.int32)
  tokens[:, 1:11] = 4 + labels_N[:, None]
  arrays = {"tokens": tokens, "label": labels_N.astype(np.int32)}
  return evaluate.Data(num_classes=num_classes, vocab_size=4 + num_classes, seq_len=12,
                       class_names=[f"c{i}" for i in range(num_classes)],
                       splits={"train": arrays})


def _cv_config(target: float):
  import importlib
  pass_config = importlib.import_module("configs.pass")  # `pass` is a keyword
  c = pass_config.get_config("tiny")
  c.finetune.steps, c.finetune.batch_size, c.finetune.lr = 30, 16, 3e-3
  c.pli.threshold_candidates, c.pli.cv_folds, c.pli.target_accuracy = (0.5, 0.8, 0.99), 2, target
  c.log_every, c.checkpoint_every, c.quiet = 10, 1000, True
  return c


def test_threshold_chosen_by_cross_validation(tmp_path):
  from pass_jax import sharding
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, size=96)
  # Learnable labels: held-out predictions are right, so the lowest candidate already reaches
  # the target accuracy.
  thr = pseudo_label.choose_threshold(_cv_config(0.9), _toy_data(labels, 2), str(tmp_path / "a"),
                                      mesh=mesh, encoder_params=None)
  assert thr == 0.5
  # A target no candidate can reach falls back to the strictest candidate.
  thr = pseudo_label.choose_threshold(_cv_config(1.0 + 1e-9), _toy_data(labels, 2),
                                      str(tmp_path / "b"), mesh=mesh, encoder_params=None)
  assert thr == 0.99


def test_fewer_labelled_rows_than_a_batch_are_repeated_not_refused(tmp_path):
  from pass_jax import sharding
  from pass_jax.trainers import finetune
  cols = {"label": np.array([0, 1, 2], np.int32), "tokens": np.arange(3)[:, None]}
  filled = finetune.fill_one_batch(cols, 16)
  assert len(filled["label"]) == 18                                 # 6 copies of each row
  np.testing.assert_array_equal(np.bincount(filled["label"]), [6, 6, 6])
  np.testing.assert_array_equal(filled["tokens"][:, 0], filled["label"])  # rows stay whole
  assert finetune.fill_one_batch(filled, 16) is filled                    # enough: unchanged
  # 10% of a small set's labels: 6 labelled flows, a batch of 16. Fine-tuning runs and fits them.
  labels = np.array([0, 1, 0, 1, 0, 1])
  data = _toy_data(labels, 2)
  c = _cv_config(0.9)
  c.finetune.steps = 40
  state, history = finetune.train_classifier(
      c, train_arrays=data.split("train"), val_arrays=data.split("train"),
      workdir_stage=str(tmp_path / "ft"), mesh=sharding.make_mesh(), num_classes=2,
      vocab_size=data.vocab_size)
  assert history["total_steps"] == 40
  assert history["best"]["val_macro_f1"] == 1.0
