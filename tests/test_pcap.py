"""Capture formats, link layers, IP/TCP headers and bad input (input_pipeline/pcap.py, packets.py)."""
import ipaddress
import struct

import dpkt
import numpy as np
import pytest

import pcap_craft as craft
from input_pipeline import flows
from input_pipeline import pcap

CLIENT, SERVER = ("10.0.0.1", 40000), ("192.0.2.7", 443)
CLIENT6, SERVER6 = ("2001:db8::1", 40000), ("2001:db8:ffff::7", 443)
MESSAGES = [(True, b"GET / HTTP/1.1\r\n\r\n"), (False, b"HTTP/1.1 200 OK\r\n\r\nhello")]
EXPECTED_PAYLOAD = MESSAGES[0][1] + MESSAGES[1][1]


def _write(tmp_path, data: bytes, name="x.cap") -> str:
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


def _records(linktype=1, client=CLIENT, server=SERVER, t0=1_600_000_000.0, **kw):
  return [(ts, craft.link_frame(linktype, pkt, **kw))
          for ts, pkt in craft.conversation(client, server, MESSAGES, t0=t0)]


def _one_flow(path, **kw):
  recs, stats = flows.read_flows(path, **kw)
  assert stats.error is None, stats.error
  assert len(recs) == 1, recs
  return recs[0], stats


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_timestamp_resolution(tmp_path, order, nano):
  t0 = 1_600_000_000.123457 if not nano else 1_600_000_000.123456789
  path = _write(tmp_path, craft.pcap_bytes(_records(t0=t0), order=order, nano=nano))
  rec, stats = _one_flow(path)
  assert stats.format == "pcap" and stats.packets == stats.tcp_packets == 10
  assert rec.first_ts == pytest.approx(t0, abs=1e-6)
  assert rec.payload == EXPECTED_PAYLOAD
  batch = next(pcap.CaptureReader(path).batches())
  assert np.diff(batch.ts) == pytest.approx(np.full(9, 0.001), abs=2e-6)  # ns misread as us would be off by seconds


LINK_TYPES = [1, 113, 276, 101, 228, 229, 12, 14, 0, 108, 9, 50, 104, 192]


@pytest.mark.parametrize("linktype", LINK_TYPES)
@pytest.mark.parametrize("v6", [False, True])
def test_each_link_type(tmp_path, linktype, v6):
  if (linktype == 228 and v6) or (linktype == 229 and not v6):
    pytest.skip("DLT_IPV4 carries only IPv4, DLT_IPV6 only IPv6")
  client, server = (CLIENT6, SERVER6) if v6 else (CLIENT, SERVER)
  path = _write(tmp_path, craft.pcap_bytes(_records(linktype, client, server), linktype=linktype))
  rec, stats = _one_flow(path)
  assert (rec.client_ip, rec.client_port, rec.server_ip, rec.server_port) == (*client, *server)
  assert rec.payload == EXPECTED_PAYLOAD
  assert stats.skipped_packets == 0 and stats.tcp_packets == 10


def test_null_link_type_in_big_endian_host_order(tmp_path):
  recs = _records(0, order=">")
  path = _write(tmp_path, craft.pcap_bytes(recs, linktype=0))
  assert _one_flow(path)[0].payload == EXPECTED_PAYLOAD


def test_link_type_fcs_bits_are_masked(tmp_path):
  # libpcap: bit 26 says an FCS length is present, bits 28-31 give it (here 4 bytes).
  path = _write(tmp_path, craft.pcap_bytes(_records(1), linktype=1 | 0x04000000 | (4 << 28)))
  assert _one_flow(path)[0].payload == EXPECTED_PAYLOAD


