"""Shallow-baseline features straight from the flows of a build, with no vocabulary in between.

The experiment runner's shallow arms normally decode their features from the build's token rows:
a payload byte pair or a packet length the vocabulary never saw in training is `[UNK]` there and
counts as absent, exactly as for PASS. The `*_raw` arms read the same m bytes and n signed
lengths (SNI-masked when the build masks it) from the flows themselves, the way the datasets
README measured LightGBM. On ndpi-apps about 28% of the test payload bytes are `[UNK]` in the
token rows (encrypted bytes rarely repeat as 2-byte tokens), so the two readings differ.

  X, y = raw.split_features(build_dir, "train", "flat")
"""
from __future__ import annotations

import functools
import importlib
import json
import os

import numpy as np

from pass_jax.baselines import features


@functools.lru_cache(maxsize=4)
def _flows_and_splits(build_dir: str, root: str | None):
  """(flows, Splits resolved against them, data config): the build's flows, re-extracted from
  `root` (default: build.json's root) with the build's data settings."""
  from input_pipeline import extract  # pylint: disable=g-import-not-at-top
  from input_pipeline import flows as flows_lib  # pylint: disable=g-import-not-at-top
  from input_pipeline import splits as splits_lib  # pylint: disable=g-import-not-at-top
  with open(os.path.join(build_dir, "build.json")) as f:
    saved = json.load(f)
  cfg = importlib.import_module("configs.pass").get_config("tiny").data   # `pass` is a keyword
  for key, value in saved.items():
    if key in cfg and key != "demo":
      cfg[key] = tuple(value) if isinstance(value, list) else value
  root = root or saved.get("root")
  if not root:
    raise ValueError(f"{build_dir}/build.json names no data root (a generated demo set?); "
                     "pass root= the folder the build read")
  flows, _ = extract.extract_dataset(
      root, labels_csv=cfg.labels_csv or None, flow_cfg=flows_lib.FlowConfig.from_config(cfg),
      min_payload_bytes=cfg.min_payload_bytes, tls_only=cfg.tls_only,
      min_flows_per_class=cfg.min_flows_per_class, workers=1)
  try:
    splits = splits_lib.Splits.load(os.path.join(build_dir, "splits.json"), flows)
  except KeyError as e:
    raise ValueError(f"{build_dir}: flow {e} of splits.json is not among the flows re-extracted "
                     f"from {root}; the data changed since the build") from e
  return flows, splits, cfg


def split_features(build_dir: str, split: str, kind: str, root: str | None = None):
  """(X float32[N, F], y int32[N]) of the labelled rows of `split`, in the build's row order."""
  from input_pipeline import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  flows, splits, cfg = _flows_and_splits(os.path.abspath(build_dir), root)
  labels = splits.label[split]
  keep = labels >= 0
  chosen = [flows[i] for i in splits.index[split][keep]]
  arrays = vocab_lib.FlowArrays.from_flows(chosen, cfg.payload_bytes, cfg.num_lengths,
                                           mask_sni=cfg.mask_sni)
  payloads = [arrays.payload[i, :arrays.payload_len[i]] for i in range(len(chosen))]
  lengths = [arrays.lengths[i, :arrays.num_lengths[i]] for i in range(len(chosen))]
  X = features.rows(lengths, payloads, kind, cfg.payload_bytes, cfg.num_lengths)
  return X, labels[keep].astype(np.int32)
