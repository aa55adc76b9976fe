"""Flow assembly (input_pipeline/flows.py): client side, RP/PL, splits, TLS, early finish."""
import collections
import csv
import hashlib
import importlib
import random

import numpy as np
import pytest

import pcap_craft as craft
from input_pipeline import flows
from input_pipeline import pcap

C, S = ("10.0.0.1", 40000), ("192.0.2.7", 443)
T0 = 1_600_000_000.0


def _path(tmp_path, packets, name="c.pcap", **kw):
  """packets: [(ts, ip packet)] -> an Ethernet pcap in capture (time) order."""
  recs = [(ts, craft.link_frame(1, p)) for ts, p in sorted(packets, key=lambda x: x[0])]
  path = tmp_path / name
  path.write_bytes(craft.pcap_bytes(recs, **kw))
  return str(path)


def _read(path, **cfg):
  recs, stats = flows.read_flows(path, flows.FlowConfig(**cfg))
  assert stats.error is None, stats.error
  return recs, stats


def test_config_defaults_and_from_config():
  cfg = importlib.import_module("configs.pass").get_config("tiny")  # `pass` is a keyword
  fc = flows.FlowConfig.from_config(cfg.data)
  assert fc == flows.FlowConfig(128, 32, "ip", True, 120.0)
  cfg.data.length_kind = "payload"
  cfg.data.idle_timeout = 5.0
  assert flows.FlowConfig.from_config(cfg.data).length_kind == "payload"
  with pytest.raises(ValueError):
    flows.FlowConfig(length_kind="bytes")


def test_client_is_syn_sender_not_port_based(tmp_path):
  # The SYN comes from port 443 towards an ephemeral port: still the client.
  conv = craft.conversation(("10.9.9.9", 443), ("10.1.1.1", 50000), [(True, b"hi")])
  (rec,), _ = _read(_path(tmp_path, conv))
  assert (rec.client_ip, rec.client_port, rec.server_port) == ("10.9.9.9", 443, 50000)
  assert rec.lengths[:3].tolist() == [40, -40, 40]


def test_without_syn_first_sender_is_client(tmp_path):
  conv = craft.conversation(C, S, [(False, b"server first"), (True, b"then client")],
                            handshake=False)
  (rec,), _ = _read(_path(tmp_path, conv))
  assert (rec.client_ip, rec.client_port) == S        # S spoke first
  assert rec.payload == b"server firstthen client"
  assert rec.lengths[0] > 0


def test_syn_ack_receiver_is_client_when_syn_missing(tmp_path):
  conv = craft.conversation(C, S, [(True, b"x")])[1:]  # capture starts at the SYN/ACK
  (rec,), _ = _read(_path(tmp_path, conv))
  assert (rec.client_ip, rec.client_port) == C


def test_lengths_sign_kind_and_empty_acks(tmp_path):
  conv = craft.conversation(C, S, [(True, b"a" * 100), (False, b"b" * 300)])
  path = _path(tmp_path, conv)
  (ip,), _ = _read(path)
  # SYN, SYN/ACK, ACK, data, ACK, data, ACK, FIN, FIN, ACK
  assert ip.lengths.tolist() == [40, -40, 40, 140, -40, -340, 40, 40, -40, 40]
  (pay,), _ = _read(path, length_kind="payload")
  assert pay.lengths.tolist() == [0, 0, 0, 100, 0, -300, 0, 0, 0, 0]
  (no_ack,), _ = _read(path, count_empty_acks=False)
  assert no_ack.lengths.tolist() == [40, -40, 140, -340, 40, -40]   # SYNs and FINs stay
  assert ip.lengths.dtype == np.int32
  (short,), _ = _read(path, num_lengths=4)
  assert short.lengths.tolist() == [40, -40, 40, 140]


def test_payload_concatenates_both_directions_up_to_m(tmp_path):
  msgs = [(True, b"A" * 50), (False, b"B" * 50), (True, b"C" * 50)]
  (rec,), _ = _read(_path(tmp_path, craft.conversation(C, S, msgs, mss=20)))
  assert rec.payload == b"A" * 50 + b"B" * 50 + b"C" * 28
  assert (rec.bytes_c2s, rec.bytes_s2c) == (100, 50)
  assert (rec.packets_c2s, rec.packets_s2c) == (2 + 3 + 1 + 3 + 2, 1 + 1 + 3 + 1 + 1)


