"""Packets -> bidirectional TCP flows (`FlowRecord`): five-tuple table, client side, RP/PL, comm info.

Choices (reasons in docs/design/flows.md):
  * A flow is a five-tuple between a start and the next start. A pure SYN starts
    a new flow when the previous one on that tuple finished (FIN both ways or
    RST) or was idle for `idle_timeout` seconds; any other packet continues it.
  * Client: sender of the pure SYN; else receiver of a SYN/ACK; else sender of
    the first packet.
  * An exact repeat of (direction, seq, payload length) within a flow is a
    retransmission: it is dropped from `payload` and `lengths`, not from counts.
  * With `count_empty_acks=False` a packet without payload and without
    SYN/FIN/RST does not count in `lengths`.
  * A flow whose payload and lengths are full and whose SNI / certificate are
    found or impossible is finished: later packets only update its counts.

Work per batch is vectorised: packets are grouped by tuple with one sort, and
only per-flow (never per-packet) Python runs in the common case. TLS parsing is
the one per-packet Python path, limited to the first handshake segments.
"""
from __future__ import annotations

import collections
import dataclasses
import ipaddress
import multiprocessing
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from input_pipeline import packets as pk_lib
from input_pipeline import pcap
from input_pipeline import tls
from input_pipeline.records import FlowRecord

_COUNTERS = ("non_ip", "non_tcp", "fragments", "reassembled", "malformed", "snapped",
             "unknown_link", "retransmissions")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
  payload_bytes: int = 128        # m: payload bytes kept per flow
  num_lengths: int = 32           # n: signed packet lengths kept per flow
  length_kind: str = "ip"         # ip: IP total length | payload: TCP payload length
  count_empty_acks: bool = True   # whether payload-less ACKs take a place in `lengths`
  idle_timeout: float = 120.0     # seconds of silence after which a SYN starts a new flow

  def __post_init__(self):
    if self.length_kind not in ("ip", "payload"):
      raise ValueError(f"length_kind must be 'ip' or 'payload', not {self.length_kind!r}")

  @classmethod
  def from_config(cls, data) -> "FlowConfig":
    """From `config.data` (a ConfigDict or anything with these attributes)."""
    kw = {f.name: getattr(data, f.name) for f in dataclasses.fields(cls) if hasattr(data, f.name)}
    return cls(**kw)


@dataclasses.dataclass
class FileStats:
  """What reading one capture found; `error` names file, offset / record and reason."""
  file: str
  format: Optional[str] = None    # pcap | pcap-modified | pcapng
  packets: int = 0                # records read
  tcp_packets: int = 0
  skipped_packets: int = 0        # records that gave no TCP packet (non-IP, non-TCP, bad, fragments)
  flows: int = 0
  error: Optional[str] = None
  file_bytes: int = 0
  seconds: float = 0.0
  non_ip: int = 0
  non_tcp: int = 0
  fragments: int = 0              # IP fragments seen (IPv4 TCP ones are reassembled)
  reassembled: int = 0            # IPv4 datagrams rebuilt from fragments
  malformed: int = 0              # headers cut short or inconsistent
  snapped: int = 0                # TCP payload cut by the snap length
  unknown_link: int = 0           # records of an unsupported link type
  retransmissions: int = 0        # duplicate segments dropped from flow heads

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


class _Flow:
  """Mutable state of one flow while the capture is read."""
  __slots__ = ("key", "first_index", "first_ts", "client_dir", "payload", "lengths", "counts",
               "sni", "cert", "sni_state", "cert_state", "streams", "seen", "done")

  def __init__(self, key, first_index, first_ts, client_dir):
    self.key, self.first_index, self.first_ts = key, first_index, first_ts
    self.client_dir = client_dir          # canonical direction (0: from the lower endpoint)
    self.payload, self.lengths = bytearray(), []
    self.counts = [0, 0, 0, 0]            # packets c2s, s2c, payload bytes c2s, s2c
    self.sni = self.cert = None
    self.sni_state = self.cert_state = tls.PENDING
    self.streams = [None, None]           # tls.StreamPrefix per side (0 client, 1 server)
    self.seen = set()                     # (dir, seq, len) of head payload segments
    self.done = False

  def head_full(self, cfg: FlowConfig) -> bool:
    return len(self.lengths) >= cfg.num_lengths and len(self.payload) >= cfg.payload_bytes

  def update_done(self, cfg: FlowConfig) -> None:
    if (self.head_full(cfg) and self.sni_state != tls.PENDING and self.cert_state != tls.PENDING):
      self.done, self.streams, self.seen = True, None, None  # nothing buffered any more

  def feed_tls(self, server_side: int, seq: int, data: bytes, complete: bool) -> None:
    state = self.cert_state if server_side else self.sni_state
    if state != tls.PENDING:
      return
    if self.streams[server_side] is None:
      self.streams[server_side] = tls.StreamPrefix()
    stream = self.streams[server_side]
    if stream.add(seq, data):
      state, value = (tls.server_certificate if server_side else tls.client_hello_sni)(
          bytes(stream.data))
      if state == tls.PENDING and (stream.full or not complete):
        state = tls.IMPOSSIBLE  # out of room, or a snap length hides the rest
      if server_side:
        self.cert_state, self.cert = state, value
      else:
        self.sni_state, self.sni = state, value


