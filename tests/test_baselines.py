"""Flat features are what they claim to be; shallow classifiers learn a separable toy."""
import numpy as np
import pytest

from input_pipeline import vocab as vocab_lib
from input_pipeline.records import FlowRecord
from pass_jax.baselines import features, shallow


def _flow(lengths, payload=b"", label=None, index=0):
  return FlowRecord(capture="c.pcap", index=index, client_ip="10.0.0.1", client_port=40000,
                    server_ip="10.0.0.2", server_port=443, first_ts=0.0, payload=payload,
                    lengths=np.asarray(lengths, np.int32), label=label)


def _stats(row):
  """{direction: {stat: value}} of one 'stats' feature row."""
  names = features.feature_names("stats")
  return {d: {s: row[names.index(f"{d}_{s}")] for s in features.STAT_NAMES}
          for d in features.DIRECTIONS}


def test_length_stats_by_hand():
  # Outgoing 100, 300; incoming 60, 60, 1500.
  flow = _flow([100, -60, 300, -60, -1500])
  stats = _stats(features.flow_features([flow], "stats")[0])
  out, inc, both = stats["out"], stats["in"], stats["both"]
  assert (out["count"], out["min"], out["max"], out["mean"]) == (2, 100, 300, 200)
  assert out["var"] == 10000 and out["std"] == 100 and out["mad"] == 100
  assert out["skew"] == 0 and out["kurtosis"] == -2          # two points: excess -2
  assert out["p10"] == pytest.approx(120) and out["p50"] == 200 and out["p90"] == pytest.approx(280)
  assert (inc["count"], inc["min"], inc["max"], inc["mean"]) == (3, 60, 1500, 540)
  assert inc["mad"] == 0 and inc["p50"] == 60
  # mean 540, deviations -480, -480, 960: var = 460800, skew = m3 / m2^1.5.
  assert inc["var"] == pytest.approx(460800)
  m3 = (2 * (-480) ** 3 + 960 ** 3) / 3
  assert inc["skew"] == pytest.approx(m3 / 460800 ** 1.5, rel=1e-5)
  assert inc["kurtosis"] == pytest.approx(
      ((2 * 480 ** 4 + 960 ** 4) / 3) / 460800 ** 2 - 3, rel=1e-5)
  assert both["count"] == 5 and both["min"] == 60 and both["max"] == 1500
  assert both["mean"] == pytest.approx((100 + 60 + 300 + 60 + 1500) / 5)


def test_empty_direction_and_constant_series():
  stats = _stats(features.flow_features([_flow([52, 52, 52])], "stats")[0])
  assert all(v == 0 for v in stats["in"].values())
  assert stats["out"]["count"] == 3 and stats["out"]["std"] == 0
  assert stats["out"]["skew"] == 0 and stats["out"]["kurtosis"] == 0
  assert stats["out"]["p90"] == 52


def test_flat_features_pad_with_minus_one():
  flow = _flow([517, -1400, 80], payload=bytes([22, 3, 1, 255]))
  row = features.flow_features([flow], "flat", m=6, n=4)[0]
  np.testing.assert_array_equal(row[:4], [517, -1400, 80, -1])
  np.testing.assert_array_equal(row[4:], [22, 3, 1, 255, -1, -1])
  assert features.feature_names("flat", 6, 4)[4] == "byte_0"
  # Longer inputs are cut at m and n.
  long_flow = _flow(np.arange(1, 10), payload=bytes(range(20)))
  cut = features.flow_features([long_flow], "flat", m=6, n=4)[0]
  np.testing.assert_array_equal(cut, [1, 2, 3, 4, 0, 1, 2, 3, 4, 5])


def test_kinds_and_widths():
  flows = [_flow([60, -60], b"ab"), _flow([70], b"")]
  widths = {"stats": 54, "lengths": 32, "bytes": 128, "flat": 160, "all": 214}
  for kind, width in widths.items():
    x = features.flow_features(flows, kind)
    assert x.shape == (2, width) and x.dtype == np.float32
    assert len(features.feature_names(kind)) == width
  assert features.flow_features([], "flat").shape == (0, 160)
  with pytest.raises(ValueError, match="unknown feature kind"):
    features.flow_features(flows, "bogus")


