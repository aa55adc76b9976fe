"""Dataset extraction on generated data: report, filters, workers, bad files, CLI."""
import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from input_pipeline import extract
from input_pipeline import flows as flows_lib
from input_pipeline import labels
from input_pipeline import synthetic

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
REPORT_KEYS = {"files_ok", "files_failed", "packets", "tcp_packets", "flows", "labelled_flows",
               "unlabelled_flows", "flows_per_class", "classes_dropped", "flows_filtered",
               "seconds"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  summary = synthetic.write_demo_dataset(str(root), num_classes=5, max_flows_per_class=40,
                                         imbalance=8.0, seed=1, flows_per_file=15)
  return root, summary


def _flow_view(flows):
  return [(f.flow_id, f.label, f.payload, f.lengths.tolist(), f.sni, f.cert_sha256,
           f.packets_c2s, f.bytes_s2c) for f in flows]


def test_report_on_generated_folders(demo):
  root, summary = demo
  flows, report = extract.extract_dataset(str(root), workers=1)
  assert REPORT_KEYS <= report.keys()
  assert report["layout"] == "folders" and report["files_failed"] == []
  assert report["files_ok"] == report["files"] == len(summary["files"])
  sizes = summary["flows_per_class"]   # 40, 24, 14, 8, 5
  assert report["flows_read"] == sum(sizes.values()) + summary["background_flows"]
  assert report["classes_dropped"] == {c: n for c, n in sizes.items() if n < 10}
  assert report["flows_per_class"] == {c: n for c, n in sizes.items() if n >= 10}
  assert list(report["flows_per_class"].values()) == [40, 24, 14]
  # Background connections without payload go; the other background stays unlabelled.
  assert 0 < report["flows_filtered"]["min_payload_bytes"] < summary["background_flows"]
  assert report["unlabelled_flows"] == (summary["background_flows"]
                                        - report["flows_filtered"]["min_payload_bytes"])
  assert report["flows_filtered"]["min_flows_per_class"] == 13
  assert report["flows"] == len(flows) == report["labelled_flows"] + report["unlabelled_flows"]
  assert report["tcp_packets"] == report["packets"] > 10 * report["flows_read"]
  assert [(f.capture, f.index) for f in flows] == sorted((f.capture, f.index) for f in flows)
  assert all(f.label == f.capture.split("/")[0] for f in flows if "/" in f.capture)
  assert all(f.label is None for f in flows if "/" not in f.capture)
  assert json.loads(json.dumps(report)) == report
  text = extract.format_report(report)
  assert "classes dropped" in text and f"{report['flows']:,} kept" in text


def test_filters_off_and_tls_only(demo):
  root, summary = demo
  everything, report = extract.extract_dataset(str(root), min_payload_bytes=0,
                                               min_flows_per_class=0, workers=1)
  assert report["flows"] == report["flows_read"] == len(everything)
  assert report["flows_filtered"] == {"min_payload_bytes": 0, "tls_only": 0,
                                      "min_flows_per_class": 0}
  assert report["flows_per_class"] == dict(sorted(summary["flows_per_class"].items(),
                                                  key=lambda cn: -cn[1]))
  tls, tls_report = extract.extract_dataset(str(root), tls_only=True, min_flows_per_class=0,
                                            workers=1)
  assert tls_report["flows_filtered"]["tls_only"] > 0     # the plain-HTTP background
  assert all(f.payload[:1] == b"\x16" for f in tls)
  assert tls_report["labelled_flows"] == sum(summary["flows_per_class"].values())
  big, big_report = extract.extract_dataset(str(root), min_payload_bytes=5000,
                                            min_flows_per_class=0, workers=1)
  assert all(f.bytes_c2s + f.bytes_s2c >= 5000 for f in big)
  assert big_report["flows_filtered"]["min_payload_bytes"] + len(big) == report["flows_read"]


def test_two_workers_give_the_same_flows_as_one(demo):
  root, _ = demo
  calls = []
  one, report_one = extract.extract_dataset(str(root), workers=1)
  two, report_two = extract.extract_dataset(
      str(root), workers=2, progress=lambda done, total, name: calls.append((done, total)))
  assert _flow_view(one) == _flow_view(two)
  drop = ("seconds", "settings")
  assert ({k: v for k, v in report_one.items() if k not in drop}
          == {k: v for k, v in report_two.items() if k not in drop})
  assert [d for d, _ in calls] == list(range(1, len(calls) + 1))
  assert calls[-1] == (report_two["files"], report_two["files"])


def test_csv_layout_matches_every_row(tmp_path):
  summary = synthetic.write_demo_dataset(str(tmp_path), num_classes=4, max_flows_per_class=30,
                                         imbalance=3.0, layout="csv", flows_per_file=40, seed=2)
  flows, report = extract.extract_dataset(str(tmp_path), min_flows_per_class=0, workers=1)
  assert report["layout"] == "csv" and report["labels_csv"] == summary["labels_csv"]
  assert report["label_rows"] == {"per_flow": sum(summary["flows_per_class"].values()),
                                  "unmatched": 0, "unmatched_examples": []}
  assert collections.Counter(report["flows_per_class"]) == collections.Counter(
      summary["flows_per_class"])
  assert report["files_skipped"] == []


def test_bad_files_are_reported_and_the_rest_is_read(demo, tmp_path):
  root, _ = demo
  shutil.copytree(root, tmp_path / "d")
  good = sorted((tmp_path / "d" / "mail").glob("*.pcap"))[0]
  data = good.read_bytes()
  (tmp_path / "d" / "mail" / "zz_garbage.pcap").write_bytes(b"this is not a capture" * 10)
  # A valid header and records, then a record header claiming 2 GB.
  (tmp_path / "d" / "mail" / "zz_torn.pcap").write_bytes(
      data[:4000] + b"\xff" * 16 + data[4000:8000])
  (tmp_path / "d" / "notes.md").write_text("hello")
  flows, report = extract.extract_dataset(str(tmp_path / "d"), workers=2)
  failed = {f["file"]: f for f in report["files_failed"]}
  assert set(failed) == {"mail/zz_garbage.pcap", "mail/zz_torn.pcap"}
  assert "not a pcap" in failed["mail/zz_garbage.pcap"]["reason"]
  assert "zz_torn.pcap" in failed["mail/zz_torn.pcap"]["reason"]
  assert report["files_skipped"] == [{"file": "notes.md", "reason": "not a capture file name"}]
  clean, clean_report = extract.extract_dataset(str(root), workers=1)
  assert report["files_ok"] == clean_report["files_ok"]
  torn_flows = [f for f in flows if f.capture == "mail/zz_torn.pcap"]
  # The flows read before the fault are kept (flows_kept counts them before filters).
  assert failed["mail/zz_torn.pcap"]["flows_kept"] >= len(torn_flows) > 0
  assert report["flows_per_class"]["mail"] >= clean_report["flows_per_class"]["mail"]


def test_unreadable_dataset_and_bad_labels_raise_before_reading(tmp_path):
  (tmp_path / "labels.csv").write_text("pcap,label\nnot_there.pcap,mail\n")
  with pytest.raises(labels.LabelsError, match=r"labels.csv:2: capture 'not_there.pcap'"):
    extract.extract_dataset(str(tmp_path))
  with pytest.raises(FileNotFoundError):
    extract.extract_dataset(str(tmp_path / "missing"))


def _cli(*args, cwd):
  return subprocess.run([sys.executable, "-m", "input_pipeline.extract", *map(str, args)],
                        cwd=cwd, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


def test_cli_exit_codes_and_json(demo, tmp_path):
  root, summary = demo
  ok = _cli(root, "--workers", "1", "--report", tmp_path / "r.json", "--tls-only",
            "--min-flows-per-class", "0", cwd=tmp_path)
  assert ok.returncode == 0, ok.stderr
  report = json.loads((tmp_path / "r.json").read_text())
  assert REPORT_KEYS <= report.keys() and report["settings"]["tls_only"] is True
  assert report["labelled_flows"] == sum(summary["flows_per_class"].values())
  assert "flows per class" in ok.stdout

  missing = _cli(tmp_path / "nope", cwd=tmp_path)
  assert missing.returncode == 2 and "Traceback" not in missing.stderr
  assert missing.stderr.strip().splitlines() == [f"error: no such file or folder: {tmp_path / 'nope'}"]

  junk = tmp_path / "junk"
  junk.mkdir()
  (junk / "a.pcap").write_bytes(b"nope" * 10)
  (junk / "b.txt").write_text("nope")
  nothing = _cli(junk, "--report", tmp_path / "j.json", cwd=tmp_path)
  assert nothing.returncode == 1 and "error: no readable capture" in nothing.stderr
  assert json.loads((tmp_path / "j.json").read_text())["files_failed"][0]["file"] == "a.pcap"

  (junk / "labels.csv").write_text("pcap,colour\n")
  bad_labels = _cli(junk, cwd=tmp_path)
  assert bad_labels.returncode == 2 and "labels.csv:1: bad header" in bad_labels.stderr
  assert "Traceback" not in bad_labels.stderr

  bad_arg = _cli(root, "--workers", "-1", cwd=tmp_path)
  assert bad_arg.returncode == 2 and "--workers must be >= 0" in bad_arg.stderr


def test_flow_config_reaches_the_reader(demo):
  root, _ = demo
  cfg = flows_lib.FlowConfig(payload_bytes=64, num_lengths=8, length_kind="payload")
  flows, report = extract.extract_dataset(str(root), flow_cfg=cfg, workers=1)
  assert max(len(f.payload) for f in flows) == 64
  assert max(len(f.lengths) for f in flows) == 8
  assert report["settings"]["flow_config"]["length_kind"] == "payload"
  # Payload lengths: the first packet (a SYN) carries no payload.
  assert all(f.lengths[0] == 0 for f in flows)


def test_path_objects_are_accepted(demo, tmp_path):
  root, _ = demo
  (tmp_path / "labels.csv").write_text("pcap,label\nmail/capture-000.pcap,mail\n")
  _, report = extract.extract_dataset(root, labels_csv=tmp_path / "labels.csv",
                                      min_flows_per_class=0, workers=1)
  assert report["labels_csv"] == str(tmp_path / "labels.csv")
  assert list(report["flows_per_class"]) == ["mail"]
  json.dumps(report)
