"""Train / eval / triple streams, per-process disjointness, Alg. 1 and resampling."""
import itertools

import numpy as np
import pytest

from input_pipeline import streams
from input_pipeline.vocab import CLS_ID, PAD_ID


def _data(n=103, seq_len=7, num_classes=3, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, 50, (n, seq_len)).astype(np.int32)
  tokens[:, 0] = np.arange(n)        # row id hidden in the tokens to trace rows
  return {"tokens": tokens, "label": (np.arange(n) % num_classes).astype(np.int32)}


def test_train_stream_shapes_defaults_and_epochs():
  data = _data(n=64)
  it = streams.train_stream(data, global_batch=16, seed=1, shuffle_buffer=64,
                            process_index=0, process_count=1)
  first_epoch = [next(it) for _ in range(4)]
  b = first_epoch[0]
  assert set(b) == {"tokens", "label", "weight", "is_pseudo"}
  assert b["tokens"].shape == (16, 7) and b["tokens"].dtype == np.int32
  assert b["weight"].dtype == np.float32 and (b["weight"] == 1).all()
  assert (b["is_pseudo"] == 0).all()
  rows = np.concatenate([x["tokens"][:, 0] for x in first_epoch])
  assert sorted(rows.tolist()) == list(range(64))        # one epoch = every row once
  np.testing.assert_array_equal(first_epoch[0]["label"], data["label"][first_epoch[0]["tokens"][:, 0]])
  second_epoch = np.concatenate([next(it)["tokens"][:, 0] for _ in range(4)])
  assert sorted(second_epoch.tolist()) == list(range(64)) and (second_epoch != rows).any()
  again = streams.train_stream(data, global_batch=16, seed=1, shuffle_buffer=64,
                               process_index=0, process_count=1)
  np.testing.assert_array_equal(next(again)["tokens"], first_epoch[0]["tokens"])


def test_train_stream_carries_weight_and_pseudo_fields():
  data = _data(n=32)
  data["weight"] = np.linspace(0, 1, 32).astype(np.float32)
  data["is_pseudo"] = (np.arange(32) % 2).astype(np.float32)
  b = next(streams.train_stream(data, global_batch=8, process_index=0, process_count=1))
  row = b["tokens"][:, 0]
  np.testing.assert_allclose(b["weight"], data["weight"][row])
  np.testing.assert_array_equal(b["is_pseudo"], data["is_pseudo"][row])


def test_train_stream_two_processes_are_disjoint_and_split_the_batch():
  data = _data(n=100)
  seen = []
  for p in range(2):
    it = streams.train_stream(data, global_batch=10, seed=0, process_index=p, process_count=2,
                              repeat=False)
    batches = list(it)
    assert all(b["tokens"].shape == (5, 7) for b in batches) and len(batches) == 10
    seen.append(set(np.concatenate([b["tokens"][:, 0] for b in batches]).tolist()))
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 100
  with pytest.raises(ValueError, match="not divisible"):
    streams.train_stream(data, global_batch=9, process_index=0, process_count=2)


def test_sampling_weights_hook():
  data = _data(n=40)
  weights = np.zeros(40)
  weights[[3, 7]] = [1.0, 3.0]
  it = streams.train_stream(data, global_batch=20, sample_weights=weights, seed=2,
                            process_index=0, process_count=1)
  rows = np.concatenate([next(it)["tokens"][:, 0] for _ in range(50)])
  assert set(rows.tolist()) == {3, 7}
  assert 0.68 < (rows == 7).mean() < 0.82


@pytest.mark.parametrize("n,process_count,global_batch", [(103, 1, 16), (103, 2, 16),
                                                          (5, 2, 8), (0, 2, 4)])
def test_eval_stream_counts_each_flow_once(n, process_count, global_batch):
  data = _data(n=max(n, 1))
  data = {k: v[:n] for k, v in data.items()}
  per_process = []
  for p in range(process_count):
    batches = list(streams.eval_stream(data, global_batch=global_batch, process_index=p,
                                       process_count=process_count))
    per_process.append(batches)
    for b in batches:
      assert b["tokens"].shape == (global_batch // process_count, 7)
      m = b["_mask"]
      np.testing.assert_array_equal(b["index"][m], b["tokens"][m, 0])
      np.testing.assert_array_equal(b["label"][m], data["label"][b["index"][m]])
      assert (b["index"][~m] == -1).all() and (b["tokens"][~m, 0] == CLS_ID).all()
      assert (b["tokens"][~m, 1:] == PAD_ID).all()
  assert len({len(b) for b in per_process}) == 1        # same number of batches everywhere
  assert len(per_process[0]) == streams.num_eval_batches(n, global_batch, process_count)
  seen = np.concatenate([b["index"][b["_mask"]] for b in itertools.chain(*per_process)])
  assert sorted(seen.tolist()) == list(range(n))


def _triple_inputs():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(6), 50).astype(np.int32)
  labels[::17] = -1                                   # unlabelled rows never take part
  comm = np.array([f"cert:{l}-{rng.integers(0, 3)}" for l in labels])
  return labels, comm