def _segmented_cumsum(values: np.ndarray, seg_first: np.ndarray, local: np.ndarray) -> np.ndarray:
  """Exclusive running sum of `values` that restarts at each segment (positions grouped)."""
  c = np.cumsum(values)
  excl = c - values
  return excl - excl[seg_first][local]


class _FlowTable:
  """Five-tuple table; `add` takes the TCP packets of one batch in capture order."""

  def __init__(self, cfg: FlowConfig, counts: collections.Counter):
    self.cfg, self.counts = cfg, counts
    self.tuples: dict[tuple, list] = {}   # key -> [current flow, last ts, fin lo, fin hi, rst]
    self.flows: list[_Flow] = []

  def add(self, p: pk_lib.TcpPackets) -> None:
    if not len(p):
      return
    # -- group by canonical endpoints (lower endpoint first) with one sort ----
    gt = (p.src_hi > p.dst_hi) | ((p.src_hi == p.dst_hi) & (
        (p.src_lo > p.dst_lo) | ((p.src_lo == p.dst_lo) & (p.sport > p.dport))))
    cols = [np.where(gt, p.dst_hi, p.src_hi), np.where(gt, p.dst_lo, p.src_lo),
            np.where(gt, p.dport, p.sport).astype(np.uint64),
            np.where(gt, p.src_hi, p.dst_hi), np.where(gt, p.src_lo, p.dst_lo),
            np.where(gt, p.sport, p.dport).astype(np.uint64)]
    order, gfirst = _group(cols)
    self._add_sorted(p.take(order), gt[order].astype(np.int64), [c[order] for c in cols], gfirst)

  def _new_flow(self, key, p, d, pos) -> _Flow:
    flags, sender = int(p.flags[pos]), int(d[pos])
    synack = flags & (pk_lib.SYN | pk_lib.ACK) == pk_lib.SYN | pk_lib.ACK
    flow = _Flow(key, int(p.index[pos]), float(p.ts[pos]), 1 - sender if synack else sender)
    self.flows.append(flow)
    return flow

  def _split(self, p, d, cols, gfirst):
    """Cuts each tuple's packets into flows; returns (segment start positions, flows)."""
    syn = (p.flags & (pk_lib.SYN | pk_lib.ACK)) == pk_lib.SYN
    fin, rst = (p.flags & pk_lib.FIN) != 0, (p.flags & pk_lib.RST) != 0
    # E[k]: how many FINs (per direction) / RSTs come before position k.
    e_fin0 = np.concatenate([[0], np.cumsum(fin & (d == 0))])
    e_fin1 = np.concatenate([[0], np.cumsum(fin & (d == 1))])
    e_rst = np.concatenate([[0], np.cumsum(rst)])
    glast = np.append(gfirst[1:], len(p)) - 1
    idle = np.zeros(len(p), bool)
    idle[1:] = np.diff(p.ts) > self.cfg.idle_timeout
    cand = syn.copy()
    cand[gfirst] = False
    cand_pos = np.flatnonzero(cand)
    c_pos, c_idle = cand_pos.tolist(), idle[cand_pos].tolist()
    keys = list(zip(*(c[gfirst].tolist() for c in cols)))
    timeout = self.cfg.idle_timeout
    starts, seg_flows, ci = [], [], 0
    for p0, pl, key, g_syn, g_ts, g_last_ts in zip(
        gfirst.tolist(), glast.tolist(), keys, syn[gfirst].tolist(), p.ts[gfirst].tolist(),
        p.ts[glast].tolist()):
      st = self.tuples.get(key)
      carried = (False, False, False)
      if st is None:
        st = self.tuples[key] = [self._new_flow(key, p, d, p0), 0.0, False, False, False]
      elif g_syn and ((st[2] and st[3]) or st[4] or g_ts - st[1] > timeout):
        st[0] = self._new_flow(key, p, d, p0)
      else:
        carried = (st[2], st[3], st[4])
      sp = p0
      starts.append(p0)
      seg_flows.append(st[0])
      while ci < len(c_pos) and c_pos[ci] <= pl:  # later pure SYNs of this tuple
        q, q_idle = c_pos[ci], c_idle[ci]
        ci += 1
        fin0 = carried[0] or e_fin0[q] > e_fin0[sp]
        fin1 = carried[1] or e_fin1[q] > e_fin1[sp]
        if (fin0 and fin1) or carried[2] or e_rst[q] > e_rst[sp] or q_idle:
          st[0], sp, carried = self._new_flow(key, p, d, q), q, (False, False, False)
          starts.append(q)
          seg_flows.append(st[0])
      st[1] = g_last_ts
      st[2] = carried[0] or bool(e_fin0[pl + 1] > e_fin0[sp])
      st[3] = carried[1] or bool(e_fin1[pl + 1] > e_fin1[sp])
      st[4] = carried[2] or bool(e_rst[pl + 1] > e_rst[sp])
    return starts, seg_flows

  def _add_sorted(self, p, d, cols, gfirst):
    starts, seg_flows = self._split(p, d, cols, gfirst)
    mark = np.zeros(len(p), np.int64)
    mark[starts] = 1
    seg = np.cumsum(mark) - 1
    n_seg = len(starts)
    c2s = d == np.asarray([f.client_dir for f in seg_flows])[seg]
    counts = [np.bincount(seg, weights=w, minlength=n_seg).astype(np.int64).tolist()
              for w in (c2s, ~c2s, p.pay_len * c2s, p.pay_len * ~c2s)]
    for f, a, b, c, e in zip(seg_flows, *counts):
      f.counts[0] += a
      f.counts[1] += b
      f.counts[2] += c
      f.counts[3] += e
    active = np.asarray([not f.done for f in seg_flows])
    if active.any():
      sel = np.flatnonzero(active[seg])
      self._heads(p.take(sel), seg[sel], d[sel], c2s[sel], seg_flows)

  def _heads(self, q, qseg, qd, c2s, seg_flows):
    """Payload, lengths and TLS of the packets of flows not finished yet."""
    cfg = self.cfg
    new_seg = np.ones(len(q), bool)
    new_seg[1:] = qseg[1:] != qseg[:-1]
    seg_first, local = np.flatnonzero(new_seg), np.cumsum(new_seg) - 1
    open_head = np.asarray([not f.head_full(cfg) for f in seg_flows])[qseg]
    # -- retransmissions: exact repeats of (direction, seq, length), also across batches ---
    dup = np.zeros(len(q), bool)
    rows = np.flatnonzero(open_head & (q.pay_len > 0))
    if len(rows):
      old = [(s, k[0], k[1], k[2]) for s in np.unique(qseg[rows]).tolist()
             for k in seg_flows[s].seen or ()]
      old_arr = np.asarray(old, np.int64).reshape(-1, 4)
      keys = [np.concatenate([old_arr[:, i], v[rows]]) for i, v in
              enumerate((qseg, qd, q.seq, q.pay_len))]
      pos = np.arange(len(keys[0]))  # old keys first, so a repeat is never the first seen
      o = np.lexsort([pos] + keys[::-1])
      same = np.all([k[o][1:] == k[o][:-1] for k in keys], axis=0)
      is_dup = np.zeros(len(pos), bool)
      is_dup[o[1:]] = same
      dup[rows] = is_dup[len(old):]
      self.counts["retransmissions"] += int(dup.sum())
    # -- signed lengths -------------------------------------------------------------
    empty_ack = (q.pay_len == 0) & ((q.flags & (pk_lib.SYN | pk_lib.FIN | pk_lib.RST)) == 0)
    counted = open_head & ~dup & (cfg.count_empty_acks | ~empty_ack)
    have = np.asarray([len(f.lengths) for f in seg_flows])[qseg]
    rank = _segmented_cumsum(counted.astype(np.int64), seg_first, local) + have
    take = np.flatnonzero(counted & (rank < cfg.num_lengths))
    size = q.ip_len if cfg.length_kind == "ip" else q.pay_len
    vals = np.where(c2s, size, -size)[take]
    for s, a, b in _runs(qseg[take]):
      seg_flows[s].lengths.extend(vals[a:b].tolist())
    # -- first payload bytes, both directions in capture order -----------------------
    cap = np.where(open_head & ~dup, q.pay_cap, 0)
    have = np.asarray([len(f.payload) for f in seg_flows])[qseg]
    room = np.clip(cfg.payload_bytes - have - _segmented_cumsum(cap, seg_first, local), 0, cap)
    take = np.flatnonzero(room)
    if len(take):
      n = room[take]
      out = np.cumsum(n) - n
      data = q.buf[np.repeat(q.pay_off[take] - out, n) + np.arange(int(n.sum()))]
      ends = np.append(out[1:], len(data))
      for s, a, b in _runs(qseg[take]):
        seg_flows[s].payload += data[out[a]:ends[b - 1]].tobytes()
    # -- TLS: only the first bytes of each side of flows still waiting for SNI / cert -----
    wait_sni = np.asarray([f.sni_state == tls.PENDING for f in seg_flows])[qseg]
    wait_cert = np.asarray([f.cert_state == tls.PENDING for f in seg_flows])[qseg]
    feed = (q.pay_cap > 0) & np.where(c2s, wait_sni, wait_cert)
    sent_c = _segmented_cumsum(np.where(feed & c2s, q.pay_cap, 0), seg_first, local)
    sent_s = _segmented_cumsum(np.where(feed & ~c2s, q.pay_cap, 0), seg_first, local)
    feed &= np.where(c2s, sent_c, sent_s) < tls.STREAM_LIMIT
    rows = np.flatnonzero(feed)
    for s, server_side, seq, off, n, whole in zip(
        qseg[rows].tolist(), (~c2s[rows]).tolist(), q.seq[rows].tolist(),
        q.pay_off[rows].tolist(), q.pay_cap[rows].tolist(), (q.pay_cap == q.pay_len)[rows].tolist()):
      f = seg_flows[s]
      if (f.cert_state if server_side else f.sni_state) == tls.PENDING:  # else: found already
        f.feed_tls(int(server_side), seq, q.buf[off:off + n].tobytes(), whole)
    # -- remember head segments for retransmission checks in later batches ------------
    still_open = np.zeros(len(seg_flows), bool)
    for s in np.unique(qseg).tolist():
      f = seg_flows[s]
      f.update_done(cfg)
      still_open[s] = not f.done and not f.head_full(cfg)
    rows = np.flatnonzero(still_open[qseg] & (q.pay_len > 0) & ~dup)
    for s, dd, seq, n in zip(qseg[rows].tolist(), qd[rows].tolist(), q.seq[rows].tolist(),
                             q.pay_len[rows].tolist()):
      seg_flows[s].seen.add((dd, seq, n))

  def records(self, capture: str) -> list[FlowRecord]:
    out = []
    cfg = self.cfg
    for i, f in enumerate(sorted(self.flows, key=lambda f: f.first_index)):
      lo, hi = f.key[:3], f.key[3:]
      client, server = (lo, hi) if f.client_dir == 0 else (hi, lo)
      out.append(FlowRecord(
          capture=capture, index=i, client_ip=_ip(client[0], client[1]), client_port=client[2],
          server_ip=_ip(server[0], server[1]), server_port=server[2], first_ts=f.first_ts,
          payload=bytes(f.payload[:cfg.payload_bytes]),
          lengths=np.asarray(f.lengths[:cfg.num_lengths], np.int32), sni=f.sni,
          cert_sha256=f.cert, packets_c2s=f.counts[0], packets_s2c=f.counts[1],
          bytes_c2s=f.counts[2], bytes_s2c=f.counts[3]))
    return out