def test_no_header_byte_reaches_the_payload(tmp_path):
  # Addresses, ports, MACs and sequence numbers made of bytes the payload never uses.
  alphabet = b"abcdefghijklmnopqrstuvwxyz"
  rng = random.Random(0)
  packets, expected = [], {}
  for i in range(6):
    client = (f"{200 + i}.{250 - i}.{199 + i}.{240 + i}", 0xF0F0 + i)
    server = (f"{190 + i}.{230 + i}.{222}.{201 + i}", 0xE1E1 + i)
    msgs = [(j % 2 == 0, bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 60))))
            for j in range(5)]
    packets += craft.conversation(client, server, msgs, t0=T0 + i * 0.0005, mss=17,
                                  client_isn=0xFEEDFACE, server_isn=0xDEADBEEF)
    expected[client[0]] = b"".join(m for _, m in msgs)[:128]
  recs, _ = _read(_path(tmp_path, packets))
  assert len(recs) == 6
  for rec in recs:
    assert rec.payload == expected[rec.client_ip]
    assert set(rec.payload) <= set(alphabet)   # no byte of any header, MAC included


def test_new_flow_after_fin_rst_and_idle_timeout(tmp_path):
  msgs = [(True, b"one")]
  packets = craft.conversation(C, S, msgs, t0=T0, close="fin")
  packets += craft.conversation(C, S, [(True, b"two")], t0=T0 + 1, close="rst")
  packets += craft.conversation(C, S, [(True, b"three")], t0=T0 + 2, close=None)
  packets += craft.conversation(C, S, [(True, b"four")], t0=T0 + 200, close=None)  # idle gap
  recs, _ = _read(_path(tmp_path, packets))
  assert [r.payload for r in recs] == [b"one", b"two", b"three", b"four"]
  assert [r.index for r in recs] == [0, 1, 2, 3]
  recs, _ = _read(_path(tmp_path, packets), idle_timeout=500.0)
  assert [r.payload for r in recs] == [b"one", b"two", b"threefour"]


def test_repeated_syn_and_late_packets_stay_in_flow(tmp_path):
  conv = craft.conversation(C, S, [(True, b"data")], close=None)
  syn_again = (conv[0][0] + 0.0005, conv[0][1])        # SYN retransmission
  late = (T0 + 300, conv[-1][1])                       # the server ACK again, much later
  recs, _ = _read(_path(tmp_path, conv + [syn_again, late]))
  assert len(recs) == 1 and (recs[0].packets_c2s, recs[0].packets_s2c) == (4, 3)


def test_retransmissions_dropped_from_head_not_counts(tmp_path):
  conv = craft.conversation(C, S, [(True, b"hello"), (False, b"world")])
  dup = (conv[3][0] + 0.0001, conv[3][1])              # the client's data segment again
  (rec,), stats = _read(_path(tmp_path, conv + [dup]))
  assert rec.payload == b"helloworld"
  assert rec.lengths.tolist().count(45) == 1
  assert rec.packets_c2s == 7 and rec.bytes_c2s == 10
  assert stats.retransmissions == 1


def _tls_conversation(sni, certs, tls13=False, server_mss=500, client=C, t0=T0):
  hello = craft.client_hello(sni)
  flight = craft.server_hello(tls13) + craft.certificate(certs)
  return craft.conversation(client, S, [(True, hello), (False, flight),
                                        (True, b"\x17\x03\x03\x00\x05hello")],
                            mss=server_mss, t0=t0)


def test_sni_and_certificate_hash(tmp_path):
  certs = [bytes(random.Random(1).randbytes(1700)), b"intermediate" * 50]
  (rec,), _ = _read(_path(tmp_path, _tls_conversation("api.example.org", certs)))
  assert rec.sni == "api.example.org"
  assert rec.cert_sha256 == hashlib.sha256(certs[0]).hexdigest()   # spans 4 segments
  assert rec.comm_key == f"cert:{rec.cert_sha256}"


def test_tls13_no_sni_and_plain_tcp_give_none(tmp_path):
  packets = _tls_conversation(None, [b"c" * 300], tls13=True)
  packets += craft.conversation(("10.0.0.2", 1234), S, [(True, b"GET /"), (False, b"200")],
                                t0=T0 + 1)
  recs, _ = _read(_path(tmp_path, packets))
  assert [(r.sni, r.cert_sha256) for r in recs] == [(None, None), (None, None)]
  assert recs[1].comm_key == f"addr:{S[0]}:{S[1]}"


