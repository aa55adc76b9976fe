"""Token strings, the frequency-ordered vocabulary, and vectorised encoding.

A flow becomes `[CLS] + RP + [SEP] + PL` (see docs/design/tokens.md):
  RP: the first m payload bytes cut into m/2 two-byte tokens `1a2b`; an odd
      trailing byte becomes the distinct token `ab__` (never confused with a
      real pair such as `ab00`).
  PL: the first n signed packet lengths as tokens `+1500` / `-60` (`+0` for
      a zero length, whose direction is lost).
Both parts are padded with `[PAD]` to their fixed width, so every row has
`L = 2 + ceil(m/2) + n` ids.

Encoding never loops over tokens in Python: RP pairs become integers
`b0 * 256 + b1` (odd trailing byte: `65536 + b`), lengths are offset into a
table, and one lookup table per part maps those integers to ids.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import numpy as np

from input_pipeline.records import FlowRecord

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP)
PAD_ID, UNK_ID, CLS_ID, SEP_ID = 0, 1, 2, 3
FEATURES = ("both", "rp", "pl")

_NUM_RP_VALUES = 65536 + 256      # full pairs, then odd trailing bytes
_MAX_ABS_LENGTH = 65535           # lengths beyond this go through a slow dict path
_HEADER = "# pass_jax vocabulary v1"


def rp_token(value: int) -> str:
  """The RP token string of an integer code from `_rp_codes`."""
  if value >= 65536:
    return f"{value - 65536:02x}__"
  return f"{value:04x}"


def pl_token(length: int) -> str:
  """The PL token string of a signed length: always carries a sign."""
  return f"{int(length):+d}"


def _parse_rp_token(token: str) -> int:
  if token.endswith("__"):
    return 65536 + int(token[:2], 16)
  return int(token, 16)


@dataclasses.dataclass
class FlowArrays:
  """The model-visible part of many flows as fixed-width numpy arrays."""
  payload: np.ndarray       # uint8[N, m], zero beyond payload_len
  payload_len: np.ndarray   # int32[N]
  lengths: np.ndarray       # int32[N, n], zero beyond num_lengths
  num_lengths: np.ndarray   # int32[N]

  @classmethod
  def from_flows(cls, flows: Sequence[FlowRecord], payload_bytes: int,
                 num_lengths: int, mask_sni: bool = False) -> "FlowArrays":
    m, n = payload_bytes, num_lengths
    payloads = [bytes(f.payload[:m]) for f in flows]
    if mask_sni:
      payloads = [_mask_sni(p, f.sni) for p, f in zip(payloads, flows)]
    payload_len = np.fromiter((len(p) for p in payloads), np.int32, len(flows))
    # One join + frombuffer is far faster than filling rows one by one.
    joined = b"".join(p.ljust(m, b"\0") for p in payloads)
    payload = np.frombuffer(joined, np.uint8).reshape(len(flows), m).copy()
    lens = [np.asarray(f.lengths, np.int64)[:n] for f in flows]
    count = np.fromiter((len(x) for x in lens), np.int32, len(flows))
    lengths = np.zeros((len(flows), n), np.int32)
    if len(flows) and count.sum():
      rows = np.repeat(np.arange(len(flows)), count)
      cols = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
      lengths[rows, cols] = np.concatenate(lens)
    return cls(payload, payload_len, lengths, count)

  def __len__(self) -> int:
    return len(self.payload_len)


def _mask_sni(payload: bytes, sni: str | None) -> bytes:
  """Zeros every occurrence of the server name, and a truncated one at the end.

  With m=128 a ClientHello is often cut inside its server_name extension, so
  a name prefix of >= 4 bytes that runs into the end of the payload is masked
  too; shorter tails are too likely to be chance matches.
  """
  if not sni:
    return payload
  name = sni.encode("ascii", "ignore")
  if not name:
    return payload
  buf = bytearray(payload)
  start = buf.find(name)
  while start >= 0:
    buf[start:start + len(name)] = bytes(len(name))
    start = buf.find(name, start + len(name))
  for k in range(min(len(name) - 1, len(buf)), 3, -1):
    if buf.endswith(name[:k]):
      buf[len(buf) - k:] = bytes(k)
      break
  return bytes(buf)


def _rp_codes(arrays: FlowArrays) -> tuple[np.ndarray, np.ndarray]:
  """Integer codes of RP tokens int64[N, ceil(m/2)] and a validity mask."""
  payload = arrays.payload.astype(np.int64)
  m = payload.shape[1]
  if m % 2:
    payload = np.pad(payload, ((0, 0), (0, 1)))
  codes = payload[:, 0::2] * 256 + payload[:, 1::2]
  pos = np.arange(codes.shape[1]) * 2
  plen = arrays.payload_len[:, None]
  valid = pos[None, :] < plen
  odd = (pos[None, :] + 1 == plen)     # the pair holds only the trailing byte
  codes = np.where(odd, 65536 + payload[:, 0::2], codes)
  return codes, valid


def _pl_valid(arrays: FlowArrays) -> np.ndarray:
  return np.arange(arrays.lengths.shape[1])[None, :] < arrays.num_lengths[:, None]


def count_tokens(arrays: FlowArrays, features: str = "both") -> dict[str, int]:
  """Token string -> number of occurrences (padding excluded)."""
  counts: dict[str, int] = {}
  if features in ("both", "rp"):
    codes, valid = _rp_codes(arrays)
    hist = np.bincount(codes[valid], minlength=_NUM_RP_VALUES)
    for value in np.flatnonzero(hist):
      counts[rp_token(int(value))] = int(hist[value])
  if features in ("both", "pl"):
    values, hist = np.unique(arrays.lengths[_pl_valid(arrays)], return_counts=True)
    for value, c in zip(values, hist):
      counts[pl_token(int(value))] = int(c)
  return counts


class Vocab:
  """Fixed special ids, then tokens by descending train count, ties by string."""

  def __init__(self, tokens: Sequence[str], counts: Sequence[int], *,
               payload_bytes: int, num_lengths: int, features: str = "both",
               mask_sni: bool = False):
    if features not in FEATURES:
      raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if tuple(tokens[:4]) != SPECIAL_TOKENS:
      raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}")
    self.tokens = list(tokens)
    self.counts = [int(c) for c in counts]
    self.payload_bytes = int(payload_bytes)
    self.num_lengths = int(num_lengths)
    self.features = features
    self.mask_sni = bool(mask_sni)
    self._ids = {t: i for i, t in enumerate(self.tokens)}
    if len(self._ids) != len(self.tokens):
      raise ValueError("duplicate tokens in vocabulary")
    # Lookup tables: RP code -> id, and (length + _MAX_ABS_LENGTH) -> id.
    self._rp_table = np.full(_NUM_RP_VALUES, UNK_ID, np.int32)
    self._pl_table = np.full(2 * _MAX_ABS_LENGTH + 1, UNK_ID, np.int32)
    self._pl_far: dict[int, int] = {}
    for i, t in enumerate(self.tokens[4:], start=4):
      if t[0] in "+-":
        v = int(t)
        if abs(v) <= _MAX_ABS_LENGTH:
          self._pl_table[v + _MAX_ABS_LENGTH] = i
        else:
          self._pl_far[v] = i
      else:
        self._rp_table[_parse_rp_token(t)] = i

  @classmethod
  def build(cls, flows: Sequence[FlowRecord] | FlowArrays, *, payload_bytes: int,
            num_lengths: int, features: str = "both", max_size: int = 0,
            min_count: int = 0, mask_sni: bool = False) -> "Vocab":
    """Counts tokens over `flows` (the training flows only) and orders them.

    `min_count` > 0 keeps only tokens seen at least that often; `max_size` > 0
    caps the total size including the 4 special tokens. Both may be set; what
    either drops maps to [UNK], whose count records the occurrences it absorbed.
    """
    arrays = flows if isinstance(flows, FlowArrays) else FlowArrays.from_flows(
        flows, payload_bytes, num_lengths, mask_sni)
    counts = count_tokens(arrays, features)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    unk_count = 0
    if min_count > 1:
      # A token seen once or twice in training has an embedding that can only memorise
      # the flows it came from; [UNK] pools them into one learnable, shared embedding.
      unk_count = sum(c for _, c in ranked if c < min_count)
      ranked = [(t, c) for t, c in ranked if c >= min_count]
    if max_size:
      if max_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_max_size must exceed {len(SPECIAL_TOKENS)}")
      keep = max_size - len(SPECIAL_TOKENS)
      unk_count += sum(c for _, c in ranked[keep:])
      ranked = ranked[:keep]
    tokens = list(SPECIAL_TOKENS) + [t for t, _ in ranked]
    tallies = [0, unk_count, 0, 0] + [c for _, c in ranked]
    return cls(tokens, tallies, payload_bytes=payload_bytes,
               num_lengths=num_lengths, features=features, mask_sni=mask_sni)

  @classmethod
  def from_config(cls, flows, data_cfg) -> "Vocab":
    return cls.build(flows, payload_bytes=data_cfg.payload_bytes,
                     num_lengths=data_cfg.num_lengths, features=data_cfg.features,
                     max_size=data_cfg.vocab_max_size,
                     min_count=data_cfg.vocab_min_count, mask_sni=data_cfg.mask_sni)

  @property
  def size(self) -> int:
    return len(self.tokens)

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def rp_len(self) -> int:
    return (self.payload_bytes + 1) // 2

  @property
  def seq_len(self) -> int:
    return 2 + self.rp_len + self.num_lengths

  def id_of(self, token: str) -> int:
    return self._ids.get(token, UNK_ID)

  def token_of(self, token_id: int) -> str:
    return self.tokens[token_id]

  def arrays(self, flows: Sequence[FlowRecord]) -> FlowArrays:
    return FlowArrays.from_flows(flows, self.payload_bytes, self.num_lengths,
                                 self.mask_sni)

  def encode_arrays(self, arrays: FlowArrays) -> np.ndarray:
    """int32[N, L] token ids of many flows at once."""
    n_flows = len(arrays)
    out = np.zeros((n_flows, self.seq_len), np.int32)
    out[:, 0] = CLS_ID
    out[:, 1 + self.rp_len] = SEP_ID
    if self.features in ("both", "rp"):
      codes, valid = _rp_codes(arrays)
      out[:, 1:1 + self.rp_len] = np.where(valid, self._rp_table[codes], PAD_ID)
    if self.features in ("both", "pl"):
      lengths = arrays.lengths.astype(np.int64)
      valid = _pl_valid(arrays)
      near = np.abs(lengths) <= _MAX_ABS_LENGTH
      ids = self._pl_table[np.where(near, lengths, 0) + _MAX_ABS_LENGTH]
      if not near.all():   # rare: lengths beyond 16 bits (TSO, bad captures)
        far = ~near
        ids[far] = [self._pl_far.get(int(v), UNK_ID) for v in lengths[far]]
      out[:, 2 + self.rp_len:] = np.where(valid, ids, PAD_ID)
    return out

  def encode_batch(self, flows: Sequence[FlowRecord]) -> np.ndarray:
    return self.encode_arrays(self.arrays(flows))

  def encode(self, flow: FlowRecord) -> np.ndarray:
    """int32[L] token ids of one flow."""
    return self.encode_batch([flow])[0]

  def decode(self, ids: np.ndarray) -> list[str]:
    return [self.tokens[i] for i in np.asarray(ids).tolist()]

  def save(self, path) -> None:
    """Human-readable: a header, then `token<TAB>count`, line order = id."""
    lines = [
        _HEADER,
        f"# payload_bytes={self.payload_bytes} num_lengths={self.num_lengths} "
        f"features={self.features} mask_sni={str(self.mask_sni).lower()} "
        f"size={self.size} seq_len={self.seq_len}",
        "# token<TAB>train count; the id of a token is its line number among "
        "token lines, from 0",
    ]
    lines += [f"{t}\t{c}" for t, c in zip(self.tokens, self.counts)]
    pathlib.Path(path).write_text("\n".join(lines) + "\n")

  @classmethod
  def load(cls, path) -> "Vocab":
    text = pathlib.Path(path).read_text().splitlines()
    if not text or text[0] != _HEADER:
      raise ValueError(f"{path}: not a pass_jax vocabulary (missing {_HEADER!r})")
    fields = dict(kv.split("=", 1) for kv in text[1].lstrip("# ").split())
    tokens, counts = [], []
    for line in text:
      if line.startswith("#") or not line:
        continue
      token, count = line.split("\t")
      tokens.append(token)
      counts.append(int(count))
    return cls(tokens, counts, payload_bytes=int(fields["payload_bytes"]),
               num_lengths=int(fields["num_lengths"]), features=fields["features"],
               mask_sni=fields["mask_sni"] == "true")