def _group(cols: list[np.ndarray]):
  """Stable order that puts equal rows of `cols` together, and where each group starts.

  One sort of a 64-bit mix of the columns; exact equality is then checked, and
  a collision (never seen in practice) falls back to sorting by all columns.
  """
  n = len(cols[0])
  mix = np.zeros(n, np.uint64)
  for c, k in zip(cols, (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                         0x27D4EB2F165667C5, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9)):
    mix = (mix ^ c) * np.uint64(k)
    mix ^= mix >> np.uint64(29)
  order = np.argsort(mix, kind="stable")  # stable: capture order within a tuple
  first = np.ones(n, bool)
  first[1:] = mix[order][1:] != mix[order][:-1]
  gfirst = np.flatnonzero(first)
  gid = np.cumsum(first) - 1
  if all((c[order] == c[order][gfirst][gid]).all() for c in cols):
    return order, gfirst
  return _group_exact(cols)


def _group_exact(cols: list[np.ndarray]):
  order = np.lexsort([np.arange(len(cols[0]))] + cols[::-1])
  first = np.ones(len(order), bool)
  first[1:] = np.any([c[order][1:] != c[order][:-1] for c in cols], axis=0)
  return order, np.flatnonzero(first)


def _runs(sorted_ids: np.ndarray):
  """(id, start, end) of each run of equal values."""
  if not len(sorted_ids):
    return []
  b = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
  return zip(sorted_ids[b].tolist(), b.tolist(), np.append(b[1:], len(sorted_ids)).tolist())