@pytest.mark.parametrize("weak_fraction", [-1.0, 0.5])
def test_sample_triples_rules(weak_fraction):
  labels, comm = _triple_inputs()
  t = streams.sample_triples(labels, comm, num_triples=1000, seed=0, weak_fraction=weak_fraction)
  a, y, strong = t["anchor"], t["negative"], t["strong"]
  assert len(a) == 1000 and (labels[a] >= 0).all() and (labels[y] >= 0).all()
  s = strong == 1.0
  assert (labels[a[s]] != labels[y[s]]).all()
  assert (labels[a[~s]] == labels[y[~s]]).all() and (comm[a[~s]] != comm[y[~s]]).all()
  labelled = np.flatnonzero(labels >= 0)
  assert set(a[:len(labelled)].tolist()) == set(labelled.tolist())  # anchors cover all rows
  weak_share = (~s).mean()
  if weak_fraction < 0:
    assert weak_share < 0.3         # uniform draws over 6 classes: mostly strong
  else:
    assert abs(weak_share - 0.5) < 0.06
  again = streams.sample_triples(labels, comm, 1000, seed=0, weak_fraction=weak_fraction)
  np.testing.assert_array_equal(again["negative"], y)


def test_sample_triples_fallback_and_single_class():
  labels = np.array([0, 0, 0, 1, 1], np.int32)
  comm = np.array(["k"] * 5)                          # one comm key: weak impossible
  t = streams.sample_triples(labels, comm, 50, seed=1, max_tries=5, weak_fraction=1.0)
  assert len(t["anchor"]) == 50 and (t["strong"] == 1).all()
  assert (labels[t["anchor"]] != labels[t["negative"]]).all()
  one = streams.sample_triples(np.zeros(4, np.int32), comm[:4], 10, max_tries=5)
  assert len(one["anchor"]) == 0                      # no negative exists: skipped


def test_triple_stream_batches_and_process_split():
  data = _data(n=60, num_classes=3)
  comm = np.array([f"k{i % 4}" for i in range(60)])
  t = streams.sample_triples(data["label"], comm, 40, seed=0)
  seen = []
  for p in range(2):
    batches = list(streams.triple_stream(data, t, global_batch=8, process_index=p,
                                         process_count=2, repeat=False))
    assert len(batches) == 5
    for b in batches:
      assert set(b) == {"x", "y", "strong", "label"} and b["x"].shape == (4, 7)
      x, y = b["x"][:, 0], b["y"][:, 0]
      np.testing.assert_array_equal(b["label"], data["label"][x])
      np.testing.assert_array_equal(b["strong"], (data["label"][x] != data["label"][y]))
      seen += list(zip(x.tolist(), y.tolist()))
  assert sorted(seen) == sorted(zip(t["anchor"].tolist(), t["negative"].tolist()))


def test_class_inverse_probs_by_hand():
  labels = np.array([0] * 6 + [1] * 3 + [2] * 1)       # p = .6, .3, .1
  inv = np.array([1 / .6, 1 / .3, 1 / .1])
  np.testing.assert_allclose(streams.class_inverse_probs(labels, 4),
                             np.append(inv / inv.sum(), 0.0))


def test_resample_class_inverse_caps_and_favours_rare_classes():
  pseudo = np.array([0] * 100 + [1] * 10 + [2] * 2)
  p_train = np.array([0.8, 0.15, 0.05])
  idx = streams.resample_class_inverse(pseudo, p_train, n=60, seed=0, cap=3)
  assert len(idx) == 60 and np.bincount(idx, minlength=len(pseudo)).max() <= 3
  got = np.bincount(pseudo[idx], minlength=3)
  assert got[2] == 6                                  # rare class used up to its cap
  assert got[1] > got[0]                              # s favours class 1 over class 0
  small = streams.resample_class_inverse(pseudo[100:], p_train, n=1000, seed=0, cap=2)
  assert len(small) == 24                             # every flow twice, no more
  np.testing.assert_array_equal(
      streams.resample_class_inverse(pseudo, p_train, 60, seed=0, cap=3), idx)