def test_token_features_match_flow_features():
  rng = np.random.RandomState(0)
  flows = [_flow(rng.randint(-1500, 1500, rng.randint(1, 9)),
                 bytes(rng.randint(0, 256, rng.randint(0, 12)).astype(np.uint8)), index=i)
           for i in range(20)]
  flows.append(_flow([60], bytes([1, 2, 3])))   # odd payload: trailing `03__` token
  m, n = 11, 6
  vocab = vocab_lib.Vocab.build(flows, payload_bytes=m, num_lengths=n)
  tokens = vocab.encode_batch(flows)
  np.testing.assert_array_equal(features.token_features(tokens, vocab.tokens, "all", m, n),
                                features.flow_features(flows, "all", m, n))


def test_token_features_mark_unknown_in_place():
  itos = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "0102", "+60", "-70"]
  tokens = np.array([[2, 1, 4, 3, 5, 1, 6, 0]])   # RP: [UNK] 0102; PL: +60 [UNK] -70 [PAD]
  row = features.token_features(tokens, itos, "all", m=4, n=4)[0]
  names = features.feature_names("all", 4, 4)
  flat = dict(zip(names, row))
  assert [flat[f"byte_{i}"] for i in range(4)] == [-1, -1, 1, 2]
  assert [flat[f"len_{i}"] for i in range(4)] == [60, -1, -70, -1]
  assert flat["both_count"] == 2   # the unknown length is not counted


def _toy(n_per_class=60, num_classes=3, seed=0):
  """Classes that differ in outgoing packet sizes and one payload byte."""
  rng = np.random.RandomState(seed)
  flows, y = [], []
  for c in range(num_classes):
    for _ in range(n_per_class):
      lengths = np.empty(8, np.int64)
      lengths[0::2] = 200 + 300 * c + rng.randint(-20, 20, 4)   # client -> server
      lengths[1::2] = -rng.randint(40, 1500, 4)                # server -> client: noise
      payload = bytes([22, 3, c]) + bytes(rng.randint(0, 256, 20).astype(np.uint8))
      flows.append(_flow(lengths, payload))
      y.append(c)
  return flows, np.asarray(y)


@pytest.mark.parametrize("method", sorted(shallow.METHODS))
def test_shallow_methods_learn_separable_toy(method):
  flows, y = _toy()
  x = features.flow_features(flows, shallow.DEFAULT_FEATURES[method])
  perm = np.random.RandomState(1).permutation(len(y))
  train, test = perm[:120], perm[120:]
  pred, probs = shallow.fit_predict(method, x[train], y[train], x[test], seed=0,
                                    n_estimators=50)
  assert pred.shape == (60,) and probs.shape == (60, 3)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(pred, probs.argmax(axis=1))
  assert (pred == y[test]).mean() >= 0.95


def test_probs_cover_classes_missing_from_training():
  flows, y = _toy()
  x = features.flow_features(flows, "flat")
  keep = y != 1     # class 1 never seen in training
  pred, probs = shallow.fit_predict("lgbm", x[keep], y[keep], x[:5], num_classes=4,
                                    n_estimators=20)
  assert probs.shape == (5, 4)
  assert (probs[:, 1] == 0).all() and (probs[:, 3] == 0).all()
  assert set(pred) <= {0, 2}


def test_balanced_lightgbm_weights_rare_class_more():
  model = shallow.make_classifier("lgbm_balanced", seed=3)
  assert model.get_params()["class_weight"] == "balanced"
  assert model.get_params()["min_child_weight"] == 1.0
  assert shallow.make_classifier("lgbm").get_params()["class_weight"] is None
  with pytest.raises(ValueError, match="unknown shallow method"):
    shallow.make_classifier("svm")