def _ip(hi: int, lo: int) -> str:
  if hi == 0 and lo >> 32 == 0xFFFF:
    return f"{lo >> 24 & 255}.{lo >> 16 & 255}.{lo >> 8 & 255}.{lo & 255}"
  return str(ipaddress.IPv6Address((hi << 64) | lo))


def read_flows(path, cfg: Optional[FlowConfig] = None, capture_name: Optional[str] = None,
               chunk_bytes: int = pcap.CHUNK_BYTES) -> tuple[list[FlowRecord], FileStats]:
  """All TCP flows of one capture file. Never raises for bad contents: see FileStats.error."""
  cfg = cfg or FlowConfig()
  start = time.perf_counter()
  stats = FileStats(file=str(path))
  counts = collections.Counter()
  reader = pcap.CaptureReader(path, chunk_bytes)
  table = _FlowTable(cfg, counts)
  defrag = pk_lib.Defragmenter()
  try:
    for batch in reader.batches():
      table.add(pk_lib.decode(batch, counts, defrag))
  except (MemoryError, KeyboardInterrupt):
    raise
  except Exception as e:  # keep what was read; the report names the file and the reason
    stats.error = f"{path}: flow assembly failed after record {reader.records}: {type(e).__name__}: {e}"
  records = table.records(str(capture_name) if capture_name is not None else str(path))
  stats.format, stats.packets, stats.file_bytes = reader.format, reader.records, reader.file_bytes
  stats.tcp_packets, stats.flows = counts["tcp_packets"], len(records)
  stats.skipped_packets = stats.packets - stats.tcp_packets + counts["reassembled"]
  for name in _COUNTERS:
    setattr(stats, name, int(counts[name]))
  stats.error = stats.error or reader.error
  if counts["unknown_link"] and not stats.error:
    stats.error = (f"{path}: link type {sorted(counts['unknown_linktypes'])} not supported; "
                   f"{counts['unknown_link']} records skipped")
  stats.seconds = time.perf_counter() - start
  return records, stats


