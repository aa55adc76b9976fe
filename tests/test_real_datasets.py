"""Extraction on the real captures in ../shared/datasets (skipped when absent)."""
import collections
import csv
import datetime

import pytest

from input_pipeline import extract
from input_pipeline import labels

# ma1 captures written with 24-byte record headers under the standard pcap magic.
ODD_RECORD_HEADERS = ("pcap/ma1/xz1_slack.pcap", "pcap/ma1/xz1_telegram_filtered.pcap",
                      "pcap/ma1/xz1_wa_merged.pcap")


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _extract(root):
  # Filters off: every labelled flow must come out, whatever its size or class.
  return extract.extract_dataset(str(root), min_payload_bytes=0, min_flows_per_class=0,
                                 workers=2)


@pytest.fixture(scope="module")
def ndpi(shared_datasets):
  root = shared_datasets / "ndpi-apps"
  return root, _rows(root / "labels.csv"), *_extract(root)


@pytest.fixture(scope="module")
def mobile(shared_datasets):
  root = shared_datasets / "mobile-apps"
  return root, _rows(root / "labels.csv"), *_extract(root)


def test_ndpi_finds_every_labelled_flow_with_its_label(ndpi):
  _, rows, flows, report = ndpi
  assert len(rows) == 447 and report["layout"] == "csv"
  assert report["files_failed"] == [] and report["files_ok"] == 40
  assert report["label_rows"] == {"per_flow": 447, "unmatched": 0, "unmatched_examples": []}
  expected = collections.Counter(r["label"] for r in rows)
  assert len(expected) == 18
  assert report["flows_per_class"] == dict(expected)
  assert report["labelled_flows"] == 447 < report["flows"]
  by_row = {(r["pcap"], labels.endpoint_key(r["ip_a"], r["port_a"], r["ip_b"], r["port_b"])):
            r["label"] for r in rows}
  found = {}
  for flow in flows:
    key = (flow.capture, labels.endpoint_key(flow.client_ip, flow.client_port,
                                             flow.server_ip, flow.server_port))
    assert flow.label == by_row.get(key), flow.flow_id
    if flow.label is not None:
      found[key] = flow.label
  assert found == by_row
  skipped = {s["file"] for s in report["files_skipped"]}
  assert {"COPYING", "SOURCE.md"} <= skipped


def test_ndpi_default_filters(ndpi):
  root, rows, _, _ = ndpi
  flows, report = extract.extract_dataset(str(root), workers=2)
  assert report["flows_filtered"]["min_payload_bytes"] > 0
  assert all(f.bytes_c2s + f.bytes_s2c >= 1 for f in flows)
  assert all(n >= 10 for n in report["flows_per_class"].values())
  assert report["flows"] == report["flows_read"] - sum(report["flows_filtered"].values())


def test_mobile_reads_every_capture_or_names_why_not(mobile):
  _, rows, flows, report = mobile
  assert report["files"] == len(rows) == 75
  failed = {f["file"]: f["reason"] for f in report["files_failed"]}
  assert all(reason for reason in failed.values())
  # Only the odd-header files may fail; every other capture yields its labelled flows.
  assert set(failed) <= set(ODD_RECORD_HEADERS)
  by_capture = collections.defaultdict(list)
  for flow in flows:
    by_capture[flow.capture].append(flow)
  for row in rows:
    if row["pcap"] in failed:
      continue
    got = by_capture[row["pcap"]]
    assert got and {f.label for f in got} == {row["label"]}, row["pcap"]
  assert report["labelled_flows"] == report["flows"] > 1500
  assert report["unlabelled_flows"] == 0
  assert "pcap/Readme.txt" in {s["file"] for s in report["files_skipped"]}


@pytest.mark.parametrize("name", ODD_RECORD_HEADERS)
def test_mobile_odd_record_headers_are_read_or_reported(mobile, name):
  _, _, flows, report = mobile
  failed = {f["file"]: f["reason"] for f in report["files_failed"]}
  if name in failed:
    assert name.rsplit("/", 1)[-1] in failed[name]
    return
  got = [f for f in flows if f.capture == name]
  # Garbage records would give absurd times, lengths and no TLS names.
  assert len(got) >= 10
  years = {datetime.datetime.fromtimestamp(f.first_ts, datetime.timezone.utc).year for f in got}
  assert years == {2020}
  assert all(abs(int(x)) <= 65535 for f in got for x in f.lengths)
  assert any(f.sni for f in got) and any(f.payload[:1] == b"\x16" for f in got)
