"""Link layer, IPv4/IPv6 and TCP header fields of a `RecordBatch`, read with numpy.

Every field is gathered for all records of a batch at once (`arr[offsets + k]`),
so the cost per packet is a few dozen vectorised byte loads, never a Python
object. A field is only trusted where the bytes it comes from were captured:
each step keeps a mask of records whose headers lie inside `data_off + caplen`,
so a snap length or a damaged record can shorten what is read but never make
the reader look past the captured bytes (the zero padding after each chunk only
keeps the gathers in range).

Rare cases stay in Python: IPv4 fragments of TCP are reassembled by
`Defragmenter` and decoded again as raw IPv4 records.
"""
from __future__ import annotations

import collections
import dataclasses
import struct

import numpy as np

from input_pipeline import pcap

# Link types (https://www.tcpdump.org/linktypes.html).
NULL, EN10MB, PPP, PPP_SERIAL, RAW, C_HDLC, LOOP = 0, 1, 9, 50, 101, 104, 108
LINUX_SLL, PPI, IPV4, IPV6, LINUX_SLL2 = 113, 192, 228, 229, 276
RAW_OPENBSD, RAW_BSDOS = 14, 12
SUPPORTED_LINKTYPES = frozenset({NULL, EN10MB, PPP, PPP_SERIAL, RAW, C_HDLC, LOOP, LINUX_SLL,
                                 PPI, IPV4, IPV6, LINUX_SLL2, RAW_OPENBSD, RAW_BSDOS})
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
_IPV6_EXT = (0, 43, 44, 51, 60)   # hop-by-hop, routing, fragment, AH, destination options
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04


@dataclasses.dataclass
class TcpPackets:
  """Header fields of the TCP packets of one batch (arrays share a length P)."""
  buf: np.ndarray       # uint8 buffer the payload offsets point into
  index: np.ndarray     # int64 file-wide record index
  ts: np.ndarray        # float64
  src_hi: np.ndarray    # uint64 address, IPv4 as ::ffff:a.b.c.d
  src_lo: np.ndarray
  dst_hi: np.ndarray
  dst_lo: np.ndarray
  sport: np.ndarray     # int64
  dport: np.ndarray
  seq: np.ndarray       # int64
  flags: np.ndarray     # int64 TCP flags byte
  ip_len: np.ndarray    # int64 IP total length (IPv6: 40 + payload length)
  pay_len: np.ndarray   # int64 TCP payload length on the wire
  pay_off: np.ndarray   # int64 offset of the payload in `buf`
  pay_cap: np.ndarray   # int64 payload bytes actually captured (<= pay_len)

  def __len__(self) -> int:
    return len(self.index)

  def take(self, sel) -> "TcpPackets":
    return TcpPackets(self.buf, *(getattr(self, f.name)[sel] for f in dataclasses.fields(self)[1:]))


def _u8(a, i):
  return a[i].astype(np.int64)


def _u16(a, i):
  return (a[i].astype(np.int64) << 8) | a[i + 1]


def _u32(a, i):
  return (_u16(a, i) << 16) | _u16(a, i + 2)


def _u64(a, i):
  return (_u32(a, i).astype(np.uint64) << np.uint64(32)) | _u32(a, i + 4).astype(np.uint64)


def _link_layer(a, off, end, lt, counts):
  """Per record: (offset of the network header, ethertype-like protocol or -1)."""
  l3 = np.zeros_like(off)
  proto = np.full(len(off), -1, np.int64)
  ppi = lt == PPI
  if ppi.any():  # PPI wraps another link type: unwrap it, then decode that one
    o = off[ppi]
    ok = o + 8 <= end[ppi]
    hlen = a[o + 2].astype(np.int64) | (a[o + 3].astype(np.int64) << 8)
    inner = (a[o + 4].astype(np.int64) | (a[o + 5].astype(np.int64) << 8)
             | (a[o + 6].astype(np.int64) << 16) | (a[o + 7].astype(np.int64) << 24))
    off, lt = off.copy(), lt.copy()
    off[ppi] = np.where(ok, o + hlen, end[ppi])
    lt[ppi] = np.where(ok & (inner != PPI), inner & pcap.LINKTYPE_MASK, -1)
  for t in np.unique(lt):
    sel = np.flatnonzero(lt == t)
    o, e = off[sel], end[sel]
    if t == EN10MB:
      et, n = _u16(a, o + 12), o + 14
      for _ in range(2):  # 802.1Q, then QinQ
        vlan = np.isin(et, _VLAN_TPIDS) & (n + 4 <= e)
        if not vlan.any():
          break
        et = np.where(vlan, _u16(a, n + 2), et)
        n = np.where(vlan, n + 4, n)
    elif t == LINUX_SLL:
      et, n = _u16(a, o + 14), o + 16
    elif t == LINUX_SLL2:
      et, n = _u16(a, o), o + 20
    elif t in (RAW, RAW_BSDOS, RAW_OPENBSD, IPV4, IPV6):
      v = _u8(a, o) >> 4
      et, n = np.where(v == 4, ETH_IPV4, np.where(v == 6, ETH_IPV6, 0)), o
    elif t in (NULL, LOOP):  # address family, host or network byte order: one non-zero byte
      fam = np.maximum(_u8(a, o), _u8(a, o + 3))
      et = np.where(fam == 2, ETH_IPV4, np.where(np.isin(fam, (10, 24, 28, 30)), ETH_IPV6, 0))
      n = o + 4
    elif t in (PPP, PPP_SERIAL):
      p = np.where((_u8(a, o) == 0xFF) & (_u8(a, o + 1) == 0x03), o + 2, o)
      short = (_u8(a, p) & 1) == 1  # protocol-field compression: one byte
      pp = np.where(short, _u8(a, p), _u16(a, p))
      et = np.where(pp == 0x21, ETH_IPV4, np.where(pp == 0x57, ETH_IPV6, 0))
      n = np.where(short, p + 1, p + 2)
    elif t == C_HDLC:
      et, n = _u16(a, o + 2), o + 4
    else:
      counts["unknown_link"] += len(sel)
      counts.setdefault("unknown_linktypes", set()).add(int(t))
      continue
    cut = n > e
    counts["malformed"] += int(cut.sum())
    l3[sel] = n
    proto[sel] = np.where(cut, -1, et)
  return l3, proto