def _read_one(args):
  path, cfg, name = args
  return read_flows(path, cfg, name)


def mp_context():
  """fork is fastest, but forking a process that runs JAX/TF threads can hang: spawn then."""
  risky = any(m in sys.modules for m in ("jax", "tensorflow"))
  return multiprocessing.get_context("spawn" if risky else "fork")


def read_many(paths: Sequence, cfg: Optional[FlowConfig] = None, workers: int = 0,
              capture_names: Optional[Sequence[str]] = None):
  """`read_flows` over many files, in `workers` processes (0: os.cpu_count(); 1: this one).

  Returns [(flows, stats)] in the order of `paths`. Files go to workers largest
  first so one big capture does not end up last. Workers are spawned, not
  forked when the parent holds JAX / TF threads (forking those can hang), forked otherwise
  (no interpreter start-up and imports per worker).
  """
  cfg = cfg or FlowConfig()
  names = list(capture_names) if capture_names is not None else [None] * len(paths)
  jobs = [(str(p), cfg, n) for p, n in zip(paths, names)]
  workers = min(workers or os.cpu_count() or 1, len(jobs))
  if workers <= 1:
    return [_read_one(j) for j in jobs]
  sizes = [os.path.getsize(j[0]) if os.path.isfile(j[0]) else 0 for j in jobs]
  order = sorted(range(len(jobs)), key=lambda i: -sizes[i])
  results = [None] * len(jobs)
  with mp_context().Pool(workers) as pool:
    for i, res in zip(order, pool.imap(_read_one, [jobs[i] for i in order])):
      results[i] = res
  return results
