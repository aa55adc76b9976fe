"""Flat per-flow features for the shallow baselines.

Two families, both from what PASS itself reads (the first m payload bytes and
the first n signed packet lengths of a flow), so every method sees the same
information:

- 'stats': AppScanner-style statistics of the packet lengths, 18 per
  direction for outgoing (client->server, length > 0), incoming (length < 0)
  and both, computed on absolute lengths: count, min, max, mean, median
  absolute deviation, std, variance, skew, excess kurtosis and the 10th..90th
  percentiles. A direction without packets gives all zeros (count 0 tells a
  tree model so). Lengths equal to 0 (empty ACKs with length_kind='payload')
  have no direction and count only in 'both'.
- 'flat': the n signed lengths then the m payload bytes as numbers, -1 where
  the flow is shorter. -1 is no real byte, and no real length with
  length_kind='ip' (at least 40); with 'payload' it coincides with a 1-byte
  server segment, a rare case we accept.
- 'lengths', 'bytes': the two halves of 'flat'; 'all': 'stats' then 'flat'.

Sources: FlowRecords (`flow_features`) or token rows and the vocabulary's
id -> token strings (`token_features`), for datasets that exist only as
tokens.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

KINDS = ("stats", "lengths", "bytes", "flat", "all")
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
STAT_NAMES = ("count", "min", "max", "mean", "mad", "std", "var", "skew", "kurtosis") + tuple(
    f"p{q}" for q in PERCENTILES)
DIRECTIONS = ("out", "in", "both")
ABSENT = -1.0


def length_stats(values: np.ndarray) -> np.ndarray:
  """The 18 statistics of one series of (absolute) lengths, zeros when empty."""
  x = np.asarray(values, np.float64)
  if x.size == 0:
    return np.zeros(len(STAT_NAMES), np.float64)
  mean = x.mean()
  centered = x - mean
  m2 = np.mean(centered ** 2)
  # Population moments (numpy's var / scipy's skew and kurtosis defaults).
  # A constant series has no shape: skew and kurtosis are 0 there, not NaN.
  skew = np.mean(centered ** 3) / m2 ** 1.5 if m2 > 0 else 0.0
  kurtosis = np.mean(centered ** 4) / m2 ** 2 - 3.0 if m2 > 0 else 0.0
  median = np.median(x)
  return np.array([
      x.size, x.min(), x.max(), mean, np.median(np.abs(x - median)), np.sqrt(m2), m2,
      skew, kurtosis, *np.percentile(x, PERCENTILES)], np.float64)


def _stats_row(lengths: np.ndarray) -> np.ndarray:
  lengths = np.asarray(lengths, np.float64)
  lengths = lengths[~np.isnan(lengths)]  # lengths the vocabulary lost ([UNK])
  parts = (lengths[lengths > 0], -lengths[lengths < 0], np.abs(lengths))
  return np.concatenate([length_stats(p) for p in parts])


def _padded(values: np.ndarray, size: int) -> np.ndarray:
  out = np.full(size, ABSENT, np.float64)
  values = np.asarray(values, np.float64)[:size]
  out[:len(values)] = np.where(np.isnan(values), ABSENT, values)
  return out


def rows(lengths_list, payload_list, kind: str, m: int, n: int) -> np.ndarray:
  if kind not in KINDS:
    raise ValueError(f"unknown feature kind {kind!r}; choose one of {KINDS}")
  rows = []
  for lengths, payload in zip(lengths_list, payload_list):
    lengths = np.asarray(lengths)[:n]
    parts = []
    if kind in ("stats", "all"):
      parts.append(_stats_row(lengths))
    if kind in ("lengths", "flat", "all"):
      parts.append(_padded(lengths, n))
    if kind in ("bytes", "flat", "all"):
      parts.append(_padded(payload, m))
    rows.append(np.concatenate(parts))
  width = len(feature_names(kind, m, n))
  return np.asarray(rows, np.float32).reshape(-1, width)


def feature_names(kind: str, m: int = 128, n: int = 32) -> list[str]:
  """Column names of `flow_features(..., kind, m, n)`, in order."""
  stats = [f"{d}_{s}" for d in DIRECTIONS for s in STAT_NAMES]
  lengths = [f"len_{i}" for i in range(n)]
  payload = [f"byte_{i}" for i in range(m)]
  return {"stats": stats, "lengths": lengths, "bytes": payload,
          "flat": lengths + payload, "all": stats + lengths + payload}[kind]


def flow_features(flows: Sequence, kind: str, m: int = 128, n: int = 32) -> np.ndarray:
  """float32[N, F] features of FlowRecords (see the module docstring for kinds)."""
  return rows([f.lengths for f in flows],
               [np.frombuffer(f.payload[:m], np.uint8) for f in flows], kind, m, n)


def decode_tokens(tokens_NxL: np.ndarray, itos: Sequence[str], m: int, n: int):
  """Payload bytes and signed lengths back from contract token rows.

  Layout (input_pipeline/vocab.py): [CLS], ceil(m/2) RP tokens (`1a2b`; an
  odd trailing byte is `ab__`), [SEP], n PL tokens (`+1500`, `-60`). [PAD]
  ends a part. A byte or length the vocabulary did not keep ([UNK]) decodes to NaN
  in its place, so the ones after it keep their positions; features turn NaN
  into "absent".

  Returns:
    (payloads, lengths): lists of float64 arrays, one per row.
  """
  rp_len = (m + 1) // 2
  payloads, lengths = [], []
  for row in np.asarray(tokens_NxL):
    payload = []
    for s in (itos[t] for t in row[1:1 + rp_len]):
      if s == "[PAD]":
        break
      payload.extend([np.nan, np.nan] if s.startswith("[") else bytes.fromhex(s.rstrip("_")))
    row_lengths = []
    for s in (itos[t] for t in row[2 + rp_len:2 + rp_len + n]):
      if s == "[PAD]":
        break
      row_lengths.append(int(s) if s[:1] in "+-" else np.nan)
    payloads.append(np.asarray(payload, np.float64))
    lengths.append(np.asarray(row_lengths, np.float64))
  return payloads, lengths


def token_features(tokens_NxL: np.ndarray, itos: Sequence[str], kind: str,
                   m: int = 128, n: int = 32) -> np.ndarray:
  """float32[N, F] features of token rows; `itos[id]` is the token string."""
  payloads, lengths = decode_tokens(tokens_NxL, itos, m, n)
  return rows(lengths, payloads, kind, m, n)
