"""Demo and test traffic: a seeded generator that writes real pcap files.

Two layers:
  * packet crafting, reusable by any test: `make_tcp_packet`, `make_flow_packets`
    (handshake, segmented messages with delayed ACKs, FIN/RST teardown), and
    `write_pcap` / `write_pcapng` for several link types; TLS 1.2 record
    builders live in `synthetic_tls` (`client_hello`, `server_flight`, ...);
  * `write_demo_dataset`: a long-tailed, deliberately homogeneous multi-class
    dataset in either dataset layout of `input_pipeline/labels.py`; the apps,
    servers and TLS stacks it draws from are `synthetic_tls.World`.

Nothing here knows about flows or tokens: the demo data is read back by the
same pcap -> flows path as real captures, so it exercises that path too.
"""
from __future__ import annotations

import csv
import ipaddress
import os
import struct
from typing import Optional, Sequence

import numpy as np

from input_pipeline import synthetic_tls

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW = 0, 1, 101
LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 113, 276
BASE_TS = 1_700_000_000.0   # fixed epoch so that the bytes depend on the seed only
Packet = tuple[float, bytes]  # (timestamp, IP packet starting at the IP header)


# ---------------------------------------------------------------- packets ---
def _checksum(data: bytes) -> int:
  """RFC 1071 checksum: the ones' complement sum of 16-bit words.

  That sum is congruent to the big-endian integer mod 0xffff (2**16 == 1), so
  one big-int modulo replaces a Python loop over words.
  """
  if len(data) % 2:
    data += b"\0"
  total = int.from_bytes(data, "big") % 0xFFFF
  if total == 0 and any(data):
    total = 0xFFFF
  return ~total & 0xFFFF


def _tcp_packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int,
                ack: int, flags: int, payload: bytes, *, window: int = 64240,
                options: bytes = b"", ttl: int = 64, ip_id: int = 0) -> bytes:
  """One TCP segment inside an IPv4 (4-byte addresses) or IPv6 packet."""
  options += b"\0" * (-len(options) % 4)
  offset = (5 + len(options) // 4) << 4
  tcp_len = 20 + len(options) + len(payload)
  header = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF,
                       ack & 0xFFFFFFFF, offset, flags, window, 0, 0)
  if len(src) == 4:
    pseudo = src + dst + struct.pack("!BBH", 0, 6, tcp_len)
  else:
    pseudo = src + dst + struct.pack("!I3xB", tcp_len, 6)
  segment = header + options + payload
  csum = _checksum(pseudo + segment)
  segment = segment[:16] + struct.pack("!H", csum) + segment[18:]
  if len(src) == 4:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, ip_id & 0xFFFF,
                     0x4000, ttl, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + segment
  return struct.pack("!IHBB16s16s", 0x60000000, tcp_len, 6, ttl, src, dst) + segment


def make_tcp_packet(src: str, dst: str, sport: int, dport: int, *, seq: int = 0,
                    ack: int = 0, flags: int = ACK, payload: bytes = b"",
                    options: bytes = b"", ttl: int = 64) -> bytes:
  """One TCP segment as an IP packet; IPv4 or IPv6 follows the addresses."""
  return _tcp_packet(ipaddress.ip_address(src).packed,
                     ipaddress.ip_address(dst).packed, sport, dport, seq, ack,
                     flags, payload, options=options, ttl=ttl)


_SYN_OPTIONS = bytes.fromhex("020405b4" "0402" "080a00000000" "00000000" "01030307")


