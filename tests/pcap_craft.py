"""Crafts capture files for tests and benchmarks: packets with dpkt, files by hand.

Files are written byte by byte (not with dpkt's writers) so that every variant
the reader must accept can be made: either byte order, nanosecond pcap, the
modified 24-byte record header, link-type FCS bits, pcapng with several
interfaces of different link types and blocks the reader must skip.
"""
from __future__ import annotations

import random
import struct

import dpkt

SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


def ip_packet(src: str, dst: str, sport: int, dport: int, flags: int, payload: bytes = b"",
              seq: int = 0, ack: int = 0, ext_headers: bytes = b"", ext_first: int = 0) -> bytes:
  """IPv4 or IPv6 (by address form) TCP packet. `ext_headers` (IPv6) are put between the
  fixed header and TCP; `ext_first` is the next-header value that leads into them."""
  tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, data=payload)
  if ":" in src:
    import socket
    ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src),
                      dst=socket.inet_pton(socket.AF_INET6, dst), nxt=6, hlim=64, data=tcp)
    ip.plen = len(bytes(tcp))
    raw = bytes(ip)
    if ext_headers:
      tcp_bytes = raw[40:]
      fixed = bytearray(raw[:40])
      fixed[6] = ext_first
      struct.pack_into("!H", fixed, 4, len(ext_headers) + len(tcp_bytes))
      raw = bytes(fixed) + ext_headers + tcp_bytes
    return raw
  ip = dpkt.ip.IP(src=bytes(int(x) for x in src.split(".")),
                  dst=bytes(int(x) for x in dst.split(".")), p=6, ttl=64, data=tcp, id=1)
  ip.len = 20 + len(bytes(tcp))
  return bytes(ip)


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes = b"x") -> bytes:
  udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
  udp.ulen = 8 + len(payload)
  ip = dpkt.ip.IP(src=bytes(int(x) for x in src.split(".")),
                  dst=bytes(int(x) for x in dst.split(".")), p=17, data=udp)
  ip.len = 20 + len(bytes(udp))
  return bytes(ip)


