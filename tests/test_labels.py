"""Dataset layouts: class folders, labels.csv per file and per flow, plain folders."""
import pathlib

import numpy as np
import pytest

from input_pipeline import labels
from input_pipeline import records
from input_pipeline import synthetic


def _capture(path: pathlib.Path, *, ng: bool = False) -> pathlib.Path:
  """A small real capture with one TLS-looking flow."""
  path.parent.mkdir(parents=True, exist_ok=True)
  packets = synthetic.make_flow_packets("10.0.0.1", "1.2.3.4", client_port=4000,
                                        messages=[("c", b"\x16\x03\x01hello")])
  (synthetic.write_pcapng if ng else synthetic.write_pcap)(str(path), packets)
  return path


def _flow(capture, client, cport, server, sport, index=0):
  return records.FlowRecord(capture=capture, index=index, client_ip=client, client_port=cport,
                            server_ip=server, server_port=sport, first_ts=0.0,
                            payload=b"", lengths=np.zeros(0, np.int32))


def test_class_folders_recursive_by_magic_with_skips(tmp_path):
  _capture(tmp_path / "mail" / "a.pcap")
  _capture(tmp_path / "mail" / "deep" / "er" / "b.pcapng", ng=True)
  _capture(tmp_path / "mail" / "no_extension")
  _capture(tmp_path / "chat" / "c.cap", ng=True)    # pcapng content under .cap: magic wins
  _capture(tmp_path / "background.pcap")
  (tmp_path / "notes.txt").write_text("not traffic")
  (tmp_path / "chat" / "README").write_text("no extension, no magic")
  (tmp_path / "chat" / "broken.pcap").write_bytes(b"garbage that is not a capture")
  (tmp_path / "mail" / ".hidden.pcap").write_bytes(b"x")

  plan = labels.plan_dataset(str(tmp_path))
  assert plan.layout == "folders" and plan.labels_csv is None
  assert [(c.name, c.file_label) for c in plan.captures] == [
      ("background.pcap", None), ("chat/c.cap", "chat"), ("mail/a.pcap", "mail"),
      ("mail/deep/er/b.pcapng", "mail"), ("mail/no_extension", "mail")]
  assert {s["file"] for s in plan.skipped} == {"notes.txt", "chat/README"}
  assert [f["file"] for f in plan.failed] == ["chat/broken.pcap"]
  assert "not a pcap or pcapng" in plan.failed[0]["reason"]
  flows = [_flow("mail/a.pcap", "10.0.0.1", 4000, "1.2.3.4", 443)]
  plan.captures[2].label_flows(flows)
  assert flows[0].label == "mail"


def test_plain_folder_and_single_file_are_unlabeled(tmp_path):
  _capture(tmp_path / "x.pcap")
  _capture(tmp_path / "y.pcapng", ng=True)
  plan = labels.plan_dataset(str(tmp_path))
  assert plan.layout == "plain"
  assert [(c.name, c.file_label, c.flow_labels) for c in plan.captures] == [
      ("x.pcap", None, {}), ("y.pcapng", None, {})]
  single = labels.plan_dataset(str(tmp_path / "y.pcapng"))
  assert single.layout == "plain" and [c.name for c in single.captures] == ["y.pcapng"]


def test_csv_per_file_rows(tmp_path):
  _capture(tmp_path / "pcap" / "a.pcap")
  _capture(tmp_path / "pcap" / "b.pcapng", ng=True)
  _capture(tmp_path / "pcap" / "unnamed.pcap")
  (tmp_path / "labels.csv").write_text("pcap,label\npcap/a.pcap,mail\n\npcap/b.pcapng,chat\n")
  plan = labels.plan_dataset(str(tmp_path))
  assert plan.layout == "csv" and plan.labels_csv == str(tmp_path / "labels.csv")
  assert [(c.name, c.file_label) for c in plan.captures] == [
      ("pcap/a.pcap", "mail"), ("pcap/b.pcapng", "chat"), ("pcap/unnamed.pcap", None)]
  assert plan.skipped == [] and plan.failed == []


def test_csv_per_flow_rows_any_endpoint_order(tmp_path):
  _capture(tmp_path / "pcap" / "mix.pcap")
  (tmp_path / "labels.csv").write_text(
      "pcap,ip_a,port_a,ip_b,port_b,label\n"
      "pcap/mix.pcap,10.0.0.1,4000,1.2.3.4,443,mail\n"
      "pcap/mix.pcap,5.6.7.8,443,10.0.0.1,4001,chat\n"       # server first
      "pcap/mix.pcap,2001:DB8:0::1,443,2001:db8::2,5000,maps\n"
      "pcap/mix.pcap,9.9.9.9,443,10.0.0.1,4002,news\n")      # a flow the file lacks
  (capture,) = labels.plan_dataset(str(tmp_path)).captures
  assert capture.file_label is None and len(capture.flow_labels) == 4
  flows = [_flow("pcap/mix.pcap", "10.0.0.1", 4000, "1.2.3.4", 443, 0),
           _flow("pcap/mix.pcap", "10.0.0.1", 4001, "5.6.7.8", 443, 1),
           _flow("pcap/mix.pcap", "2001:db8::2", 5000, "2001:db8::1", 443, 2),
           _flow("pcap/mix.pcap", "10.0.0.1", 4003, "1.2.3.4", 443, 3)]
  matched = capture.label_flows(flows)
  assert [f.label for f in flows] == ["mail", "chat", "maps", None]
  unmatched = set(capture.flow_labels) - matched
  assert [capture.flow_labels[k] for k in unmatched] == [("news", 5)]


