"""Capture files -> batches of records: pcap, pcapng and a modified-pcap variant.

Speed comes from never building a Python object per packet: a chunk of the
file is read as one buffer, a tight loop finds where each record starts (the
only step that must be sequential), and every header field after that is read
with numpy over all records of the chunk at once (`input_pipeline/packets.py`).

Readers never raise for bad file contents. A fault stops the reader and sets
`CaptureReader.error` to a message naming the file, byte offset and record
index; the batches yielded before it stay valid.

The format is recognised by its magic number, never by the file extension:
  a1b2c3d4 / d4c3b2a1   pcap, microseconds (either byte order)
  a1b23c4d / 4d3cb2a1   pcap, nanoseconds
  a1b2cd34 / 34cdb2a1   "modified" pcap (Kuznetzov patches): 24-byte records
  0a0d0d0a              pcapng (section header block)
Some tools write modified-pcap records under the standard magic; plain readers
then return garbage. `_sniff_record_header` tries both record sizes on the
first records and keeps the one whose lengths and timestamps make sense.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from typing import Iterator, Optional

import numpy as np

CHUNK_BYTES = 32 << 20     # file bytes per batch: bounds memory, amortises numpy calls
PAD_BYTES = 256            # zero bytes after each chunk so header gathers never index out of range
MAX_RECORD = 1 << 18       # libpcap's MAXIMUM_SNAPLEN: any longer record is corruption
MAX_BLOCK = 1 << 24        # pcapng blocks above 16 MiB are corruption, not packets
LINKTYPE_MASK = 0x03FFFFFF  # libpcap LT_LINKTYPE: upper bits carry FCS length flags

_PCAP_MAGICS = {  # magic as read little-endian -> (byte order, ticks per second, record header)
    0xA1B2C3D4: ("<", 1e6, 16), 0xD4C3B2A1: (">", 1e6, 16),
    0xA1B23C4D: ("<", 1e9, 16), 0x4D3CB2A1: (">", 1e9, 16),
    0xA1B2CD34: ("<", 1e6, 24), 0x34CDB2A1: (">", 1e6, 24),
}
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D


@dataclasses.dataclass
class RecordBatch:
  """Captured records of one chunk; offsets index into `buf`."""
  buf: np.ndarray          # uint8[chunk + PAD_BYTES]
  data_off: np.ndarray     # int64[R] where each record's captured bytes start
  caplen: np.ndarray       # int64[R] captured bytes
  origlen: np.ndarray      # int64[R] bytes on the wire
  ts: np.ndarray           # float64[R] seconds since the epoch
  linktype: np.ndarray     # int64[R] link type of the record's interface (masked)
  first_index: int         # file-wide index of the first record

  def __len__(self) -> int:
    return len(self.data_off)


def _gather_u32(arr: np.ndarray, offs: np.ndarray, order: str) -> np.ndarray:
  b = [arr[offs + k].astype(np.uint64) for k in range(4)]
  if order == "<":
    b = b[::-1]
  return (b[0] << np.uint64(24)) | (b[1] << np.uint64(16)) | (b[2] << np.uint64(8)) | b[3]


def _fill(f, carry: np.ndarray, chunk_bytes: int):
  """Next chunk read straight into a fresh array after the unconsumed `carry`: one copy only.

  Returns (array with PAD_BYTES zeros after the data, end of the data, bytes read).
  """
  arr = np.empty(len(carry) + chunk_bytes + PAD_BYTES, np.uint8)
  arr[:len(carry)] = carry
  got = f.readinto(memoryview(arr)[len(carry):len(carry) + chunk_bytes]) or 0
  end = len(carry) + got
  arr[end:end + PAD_BYTES] = 0
  return arr, end, got


def _padded(data: bytes) -> np.ndarray:
  arr = np.zeros(len(data) + PAD_BYTES, np.uint8)
  arr[:len(data)] = np.frombuffer(data, np.uint8)
  return arr


class CaptureReader:
  """Iterates a capture file as `RecordBatch`es; see the module docstring."""

  def __init__(self, path, chunk_bytes: int = CHUNK_BYTES):
    self.path = str(path)
    self.chunk_bytes = chunk_bytes
    self.format: Optional[str] = None
    self.error: Optional[str] = None
    self.records = 0           # records yielded so far
    self.file_bytes = 0
    self.linktypes: set[int] = set()

  def _fail(self, offset: Optional[int], reason: str) -> None:
    where = f" at byte {offset} (record {self.records})" if offset is not None else ""
    self.error = f"{self.path}{where}: {reason}"

  def batches(self) -> Iterator[RecordBatch]:
    try:
      self.file_bytes = os.path.getsize(self.path)
      f = open(self.path, "rb")
    except OSError as e:
      self._fail(None, f"cannot read file ({e.strerror or e})")
      return
    with f:
      head = f.read(24)
      if not head:
        self._fail(None, "empty file")
        return
      if len(head) < 4:
        self._fail(0, f"file of {len(head)} bytes is too short for a capture")
        return
      magic = struct.unpack_from("<I", head)[0]
      try:
        if magic == _PCAPNG_SHB:
          self.format = "pcapng"
          yield from self._pcapng(f, head)
        elif magic in _PCAP_MAGICS:
          yield from self._pcap(f, head, *_PCAP_MAGICS[magic])
        else:
          self._fail(0, f"not a pcap or pcapng file (magic 0x{magic:08x})")
      except (MemoryError, KeyboardInterrupt):
        raise
      except Exception as e:  # a reader bug must not lose the flows read so far
        self._fail(None, f"reader failed: {type(e).__name__}: {e}")

  # -- pcap ---------------------------------------------------------------

  def _pcap(self, f, head: bytes, order: str, tick: float, hdr_len: int):
    if len(head) < 24:
      self._fail(0, "pcap file header cut short")
      return
    snaplen, linktype = struct.unpack_from(order + "II", head, 16)
    linktype &= LINKTYPE_MASK
    max_len = max(snaplen, MAX_RECORD) if snaplen else MAX_RECORD
    probe = head + f.read(1 << 16)
    if hdr_len == 16:
      hdr_len = _sniff_record_header(probe, order, tick, max_len)
    f.seek(24)
    self.format = "pcap" if hdr_len == 16 else "pcap-modified"
    self.linktypes.add(linktype)
    u32 = struct.Struct(order + "I").unpack_from
    file_off, carry = 24, np.zeros(0, np.uint8)
    while True:
      arr, end, got = _fill(f, carry, self.chunk_bytes)
      if not end:
        return
      buf, offs, off = memoryview(arr), [], 0
      append = offs.append
      while off + hdr_len <= end:  # the one sequential step: record boundaries
        n = u32(buf, off + 8)[0]
        if n > max_len:
          break
        nxt = off + hdr_len + n
        if nxt > end:
          break
        append(off)
        off = nxt
      if offs:
        hdr = np.asarray(offs, np.int64)
        sec = _gather_u32(arr, hdr, order)
        frac = _gather_u32(arr, hdr + 4, order)
        yield RecordBatch(
            buf=arr, data_off=hdr + hdr_len,
            caplen=_gather_u32(arr, hdr + 8, order).astype(np.int64),
            origlen=_gather_u32(arr, hdr + 12, order).astype(np.int64),
            ts=sec.astype(np.float64) + frac.astype(np.float64) / tick,
            linktype=np.full(len(offs), linktype, np.int64), first_index=self.records)
        self.records += len(offs)
      if off + hdr_len <= end and u32(buf, off + 8)[0] > max_len:
        self._fail(file_off + off, f"record length {u32(buf, off + 8)[0]} exceeds the "
                   f"snap length {snaplen}: corrupt record header")
        return
      if not got:  # end of file with bytes left over
        if off < end:
          self._fail(file_off + off, f"last record cut short ({end - off} bytes left)")
        return
      carry = arr[off:end].copy()
      file_off += off

  # -- pcapng -------------------------------------------------------------

  def _pcapng(self, f, head: bytes):
    f.seek(0)
    order, ifaces = "<", []
    file_off, carry = 0, np.zeros(0, np.uint8)
    while True:
      arr, end, got = _fill(f, carry, self.chunk_bytes)
      if not end:
        return
      buf, off = memoryview(arr), 0
      offs, kinds, extra = [], [], []
      fault = None
      while off + 12 <= end:
        btype = struct.unpack_from(order + "I", buf, off)[0]
        if btype == _PCAPNG_SHB:
          bom = struct.unpack_from("<I", buf, off + 8)[0]
          if bom not in (_PCAPNG_BOM, 0x4D3C2B1A):
            fault = (off, f"bad pcapng byte-order magic 0x{bom:08x}")
            break
          if offs:  # records so far belong to the old section's interfaces
            yield self._pcapng_batch(arr, offs, kinds, extra, order, ifaces)
            offs, kinds, extra = [], [], []
          order, ifaces = ("<" if bom == _PCAPNG_BOM else ">"), []
        blen = struct.unpack_from(order + "I", buf, off + 4)[0]
        if blen < 12 or blen % 4 or blen > MAX_BLOCK:
          fault = (off, f"bad pcapng block length {blen} (block type 0x{btype:x})")
          break
        if off + blen > end:
          break
        if btype == 6:  # enhanced packet block: fields gathered below with numpy
          offs.append(off)
          kinds.append(6)
        elif btype in (2, 3):  # obsolete / simple packet blocks: rare, decoded here
          rec = self._pcapng_slow_packet(buf, off, blen, btype, order, ifaces)
          if rec is None:
            fault = (off, "pcapng packet block cut short")
            break
          offs.append(off)
          kinds.append(btype)
          extra.append(rec)
        elif btype == 1:
          ifaces.append(_parse_idb(buf, off, blen, order))
          self.linktypes.add(ifaces[-1][0])
        off += blen
      if offs:
        yield self._pcapng_batch(arr, offs, kinds, extra, order, ifaces)
      if fault is not None:
        self._fail(file_off + fault[0], fault[1])
        return
      if not got:
        if off < end:
          self._fail(file_off + off, f"last block cut short ({end - off} bytes left)")
        return
      carry = arr[off:end].copy()
      file_off += off

  def _pcapng_slow_packet(self, buf, off, blen, btype, order, ifaces):
    if btype == 3:
      orig = struct.unpack_from(order + "I", buf, off + 8)[0]
      snap = ifaces[0][3] if ifaces and ifaces[0][3] else orig
      return (off + 12, min(orig, snap, blen - 16), orig, 0, 0.0)
    if blen < 32:
      return None
    iface, _, hi, lo, cap, orig = struct.unpack_from(order + "HHIIII", buf, off + 8)
    scale, tsoff = (ifaces[iface][1], ifaces[iface][2]) if iface < len(ifaces) else (1e-6, 0)
    return (off + 28, min(cap, blen - 32), orig, iface, ((hi << 32) | lo) * scale + tsoff)

  def _pcapng_batch(self, arr, offs, kinds, extra, order, ifaces) -> RecordBatch:
    blk = np.asarray(offs, np.int64)
    n = len(blk)
    iface = _gather_u32(arr, blk + 8, order).astype(np.int64)
    ticks = (_gather_u32(arr, blk + 12, order) << np.uint64(32)) | _gather_u32(arr, blk + 16, order)
    caplen = _gather_u32(arr, blk + 20, order).astype(np.int64)
    origlen = _gather_u32(arr, blk + 24, order).astype(np.int64)
    data_off = blk + 28
    if extra:  # overwrite the rare simple / obsolete packet blocks with their own fields
      slow = np.flatnonzero(np.asarray(kinds) != 6)
      vals = np.asarray(extra, np.float64)
      data_off[slow], caplen[slow], origlen[slow] = vals[:, 0], vals[:, 1], vals[:, 2]
      iface[slow] = vals[:, 3]
    # An interface id beyond the declared ones gets link type -1: counted as unknown link.
    table = np.asarray([i[:3] for i in ifaces] + [(-1, 1e-6, 0.0)], np.float64)
    iface = np.where((iface >= 0) & (iface < len(ifaces)), iface, len(ifaces))
    ts = ticks.astype(np.float64) * table[iface, 1] + table[iface, 2]
    if extra:
      ts[slow] = vals[:, 4]
    batch = RecordBatch(buf=arr, data_off=data_off, caplen=caplen, origlen=origlen, ts=ts,
                        linktype=table[iface, 0].astype(np.int64), first_index=self.records)
    self.records += n
    return batch


def _parse_idb(buf: bytes, off: int, blen: int, order: str):
  """Interface description block -> (link type, seconds per tick, ts offset, snaplen)."""
  linktype, _, snaplen = struct.unpack_from(order + "HHI", buf, off + 8)
  scale, tsoff = 1e-6, 0.0
  p, end = off + 16, off + blen - 4
  while p + 4 <= end:  # options: if_tsresol (9) and if_tsoffset (14) matter for timestamps
    code, length = struct.unpack_from(order + "HH", buf, p)
    if code == 0:
      break
    if code == 9 and length >= 1:
      r = buf[p + 4]
      scale = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
    elif code == 14 and length >= 8:
      tsoff = float(struct.unpack_from(order + "q", buf, p + 4)[0])
    p += 4 + ((length + 3) & ~3)
  return (linktype & LINKTYPE_MASK, scale, tsoff, snaplen)


def _sniff_record_header(probe: bytes, order: str, tick: float, max_len: int) -> int:
  """16 (standard) or 24 (modified pcap) bytes per record header, judged on the first records.

  A record is plausible when its captured length is within the snap length and
  not above its wire length, its sub-second field is below one second, and its
  timestamp is within a day of the previous record. The reading that walks the
  most records plausibly wins; ties keep the standard header.
  """
  def plausible_run(hdr_len: int) -> int:
    off, count, prev = 24, 0, None
    while off + hdr_len <= len(probe) and count < 64:
      sec, frac, cap, orig = struct.unpack_from(order + "IIII", probe, off)
      if cap > max_len or cap > orig or frac >= tick or (prev is not None and abs(sec - prev) > 86400):
        break
      if hdr_len == 24 and probe[off + 23] != 0:  # the pad byte of the modified header
        break
      prev, count, off = sec, count + 1, off + hdr_len + cap
    return count + (off >= len(probe))  # reaching the end of a small file counts as sound

  return 24 if plausible_run(24) > plausible_run(16) else 16