@pytest.mark.parametrize("vlans", [((0x8100, 10),), ((0x88A8, 100), (0x8100, 20))])
def test_vlan_and_qinq(tmp_path, vlans):
  path = _write(tmp_path, craft.pcap_bytes(_records(1, vlans=vlans)))
  assert _one_flow(path)[0].payload == EXPECTED_PAYLOAD


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_interfaces_of_different_link_types(tmp_path, order):
  ifaces = [(1, None), (113, 9), (101, 6)]   # Ethernet us, cooked ns, raw IP us
  packets = []
  for i, (lt, _) in enumerate(ifaces):
    client = (f"10.0.{i}.1", 40000 + i)
    for ts, pkt in craft.conversation(client, SERVER, MESSAGES, t0=1_600_000_000.5 + i):
      packets.append((i, ts, craft.link_frame(lt, pkt)))
  packets.sort(key=lambda p: p[1])
  path = _write(tmp_path, craft.pcapng_bytes(ifaces, packets, order=order), "a.pcap")  # name lies
  recs, stats = flows.read_flows(path)
  assert stats.error is None and stats.format == "pcapng"
  assert [r.client_ip for r in recs] == ["10.0.0.1", "10.0.1.1", "10.0.2.1"]
  assert [r.first_ts for r in recs] == pytest.approx([1_600_000_000.5 + i for i in range(3)],
                                                     abs=1e-6)
  assert all(r.payload == EXPECTED_PAYLOAD for r in recs)


def test_ipv6_extension_headers(tmp_path):
  hop = bytes([60, 0]) + bytes(6)               # hop-by-hop -> destination options
  dst = bytes([43, 1]) + bytes(14)              # destination options (16 bytes) -> routing
  rt = bytes([51, 0, 0, 0]) + bytes(4)          # routing (8 bytes) -> AH
  ah = bytes([6, 2]) + bytes(14)                # AH, length in 4-byte units minus 2 -> TCP
  chain = hop + dst + rt + ah
  recs = [(ts, craft.link_frame(1, craft.ip_packet(*_args(pkt), ext_headers=chain, ext_first=0)))
          for ts, pkt in craft.conversation(CLIENT6, SERVER6, MESSAGES)]
  rec, _ = _one_flow(_write(tmp_path, craft.pcap_bytes(recs)))
  assert rec.payload == EXPECTED_PAYLOAD and rec.client_ip == CLIENT6[0]


def _args(pkt6: bytes):
  """ip_packet arguments that rebuild an IPv6 TCP packet."""
  ip = dpkt.ip6.IP6(pkt6)
  t = ip.data
  src, dst = (str(ipaddress.IPv6Address(a)) for a in (ip.src, ip.dst))
  return src, dst, t.sport, t.dport, t.flags, t.data, t.seq, t.ack


def test_ipv4_fragments_are_reassembled(tmp_path):
  body = bytes(range(256)) * 3
  conv = craft.conversation(CLIENT, SERVER, [(True, body)], mss=2000)
  recs = []
  for ts, pkt in conv:
    parts = craft.fragment_ipv4(pkt, 256) if len(pkt) > 600 else [pkt]
    recs += [(ts, craft.link_frame(1, p)) for p in parts]
  rec, stats = _one_flow(_write(tmp_path, craft.pcap_bytes(recs)), cfg=flows.FlowConfig(
      payload_bytes=1000))
  assert stats.reassembled == 1 and stats.fragments == 4
  assert rec.payload == body
  assert 20 + 20 + len(body) in rec.lengths.tolist()


def test_snap_length_never_reads_past_captured_bytes(tmp_path):
  big = bytes([0x41]) * 1000
  recs = _records_with(big)
  path = _write(tmp_path, craft.pcap_bytes(recs, snaplen=14 + 20 + 20 + 10))
  rec, stats = _one_flow(path)
  assert stats.snapped == 1
  assert rec.payload == big[:10]                # only what was captured, nothing after it
  assert 20 + 20 + 1000 in rec.lengths.tolist()  # lengths come from the IP header


def _records_with(payload):
  return [(ts, craft.link_frame(1, p)) for ts, p in
          craft.conversation(CLIENT, SERVER, [(True, payload)], mss=5000)]


