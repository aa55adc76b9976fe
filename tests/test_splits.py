"""Split disjointness, stratification, determinism, label fraction and the pool."""
import json

import numpy as np
import pytest

from input_pipeline import splits as splits_lib
from input_pipeline.records import FlowRecord
from input_pipeline.splits import SPLITS, SplitError, make_splits


def _flows(num_classes=4, captures_per_class=12, flows_per_capture=(3, 15), unlabeled=30,
           seed=0):
  """Flows of several classes spread over captures; a few mixed-class captures."""
  rng = np.random.default_rng(seed)
  out = []
  for c in range(num_classes):
    for k in range(captures_per_class):
      name = f"class{c}/cap{k}.pcap"
      for i in range(int(rng.integers(*flows_per_capture))):
        # 1 in 10 flows of a capture belongs to the next class: mixed captures.
        label = f"class{(c + 1) % num_classes}" if i % 10 == 9 else f"class{c}"
        out.append(FlowRecord(capture=name, index=i, client_ip="10.0.0.1", client_port=i,
                              server_ip=f"10.1.{c}.{k}", server_port=443, first_ts=0.0,
                              payload=b"", lengths=np.zeros(0, np.int32), label=label))
  for i in range(unlabeled):
    out.append(FlowRecord(capture=f"other/u{i % 3}.pcap", index=i, client_ip="10.0.0.1",
                          client_port=i, server_ip="10.9.9.9", server_port=443, first_ts=0.0,
                          payload=b"", lengths=np.zeros(0, np.int32), label=None))
  return out


def _assert_disjoint(sp, by_capture=False):
  ids = [set(sp.flow_id[s].tolist()) for s in SPLITS]
  for i in range(4):
    for j in range(i + 1, 4):
      assert not ids[i] & ids[j], (SPLITS[i], SPLITS[j])
  if by_capture:
    caps = {s: set(sp.capture[s].tolist()) for s in SPLITS}
    assert not caps["train"] & caps["test"]
    assert not caps["train"] & caps["validation"]
    assert not caps["validation"] & caps["test"]
    assert not (caps["validation"] | caps["test"]) & caps["unlabeled"]


def test_flow_split_is_stratified_disjoint_and_pools_unlabeled():
  flows = _flows()
  sp = make_splits(flows, method="flow", seed=0)
  _assert_disjoint(sp)
  assert sum(len(sp.index[s]) for s in SPLITS) == len(flows)
  counts = sp.counts()
  for c in sp.class_names:
    total = sum(counts[s].get(c, 0) for s in SPLITS)
    assert abs(counts["test"][c] - 0.1 * total) <= 1
    assert abs(counts["validation"][c] - 0.1 * total) <= 1
  assert counts["unlabeled"] == {"none": 30}
  assert (sp.label["unlabeled"] == -1).all()
  for s in SPLITS:   # index, flow ids and labels agree with the flow list
    for i, fid, lab in zip(sp.index[s], sp.flow_id[s], sp.hidden_label[s]):
      assert flows[i].flow_id == fid
      assert (flows[i].label is None and lab == -1) or sp.class_names[lab] == flows[i].label


def test_capture_split_keeps_captures_whole_and_near_ratios():
  sp = make_splits(_flows(), method="capture", seed=1)
  _assert_disjoint(sp, by_capture=True)
  total = sum(len(sp.index[s]) for s in ("train", "validation", "test"))
  assert 0.05 < len(sp.index["test"]) / total < 0.2
  assert all(set(sp.label[s].tolist()) == set(range(4)) for s in splits_lib.LABELLED_SPLITS)
  assert not sp.notes or all("capture(s)" not in n for n in sp.notes)


def test_capture_split_reports_classes_with_too_few_captures():
  flows = [f for f in _flows() if not (f.capture.startswith("class3/") and
                                       not f.capture.endswith("cap0.pcap"))]
  flows = [f for f in flows if f.label != "class3" or f.capture == "class3/cap0.pcap"]
  sp = make_splits(flows, method="capture", seed=0)
  _assert_disjoint(sp, by_capture=True)
  assert any("class class3: only 1 capture(s)" in n for n in sp.notes)
  assert any("lacks classes: class3" in n for n in sp.notes)


