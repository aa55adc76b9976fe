"""TLS server name and server certificate from the first bytes of a TCP stream.

Only what weak negatives need (paper Alg. 1): the SNI of the ClientHello and
the SHA-256 of the server's first certificate, which is in clear up to TLS 1.2.
Parsed by hand rather than with `dpkt.ssl` because the input is a prefix of a
stream: a handshake message may span records and segments, and dpkt wants
whole records and raises on the rest. Each side decides as early as it can
whether the answer is still possible, so flows can be finished early.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Optional

STREAM_LIMIT = 16384   # bytes of one direction kept for parsing; certificate chains fit
PENDING, FOUND, IMPOSSIBLE = 0, 1, 2
_HANDSHAKE, _CLIENT_HELLO, _SERVER_HELLO, _CERTIFICATE = 22, 1, 2, 11
_EXT_SNI, _EXT_SUPPORTED_VERSIONS = 0, 43


class StreamPrefix:
  """In-order bytes of one direction of a TCP stream, reassembled by sequence number."""

  def __init__(self, limit: int = STREAM_LIMIT):
    self.data = bytearray()
    self.next_seq: Optional[int] = None
    self.held: dict[int, bytes] = {}   # segments that arrived ahead of a gap
    self.limit = limit

  def add(self, seq: int, payload: bytes) -> bool:
    """Adds a segment; True when new in-order bytes were appended."""
    if self.next_seq is None:
      self.next_seq = seq
    grew = False
    rel = (seq - self.next_seq) & 0xFFFFFFFF
    if rel >= 0x80000000:  # starts before what we have: keep its new tail, if any
      skip = (self.next_seq - seq) & 0xFFFFFFFF
      payload, rel = payload[skip:], 0
    if rel > 0:
      if len(self.held) < 64:
        self.held[seq] = payload
      return False
    while payload:
      take = payload[:self.limit - len(self.data)]
      self.data += take
      self.next_seq = (self.next_seq + len(payload)) & 0xFFFFFFFF
      grew = grew or bool(take)
      payload = self.held.pop(self.next_seq, b"")
    return grew

  @property
  def full(self) -> bool:
    return len(self.data) >= self.limit


def _records(data: bytes):
  """Handshake bytes of the leading TLS records, and whether a non-handshake record ended them."""
  hs, p, stopped = bytearray(), 0, False
  while p + 5 <= len(data):
    ctype, major, length = data[p], data[p + 1], struct.unpack_from("!H", data, p + 3)[0]
    if major != 3:
      return hs, True
    if ctype != _HANDSHAKE:
      stopped = True
      break
    hs += data[p + 5:p + 5 + length]
    p += 5 + length
  return hs, stopped


def _extensions(body: bytes, p: int):
  """(type, data) of the extensions starting at body[p] (the 2-byte total length)."""
  if p + 2 > len(body):
    return
  end = min(len(body), p + 2 + struct.unpack_from("!H", body, p)[0])
  p += 2
  while p + 4 <= end:
    etype, elen = struct.unpack_from("!HH", body, p)
    yield etype, body[p + 4:p + 4 + elen]
    p += 4 + elen


def client_hello_sni(data: bytes) -> tuple[int, Optional[str]]:
  """(state, server name) from the first client bytes of a connection."""
  if len(data) >= 1 and data[0] != _HANDSHAKE or len(data) >= 2 and data[1] != 3:
    return IMPOSSIBLE, None
  hs, _ = _records(data)
  if len(hs) < 4:
    return PENDING, None
  if hs[0] != _CLIENT_HELLO:
    return IMPOSSIBLE, None
  size = int.from_bytes(hs[1:4], "big")
  if len(hs) < 4 + size:
    return PENDING, None
  body = bytes(hs[4:4 + size])
  try:
    p = 34
    p += 1 + body[p]                                   # session id
    p += 2 + struct.unpack_from("!H", body, p)[0]      # cipher suites
    p += 1 + body[p]                                   # compression methods
  except (IndexError, struct.error):
    return IMPOSSIBLE, None
  for etype, ext in _extensions(body, p):
    if etype == _EXT_SNI and len(ext) >= 5 and ext[2] == 0:
      n = struct.unpack_from("!H", ext, 3)[0]
      return FOUND, ext[5:5 + n].decode("ascii", "replace")
  return IMPOSSIBLE, None   # a complete hello without a server name


def server_certificate(data: bytes) -> tuple[int, Optional[str]]:
  """(state, hex SHA-256 of the first certificate) from the first server bytes."""
  if len(data) >= 1 and data[0] != _HANDSHAKE or len(data) >= 2 and data[1] != 3:
    return IMPOSSIBLE, None
  hs, stopped = _records(data)
  p = 0
  while p + 4 <= len(hs):
    mtype, size = hs[p], int.from_bytes(hs[p + 1:p + 4], "big")
    body = hs[p + 4:p + 4 + size]
    if mtype == _CERTIFICATE:
      if len(body) < 6:
        break
      n = int.from_bytes(body[3:6], "big")
      if len(body) < 6 + n:
        break                                          # the first certificate is not all here yet
      return FOUND, hashlib.sha256(bytes(body[6:6 + n])).hexdigest()
    if len(body) < size:
      break
    if mtype == _SERVER_HELLO and _is_tls13(bytes(body)):
      return IMPOSSIBLE, None                          # certificates are encrypted in TLS 1.3
    if mtype != _SERVER_HELLO:
      return IMPOSSIBLE, None                          # past where a Certificate could come
    p += 4 + size
  # A change-cipher-spec or data record before the certificate: resumed or 1.3 session.
  return (IMPOSSIBLE, None) if stopped else (PENDING, None)


def _is_tls13(body: bytes) -> bool:
  try:
    p = 34 + 1 + body[34] + 2 + 1
  except IndexError:
    return False
  return any(t == _EXT_SUPPORTED_VERSIONS and ext[:2] == b"\x03\x04"
             for t, ext in _extensions(body, p))