def test_per_flow_row_overrides_per_file_row(tmp_path):
  _capture(tmp_path / "a.pcap")
  (tmp_path / "labels.csv").write_text(
      "pcap,ip_a,port_a,ip_b,port_b,label\na.pcap,,,,,mail\n"
      "a.pcap,1.2.3.4,443,10.0.0.1,4000,chat\n")
  (capture,) = labels.plan_dataset(str(tmp_path)).captures
  flows = [_flow("a.pcap", "10.0.0.1", 4000, "1.2.3.4", 443),
           _flow("a.pcap", "10.0.0.1", 4001, "1.2.3.4", 443, 1)]
  capture.label_flows(flows)
  assert [f.label for f in flows] == ["chat", "mail"]


def test_explicit_csv_outside_root_and_for_a_single_file(tmp_path):
  _capture(tmp_path / "data" / "a.pcap")
  _capture(tmp_path / "data" / "b.pcap")
  elsewhere = tmp_path / "meta" / "my_labels.csv"
  elsewhere.parent.mkdir()
  elsewhere.write_text("pcap,label\na.pcap,mail\nb.pcap,chat\n")
  plan = labels.plan_dataset(str(tmp_path / "data"), labels_csv=str(elsewhere))
  assert [(c.name, c.file_label) for c in plan.captures] == [("a.pcap", "mail"), ("b.pcap", "chat")]
  single = labels.plan_dataset(str(tmp_path / "data" / "b.pcap"), labels_csv=str(elsewhere))
  assert [(c.name, c.file_label) for c in single.captures] == [("b.pcap", "chat")]


@pytest.mark.parametrize("text, line, message", [
    ("pcap,label\na.pcap,mail\nmissing.pcap,chat\n", 3, "'missing.pcap' not found"),
    ("pcap,class\na.pcap,mail\n", 1, "unknown: ['class']"),
    ("pcap,ip_a,port_a,label\na.pcap,1.2.3.4,443,mail\n", 1, "missing: ['ip_b', 'port_b']"),
    ("file,label\n", 1, "missing: ['pcap'"),
    ("", 1, "no header"),
    ("pcap,label\na.pcap,mail,extra\n", 2, "expected 2 fields, got 3"),
    ("pcap,label\na.pcap,\n", 2, "empty pcap or label"),
    ("pcap,label\na.pcap,mail\na.pcap,chat\n", 3, "already labelled 'mail' on line 2"),
    ("pcap,ip_a,port_a,ip_b,port_b,label\na.pcap,1.2.3.400,443,10.0.0.1,1,m\n", 2, "bad IP"),
    ("pcap,ip_a,port_a,ip_b,port_b,label\na.pcap,1.2.3.4,70000,10.0.0.1,1,m\n", 2, "bad port"),
    ("pcap,ip_a,port_a,ip_b,port_b,label\na.pcap,1.2.3.4,443,,,m\n", 2, "needs ip_a"),
    ("pcap,ip_a,port_a,ip_b,port_b,label\n"
     "a.pcap,1.2.3.4,443,10.0.0.1,1,m\na.pcap,10.0.0.1,1,1.2.3.4,443,n\n", 3,
     "flow already labelled 'm' on line 2"),
])
def test_bad_labels_csv_is_a_clear_error_with_file_and_line(tmp_path, text, line, message):
  _capture(tmp_path / "a.pcap")
  csv_path = tmp_path / "labels.csv"
  csv_path.write_text(text)
  with pytest.raises(labels.LabelsError) as error:
    labels.plan_dataset(str(tmp_path))
  assert error.value.path == str(csv_path) and error.value.line == line
  assert str(error.value).startswith(f"{csv_path}:{line}: ")
  assert message in str(error.value)


def test_missing_root_or_csv(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such file or folder"):
    labels.plan_dataset(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="labels file not found"):
    labels.plan_dataset(str(tmp_path), labels_csv=str(tmp_path / "nope.csv"))


def test_endpoint_key_is_order_free_and_canonical():
  assert (labels.endpoint_key("10.0.0.1", 1, "2.2.2.2", 443)
          == labels.endpoint_key("2.2.2.2", "443", "10.0.0.1", "1"))
  assert labels.endpoint_key("2001:DB8::0:1", 1, "::1", 2) == (("2001:db8::1", 1), ("::1", 2))
