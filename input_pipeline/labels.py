"""Dataset layouts -> the capture files to read and the label of every flow.

Layouts (see docs/design/data.md):
  csv      root/labels.csv, or an explicit CSV. Rows `pcap,label` label every
           flow of a file; rows `pcap,ip_a,port_a,ip_b,port_b,label` label the
           one bidirectional flow between two endpoints (either order). Every
           capture under root is read; flows no row covers stay unlabeled.
  folders  root/<class>/**/capture: a file takes the name of its top folder;
           captures directly in root are unlabeled traffic.
  plain    a folder of captures with no subfolders, or a single capture file:
           every flow unlabeled.

All label errors (missing file, bad columns, conflicting rows) are raised as
`LabelsError` naming the CSV and line while planning, before any extraction
starts, so a long run never dies at the end over a typo.
"""
from __future__ import annotations

import csv
import dataclasses
import ipaddress
import os
from typing import Iterable, Optional

from input_pipeline import records

# Names a capture may have; anything else in a dataset folder is skipped.
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp")
# First four bytes of pcap (us / ns / modified records, both byte orders) and pcapng.
CAPTURE_MAGICS = tuple(bytes.fromhex(m) for m in (
    "d4c3b2a1", "a1b2c3d4", "4d3cb2a1", "a1b23c4d", "34cdb2a1", "a1b2cd34", "0a0d0d0a"))
FILE_COLUMNS = ("pcap", "label")
FLOW_COLUMNS = ("pcap", "ip_a", "port_a", "ip_b", "port_b", "label")

EndpointKey = tuple[tuple[str, int], tuple[str, int]]


class LabelsError(ValueError):
  """A label source that cannot be used; names the file and line."""

  def __init__(self, path: str, line: int, message: str):
    super().__init__(f"{path}:{line}: {message}")
    self.path, self.line = path, line


@dataclasses.dataclass
class Capture:
  """One capture file to read and how to label its flows."""
  path: str                          # absolute path
  name: str                          # relative to the dataset root: FlowRecord.capture
  file_label: Optional[str] = None   # label of every flow no per-flow row names
  flow_labels: dict = dataclasses.field(default_factory=dict)  # EndpointKey -> (label, line)

  def label_flows(self, flows: Iterable[records.FlowRecord]) -> set:
    """Sets `label` on each flow; returns the per-flow keys that matched a flow."""
    matched = set()
    for flow in flows:
      flow.label = self.file_label
      if self.flow_labels:
        key = endpoint_key(flow.client_ip, flow.client_port, flow.server_ip, flow.server_port)
        if key in self.flow_labels:
          flow.label = self.flow_labels[key][0]
          matched.add(key)
    return matched


@dataclasses.dataclass
class DatasetPlan:
  root: str
  layout: str                        # csv | folders | plain
  labels_csv: Optional[str]
  captures: list[Capture]            # sorted by name
  skipped: list[dict]                # {file, reason}: not capture files, never read
  failed: list[dict]                 # {file, reason}: named like captures but are not


def endpoint_key(ip_a: str, port_a: int, ip_b: str, port_b: int) -> EndpointKey:
  """Order-free key of a bidirectional flow; IPs in canonical text form."""
  a = (ipaddress.ip_address(ip_a).compressed, int(port_a))
  b = (ipaddress.ip_address(ip_b).compressed, int(port_b))
  return (a, b) if a <= b else (b, a)


def sniff_capture(path: str) -> Optional[str]:
  """None when the file starts with a pcap/pcapng magic, else why it is not one."""
  try:
    with open(path, "rb") as f:
      head = f.read(4)
  except OSError as e:
    return f"cannot open: {e.strerror}"
  if head in CAPTURE_MAGICS:
    return None
  return f"not a pcap or pcapng file (first bytes {head.hex() or 'empty'})"


def _looks_like_capture_name(name: str) -> bool:
  suffix = os.path.splitext(name)[1].lower()
  return suffix in CAPTURE_SUFFIXES or suffix == ""


def _scan(root: str, exclude: set[str]) -> tuple[list[str], list[dict], list[dict]]:
  """Recursively finds captures under root: (relative names, skipped, failed)."""
  names, skipped, failed = [], [], []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for file_name in sorted(files):
      path = os.path.join(folder, file_name)
      rel = os.path.relpath(path, root).replace(os.sep, "/")
      if file_name.startswith(".") or os.path.abspath(path) in exclude:
        continue
      if not _looks_like_capture_name(file_name):
        skipped.append({"file": rel, "reason": "not a capture file name"})
        continue
      problem = sniff_capture(path)
      if problem is None:
        names.append(rel)
      elif os.path.splitext(file_name)[1]:   # named like a capture: a broken one
        failed.append({"file": rel, "reason": problem})
      else:                                  # no extension: just some other file
        skipped.append({"file": rel, "reason": problem})
  return names, skipped, failed


def _parse_endpoint(path, line, ip, port) -> tuple[str, int]:
  try:
    ip = ipaddress.ip_address(ip.strip()).compressed
  except ValueError:
    raise LabelsError(path, line, f"bad IP address {ip!r}") from None
  try:
    port = int(port)
    if not 0 <= port <= 65535:
      raise ValueError
  except ValueError:
    raise LabelsError(path, line, f"bad port {port!r}") from None
  return ip, port