def make_flow_packets(client: str, server: str, *, client_port: int,
                      server_port: int = 443,
                      messages: Sequence[tuple[str, bytes]] = (),
                      start_ts: float = BASE_TS, rtt: float = 0.04,
                      mss: int = 1460, handshake: bool = True,
                      teardown: Optional[str] = "fin",
                      rng: Optional[np.random.Generator] = None) -> list[Packet]:
  """The packets of one TCP connection, in time order.

  Args:
    client, server: IP addresses (both v4 or both v6).
    messages: ('c' | 's', payload) in send order; each payload is cut into
      `mss`-sized segments. The receiver ACKs every second segment and the last
      one unless its own next message carries the ACK (delayed ACKs, so flows
      hold both empty ACKs and piggy-backed ones, as in real captures).
    handshake: open with SYN, SYN/ACK, ACK.
    teardown: 'fin' (FIN from each side, last ACK), 'rst' (client RST), None.
    rng: jitter source for timing and initial sequence numbers.
  """
  rng = rng if rng is not None else np.random.default_rng(0)
  addr = {"c": ipaddress.ip_address(client).packed,
          "s": ipaddress.ip_address(server).packed}
  port = {"c": client_port, "s": server_port}
  seq = {"c": int(rng.integers(1 << 31)), "s": int(rng.integers(1 << 31))}
  ip_id = {"c": int(rng.integers(1 << 16)), "s": int(rng.integers(1 << 16))}
  other = {"c": "s", "s": "c"}
  packets: list[Packet] = []
  t = start_ts

  def send(side: str, flags: int, payload: bytes = b"", options: bytes = b"") -> None:
    peer = other[side]
    ack = seq[peer] if flags & ACK else 0
    packets.append((t, _tcp_packet(addr[side], addr[peer], port[side], port[peer],
                                   seq[side], ack, flags, payload,
                                   options=options, ip_id=ip_id[side])))
    ip_id[side] += 1
    seq[side] += len(payload) + (1 if flags & (SYN | FIN) else 0)

  def hop() -> float:  # one-way delay plus a little processing time
    return rtt / 2 * (0.8 + 0.4 * rng.random())

  if handshake:
    send("c", SYN, options=_SYN_OPTIONS)
    t += hop()
    send("s", SYN | ACK, options=_SYN_OPTIONS)
    t += hop()
    send("c", ACK)
  for i, (side, payload) in enumerate(messages):
    t += 0.0005 + 0.002 * rng.random()
    segments = [payload[j:j + mss] for j in range(0, len(payload), mss)]
    replies_next = i + 1 < len(messages) and messages[i + 1][0] == other[side]
    for j, segment in enumerate(segments):
      last = j == len(segments) - 1
      send(side, ACK | (PSH if last else 0), segment)
      if j % 2 == 1 or (last and not replies_next):
        ack_delay = hop()   # the ACK arrives later; the sender keeps sending meanwhile
        t += ack_delay
        send(other[side], ACK)
        t -= ack_delay * 0.9
      t += 0.0002
    t += hop()
  if teardown == "fin":
    send("c", FIN | ACK)
    t += hop()
    send("s", FIN | ACK)
    t += hop()
    send("c", ACK)
  elif teardown == "rst":
    send("c", RST | ACK)
  packets.sort(key=lambda p: p[0])   # ACKs in flight land after later data; stable
  return packets


# ------------------------------------------------------------ pcap files ---
def _frame(ip_packet: bytes, linktype: int, vlan: Optional[int]) -> bytes:
  """Wraps an IP packet in the link-layer header of `linktype`."""
  v6 = ip_packet[0] >> 4 == 6
  ethertype = 0x86DD if v6 else 0x0800
  if linktype == LINKTYPE_ETHERNET:
    macs = bytes.fromhex("020000000001" "020000000002")   # locally administered
    if vlan is not None:
      return macs + struct.pack("!HHH", 0x8100, vlan, ethertype) + ip_packet
    return macs + struct.pack("!H", ethertype) + ip_packet
  if linktype == LINKTYPE_RAW:
    return ip_packet
  if linktype == LINKTYPE_NULL:  # BSD loopback: address family in host order
    return struct.pack("<I", 24 if v6 else 2) + ip_packet
  if linktype == LINKTYPE_LINUX_SLL:
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6 + b"\0\0", ethertype) + ip_packet
  if linktype == LINKTYPE_LINUX_SLL2:
    return struct.pack("!HHIHBB8s", ethertype, 0, 1, 1, 0, 6, b"\x02" * 8) + ip_packet
  raise ValueError(f"unsupported link type {linktype}")