class Defragmenter:
  """Reassembles IPv4 fragments of TCP; bounded, oldest datagrams evicted first."""

  def __init__(self, max_datagrams: int = 1024):
    self.pending = collections.OrderedDict()
    self.max_datagrams = max_datagrams

  def add(self, index, ts, packet: bytes):
    """Takes one captured IPv4 fragment; returns (index, ts, datagram) when complete."""
    ihl = (packet[0] & 15) * 4
    key = packet[12:20] + packet[4:6]
    frag = struct.unpack_from("!H", packet, 6)[0]
    entry = self.pending.setdefault(key, {"parts": {}, "last": None, "head": None})
    start = (frag & 0x1FFF) * 8
    entry["parts"][start] = packet[ihl:]
    if start == 0:
      entry["head"] = packet[:ihl]
    if not frag & 0x2000:
      entry["last"] = start + len(packet) - ihl
    while len(self.pending) > self.max_datagrams:
      self.pending.popitem(last=False)
    if entry["head"] is None or entry["last"] is None:
      return None
    body, pos = bytearray(), 0
    for s in sorted(entry["parts"]):
      if s > pos:
        return None  # a hole: wait for more fragments
      body += entry["parts"][s][pos - s:]
      pos = max(pos, s + len(entry["parts"][s]))
    if pos < entry["last"]:
      return None
    del self.pending[key]
    head = bytearray(entry["head"])
    struct.pack_into("!HH", head, 2, len(head) + entry["last"], 0)
    struct.pack_into("!H", head, 6, 0)
    return index, ts, bytes(head) + bytes(body[:entry["last"]])