def fragment_ipv4(packet: bytes, size: int) -> list[bytes]:
  """Splits an IPv4 packet into fragments carrying `size` (multiple of 8) payload bytes."""
  ihl = (packet[0] & 15) * 4
  head, body = bytearray(packet[:ihl]), packet[ihl:]
  out = []
  for start in range(0, len(body), size):
    part = body[start:start + size]
    h = bytearray(head)
    more = 0x2000 if start + size < len(body) else 0
    struct.pack_into("!HH", h, 2, ihl + len(part), 1)
    struct.pack_into("!H", h, 6, more | (start // 8))
    struct.pack_into("!H", h, 10, 0)
    out.append(bytes(h) + part)
  return out


# -- link layers ------------------------------------------------------------------------

MAC_A, MAC_B = bytes.fromhex("020000aa0001"), bytes.fromhex("020000bb0002")


def _ethertype(ip: bytes) -> int:
  return 0x0800 if ip[0] >> 4 == 4 else 0x86DD


def link_frame(linktype: int, ip: bytes, vlans: tuple = (), order: str = "<") -> bytes:
  """`ip` wrapped in the link-layer header of `linktype`."""
  et = _ethertype(ip)
  if linktype == 1:
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    return MAC_B + MAC_A + tags + struct.pack("!H", et) + ip
  if linktype == 113:  # Linux cooked v1: packet type, ARPHRD, addr len, addr[8], protocol
    return struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", et) + ip
  if linktype == 276:  # Linux cooked v2
    return struct.pack("!HHIHBB8s", et, 0, 2, 1, 0, 6, MAC_A + b"\0\0") + ip
  if linktype in (101, 228, 229, 12, 14):
    return ip
  if linktype in (0, 108):  # BSD loopback: AF_INET 2 / AF_INET6 30, host or network order
    fam = 2 if et == 0x0800 else 30
    return struct.pack((">" if linktype == 108 else order) + "I", fam) + ip
  if linktype in (9, 50):
    return b"\xff\x03" + struct.pack("!H", 0x21 if et == 0x0800 else 0x57) + ip
  if linktype == 104:
    return b"\x0f\x00" + struct.pack("!H", et) + ip
  if linktype == 192:  # PPI header (little-endian) around an Ethernet frame
    return struct.pack("<BBHI", 0, 0, 8, 1) + link_frame(1, ip)
  raise ValueError(f"no crafting for link type {linktype}")


# -- files ------------------------------------------------------------------------------

def pcap_bytes(records, linktype: int = 1, order: str = "<", nano: bool = False,
               snaplen: int = 65535, modified: bool = False, magic: int | None = None) -> bytes:
  """pcap file of `records` [(ts, frame) or (ts, frame, origlen)]; captured bytes are cut
  at `snaplen`. `modified` writes 24-byte record headers (under `magic`, default standard)."""
  magic = magic if magic is not None else (0xA1B23C4D if nano else 0xA1B2C3D4)
  out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
  tick = 10**9 if nano else 10**6
  for rec in records:
    ts, frame = rec[0], rec[1]
    orig = rec[2] if len(rec) > 2 else len(frame)
    cap = frame[:snaplen]
    sec = int(ts)
    frac = int(round((ts - sec) * tick))
    out.append(struct.pack(order + "IIII", sec, frac, len(cap), orig))
    if modified:
      out.append(struct.pack(order + "IHBB", 0, 0, 0, 0))
    out.append(cap)
  return b"".join(out)


def _block(order: str, btype: int, body: bytes) -> bytes:
  body += b"\0" * (-len(body) % 4)
  n = len(body) + 12
  return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def pcapng_bytes(interfaces, packets, order: str = "<", junk_blocks: bool = True) -> bytes:
  """pcapng with one IDB per (linktype, tsresol exponent or None) in `interfaces` and an
  EPB per (interface, ts, frame) in `packets`; name-resolution and custom blocks between."""
  shb = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
  out = [_block(order, 0x0A0D0D0A, shb)]
  for linktype, tsresol in interfaces:
    opts = b""
    if tsresol is not None:
      opts = struct.pack(order + "HHB3x", 9, 1, tsresol) + struct.pack(order + "HH", 0, 0)
    out.append(_block(order, 1, struct.pack(order + "HHI", linktype, 0, 0) + opts))
  if junk_blocks:
    out.append(_block(order, 4, b"\x01\x00\x08\x00" + b"\x0a\0\0\x01host"))  # NRB
    out.append(_block(order, 0x00000BAD, b"custom block the reader must skip"))
  for iface, ts, frame in packets:
    res = interfaces[iface][1]
    ticks = int(round(ts * 10 ** (res if res is not None else 6)))
    body = struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF,
                       len(frame), len(frame)) + frame
    out.append(_block(order, 6, body))
  return b"".join(out)


# -- conversations ----------------------------------------------------------------------

def conversation(client, server, messages, t0: float = 1_600_000_000.0, close: str = "fin",
                 handshake: bool = True, mss: int = 1400, dt: float = 0.001,
                 client_isn: int = 1000, server_isn: int = 5000):
  """IP packets [(ts, packet)] of a TCP conversation with correct sequence numbers.

  client/server: (ip, port). messages: [(from_client: bool, bytes)], each cut in
  `mss` segments and acknowledged by an empty ACK. close: 'fin' | 'rst' | None.
  """
  (cip, cport), (sip, sport) = client, server
  seq = {True: client_isn, False: server_isn}
  out, t = [], t0

  def send(from_client, flags, payload=b""):
    nonlocal t
    a, b = (client, server) if from_client else (server, client)
    pkt = ip_packet(a[0], b[0], a[1], b[1], flags, payload, seq[from_client],
                    seq[not from_client])
    out.append((t, pkt))
    t += dt
    seq[from_client] = (seq[from_client] + len(payload) + (1 if flags & (SYN | FIN) else 0)) % 2**32

  if handshake:
    send(True, SYN)
    send(False, SYN | ACK)
    send(True, ACK)
  for from_client, data in messages:
    for i in range(0, len(data), mss):
      send(from_client, PSH | ACK, data[i:i + mss])
    send(not from_client, ACK)
  if close == "fin":
    send(True, FIN | ACK)
    send(False, FIN | ACK)
    send(True, ACK)
  elif close == "rst":
    send(True, RST | ACK)
  return out


# -- TLS --------------------------------------------------------------------------------

def _handshake_record(msg_type: int, body: bytes) -> bytes:
  msg = bytes([msg_type]) + len(body).to_bytes(3, "big") + body
  return b"\x16\x03\x01" + struct.pack("!H", len(msg)) + msg


def client_hello(sni: str | None) -> bytes:
  exts = b""
  if sni is not None:
    name = sni.encode()
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    data = struct.pack("!H", len(entry)) + entry
    exts += struct.pack("!HH", 0, len(data)) + data
  exts += struct.pack("!HH", 10, 4) + b"\x00\x02\x00\x17"  # supported groups, after SNI
  body = (b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\x00\x04\x13\x01\xc0\x2f" + b"\x01\x00"
          + struct.pack("!H", len(exts)) + exts)
  return _handshake_record(1, body)


def server_hello(tls13: bool = False) -> bytes:
  exts = struct.pack("!HHH", 43, 2, 0x0304) if tls13 else b""
  body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\xc0\x2f" + b"\x00"
          + struct.pack("!H", len(exts)) + exts)
  return _handshake_record(2, body)


def certificate(certs: list[bytes]) -> bytes:
  chain = b"".join(len(c).to_bytes(3, "big") + c for c in certs)
  return _handshake_record(11, len(chain).to_bytes(3, "big") + chain)


# -- bulk synthetic traffic (benchmarks) ------------------------------------------------

def synthetic_pcap(path, target_bytes: int, seed: int = 0, order: str = "<") -> int:
  """Writes an Ethernet pcap of many TLS-like flows of mixed size; returns packets written."""
  rng = random.Random(seed)
  written, count, flow = 0, 0, 0
  with open(path, "wb") as f:
    f.write(pcap_bytes([], 1, order))
    t = 1_600_000_000.0
    while written < target_bytes:
      flow += 1
      client = (f"10.{flow >> 16 & 255}.{flow >> 8 & 255}.{flow & 255}", 1024 + flow % 60000)
      server = (f"172.16.{rng.randrange(256)}.{rng.randrange(1, 255)}", 443)
      size = rng.choice((200, 2_000, 20_000, 200_000))
      msgs = [(True, client_hello(f"s{flow % 500}.example.com")),
              (False, server_hello() + certificate([rng.randbytes(900)])),
              (True, rng.randbytes(300)), (False, rng.randbytes(size))]
      recs = [(ts, link_frame(1, pkt)) for ts, pkt in conversation(client, server, msgs, t0=t)]
      t += 0.01
      data = pcap_bytes(recs, 1, order)[24:]
      f.write(data)
      written += len(data)
      count += len(recs)
  return count
