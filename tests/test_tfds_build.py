"""The tfds round trip, the Beam build (DirectRunner) and the build CLI."""
import functools
import importlib
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import build, tfds_builder
from input_pipeline import vocab as vocab_lib
from input_pipeline.records import FlowRecord
from input_pipeline.splits import SPLITS

_CONFIG = importlib.import_module("configs.pass")   # `pass` is a keyword


def _data_cfg(**overrides):
  cfg = _CONFIG.data_config()
  cfg.payload_bytes, cfg.num_lengths = 8, 4
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _flows(seed=0):
  rng = np.random.default_rng(seed)
  flows = []
  for c in range(3):
    for k in range(6):
      for i in range(int(rng.integers(4, 9))):
        label = None if i == 0 and k % 2 else f"app{c}"
        flows.append(FlowRecord(
            capture=f"app{c}/cap{k}.pcap", index=i, client_ip="10.0.0.1",
            client_port=40000 + i, server_ip=f"10.2.{c}.{k % 3}", server_port=443,
            first_ts=float(i), payload=rng.integers(0, 3, int(rng.integers(1, 9))).astype(
                np.uint8).tobytes(),
            lengths=rng.integers(-3000, 3000, int(rng.integers(1, 5))).astype(np.int32),
            cert_sha256=f"{c}{k % 2}" if k % 3 else None, label=label))
  return flows


def test_tfds_round_trip_and_train_only_vocab(tmp_path):
  flows = _flows()
  cfg = _data_cfg(split="capture", label_fraction=0.5)
  result = build.write_build(flows, {"flows": len(flows)}, cfg, tmp_path / "ds")
  assert result.vocab_path.is_file() and result.splits_path.is_file()
  vocab = vocab_lib.Vocab.load(result.vocab_path)
  assert vocab.seq_len == result.seq_len == 2 + 4 + 4
  # Reading back through tfds gives the rows we tokenized, in splits.json order.
  from input_pipeline import splits as splits_lib
  sp = splits_lib.Splits.load(result.splits_path, flows=flows)
  expect = build.tokenize_splits(flows, sp, vocab)
  for s in SPLITS:
    got = tfds_builder.load_split_arrays(tmp_path / "ds", s)
    assert len(got["tokens"]) == result.split_sizes[s] > 0
    for k, v in expect[s].items():
      np.testing.assert_array_equal(got[k], v, err_msg=f"{s}/{k}")
  assert (tfds_builder.load_split_arrays(tmp_path / "ds", "unlabeled")["label"] == -1).all()
  # Plain tfds entry points work too, and the vocabulary travels as metadata.
  builder = tfds.builder_from_directory(result.tfds_dir)
  assert builder.info.splits["train"].num_examples == result.split_sizes["train"]
  ds = tfds.load("pass_flows", data_dir=tmp_path / "ds" / "tfds", split="test")
  assert sum(1 for _ in ds) == result.split_sizes["test"]
  assert tfds_builder.load_vocab(tmp_path / "ds").tokens == vocab.tokens
  assert tfds_builder.load_metadata(result.tfds_dir)["class_names"] == ["app0", "app1", "app2"]
  # The vocabulary saw only train + pool: values unique to val/test are [UNK].
  seen = vocab_lib.count_tokens(vocab.arrays(build.training_flows(flows, sp)))
  assert set(vocab.tokens[4:]) == set(seen)
  held_out = [flows[i] for s in ("validation", "test") for i in sp.index[s]]
  unseen = 0
  for flow, row in zip(held_out, vocab.encode_batch(held_out)):
    for tok, tid in zip([f"{int(v):+d}" for v in flow.lengths], row[6:]):
      assert (tid == vocab_lib.UNK_ID) == (tok not in seen)
      unseen += tok not in seen
  assert unseen > 0


def test_build_errors_are_named(tmp_path):
  unlabeled = [f for f in _flows() if f.label is None]
  for f in unlabeled:
    f.label = None
  with pytest.raises(build.BuildError, match="no labelled flows"):
    build.write_build(unlabeled, {}, _data_cfg(), tmp_path / "x")
  with pytest.raises(build.BuildError, match="no flows"):
    build.write_build([], {}, _data_cfg(), tmp_path / "x")
  assert build.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def _pickled_capture_flows(folder, capture):
  """A picklable Beam flow source: the flows of one 'capture' from a pickle."""
  with open(f"{folder}/{capture.replace('/', '_')}.pkl", "rb") as fh:
    return pickle.load(fh)


def test_beam_build_matches_local_build(tmp_path):
  pytest.importorskip(
      "apache_beam", reason="apache-beam is not installed: it comes with the `test` "
      "(and `beam`) extra, `pip install -e '.[test]'`")
  flows = _flows(seed=1)
  by_capture = {}
  for f in flows:
    by_capture.setdefault(f.capture, []).append(f)
  for cap, fs in by_capture.items():
    with open(tmp_path / f"{cap.replace('/', '_')}.pkl", "wb") as fh:
      pickle.dump(fs, fh)
  cfg = _data_cfg(split="flow", label_fraction=0.5)
  local = build.write_build(flows, {}, cfg, tmp_path / "local")
  beam = build.write_build(flows, {}, cfg, tmp_path / "beam", beam_runner="DirectRunner",
                           flow_source=functools.partial(_pickled_capture_flows,
                                                         str(tmp_path)))
  assert beam.split_sizes == local.split_sizes
  for s in SPLITS:
    a = tfds_builder.load_split_arrays(tmp_path / "local", s)
    b = tfds_builder.load_split_arrays(tmp_path / "beam", s)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"{s}/{k}")


def test_build_cli_on_demo_pcaps(tmp_path, capsys):
  pytest.importorskip("input_pipeline.extract", reason="extract.py not written yet")
  from input_pipeline import synthetic
  synthetic.write_demo_dataset(str(tmp_path / "pcaps"), num_classes=3, max_flows_per_class=40,
                               imbalance=2.0, seed=0, flows_per_file=8)
  out = tmp_path / "built"
  rc = build.main([str(tmp_path / "pcaps"), "--out", str(out), "--split", "capture",
                   "--label-fraction", "0.5", "--workers", "1", "--set", "payload_bytes=16",
                   "--set", "num_lengths=8", "--set", "min_flows_per_class=2"])
  printed = capsys.readouterr()
  assert rc == 0, printed.err
  assert "builder_from_directory" in printed.out
  for name in ("splits.json", "vocab.txt", "extract_report.json"):
    assert (out / name).is_file()
  train = tfds_builder.load_split_arrays(out, "train")
  assert train["tokens"].shape[1] == 2 + 8 + 8 and len(train["tokens"]) > 0
  assert (train["tokens"][:, 0] == vocab_lib.CLS_ID).all()
  assert set(train["label"].tolist()) == {0, 1, 2}
  test = tfds_builder.load_split_arrays(out, "test")
  assert len(test["tokens"]) and not set(test["capture"]) & set(train["capture"])