def write_pcap(path: str, packets: Sequence[Packet], *,
               linktype: int = LINKTYPE_ETHERNET, nanosecond: bool = False,
               snaplen: int = 262144, vlan: Optional[int] = None) -> None:
  """Writes a classic little-endian pcap; records longer than snaplen are cut."""
  magic, scale = (0xA1B23C4D, 10**9) if nanosecond else (0xA1B2C3D4, 10**6)
  chunks = [struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
  for ts, ip_packet in packets:
    frame = _frame(ip_packet, linktype, vlan)
    ticks = round(ts * scale)
    caplen = min(len(frame), snaplen)
    chunks.append(struct.pack("<IIII", ticks // scale, ticks % scale, caplen, len(frame)))
    chunks.append(frame[:caplen])
  with open(path, "wb") as f:
    f.write(b"".join(chunks))


def write_pcapng(path: str, packets: Sequence[Packet], *,
                 linktype: int = LINKTYPE_ETHERNET) -> None:
  """Writes a little-endian pcapng: one section, one interface (us timestamps)."""
  def block(block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    size = len(body) + 12
    return struct.pack("<II", block_type, size) + body + struct.pack("<I", size)

  chunks = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
            block(1, struct.pack("<HHI", linktype, 0, 262144))]
  for ts, ip_packet in packets:
    frame = _frame(ip_packet, linktype, None)
    ticks = round(ts * 10**6)
    chunks.append(block(6, struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF,
                                       len(frame), len(frame)) + frame))
  with open(path, "wb") as f:
    f.write(b"".join(chunks))


# ---------------------------------------------------------------- dataset ---
def class_sizes(num_classes: int, max_flows: int, imbalance: float) -> list[int]:
  """Geometric long tail: class k holds max * imbalance**(-k / (K - 1)) flows."""
  if num_classes == 1:
    return [max_flows]
  return [max(1, round(max_flows * imbalance ** (-k / (num_classes - 1))))
          for k in range(num_classes)]


def write_demo_dataset(out_dir: str, *, num_classes: int = 10,
                       max_flows_per_class: int = 400, imbalance: float = 200.0,
                       seed: int = 0, layout: str = "folders",
                       csv_rows: str = "flow", flows_per_file: int = 40,
                       background_fraction: float = 0.1,
                       pcapng_every: int = 3) -> dict:
  """Writes a labelled demo dataset of real pcap files and returns a summary.

  Args:
    layout: 'folders' (out_dir/<class>/*.pcap, unlabeled background at the
      root) or 'csv' (out_dir/pcap/*.pcap plus out_dir/labels.csv).
    csv_rows: for layout 'csv': 'flow' (files mix classes and background,
      one per-flow row per labelled flow) or 'file' (one class per file and a
      `pcap,label` row; background files have no row).
    background_fraction: unlabeled flows (OS services, plain HTTP, empty
      connections), as a fraction of the labelled ones.
    pcapng_every: every n-th file is written as pcapng (0: never).
  """
  if layout not in ("folders", "csv") or csv_rows not in ("flow", "file"):
    raise ValueError(f"unknown layout {layout!r} / csv_rows {csv_rows!r}")
  world = synthetic_tls.make_world(num_classes, seed)
  sizes = class_sizes(num_classes, max_flows_per_class, imbalance)
  num_background = round(background_fraction * sum(sizes))
  # (label or None, flow spec index) in a fixed order, then grouped into files.
  flows = [(k, i) for k, n in enumerate(sizes) for i in range(n)]
  flows += [(None, i) for i in range(num_background)]
  groups: list[tuple[str, Optional[str], list]] = []   # (file, file label, flows)
  shuffle = np.random.default_rng([seed, 1])

  def chunk(items, name_fn, label):
    for j in range(0, len(items), flows_per_file):
      groups.append((name_fn(j // flows_per_file), label, items[j:j + flows_per_file]))

  by_class = {k: [f for f in flows if f[0] == k] for k in [*range(num_classes), None]}
  if layout == "csv" and csv_rows == "flow":
    order = shuffle.permutation(len(flows))
    chunk([flows[i] for i in order], lambda j: f"pcap/mix-{j:03d}", None)
  else:
    for k in range(num_classes):
      name = world.classes[k].name
      prefix = f"{name}/capture" if layout == "folders" else f"pcap/{name}"
      chunk(by_class[k], lambda j, p=prefix: f"{p}-{j:03d}", name)
    chunk(by_class[None], lambda j: ("background" if layout == "folders"
                                     else "pcap/background") + f"-{j:03d}", None)

  label_rows, files = [], []
  for file_index, (stem, file_label, members) in enumerate(groups):
    is_ng = pcapng_every and file_index % pcapng_every == pcapng_every - 1
    rel = stem + (".pcapng" if is_ng else ".pcap")
    file_rng = np.random.default_rng([seed, 2, file_index])
    device = synthetic_tls.device_addresses(file_rng)
    port = int(file_rng.integers(33000, 50000))
    t = BASE_TS + 3600.0 * file_index
    packets: list[Packet] = []
    for k, i in members:
      flow_rng = np.random.default_rng([seed, 3, num_classes if k is None else k, i])
      port += int(flow_rng.integers(1, 8))
      t += float(flow_rng.exponential(0.7))
      spec = world.flow_spec(k, flow_rng, index=i)
      client = device[1] if spec.ipv6 else device[0]
      packets += make_flow_packets(client, spec.server_ip, client_port=port,
                                   server_port=spec.server_port,
                                   messages=spec.messages, start_ts=t,
                                   rtt=spec.rtt, teardown=spec.teardown,
                                   rng=flow_rng)
      if k is not None and csv_rows == "flow" and layout == "csv":
        label_rows.append([rel, client, port, spec.server_ip, spec.server_port,
                           world.classes[k].name])
    packets.sort(key=lambda p: p[0])   # interleave the flows; sort is stable
    path = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    (write_pcapng if is_ng else write_pcap)(path, packets)
    files.append(rel)
    if layout == "csv" and csv_rows == "file" and file_label is not None:
      label_rows.append([rel, file_label])

  labels_csv = None
  if layout == "csv":
    labels_csv = os.path.join(out_dir, "labels.csv")
    with open(labels_csv, "w", newline="") as f:
      writer = csv.writer(f, lineterminator="\n")
      writer.writerow(["pcap", "ip_a", "port_a", "ip_b", "port_b", "label"]
                      if csv_rows == "flow" else ["pcap", "label"])
      writer.writerows(label_rows)
  return {
      "root": out_dir, "layout": layout, "seed": seed, "labels_csv": labels_csv,
      "classes": [c.name for c in world.classes],
      "flows_per_class": {c.name: n for c, n in zip(world.classes, sizes)},
      "background_flows": num_background, "files": files,
  }


if __name__ == "__main__":  # python -m input_pipeline.synthetic OUT_DIR [layout]
  import json
  import sys
  print(json.dumps(write_demo_dataset(
      sys.argv[1], layout=sys.argv[2] if len(sys.argv) > 2 else "folders"), indent=1))