def test_given_split_from_csv(tmp_path):
  flows = _flows()
  rows = ["pcap,split"]
  caps = sorted({f.capture for f in flows if f.label is not None})
  for k, cap in enumerate(caps):
    if cap.endswith("cap11.pcap"):
      continue                                   # not named -> excluded and reported
    rows.append(f"{cap},{['train', 'val', 'test'][k % 3]}")
  rows.append("missing/file.pcap,train")
  rows.append("other/u0.pcap,test")               # unlabeled flows of a test capture
  rows.append("u1.pcap,train")                     # bare name, unique in the dataset
  csv_path = tmp_path / "split.csv"
  csv_path.write_text("\n".join(rows) + "\n")
  sp = make_splits(flows, method="given", split_file=csv_path)
  _assert_disjoint(sp, by_capture=True)
  assert not any(c.endswith("cap11.pcap") for s in SPLITS for c in sp.capture[s])
  assert any("not in the split file" in n and "cap11" in n for n in sp.notes)
  assert any("missing/file.pcap" in n for n in sp.notes)
  assert "other/u0.pcap" not in set(sp.capture["unlabeled"].tolist())
  assert set(sp.capture["unlabeled"].tolist()) == {"other/u1.pcap"}
  assert len(sp.index["validation"]) > 0
  (tmp_path / "bad.csv").write_text("a.pcap,holdout\n")
  with pytest.raises(SplitError, match="bad.csv:1"):
    make_splits(flows, method="given", split_file=tmp_path / "bad.csv")
  with pytest.raises(SplitError, match="needs a split file"):
    make_splits(flows, method="given")


def test_determinism_and_seed_dependence():
  flows = _flows()
  for method in ("flow", "capture"):
    a = make_splits(flows, method=method, seed=3, label_fraction=0.3)
    b = make_splits(list(reversed(flows)), method=method, seed=3, label_fraction=0.3)
    c = make_splits(flows, method=method, seed=4, label_fraction=0.3)
    for s in SPLITS:
      assert a.flow_id[s].tolist() == b.flow_id[s].tolist()
    assert any(a.flow_id[s].tolist() != c.flow_id[s].tolist() for s in SPLITS)


@pytest.mark.parametrize("method", ["flow", "capture"])
def test_label_fraction_pool(method):
  flows = _flows()
  full = make_splits(flows, method=method, seed=0)
  sp = make_splits(flows, method=method, seed=0, label_fraction=0.1)
  _assert_disjoint(sp, by_capture=method == "capture")
  # Validation and test are untouched; only train flows move into the pool.
  for s in ("validation", "test"):
    assert sp.flow_id[s].tolist() == full.flow_id[s].tolist()
  moved = set(sp.flow_id["unlabeled"].tolist()) - set(full.flow_id["unlabeled"].tolist())
  assert moved <= set(full.flow_id["train"].tolist())
  for c in range(4):
    n_full = int((full.label["train"] == c).sum())
    n_kept = int((sp.label["train"] == c).sum())
    assert n_kept == max(1, round(0.1 * n_full))
  hidden = sp.hidden_label["unlabeled"]
  assert (hidden >= 0).sum() == len(moved) and (hidden == -1).sum() == 30
  assert (sp.label["unlabeled"] == -1).all()


def test_save_load_round_trip(tmp_path):
  flows = _flows()
  sp = make_splits(flows, method="capture", seed=0, label_fraction=0.5)
  sp.save(tmp_path / "splits.json")
  doc = json.loads((tmp_path / "splits.json").read_text())
  assert set(doc["splits"]) == set(SPLITS) and doc["class_names"] == sp.class_names
  loaded = splits_lib.Splits.load(tmp_path / "splits.json", flows=flows)
  for s in SPLITS:
    np.testing.assert_array_equal(loaded.index[s], sp.index[s])
    np.testing.assert_array_equal(loaded.hidden_label[s], sp.hidden_label[s])
    assert loaded.capture[s].tolist() == sp.capture[s].tolist()
  assert loaded.notes == sp.notes


def test_bad_arguments():
  with pytest.raises(SplitError, match="unknown split method"):
    make_splits(_flows(), method="random")
  with pytest.raises(SplitError, match="label_fraction"):
    make_splits(_flows(), label_fraction=0.0)