def test_batches_do_not_change_results(tmp_path):
  rng = random.Random(3)
  packets = []
  for i in range(30):
    client = (f"10.0.{i}.1", 30000 + i)
    packets += _tls_conversation(f"h{i}.test", [rng.randbytes(rng.randint(200, 3000))],
                                 client=client, t0=T0 + rng.random(), server_mss=300)
    if i % 3 == 0:  # a retransmission a few packets later, maybe in another batch
      packets.append((packets[-5][0] + 0.00001, packets[-5][1]))
  path = _path(tmp_path, packets)
  one, _ = flows.read_flows(path)
  many, _ = flows.read_flows(path, chunk_bytes=1500)
  assert len(one) == 30
  assert [r.__dict__.keys() for r in one] == [r.__dict__.keys() for r in many]
  for a, b in zip(one, many):
    assert a.payload == b.payload and a.lengths.tolist() == b.lengths.tolist()
    assert (a.sni, a.cert_sha256, a.packets_c2s, a.bytes_s2c, a.index) == (
        b.sni, b.cert_sha256, b.packets_c2s, b.bytes_s2c, b.index)
  assert all(r.sni == f"h{int(r.client_ip.split('.')[2])}.test" and r.cert_sha256 for r in one)


def test_finished_flows_buffer_nothing(tmp_path):
  big = [(True, craft.client_hello("big.test")), (False, craft.server_hello(tls13=True)),
         (False, bytes(200_000))]
  path = _path(tmp_path, craft.conversation(C, S, big, close=None))
  table = flows._FlowTable(flows.FlowConfig(), collections.Counter())
  batches = list(pcap.CaptureReader(path, chunk_bytes=20_000).batches())
  assert len(batches) > 5
  for i, batch in enumerate(batches):
    table.add(flows.pk_lib.decode(batch, table.counts))
    if i == 1:
      (flow,) = table.flows
      assert flow.done and flow.streams is None and flow.seen is None
  (rec,) = table.records("c")
  assert rec.sni == "big.test" and len(rec.lengths) == 32 and len(rec.payload) == 128
  assert rec.bytes_s2c == 200_000 + len(craft.server_hello(tls13=True))


def test_read_many_matches_serial(tmp_path):
  paths = [_path(tmp_path, _tls_conversation(f"s{i}", [b"x" * 100]), f"{i}.pcap")
           for i in range(3)]
  serial = flows.read_many(paths, workers=1, capture_names=["a", "b", "c"])
  parallel = flows.read_many(paths, workers=2, capture_names=["a", "b", "c"])
  assert [r[0][0].flow_id for r in parallel] == ["a#0", "b#0", "c#0"]
  assert [(r[0][0].sni, r[1].packets) for r in serial] == [
      (r[0][0].sni, r[1].packets) for r in parallel]


def test_real_labelled_endpoint_pairs_are_found(shared_datasets):
  root = shared_datasets / "ndpi-apps"
  rows = list(csv.DictReader(open(root / "labels.csv")))
  found = {}
  for row in rows:
    if row["pcap"] not in found:
      recs, _ = flows.read_flows(root / row["pcap"])
      found[row["pcap"]] = {frozenset([(r.client_ip, r.client_port), (r.server_ip, r.server_port)])
                            for r in recs}
    pair = frozenset([(row["ip_a"], int(row["port_a"])), (row["ip_b"], int(row["port_b"]))])
    assert pair in found[row["pcap"]], row
  assert len(rows) == 447


def test_hash_grouping_matches_exact_grouping():
  rng = np.random.default_rng(0)
  cols = [rng.integers(0, 3, 5000).astype(np.uint64) for _ in range(6)]  # many repeats
  order, first = flows._group(cols)
  exact_order, exact_first = flows._group_exact(cols)
  groups = lambda o, f: sorted(tuple(o[a:b]) for a, b in zip(f, list(f[1:]) + [len(o)]))
  assert groups(order, first) == groups(exact_order, exact_first)
  assert len(first) == len({tuple(int(c[i]) for c in cols) for i in range(5000)})
