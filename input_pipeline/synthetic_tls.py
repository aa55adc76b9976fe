"""TLS 1.2 record builders and the demo "apps" of `synthetic.write_demo_dataset`.

The demo world is built to be learnable but not trivially so:
  * each app (class) has its own servers, names and certificates, a first
    request of a characteristic size, a request/response rhythm and, in part
    of its flows, a few class-specific bytes at the start of its first
    application-data record;
  * apps share TLS client stacks (about three apps per stack), a quarter of
    every app's flows use one "system" stack common to all, and a third go to
    shared CDN / analytics servers with near-identical traffic, the shared
    certificate, and for half of them the shared CDN server name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Optional, Sequence

import numpy as np

# ------------------------------------------------------------------- TLS ---
def tls_record(content_type: int, body: bytes, version: int = 0x0303) -> bytes:
  return struct.pack("!BHH", content_type, version, len(body)) + body


def _handshake(msg_type: int, body: bytes) -> bytes:
  return struct.pack("!B", msg_type) + len(body).to_bytes(3, "big") + body


def _vec(data: bytes, width: int = 2) -> bytes:
  return len(data).to_bytes(width, "big") + data


def _u16s(values: Sequence[int]) -> bytes:
  return b"".join(struct.pack("!H", v) for v in values)


def _extension(ext_type: int, data: bytes) -> bytes:
  return struct.pack("!HH", ext_type, len(data)) + data


def client_hello(rng: np.random.Generator, *, sni: Optional[str],
                 ciphers: Sequence[int], extensions: Sequence[int],
                 alpn: Sequence[str] = (), session_id: bool = True,
                 grease: bool = False, pad_to: int = 0) -> bytes:
  """A TLS 1.2 ClientHello record; `extensions` gives the extension order."""
  data = {
      0x0000: _vec(b"\0" + _vec(sni.encode())) if sni else None,
      0x0005: b"\x01\0\0\0\0",
      0x000A: _vec(_u16s((0x001D, 0x0017, 0x0018))),
      0x000B: b"\x01\x00",
      0x000D: _vec(_u16s((0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0201))),
      0x0010: _vec(b"".join(_vec(p.encode(), 1) for p in alpn)) if alpn else None,
      0x0012: b"",
      0x0017: b"",
      0x0023: b"",
      0xFF01: b"\x00",
  }
  grease_value = 0x0A0A + 0x1010 * int(rng.integers(16))
  ciphers = ([grease_value] if grease else []) + list(ciphers)
  exts = [_extension(grease_value, b"")] if grease else []
  exts += [_extension(e, data[e]) for e in extensions if data.get(e) is not None]
  body = (b"\x03\x03" + rng.bytes(32) + _vec(rng.bytes(32) if session_id else b"", 1)
          + _vec(_u16s(ciphers)) + b"\x01\x00")
  ext_bytes = b"".join(exts)
  missing = pad_to - (len(body) + 2 + len(ext_bytes) + 4 + 4)
  if pad_to and missing > 0:  # RFC 7685 padding, as BoringSSL-style stacks do
    ext_bytes += _extension(0x0015, b"\0" * missing)
  return tls_record(0x16, _handshake(1, body + _vec(ext_bytes)), version=0x0301)


def fake_certificate(name: str, size: int) -> bytes:
  """A DER-looking certificate whose bytes depend on `name` and `size` only."""
  seed = int.from_bytes(hashlib.sha256(f"{name}/{size}".encode()).digest()[:8], "big")
  subject = b"\x06\x03\x55\x04\x03\x0c" + _vec(name.encode(), 1)
  filler = np.random.default_rng(seed).bytes(max(0, size - len(subject) - 4))
  body = filler[:40] + subject + filler[40:]
  return b"\x30\x82" + struct.pack("!H", len(body)) + body


def server_flight(rng: np.random.Generator, *, cipher: int,
                  chain: Sequence[bytes], alpn: Optional[str] = None) -> bytes:
  """ServerHello, Certificate, ServerKeyExchange, ServerHelloDone records."""
  exts = _extension(0xFF01, b"\x00") + _extension(0x0017, b"") + _extension(0x000B, b"\x01\x00")
  if alpn:
    exts += _extension(0x0010, _vec(_vec(alpn.encode(), 1)))
  hello = b"\x03\x03" + rng.bytes(32) + _vec(rng.bytes(32), 1) + struct.pack("!HB", cipher, 0)
  certs = b"".join(_vec(c, 3) for c in chain)
  key_exchange = b"\x03\x00\x1d" + _vec(rng.bytes(32), 1) + b"\x08\x04" + _vec(rng.bytes(256))
  return (tls_record(0x16, _handshake(2, hello + _vec(exts)))
          + tls_record(0x16, _handshake(11, _vec(certs, 3)))
          + tls_record(0x16, _handshake(12, key_exchange))
          + tls_record(0x16, _handshake(14, b"")))


def client_finish(rng: np.random.Generator) -> bytes:
  """ClientKeyExchange, ChangeCipherSpec and the encrypted Finished."""
  return (tls_record(0x16, _handshake(16, _vec(rng.bytes(32), 1)))
          + tls_record(0x14, b"\x01") + tls_record(0x16, rng.bytes(40)))


def server_finish(rng: np.random.Generator, ticket: bool = True) -> bytes:
  out = tls_record(0x16, _handshake(4, rng.bytes(4) + _vec(rng.bytes(192)))) if ticket else b""
  return out + tls_record(0x14, b"\x01") + tls_record(0x16, rng.bytes(40))


def app_data(rng: np.random.Generator, size: int, *, sequence: int = 1,
             prefix: bytes = b"") -> bytes:
  """Application data records carrying `size` plaintext bytes (AES-GCM framing:
  8-byte explicit nonce = record sequence number, then ciphertext and tag)."""
  records, first = [], True
  while size > 0 or first:
    chunk = min(size, 16384)
    text = (prefix if first else b"") + rng.bytes(max(0, chunk + 16 - (len(prefix) if first else 0)))
    records.append(tls_record(0x17, struct.pack("!Q", sequence) + text))
    sequence, size, first = sequence + 1, size - chunk, False
  return b"".join(records)


# ------------------------------------------------------------- demo apps ---
_CIPHER_POOL = (0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014,
                0x009C, 0x009D, 0x002F, 0x0035, 0x000A, 0xC009, 0xC00A, 0x009E,
                0x009F, 0xC023, 0xC024, 0xC027, 0xC028, 0x003C, 0x003D, 0x0067)
_EXTENSION_POOL = (0x0000, 0x0005, 0x000A, 0x000B, 0x000D, 0x0010, 0x0012,
                   0x0017, 0x0023, 0xFF01)
_APP_NAMES = ("mail", "chat", "maps", "news", "music", "bank", "shop", "social",
              "weather", "fitness", "travel", "notes", "photos", "games")
_FIRST_OCTETS = (23, 34, 52, 104, 157, 185, 199, 203)


@dataclasses.dataclass(frozen=True)
class Stack:
  """A client TLS library: what its ClientHello looks like."""
  ciphers: tuple[int, ...]
  extensions: tuple[int, ...]
  session_id: bool
  grease: bool
  pad_to: int


@dataclasses.dataclass(frozen=True)
class Server:
  name: str                   # its own server name (SNI)
  ipv4: str
  ipv6: str
  chain: tuple[bytes, ...]    # leaf certificate first
  alpn: Optional[str]         # protocol it picks when the client offers it


@dataclasses.dataclass(frozen=True)
class App:
  """One class of the demo dataset."""
  name: str
  stack: Stack
  alpn: tuple[str, ...]
  servers: tuple[Server, ...]
  shared_share: float         # fraction of flows to the CDN / analytics
  magic: bytes                # class bytes in the first app-data record...
  magic_prob: float           # ...present in this fraction of flows
  first_request: float        # size of the first request (bytes)
  request_mu: float           # log-mean of later requests
  response_mu: float          # log-mean of responses
  exchanges: float            # mean number of request/response pairs
  cdn_offset: float           # small shift of its CDN requests
  rtt: float


@dataclasses.dataclass
class FlowSpec:
  """Everything `synthetic.make_flow_packets` needs for one flow."""
  server_ip: str
  server_port: int
  messages: list
  rtt: float
  teardown: Optional[str]
  ipv6: bool


def _ipv4(rng: np.random.Generator, first: Optional[int] = None) -> str:
  first = first if first is not None else int(rng.choice(_FIRST_OCTETS))
  return f"{first}.{rng.integers(256)}.{rng.integers(256)}.{rng.integers(1, 255)}"


def _server(rng, name, cert_name, *, first=None, alpn="h2", ca=b"") -> Server:
  leaf = fake_certificate(cert_name, int(rng.integers(700, 1600)))
  return Server(name, _ipv4(rng, first), f"2001:db8:{rng.integers(1 << 16):x}::"
                f"{rng.integers(1, 1 << 16):x}", (leaf, ca), alpn)


def _stack(rng: np.random.Generator) -> Stack:
  return Stack(ciphers=tuple(int(c) for c in rng.permutation(_CIPHER_POOL)[:rng.integers(6, 20)]),
               extensions=tuple(int(e) for e in rng.permutation(_EXTENSION_POOL)),
               session_id=bool(rng.random() < 0.6), grease=bool(rng.random() < 0.4),
               pad_to=int(rng.choice((0, 0, 512))))


def device_addresses(rng: np.random.Generator) -> tuple[str, str]:
  """The IPv4 and IPv6 address of one capturing device."""
  return (f"192.168.{rng.integers(256)}.{rng.integers(2, 255)}",
          f"fd00::{rng.integers(1 << 16):x}:{rng.integers(1, 1 << 16):x}")


class World:
  """The apps, stacks and servers of one seed; `flow_spec` draws flows."""

  def __init__(self, num_classes: int, seed: int):
    rng = np.random.default_rng([seed, 0])
    cas = [fake_certificate(f"Demo Intermediate CA {i}", 1100) for i in range(3)]
    self.system_stack = _stack(rng)
    self.cdn_name = "static.edgecdn.net"
    self.cdn = [_server(rng, self.cdn_name, "*.edgecdn.net", first=151, ca=cas[0])
                for _ in range(3)]
    self.cdn = [dataclasses.replace(s, chain=self.cdn[0].chain) for s in self.cdn]
    self.analytics = _server(rng, "collect.metrics-hub.com", "metrics-hub.com",
                             first=142, alpn=None, ca=cas[1])
    self.os_servers = [_server(rng, f"{n}.os-vendor.net", f"{n}.os-vendor.net", ca=cas[2])
                       for n in ("update", "push", "time")]
    self.os_stack = _stack(rng)
    stacks = [_stack(rng) for _ in range(max(2, (num_classes + 2) // 3))]
    self.classes = []
    for k in range(num_classes):
      name = _APP_NAMES[k] if k < len(_APP_NAMES) else f"app{k:02d}"
      stack = stacks[k % len(stacks)]
      if rng.random() < 0.5:  # an app tweaks its stack: one extension fewer
        drop = int(rng.integers(1, len(stack.extensions)))
        stack = dataclasses.replace(
            stack, extensions=stack.extensions[:drop] + stack.extensions[drop + 1:])
      shared_cert = rng.random() < 0.5   # one wildcard cert or one per server
      servers = tuple(
          _server(rng, f"{sub}.{name}.example",
                  f"*.{name}.example" if shared_cert else f"{sub}.{name}.example",
                  alpn=str(rng.choice(("h2", "http/1.1"))), ca=cas[int(rng.integers(3))])
          for sub in ("api", "media", "sync")[:int(rng.integers(1, 4))])
      alpn = [("h2", "http/1.1"), ("http/1.1",), ()][int(rng.integers(3))]
      self.classes.append(App(
          name=name, stack=stack, alpn=alpn, servers=servers,
          shared_share=float(rng.uniform(0.35, 0.55)), magic=rng.bytes(4),
          magic_prob=float(rng.uniform(0.4, 0.8)),
          first_request=float(rng.uniform(150, 1400)),
          request_mu=float(np.log(rng.uniform(100, 1500))),
          response_mu=float(np.log(rng.uniform(200, 5000))),
          exchanges=float(rng.uniform(0.5, 6)), cdn_offset=float(rng.uniform(-40, 40)),
          rtt=float(rng.uniform(0.02, 0.15))))

  def flow_spec(self, k: Optional[int], rng: np.random.Generator, index: int = 0) -> FlowSpec:
    """Flow `index` of class k, or of the unlabeled background when k is None."""
    ipv6 = bool(rng.random() < 0.15)
    teardown = str(rng.choice(("fin", "rst", "none"), p=(0.85, 0.1, 0.05)))
    teardown = None if teardown == "none" else teardown
    if k is None:
      return self._background_spec(rng, index, ipv6, teardown)
    app = self.classes[k]
    stack = self.system_stack if rng.random() < 0.35 else app.stack
    where = rng.random()
    if where < app.shared_share * 0.75:      # the shared CDN
      server = self.cdn[int(rng.integers(len(self.cdn)))]
      sni = self.cdn_name if rng.random() < 0.5 else f"{app.name}-assets.edgecdn.net"
      n = 1 + int(rng.poisson(3))
      sizes = [(420 + app.cdn_offset + rng.normal(0, 40), rng.lognormal(np.log(3000), 0.9))
               for _ in range(n)]
      rtt = 0.015
    elif where < app.shared_share:           # the shared analytics endpoint
      server, sni = self.analytics, self.analytics.name
      sizes = [(rng.lognormal(np.log(900), 0.3), rng.uniform(60, 120))
               for _ in range(1 + int(rng.poisson(1)))]
      rtt = 0.03
    else:                                    # the app's own servers
      server = app.servers[int(rng.integers(len(app.servers)))]
      sni = server.name
      sizes = [(app.first_request + rng.normal(0, 30), rng.lognormal(app.response_mu, 0.6))]
      sizes += [(rng.lognormal(app.request_mu, 0.35), rng.lognormal(app.response_mu, 0.6))
                for _ in range(int(rng.poisson(app.exchanges)))]
      rtt = app.rtt
    magic = app.magic if rng.random() < app.magic_prob else b""
    messages = self._tls_messages(rng, stack, app.alpn, sni, server, sizes, magic)
    return FlowSpec(server.ipv6 if ipv6 else server.ipv4, 443, messages,
                    rtt * float(rng.lognormal(0, 0.2)), teardown, ipv6)

  def _tls_messages(self, rng, stack: Stack, alpn, sni, server: Server,
                    sizes, magic: bytes) -> list:
    hello = client_hello(rng, sni=sni, ciphers=stack.ciphers, extensions=stack.extensions,
                         alpn=alpn, session_id=stack.session_id, grease=stack.grease,
                         pad_to=stack.pad_to)
    chosen = server.alpn if server.alpn in alpn else None
    messages = [("c", hello),
                ("s", server_flight(rng, cipher=stack.ciphers[0], chain=server.chain,
                                    alpn=chosen)),
                ("c", client_finish(rng)), ("s", server_finish(rng))]
    for i, (request, response) in enumerate(sizes):
      request, response = int(np.clip(request, 30, 20000)), int(np.clip(response, 30, 24000))
      messages.append(("c", app_data(rng, request, sequence=i + 1,
                                     prefix=magic if i == 0 else b"")))
      messages.append(("s", app_data(rng, response, sequence=i + 1)))
    return messages

  def _background_spec(self, rng, index: int, ipv6: bool, teardown) -> FlowSpec:
    kind = ("os", "http", "os", "empty")[index % 4]   # every kind, even in tiny sets
    server = self.os_servers[int(rng.integers(len(self.os_servers)))]
    ip = server.ipv6 if ipv6 else server.ipv4
    if kind == "os":
      sizes = [(rng.uniform(200, 600), rng.lognormal(np.log(2000), 1.0))]
      messages = self._tls_messages(rng, self.os_stack, ("http/1.1",), server.name,
                                    server, sizes, b"")
      return FlowSpec(ip, 443, messages, 0.05, teardown, ipv6)
    if kind == "http":
      body = rng.bytes(int(rng.integers(100, 3000)))
      request = (f"GET /check/{rng.integers(1 << 20)} HTTP/1.1\r\nHost: "
                 f"{server.name}\r\nUser-Agent: demo\r\n\r\n").encode()
      response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
      return FlowSpec(ip, 80, [("c", request), ("s", response)], 0.05, teardown, ipv6)
    return FlowSpec(ip, 443, [], 0.05, teardown or "rst", ipv6)   # no payload at all


def make_world(num_classes: int, seed: int) -> World:
  return World(num_classes, seed)