def read_labels_csv(path: str, root: str) -> dict[str, Capture]:
  """Parses a labels.csv; returns {absolute capture path: Capture}.

  Capture paths are relative to `root` (falling back to the CSV's folder).
  Raises LabelsError for missing/unknown columns, malformed rows, files that do
  not exist and rows that give one file or flow two different labels.
  """
  captures: dict[str, Capture] = {}
  file_label_line: dict[str, int] = {}
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = None
    for row in reader:
      line = reader.line_num
      if not any(cell.strip() for cell in row):
        continue
      if header is None:
        header = tuple(cell.strip().lower() for cell in row)
        if header not in (FILE_COLUMNS, FLOW_COLUMNS):
          missing = [c for c in FLOW_COLUMNS if c not in header]
          unknown = [c for c in header if c not in FLOW_COLUMNS]
          raise LabelsError(path, line, f"bad header {','.join(header)!r} (missing: "
                            f"{missing or '-'}, unknown: {unknown or '-'}); expected "
                            f"'{','.join(FILE_COLUMNS)}' or '{','.join(FLOW_COLUMNS)}'")
        continue
      if len(row) != len(header):
        raise LabelsError(path, line, f"expected {len(header)} fields, got {len(row)}")
      fields = dict(zip(header, (cell.strip() for cell in row)))
      if not fields["pcap"] or not fields["label"]:
        raise LabelsError(path, line, "empty pcap or label field")
      capture_path = _resolve(path, line, fields["pcap"], root)
      capture = captures.setdefault(capture_path, Capture(
          capture_path, os.path.relpath(capture_path, root).replace(os.sep, "/")))
      label = fields["label"]
      flow_fields = [fields.get(c, "") for c in FLOW_COLUMNS[1:5]]
      if not any(flow_fields):                 # a per-file row
        if capture.file_label not in (None, label):
          raise LabelsError(path, line, f"{fields['pcap']} already labelled "
                            f"{capture.file_label!r} on line {file_label_line[capture_path]}")
        capture.file_label = label
        file_label_line[capture_path] = line
        continue
      if not all(flow_fields):
        raise LabelsError(path, line, "a per-flow row needs ip_a, port_a, ip_b and port_b")
      a = _parse_endpoint(path, line, *flow_fields[:2])
      b = _parse_endpoint(path, line, *flow_fields[2:])
      key = (a, b) if a <= b else (b, a)
      previous = capture.flow_labels.get(key)
      if previous and previous[0] != label:
        raise LabelsError(path, line, f"flow already labelled {previous[0]!r} on line {previous[1]}")
      capture.flow_labels.setdefault(key, (label, line))
  if header is None:
    raise LabelsError(path, 1, "empty labels file: no header")
  return captures


def _resolve(csv_path: str, line: int, name: str, root: str) -> str:
  candidates = [os.path.join(root, name), os.path.join(os.path.dirname(csv_path), name)]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  raise LabelsError(csv_path, line, f"capture {name!r} not found (looked in "
                    f"{os.path.abspath(root)})")


def plan_dataset(root: str, labels_csv: Optional[str] = None) -> DatasetPlan:
  """Finds the captures under `root` (a folder or one capture) and their labels.

  `labels_csv` defaults to root/labels.csv when that exists. Raises
  FileNotFoundError for a missing root or CSV and LabelsError for a bad CSV.
  """
  root = os.fspath(root)
  labels_csv = os.fspath(labels_csv) if labels_csv else None
  if not os.path.exists(root):
    raise FileNotFoundError(f"no such file or folder: {root}")
  if labels_csv and not os.path.isfile(labels_csv):
    raise FileNotFoundError(f"labels file not found: {labels_csv}")
  if os.path.isfile(root):   # one capture: names and label rows relative to its folder
    folder = os.path.dirname(os.path.abspath(root))
    capture = Capture(os.path.abspath(root), os.path.basename(root))
    if labels_csv:
      capture = read_labels_csv(labels_csv, folder).get(capture.path, capture)
    problem = sniff_capture(root)
    failed = [{"file": capture.name, "reason": problem}] if problem else []
    return DatasetPlan(root, "csv" if labels_csv else "plain", labels_csv,
                       [] if problem else [capture], [], failed)

  default_csv = os.path.join(root, "labels.csv")
  if not labels_csv and os.path.isfile(default_csv):
    labels_csv = default_csv
  exclude = {os.path.abspath(labels_csv)} if labels_csv else set()
  names, skipped, failed = _scan(root, exclude)
  if labels_csv:
    by_path = {os.path.abspath(os.path.join(root, n)): Capture(
        os.path.abspath(os.path.join(root, n)), n) for n in names}
    failed_names = {f["file"] for f in failed}
    for path, capture in read_labels_csv(labels_csv, root).items():
      if path not in by_path and capture.name not in failed_names:
        # Named by the CSV but not found by the scan (hidden, odd name, outside root).
        problem = sniff_capture(path)
        if problem:
          failed.append({"file": capture.name, "reason": problem})
          continue
      if capture.name not in failed_names:
        by_path[path] = capture
    captures = list(by_path.values())
    read = {c.name for c in captures} | {f["file"] for f in failed}
    skipped = [s for s in skipped if s["file"] not in read]
    layout = "csv"
  else:
    captures = [Capture(os.path.abspath(os.path.join(root, n)), n,
                        file_label=n.split("/")[0] if "/" in n else None) for n in names]
    layout = "folders" if any(c.file_label for c in captures) else "plain"
  captures.sort(key=lambda c: c.name)
  return DatasetPlan(root, layout, labels_csv, captures, skipped, failed)