def test_truncated_last_record_keeps_earlier_packets(tmp_path):
  data = craft.pcap_bytes(_records())
  path = _write(tmp_path, data[:-7])
  recs, stats = flows.read_flows(path)
  assert stats.packets == 9 and len(recs) == 1
  assert "cut short" in stats.error and path in stats.error and "byte" in stats.error


def test_garbage_after_valid_records(tmp_path):
  data = craft.pcap_bytes(_records())
  path = _write(tmp_path, data + struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 10) + b"junk" * 50)
  recs, stats = flows.read_flows(path)
  assert stats.packets == 10 and recs[0].payload == EXPECTED_PAYLOAD
  assert f"at byte {len(data)}" in stats.error and "record 10" in stats.error


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"), (b"\x01\x02", "too short"),
    (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not a pcap"),
    (craft.pcap_bytes([])[:20], "header cut short"),
    (struct.pack("<III", 0x0A0D0D0A, 99, 0x1A2B3C4D) + bytes(100), "bad pcapng block length")])
def test_bad_files_report_reason(tmp_path, content, reason):
  path = _write(tmp_path, content)
  recs, stats = flows.read_flows(path)
  assert recs == [] and reason in stats.error and path in stats.error


def test_unreadable_path(tmp_path):
  for path in (str(tmp_path / "missing.pcap"), str(tmp_path)):
    recs, stats = flows.read_flows(path)
    assert recs == [] and "cannot read" in stats.error


def test_unknown_link_type(tmp_path):
  path = _write(tmp_path, craft.pcap_bytes(_records(101), linktype=147))
  recs, stats = flows.read_flows(path)
  assert recs == [] and stats.unknown_link == 10 and "147" in stats.error


def test_non_tcp_counted_and_skipped(tmp_path):
  arp = craft.MAC_B + craft.MAC_A + b"\x08\x06" + bytes(28)
  udp = craft.link_frame(1, craft.udp_packet("10.0.0.1", "10.0.0.2", 53, 5353))
  recs = _records() + [(1_600_000_001.0, udp), (1_600_000_001.1, arp)]
  rec, stats = _one_flow(_write(tmp_path, craft.pcap_bytes(recs)))
  assert (stats.non_tcp, stats.non_ip, stats.skipped_packets) == (1, 1, 2)
  assert stats.packets == 12 and stats.tcp_packets == 10


@pytest.mark.parametrize("magic", [None, 0xA1B2CD34])
def test_modified_pcap_records(tmp_path, magic):
  path = _write(tmp_path, craft.pcap_bytes(_records(), modified=True, magic=magic))
  rec, stats = _one_flow(path)
  assert stats.format == "pcap-modified" and stats.packets == 10
  assert rec.payload == EXPECTED_PAYLOAD


def test_real_captures_read_without_exceptions(shared_datasets):
  files = sorted(p for p in shared_datasets.rglob("*") if p.suffix in (".pcap", ".pcapng"))
  assert len(files) >= 100
  for path in files:
    recs, stats = flows.read_flows(path)
    assert recs or stats.error, f"{path}: no flows and no reason"
    assert stats.error is None, stats.error
    assert stats.malformed == 0 and stats.unknown_link == 0, stats.as_dict()


def test_real_modified_pcaps_are_read(shared_datasets):
  ma1 = shared_datasets / "mobile-apps" / "pcap" / "ma1"
  snis = {}
  for name in ("xz1_slack", "xz1_telegram_filtered", "xz1_wa_merged"):
    recs, stats = flows.read_flows(ma1 / f"{name}.pcap")
    assert stats.format == "pcap-modified" and stats.error is None
    assert stats.malformed == 0 and stats.tcp_packets > 0.9 * stats.packets
    assert all(1_500_000_000 < r.first_ts < 1_700_000_000 for r in recs)
    snis[name] = {r.sni for r in recs}
  assert "slack.com" in snis["xz1_slack"] and "static.whatsapp.net" in snis["xz1_wa_merged"]
  _, plain = flows.read_flows(ma1 / "xz1_discord.pcap")
  assert plain.format == "pcap"