def decode(batch: pcap.RecordBatch, counts: collections.Counter,
           defrag: Defragmenter | None = None) -> TcpPackets:
  """TCP packets of `batch`; every other record is counted in `counts` and dropped."""
  a = batch.buf
  end = batch.data_off + batch.caplen
  l3, et = _link_layer(a, batch.data_off, end, batch.linktype, counts)
  v4 = (et == ETH_IPV4) & (l3 + 20 <= end) & ((_u8(a, l3) >> 4) == 4)
  v6 = (et == ETH_IPV6) & (l3 + 40 <= end) & ((_u8(a, l3) >> 4) == 6)
  counts["non_ip"] += int(((et >= 0) & ~v4 & ~v6).sum())
  n = len(l3)
  proto = np.full(n, -1, np.int64)
  l4 = np.zeros(n, np.int64)
  ip_len = np.zeros(n, np.int64)
  hi = {k: np.zeros(n, np.uint64) for k in ("src_hi", "src_lo", "dst_hi", "dst_lo")}
  frag = np.zeros(n, bool)
  wire_end = batch.data_off + batch.origlen
  i4 = np.flatnonzero(v4)
  if len(i4):
    o = l3[i4]
    ihl = (_u8(a, o) & 15) * 4
    tot = _u16(a, o + 2)
    tot = np.where(tot == 0, wire_end[i4] - o, tot)  # TSO captures write 0: use the frame length
    ok = (ihl >= 20) & (tot >= ihl) & (o + ihl <= end[i4])
    ff = _u16(a, o + 6)
    frag[i4] = ok & ((ff & 0x3FFF) != 0)
    proto[i4] = np.where(ok, _u8(a, o + 9), -2)
    l4[i4], ip_len[i4] = o + ihl, tot
    mapped = np.uint64(0xFFFF << 32)
    hi["src_lo"][i4] = _u32(a, o + 12).astype(np.uint64) | mapped
    hi["dst_lo"][i4] = _u32(a, o + 16).astype(np.uint64) | mapped
  i6 = np.flatnonzero(v6)
  if len(i6):
    o = l3[i6]
    plen = _u16(a, o + 4)
    ip_len[i6] = np.where(plen == 0, wire_end[i6] - o, plen + 40)  # 0: jumbogram
    for k, d in (("src_hi", 8), ("src_lo", 16), ("dst_hi", 24), ("dst_lo", 32)):
      hi[k][i6] = _u64(a, o + d)
    nh, p, e = _u8(a, o + 6), o + 40, end[i6]
    bad = np.zeros(len(i6), bool)
    f6 = np.zeros(len(i6), bool)
    for _ in range(8):  # extension header chain
      ext = np.isin(nh, _IPV6_EXT) & ~bad & ~f6
      if not ext.any():
        break
      bad |= ext & (p + 8 > e)
      ext &= ~bad
      is_frag = ext & (nh == 44)
      f6 |= is_frag & ((_u16(a, p + 2) & 0xFFF9) != 0)  # offset > 0 or more-fragments
      size = np.where(nh == 44, 8, np.where(nh == 51, (_u8(a, p + 1) + 2) * 4,
                                            (_u8(a, p + 1) + 1) * 8))
      nh = np.where(ext, _u8(a, p), nh)
      p = np.where(ext, p + size, p)
    counts["fragments"] += int(f6.sum())
    proto[i6] = np.where(bad, -2, np.where(f6, -3, nh))
    l4[i6] = p
  ip_end = l3 + ip_len
  counts["malformed"] += int((proto == -2).sum())
  if defrag is not None and frag.any():
    extra = _defragment(batch, np.flatnonzero(frag & (proto == 6)), l3, ip_end, end, defrag, counts)
  else:
    extra = None
    counts["fragments"] += int((frag & (proto == 6)).sum())
  is_ip = v4 | v6
  counts["non_tcp"] += int((is_ip & (proto >= 0) & (proto != 6)).sum())
  tcp = np.flatnonzero((proto == 6) & ~frag)
  o, e = l4[tcp], end[tcp]
  hdr_ok = o + 20 <= e
  doff = (_u8(a, o + 12) >> 4) * 4
  pay_off = o + doff
  pay_len = ip_end[tcp] - pay_off
  good = hdr_ok & (doff >= 20) & (pay_len >= 0)
  counts["malformed"] += int((~good).sum())
  tcp, o, pay_off, pay_len, e = tcp[good], o[good], pay_off[good], pay_len[good], e[good]
  pay_cap = np.clip(np.minimum(ip_end[tcp], e) - pay_off, 0, pay_len)
  counts["snapped"] += int((pay_cap < pay_len).sum())
  pkts = TcpPackets(
      buf=a, index=batch.first_index + tcp, ts=batch.ts[tcp],
      src_hi=hi["src_hi"][tcp], src_lo=hi["src_lo"][tcp], dst_hi=hi["dst_hi"][tcp],
      dst_lo=hi["dst_lo"][tcp], sport=_u16(a, o), dport=_u16(a, o + 2), seq=_u32(a, o + 4),
      flags=_u8(a, o + 13), ip_len=ip_len[tcp], pay_len=pay_len, pay_off=pay_off, pay_cap=pay_cap)
  if extra is not None and len(extra):
    pkts = _concat(pkts, extra)
  counts["tcp_packets"] += len(pkts)
  return pkts


def _defragment(batch, idx, l3, ip_end, end, defrag, counts):
  """Feeds whole captured fragments to `defrag`; decodes completed datagrams as raw IPv4."""
  done = []
  buf = batch.buf
  for i in idx.tolist():
    if ip_end[i] > end[i]:
      counts["fragments"] += 1  # cut by the snap length: cannot be reassembled
      continue
    out = defrag.add(batch.first_index + i, float(batch.ts[i]), buf[l3[i]:ip_end[i]].tobytes())
    counts["fragments"] += 1
    if out is not None:
      done.append(out)
  if not done:
    return None
  counts["reassembled"] += len(done)
  data = b"".join(d[2] for d in done)
  sizes = np.asarray([len(d[2]) for d in done], np.int64)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  rb = pcap.RecordBatch(
      buf=pcap._padded(data), data_off=starts, caplen=sizes, origlen=sizes,
      ts=np.asarray([d[1] for d in done]), linktype=np.full(len(done), IPV4, np.int64),
      first_index=0)
  sub = collections.Counter()
  pkts = decode(rb, sub, None)
  pkts.index = np.asarray([d[0] for d in done], np.int64)[pkts.index]
  return pkts


def _concat(a: TcpPackets, b: TcpPackets) -> TcpPackets:
  """Both packet sets over one buffer, in record order (a reassembled datagram takes the
  place of its last fragment)."""
  buf = np.concatenate([a.buf, b.buf])
  b = dataclasses.replace(b, pay_off=b.pay_off + len(a.buf))
  names = [f.name for f in dataclasses.fields(TcpPackets)][1:]
  merged = {k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in names}
  order = np.argsort(merged["index"], kind="stable")
  return TcpPackets(buf, **{k: v[order] for k, v in merged.items()})
