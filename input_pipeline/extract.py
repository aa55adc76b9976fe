"""Dataset extraction: captures -> labelled, filtered FlowRecords and a report.

  python -m input_pipeline.extract PATH [--labels FILE] [--workers N]
      [--report report.json] [--min-payload-bytes N] [--tls-only]
      [--min-flows-per-class N]

PATH is one capture, a folder of captures, or a dataset root in one of the
layouts of `input_pipeline/labels.py`. Files are read in parallel processes,
one file per task; the output order (capture name, then flow index) does not
depend on the number of workers. A file that cannot be read is reported with
the reason and the rest of the dataset is still extracted.

Filters, in this order (docs/design/data.md):
  min_payload_bytes    flows with fewer TCP payload bytes (both directions,
                       whole flow) are dropped: handshake-only or refused
                       connections carry nothing PASS could read.
  tls_only             keep flows whose first payload byte is a TLS record type
                       (0x14-0x17).
  min_flows_per_class  classes left with fewer labelled flows are dropped with
                       all their flows. They are not demoted to unlabeled: the
                       unlabeled pool would then hold traffic of classes the
                       classifier can never output, and pseudo-labelling would
                       force it into wrong ones.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Optional

from input_pipeline import flows as flows_lib
from input_pipeline import labels as labels_lib
from input_pipeline import records

Progress = Callable[[int, int, str], None]   # (files done, files total, last file)
MAX_EXAMPLES = 20   # unmatched label rows listed by name in the report


def _read_capture(task: tuple) -> tuple:
  """Worker: one capture -> (task index, flows, stats dict). Never raises."""
  index, path, name, cfg = task
  try:
    flows, stats = flows_lib.read_flows(path, cfg, capture_name=name)
    return index, flows, stats.as_dict()
  except Exception as e:  # a reader bug must cost one file, not the whole run
    return index, [], {"file": name, "packets": 0, "tcp_packets": 0, "skipped_packets": 0,
                       "flows": 0, "error": f"{name}: {type(e).__name__}: {e}"}




def _read_all(captures, cfg, workers: int, progress: Optional[Progress]) -> list:
  """(flows, stats) per capture, in the order of `captures`."""
  tasks = [(i, c.path, c.name, cfg) for i, c in enumerate(captures)]
  results: list = [None] * len(tasks)
  workers = min(workers or os.cpu_count() or 1, len(tasks))
  if workers <= 1:
    outputs = map(_read_capture, tasks)
    pool = None
  else:  # biggest files first so that no worker is left with a giant at the end
    tasks.sort(key=lambda t: -os.path.getsize(t[1]))
    pool = flows_lib.mp_context().Pool(workers)
    outputs = pool.imap_unordered(_read_capture, tasks)
  try:
    for done, (index, flows, stats) in enumerate(outputs, 1):
      results[index] = (flows, stats)
      if progress:
        progress(done, len(tasks), captures[index].name)
  finally:
    if pool is not None:
      pool.close()
      pool.join()
  return results


def _payload_bytes(flow: records.FlowRecord) -> int:
  return max(len(flow.payload), flow.bytes_c2s + flow.bytes_s2c)


def _is_tls(flow: records.FlowRecord) -> bool:
  return bool(flow.payload) and 0x14 <= flow.payload[0] <= 0x17


def _flow_text(key) -> str:
  (ip_a, port_a), (ip_b, port_b) = key
  return f"{ip_a}:{port_a} <-> {ip_b}:{port_b}"


def extract_dataset(root: str, *, labels_csv: Optional[str] = None,
                    flow_cfg: Optional[flows_lib.FlowConfig] = None,
                    min_payload_bytes: int = 1, tls_only: bool = False,
                    min_flows_per_class: int = 10, workers: int = 0,
                    progress: Optional[Progress] = None
                    ) -> tuple[list[records.FlowRecord], dict]:
  """Reads, labels and filters every flow under `root`.

  Returns (flows, report): flows sorted by (capture, index), labelled
  (`label` set) or not (None); report as described in docs/design/data.md.
  Raises FileNotFoundError / labels.LabelsError before reading anything when
  the root or the label source is unusable.
  """
  start = time.perf_counter()
  cfg = flow_cfg or flows_lib.FlowConfig()
  plan = labels_lib.plan_dataset(root, labels_csv)
  results = _read_all(plan.captures, cfg, workers, progress)
  return label_and_filter(plan, results, root=root, flow_cfg=cfg,
                          min_payload_bytes=min_payload_bytes, tls_only=tls_only,
                          min_flows_per_class=min_flows_per_class, workers=workers, start=start)


def label_and_filter(plan: labels_lib.DatasetPlan, results: list, *, root: str,
                     flow_cfg: flows_lib.FlowConfig, min_payload_bytes: int = 1,
                     tls_only: bool = False, min_flows_per_class: int = 10, workers: int = 0,
                     start: Optional[float] = None) -> tuple[list[records.FlowRecord], dict]:
  """The second half of `extract_dataset`, on captures already read.

  `results[i]` is `(flows, stats dict)` of `plan.captures[i]`, as `_read_capture` returns them;
  whoever read them (local worker processes, or the hosts of a multi-process run, see
  shard_extract.py), the flows and the report come out the same. `start` (perf_counter) is when
  the extraction began, for the report's `seconds`.
  """
  if len(results) != len(plan.captures):
    raise ValueError(f"{len(results)} read results for {len(plan.captures)} captures")
  start = time.perf_counter() if start is None else start
  totals = collections.Counter()
  files_failed = list(plan.failed)
  all_flows: list[records.FlowRecord] = []
  flow_rows, unmatched = 0, []
  for capture, (flows, stats) in zip(plan.captures, results):
    for key, value in stats.items():   # every counter the reader keeps, summed
      if isinstance(value, int) and not isinstance(value, bool) and key != "flows":
        totals[key] += value
    if stats.get("error"):
      files_failed.append({"file": capture.name, "reason": stats["error"],
                           "flows_kept": len(flows)})
    matched = capture.label_flows(flows)
    flow_rows += len(capture.flow_labels)
    for key, (label, line) in sorted(capture.flow_labels.items(), key=lambda kv: kv[1][1]):
      if key not in matched:
        unmatched.append({"file": capture.name, "line": line, "flow": _flow_text(key),
                          "label": label})
    flows.sort(key=lambda f: f.index)
    all_flows.extend(flows)

  filtered = {"min_payload_bytes": 0, "tls_only": 0, "min_flows_per_class": 0}
  kept = []
  for flow in all_flows:
    if _payload_bytes(flow) < min_payload_bytes:
      filtered["min_payload_bytes"] += 1
    elif tls_only and not _is_tls(flow):
      filtered["tls_only"] += 1
    else:
      kept.append(flow)
  per_class = collections.Counter(f.label for f in kept if f.label is not None)
  dropped = {c: n for c, n in sorted(per_class.items()) if n < min_flows_per_class}
  if dropped:
    kept = [f for f in kept if f.label not in dropped]
    filtered["min_flows_per_class"] = sum(dropped.values())
  per_class = {c: n for c, n in sorted(per_class.items(), key=lambda cn: (-cn[1], cn[0]))
               if c not in dropped}

  labelled = sum(per_class.values())
  report = {
      "root": str(root), "labels_csv": plan.labels_csv, "layout": plan.layout,
      "files": len(plan.captures) + len(plan.failed),
      "files_ok": len(plan.captures) + len(plan.failed) - len(files_failed),
      "files_failed": files_failed, "files_skipped": plan.skipped,
      "packets": totals["packets"], "tcp_packets": totals["tcp_packets"],
      "skipped_packets": totals["skipped_packets"],
      "packet_details": {k: v for k, v in sorted(totals.items())
                         if k not in ("packets", "tcp_packets", "skipped_packets")},
      "flows_read": len(all_flows), "flows": len(kept),
      "labelled_flows": labelled, "unlabelled_flows": len(kept) - labelled,
      "num_classes": len(per_class), "flows_per_class": per_class,
      "classes_dropped": dropped, "flows_filtered": filtered,
      "label_rows": {"per_flow": flow_rows, "unmatched": len(unmatched),
                     "unmatched_examples": unmatched[:MAX_EXAMPLES]},
      "settings": {"min_payload_bytes": min_payload_bytes, "tls_only": tls_only,
                   "min_flows_per_class": min_flows_per_class, "workers": workers,
                   "flow_config": dataclasses.asdict(flow_cfg)},
      "seconds": round(time.perf_counter() - start, 3),
  }
  return kept, report


def format_report(report: dict) -> str:
  """The report as a few lines for people."""
  lines = [
      f"{report['root']} ({report['layout']}): {report['files_ok']} of {report['files']} "
      f"files read in {report['seconds']:.1f} s",
      f"packets {report['packets']:,} (TCP {report['tcp_packets']:,}, "
      f"skipped {report['skipped_packets']:,})",
      f"flows {report['flows']:,} kept of {report['flows_read']:,}: "
      f"{report['labelled_flows']:,} labelled in {report['num_classes']} classes, "
      f"{report['unlabelled_flows']:,} unlabelled",
      "filtered: " + ", ".join(f"{k} {v:,}" for k, v in report["flows_filtered"].items()),
  ]
  if report["classes_dropped"]:
    lines.append("classes dropped (too few flows): " + ", ".join(
        f"{c} ({n})" for c, n in report["classes_dropped"].items()))
  if report["flows_per_class"]:
    width = max(len(c) for c in report["flows_per_class"])
    lines.append("flows per class:")
    lines += [f"  {c:<{width}}  {n:>7,}" for c, n in report["flows_per_class"].items()]
  rows = report["label_rows"]
  if rows["unmatched"]:
    lines.append(f"label rows naming no flow: {rows['unmatched']} of {rows['per_flow']}")
    lines += [f"  {r['file']} line {r['line']}: {r['flow']} ({r['label']})"
              for r in rows["unmatched_examples"][:5]]
  for key, title in (("files_failed", "failed files"), ("files_skipped", "skipped files")):
    if report[key]:
      lines.append(f"{title} ({len(report[key])}):")
      lines += [f"  {f['file']}: {f['reason']}" for f in report[key]]
  return "\n".join(lines)


def write_report(report: dict, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="python -m input_pipeline.extract",
      description="Extract TCP flows from captures, label them, print and save a report.")
  parser.add_argument("path", help="a capture file, a folder of captures or a dataset root")
  parser.add_argument("--labels", default=None, help="labels CSV (default: PATH/labels.csv)")
  parser.add_argument("--workers", type=int, default=0, help="processes; 0: one per CPU")
  parser.add_argument("--report", default="extract_report.json", help="JSON report path")
  parser.add_argument("--min-payload-bytes", type=int, default=1)
  parser.add_argument("--tls-only", action="store_true")
  parser.add_argument("--min-flows-per-class", type=int, default=10)
  parser.add_argument("--payload-bytes", type=int, default=flows_lib.FlowConfig.payload_bytes)
  parser.add_argument("--num-lengths", type=int, default=flows_lib.FlowConfig.num_lengths)
  parser.add_argument("--length-kind", choices=("ip", "payload"), default="ip")
  parser.add_argument("--quiet", action="store_true", help="no progress line")
  args = parser.parse_args(argv)
  for name in ("workers", "min_payload_bytes", "min_flows_per_class"):
    if getattr(args, name) < 0:
      parser.error(f"--{name.replace('_', '-')} must be >= 0")
  if args.payload_bytes <= 0 or args.num_lengths <= 0:
    parser.error("--payload-bytes and --num-lengths must be > 0")
  return args


def main(argv=None) -> int:
  args = _parse_args(argv)
  progress = None
  if not args.quiet and sys.stderr.isatty():
    def progress(done, total, name):
      print(f"\r[{done}/{total}] {name[-60:]:<60}", end="" if done < total else "\n",
            file=sys.stderr, flush=True)
  cfg = dataclasses.replace(flows_lib.FlowConfig(), payload_bytes=args.payload_bytes,
                            num_lengths=args.num_lengths, length_kind=args.length_kind)
  try:
    _, report = extract_dataset(
        args.path, labels_csv=args.labels, flow_cfg=cfg,
        min_payload_bytes=args.min_payload_bytes, tls_only=args.tls_only,
        min_flows_per_class=args.min_flows_per_class, workers=args.workers,
        progress=progress)
  except (FileNotFoundError, labels_lib.LabelsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_report(report))
  try:
    write_report(report, args.report)
  except OSError as e:
    print(f"error: cannot write report {args.report}: {e.strerror}", file=sys.stderr)
    return 1
  print(f"report written to {args.report}")
  if report["files_ok"] == 0 and report["flows_read"] == 0:
    print(f"error: no readable capture in {args.path}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
