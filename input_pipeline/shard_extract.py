"""Extraction split over the processes of a multi-host run, merged into one build.

Reading captures is the slow part of a build, and in a multi-process job every host can do its
share. The protocol (pass_jax/pipeline.py drives it, with a barrier between the steps):

  1. every process plans the dataset (`plan_dataset`: the same sorted capture list everywhere),
     reads the captures `assign_captures` gives it, and writes them to
     `parts_dir/part-<i>-of-<P>.pkl` (`read_share`);
  2. process 0 loads every part, puts the per-capture results back in plan order and runs the
     same labelling, filtering, splitting, vocabulary and tfds writing as a single-process build
     (`build_from_shares`), then deletes the parts.

The read results are exactly what `extract._read_all` returns on one host, and everything after
reading is the single-process code, so splits.json, vocab.txt and the tfds shards equal those of
`build.build_dataset` whatever the number of processes.

No jax here: the caller supplies the process index and count and does the synchronisation.
"""
from __future__ import annotations

import functools
import os
import pathlib
import pickle
import shutil
import time
from typing import Optional

from input_pipeline import build as build_lib
from input_pipeline import extract
from input_pipeline import flows as flows_lib
from input_pipeline import labels as labels_lib
from input_pipeline import tfds_builder

# Bumped when the part file layout changes: a part from another version is refused, not misread.
_PART_FORMAT = 1


def assign_captures(sizes: list[int], process_count: int) -> list[list[int]]:
  """Capture indices per process: biggest file first to the least loaded process.

  Balances bytes rather than file counts (one huge capture among small ones is common in real
  datasets). Ties go to the lower process index, so every process computes the same assignment
  from the same sizes; each list is sorted.
  """
  if process_count < 1:
    raise ValueError(f"process_count must be >= 1, got {process_count}")
  load = [0] * process_count
  shares: list[list[int]] = [[] for _ in range(process_count)]
  for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
    p = min(range(process_count), key=lambda p: (load[p], p))
    shares[p].append(i)
    load[p] += sizes[i]
  return [sorted(s) for s in shares]


def _sizes(plan: labels_lib.DatasetPlan) -> list[int]:
  return [os.path.getsize(c.path) if os.path.isfile(c.path) else 0 for c in plan.captures]


def part_path(parts_dir, process_index: int, process_count: int) -> pathlib.Path:
  return pathlib.Path(parts_dir) / f"part-{process_index:05d}-of-{process_count:05d}.pkl"


def plan(data_cfg, root) -> labels_lib.DatasetPlan:
  """The dataset plan of config.data at `root` (raises like `extract_dataset` does)."""
  root = pathlib.Path(root)
  if not root.exists():
    raise FileNotFoundError(f"data root not found: {root}")
  return labels_lib.plan_dataset(str(root), data_cfg.labels_csv or None)


def read_share(data_cfg, plan_: labels_lib.DatasetPlan, parts_dir, *, process_index: int,
               process_count: int, workers: int = 0) -> pathlib.Path:
  """Reads this process's captures and writes their (flows, stats) to its part file."""
  flow_cfg = flows_lib.FlowConfig.from_config(data_cfg)
  mine = assign_captures(_sizes(plan_), process_count)[process_index]
  # The reader of a single-process extraction (a worker pool when workers != 1), on our share.
  read_all = extract._read_all  # pylint: disable=protected-access
  results = read_all([plan_.captures[i] for i in mine], flow_cfg, workers, None)
  path = part_path(parts_dir, process_index, process_count)
  path.parent.mkdir(parents=True, exist_ok=True)
  part = {"format": _PART_FORMAT, "process_index": process_index,
          "process_count": process_count, "names": [plan_.captures[i].name for i in mine],
          "results": results}
  tmp = path.with_suffix(".tmp")
  with open(tmp, "wb") as f:  # rename when complete: the merge never sees half a part
    pickle.dump(part, f, protocol=pickle.HIGHEST_PROTOCOL)
  os.replace(tmp, path)
  return path


def merge_shares(plan_: labels_lib.DatasetPlan, parts_dir, process_count: int) -> list:
  """The read results of every capture of the plan, in plan order, from the part files.

  Raises ValueError when a part is missing, of another format, or when the parts do not cover
  the plan exactly once (the processes saw different files).
  """
  by_name: dict[str, tuple] = {}
  for p in range(process_count):
    path = part_path(parts_dir, p, process_count)
    if not path.is_file():
      raise ValueError(f"process {p} left no extraction part ({path})")
    with open(path, "rb") as f:
      part = pickle.load(f)
    if part.get("format") != _PART_FORMAT or part.get("process_count") != process_count:
      raise ValueError(f"{path} was written by another version or process count")
    for name, result in zip(part["names"], part["results"]):
      if name in by_name:
        raise ValueError(f"capture {name} was read by two processes")
      by_name[name] = result
  names = [c.name for c in plan_.captures]
  missing = [n for n in names if n not in by_name]
  extra = sorted(set(by_name) - set(names))
  if missing or extra:
    raise ValueError(f"the processes read other captures than process 0 planned (missing "
                     f"{missing[:5]}, unexpected {extra[:5]}); do all of them see the same "
                     "data root?")
  return [by_name[n] for n in names]


def build_from_shares(data_cfg, root, out_dir, *, process_count: int, workers: int = 0,
                      start: Optional[float] = None) -> build_lib.BuildResult:
  """Process 0, once every part is written: the dataset of `build.build_dataset`."""
  plan_ = plan(data_cfg, root)
  parts_dir = pathlib.Path(out_dir) / "parts"
  results = merge_shares(plan_, parts_dir, process_count)
  flow_cfg = flows_lib.FlowConfig.from_config(data_cfg)
  flows, report = extract.label_and_filter(
      plan_, results, root=str(root), flow_cfg=flow_cfg,
      min_payload_bytes=data_cfg.min_payload_bytes, tls_only=data_cfg.tls_only,
      min_flows_per_class=data_cfg.min_flows_per_class, workers=workers,
      start=time.perf_counter() if start is None else start)
  report["processes"] = process_count
  flow_source = functools.partial(tfds_builder.read_capture_flows, str(root), flow_cfg)
  result = build_lib.write_build(flows, report, data_cfg, out_dir, flow_source=flow_source)
  shutil.rmtree(parts_dir, ignore_errors=True)
  return result
