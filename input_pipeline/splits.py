"""Leak-free train / validation / test splits and the unlabeled pool.

Three ways to split (config `data.split`, algorithms in docs/design/tokens.md):
  flow     stratified random split per flow (the paper's 8:1:1);
  capture  whole capture files go to one split, greedily stratified by class;
  given    a CSV of `pcap,split` rows assigns whole capture files.
Then label scarcity: a fraction of each class's training flows keeps its
label, the rest joins the unlabeled pool with `hidden_label` kept for
measuring pseudo-label accuracy. Validation and test flows never enter the
pool; flows that never had a label only ever join it from training captures.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import pathlib
from typing import Sequence

import numpy as np

from input_pipeline.records import FlowRecord

SPLITS = ("train", "validation", "test", "unlabeled")
LABELLED_SPLITS = SPLITS[:3]
METHODS = ("flow", "capture", "given")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation",
                  "valid": "validation", "dev": "validation", "test": "test"}


class SplitError(ValueError):
  """A split request that cannot be honoured (bad CSV, bad ratios, ...)."""


@dataclasses.dataclass
class Splits:
  """Which flow goes where. `index` points into the flow list it came from."""
  method: str
  seed: int
  ratios: tuple[float, float, float]
  label_fraction: float
  class_names: list[str]
  index: dict[str, np.ndarray]          # split -> int64 positions in the flow list
  label: dict[str, np.ndarray]          # split -> int32 class id, -1 in `unlabeled`
  hidden_label: dict[str, np.ndarray]   # split -> int32 true class id or -1
  flow_id: dict[str, np.ndarray]        # split -> str
  capture: dict[str, np.ndarray]        # split -> str
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def counts(self) -> dict[str, dict[str, int]]:
    """split -> class name (or `none`) -> flows, by true (hidden) label."""
    out = {}
    for s in SPLITS:
      ids, n = np.unique(self.hidden_label[s], return_counts=True)
      out[s] = {(self.class_names[i] if i >= 0 else "none"): int(c) for i, c in zip(ids, n)}
    return out

  def save(self, path) -> None:
    doc = {
        "method": self.method, "seed": self.seed, "ratios": list(self.ratios),
        "label_fraction": self.label_fraction, "class_names": self.class_names,
        "counts": self.counts(), "notes": self.notes,
        "splits": {s: {"flow_id": self.flow_id[s].tolist(),
                       "capture": self.capture[s].tolist(),
                       "label": self.label[s].tolist(),
                       "hidden_label": self.hidden_label[s].tolist()} for s in SPLITS},
    }
    pathlib.Path(path).write_text(json.dumps(doc, indent=1))

  @classmethod
  def load(cls, path, flows: Sequence[FlowRecord] | None = None) -> "Splits":
    """Reads splits.json; with `flows`, resolves `index` by flow id."""
    doc = json.loads(pathlib.Path(path).read_text())
    parts = doc["splits"]
    position = {f.flow_id: i for i, f in enumerate(flows)} if flows is not None else None
    index = {}
    for s in SPLITS:
      if position is None:
        index[s] = np.full(len(parts[s]["flow_id"]), -1, np.int64)
      else:
        index[s] = np.array([position[i] for i in parts[s]["flow_id"]], np.int64)
    return cls(
        method=doc["method"], seed=doc["seed"], ratios=tuple(doc["ratios"]),
        label_fraction=doc["label_fraction"], class_names=doc["class_names"], index=index,
        label={s: np.array(parts[s]["label"], np.int32) for s in SPLITS},
        hidden_label={s: np.array(parts[s]["hidden_label"], np.int32) for s in SPLITS},
        flow_id={s: np.array(parts[s]["flow_id"], dtype=str) for s in SPLITS},
        capture={s: np.array(parts[s]["capture"], dtype=str) for s in SPLITS},
        notes=doc["notes"])


def make_splits(flows: Sequence[FlowRecord], *, method: str = "flow",
                ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                label_fraction: float = 1.0, split_file: str | os.PathLike | None = None
                ) -> Splits:
  """Assigns every flow to train / validation / test / unlabeled (or drops it)."""
  if method not in METHODS:
    raise SplitError(f"unknown split method {method!r}; choose one of {METHODS}")
  ratios = tuple(float(r) for r in ratios)
  if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0:
    raise SplitError(f"split_ratios must be 3 non-negative numbers, train > 0; got {ratios}")
  ratios = tuple(r / sum(ratios) for r in ratios)
  if not 0.0 < label_fraction <= 1.0:
    raise SplitError(f"label_fraction must be in (0, 1], got {label_fraction}")

  # Work in flow-id order so that the result does not depend on input order.
  flow_ids = np.array([f.flow_id for f in flows], dtype=str)
  if len(set(flow_ids.tolist())) != len(flows):
    raise SplitError("flow ids are not unique")
  order = np.argsort(flow_ids, kind="stable")
  captures = np.array([f.capture for f in flows], dtype=str)
  class_names = sorted({f.label for f in flows if f.label is not None})
  class_id = {c: i for i, c in enumerate(class_names)}
  labels = np.array([class_id[f.label] if f.label is not None else -1 for f in flows],
                    np.int32)
  notes: list[str] = []

  # assign: -1 dropped, 0..2 labelled split, 3 pool (only for label -1 flows here).
  if method == "flow":
    assign = _split_by_flow(labels, order, ratios, seed, class_names, notes)
  else:
    if method == "capture":
      capture_split = _split_by_capture(labels, captures, ratios, seed, class_names, notes)
    else:
      if not split_file:
        raise SplitError("split=given needs a split file (data.split_file / --split-file)")
      capture_split = _read_split_file(split_file, captures, notes)
    assign = np.array([capture_split.get(c, -1) for c in captures.tolist()], np.int8)
    unlisted = (assign == -1)
    if unlisted.any():
      notes.append(f"{int(unlisted.sum())} flows excluded: their captures have no split")
    # Never-labelled flows only feed the pool from training captures: a test
    # capture must not leak into training even without labels.
    dropped = (labels < 0) & (assign > 0)
    if dropped.any():
      notes.append(f"{int(dropped.sum())} unlabeled flows of validation/test captures dropped")
    assign = np.where(labels < 0, np.where(assign == 0, 3, -1), assign).astype(np.int8)

  # Label scarcity: a stratified fraction of training flows keeps its label.
  hidden = np.zeros(len(flows), bool)
  if label_fraction < 1.0:
    rng = np.random.default_rng([seed, 1])
    for c in range(len(class_names)):
      members = order[(assign[order] == 0) & (labels[order] == c)]
      keep = max(1, int(round(label_fraction * len(members))))
      if len(members) > keep:
        hidden[rng.permutation(members)[keep:]] = True
  pool = (assign == 3) | hidden

  index, label, hidden_label = {}, {}, {}
  for s, code in zip(SPLITS, range(4)):
    sel = pool if s == "unlabeled" else (assign == code) & ~hidden
    index[s] = order[sel[order]].astype(np.int64)
    hidden_label[s] = labels[index[s]]
    label[s] = hidden_label[s] if s != "unlabeled" else np.full(len(index[s]), -1, np.int32)
  for s in LABELLED_SPLITS:
    missing = sorted(set(range(len(class_names))) - set(label[s].tolist()))
    if missing and ratios[LABELLED_SPLITS.index(s)] > 0:
      notes.append(f"{s} lacks classes: {', '.join(class_names[i] for i in missing)}")
  return Splits(method, int(seed), ratios, float(label_fraction), class_names, index,
                label, hidden_label, {s: flow_ids[index[s]] for s in SPLITS},
                {s: captures[index[s]] for s in SPLITS}, notes)


def splits_from_config(flows: Sequence[FlowRecord], data_cfg) -> Splits:
  return make_splits(flows, method=data_cfg.split, ratios=data_cfg.split_ratios,
                     seed=data_cfg.seed, label_fraction=data_cfg.label_fraction,
                     split_file=data_cfg.split_file or None)


def _split_by_flow(labels, order, ratios, seed, class_names, notes) -> np.ndarray:
  """Per class: shuffle, then cut train | validation | test by the ratios."""
  assign = np.full(len(labels), 3, np.int8)     # never-labelled flows -> pool
  rng = np.random.default_rng([seed, 0])
  for c, name in enumerate(class_names):
    members = rng.permutation(order[labels[order] == c])
    n = len(members)
    n_val, n_test = (int(round(r * n)) for r in ratios[1:])
    # Every class gets at least one validation and test flow when it can.
    if n >= 3:
      n_val = max(n_val, 1 if ratios[1] > 0 else 0)
      n_test = max(n_test, 1 if ratios[2] > 0 else 0)
    else:
      n_val = n_test = 0
      notes.append(f"class {name}: only {n} flows, all kept for training")
    assign[members] = 0
    assign[members[n - n_val - n_test:n - n_test]] = 1
    assign[members[n - n_test:]] = 2
  return assign


def _split_by_capture(labels, captures, ratios, seed, class_names, notes) -> dict[str, int]:
  """Greedy: captures in seeded random order, each to the split that most needs it.

  A split's need for a capture is the sum over the capture's classes of
  (its flows of class c) x (the fraction of the split's class-c target still
  missing). Ties go to train, then validation, then test, so a class's first
  three captures land in three different splits.
  """
  num_classes = len(class_names)
  names = sorted(set(captures.tolist()))
  pos = {c: i for i, c in enumerate(names)}
  table = np.zeros((len(names), num_classes + 1), np.int64)   # last column: unlabeled
  np.add.at(table, (np.array([pos[c] for c in captures.tolist()], np.int64),
                    np.where(labels >= 0, labels, num_classes)), 1)
  per_class = table[:, :num_classes]
  target = per_class.sum(0)[:, None] * np.array(ratios)[None, :]      # [C, 3]
  current = np.zeros_like(target)
  active = np.array(ratios) > 0
  split_of: dict[str, int] = {}
  rng = np.random.default_rng([seed, 2])
  for i in rng.permutation(len(names)):
    counts = per_class[i]
    if counts.sum() == 0:
      split_of[names[i]] = 0    # only never-labelled flows: training material
      continue
    missing = np.where(target > 0, (target - current) / np.maximum(target, 1e-9), 0.0)
    score = (counts[:, None] * missing).sum(0)
    score[~active] = -np.inf
    s = int(np.argmax(score))
    split_of[names[i]] = s
    current[:, s] += counts
  num_captures = (per_class > 0).sum(0)
  needed = int(active.sum())
  for c, name in enumerate(class_names):
    if num_captures[c] < needed:
      notes.append(f"class {name}: only {int(num_captures[c])} capture(s), "
                   f"cannot appear in all {needed} labelled splits")
  return split_of


def _read_split_file(path, captures, notes) -> dict[str, int]:
  """`pcap,split` rows -> capture name -> split code; unknown files noted."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise SplitError(f"split file not found: {path}")
  known = set(captures.tolist())
  by_base = collections.defaultdict(list)
  for c in known:
    by_base[os.path.basename(c)].append(c)
  split_of: dict[str, int] = {}
  unmatched = []
  with path.open(newline="") as fh:
    for line_no, row in enumerate(csv.reader(fh), start=1):
      if not row or row[0].startswith("#"):
        continue
      if len(row) < 2:
        raise SplitError(f"{path}:{line_no}: expected `pcap,split`, got {row!r}")
      name, split = row[0].strip(), row[1].strip().lower()
      if line_no == 1 and (name.lower(), split) == ("pcap", "split"):
        continue
      if split not in _SPLIT_ALIASES:
        raise SplitError(f"{path}:{line_no}: split must be train/validation/test, "
                         f"got {row[1]!r}")
      name = os.path.normpath(name)
      if name not in known and len(by_base.get(name, ())) == 1:
        name = by_base[name][0]     # a bare file name that is unique in the dataset
      if name not in known:
        unmatched.append(row[0])
        continue
      code = LABELLED_SPLITS.index(_SPLIT_ALIASES[split])
      if split_of.get(name, code) != code:
        raise SplitError(f"{path}:{line_no}: {name} assigned to two splits")
      split_of[name] = code
  if unmatched:
    notes.append(f"split file names {len(unmatched)} file(s) with no flows: "
                 f"{', '.join(unmatched[:10])}{' ...' if len(unmatched) > 10 else ''}")
  unnamed = sorted(known - set(split_of))
  if unnamed:
    notes.append(f"{len(unnamed)} capture(s) not in the split file, excluded: "
                 f"{', '.join(unnamed[:10])}{' ...' if len(unnamed) > 10 else ''}")
  return split_of
