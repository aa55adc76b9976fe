"""The demo generator writes real, deterministic, long-tailed, homogeneous pcaps."""
import collections
import csv
import hashlib
import os
import pathlib
import time

import dpkt
import pytest

from input_pipeline import synthetic
from input_pipeline import synthetic_tls


def _read_packets(path):
  """(ts, dpkt IP packet) of a pcap or pcapng file with any link type we write."""
  with open(path, "rb") as f:
    reader = dpkt.pcapng.Reader(f) if str(path).endswith("ng") else dpkt.pcap.Reader(f)
    linktype = reader.datalink()
    out = []
    for ts, buf in reader:
      if linktype == synthetic.LINKTYPE_ETHERNET:
        ip = dpkt.ethernet.Ethernet(buf).data
      elif linktype == synthetic.LINKTYPE_LINUX_SLL:
        ip = dpkt.sll.SLL(buf).data
      else:
        raw = buf[4:] if linktype == synthetic.LINKTYPE_NULL else buf
        ip = dpkt.ip6.IP6(raw) if raw[0] >> 4 == 6 else dpkt.ip.IP(raw)
      out.append((ts, ip))
  return out


def _endpoints(ip):
  tcp = ip.data
  a = (dpkt.utils.inet_to_str(ip.src), tcp.sport)
  b = (dpkt.utils.inet_to_str(ip.dst), tcp.dport)
  return tuple(sorted([a, b]))


def _flows_by_file(root):
  """{relative file: {endpoint pair: [IP packets]}} read with dpkt."""
  out = {}
  for path in sorted(pathlib.Path(root).rglob("*.pcap*")):
    flows = collections.defaultdict(list)
    for _, ip in _read_packets(path):
      flows[_endpoints(ip)].append(ip)
    out[path.relative_to(root).as_posix()] = flows
  return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  summary = synthetic.write_demo_dataset(str(root), num_classes=6, max_flows_per_class=60,
                                         imbalance=12.0, seed=3, flows_per_file=20)
  return root, summary, _flows_by_file(root)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
  def digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}

  kwargs = dict(num_classes=3, max_flows_per_class=15, imbalance=3.0, layout="csv")
  for name, seed in (("a", 7), ("b", 7), ("c", 8)):
    synthetic.write_demo_dataset(str(tmp_path / name), seed=seed, **kwargs)
  a, b, c = (digest(tmp_path / n) for n in "abc")
  assert a == b and len(a) >= 2
  assert a.keys() == c.keys() and a != c


def test_class_sizes_follow_a_geometric_long_tail():
  sizes = synthetic.class_sizes(10, 400, 200.0)
  assert sizes[0] == 400 and sizes == sorted(sizes, reverse=True)
  assert sizes[0] / sizes[-1] == 200
  assert synthetic.class_sizes(6, 200, 20.0) == [200, 110, 60, 33, 18, 10]


def test_files_hold_the_flows_the_summary_promises(demo):
  root, summary, flows = demo
  assert summary["flows_per_class"] == dict(zip(summary["classes"],
                                                synthetic.class_sizes(6, 60, 12.0)))
  per_class = collections.Counter()
  for rel, file_flows in flows.items():
    top = rel.split("/")[0]
    per_class[top if "/" in rel else "<root>"] += len(file_flows)
  assert {c: per_class[c] for c in summary["classes"]} == summary["flows_per_class"]
  assert per_class["<root>"] == summary["background_flows"] > 0
  assert sorted(flows) == sorted(summary["files"])
  assert any(f.endswith(".pcapng") for f in flows) and any(f.endswith(".pcap") for f in flows)


def test_packets_are_valid_tcp_with_handshakes_and_checksums(demo):
  _, _, flows = demo
  versions, teardowns = collections.Counter(), collections.Counter()
  for file_flows in flows.values():
    for packets in file_flows.values():
      first = packets[0].data
      assert first.flags == dpkt.tcp.TH_SYN
      assert packets[1].data.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
      teardowns["fin" if any(p.data.flags & dpkt.tcp.TH_FIN for p in packets) else
                "rst" if packets[-1].data.flags & dpkt.tcp.TH_RST else "none"] += 1
      for ip in packets[:6]:
        versions[type(ip).__name__] += 1
        tcp, stored = ip.data, ip.data.sum
        tcp.sum = 0
        ip.data = tcp
        if isinstance(ip, dpkt.ip.IP):
          header_sum = ip.sum
          ip.sum = 0
          assert dpkt.ip.IP(bytes(ip)).sum == header_sum
          assert dpkt.ip.IP(bytes(ip)).data.sum == stored
        else:  # dpkt fills the IPv6 pseudo-header checksum when packing
          assert dpkt.ip6.IP6(bytes(ip)).data.sum == stored
  assert versions["IP"] > 0 and versions["IP6"] > 0
  assert teardowns["fin"] > teardowns["rst"] > 0


def test_tls_handshake_has_sni_and_certificate(demo):
  _, summary, flows = demo
  snis, certs = collections.defaultdict(set), collections.defaultdict(set)
  for rel, file_flows in flows.items():
    label = rel.split("/")[0] if "/" in rel else None
    for packets in file_flows.values():
      client = packets[0].src
      c2s = b"".join(p.data.data for p in packets if p.src == client)
      s2c = b"".join(p.data.data for p in packets if p.src != client)
      if not c2s.startswith(b"\x16\x03\x01"):
        continue
      hello = dpkt.ssl.TLSHandshake(dpkt.ssl.TLSRecord(c2s).data).data
      sni = dict(hello.extensions)[0][5:].decode()
      flight = dpkt.ssl.tls_multi_factory(s2c)[0]
      cert = dpkt.ssl.TLSHandshake(flight[1].data).data.certificates[0]
      snis[label].add(sni)
      certs[hashlib.sha256(cert).hexdigest()].add(label)
  labelled = [c for c in summary["classes"] if snis[c]]
  assert len(labelled) == 6
  # The shared CDN name and certificate reach several classes ...
  assert sum("static.edgecdn.net" in snis[c] for c in labelled) >= 3
  assert max(len(classes) for classes in certs.values()) >= 4
  # ... while every class also has names and certificates of its own.
  for c in labelled:
    assert any(s.endswith(f".{c}.example") for s in snis[c])
    assert any(classes == {c} for classes in certs.values())
  assert snis[None] and not any(s.endswith(".example") for s in snis[None])


def test_csv_layout_rows_name_real_flows(tmp_path):
  summary = synthetic.write_demo_dataset(str(tmp_path), num_classes=4, max_flows_per_class=30,
                                         imbalance=5.0, layout="csv", flows_per_file=25)
  flows = _flows_by_file(tmp_path)
  with open(summary["labels_csv"]) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == sum(summary["flows_per_class"].values())
  assert collections.Counter(r["label"] for r in rows) == summary["flows_per_class"]
  for r in rows:
    key = tuple(sorted([(r["ip_a"], int(r["port_a"])), (r["ip_b"], int(r["port_b"]))]))
    assert key in flows[r["pcap"]]
  total = sum(len(v) for v in flows.values())
  assert total == len(rows) + summary["background_flows"]
  per_file = synthetic.write_demo_dataset(str(tmp_path / "f"), num_classes=3, max_flows_per_class=10,
                                          imbalance=2.0, layout="csv", csv_rows="file")
  with open(per_file["labels_csv"]) as f:
    header = f.readline().strip()
    assert header == "pcap,label" and len(f.readlines()) == 3


@pytest.mark.parametrize("linktype", [synthetic.LINKTYPE_ETHERNET, synthetic.LINKTYPE_RAW,
                                      synthetic.LINKTYPE_NULL, synthetic.LINKTYPE_LINUX_SLL])
def test_write_pcap_link_types_and_flow_bytes(tmp_path, linktype):
  messages = [("c", b"hello" * 700), ("s", b"x" * 4000), ("c", b"bye")]
  packets = synthetic.make_flow_packets("10.0.0.1", "93.184.216.34", client_port=40000,
                                        server_port=443, messages=messages)
  path = tmp_path / "f.pcap"
  synthetic.write_pcap(str(path), packets, linktype=linktype, nanosecond=True)
  read = _read_packets(path)
  assert len(read) == len(packets)
  assert [float(ts) for ts, _ in read] == pytest.approx([ts for ts, _ in packets], abs=1e-6)
  c2s = b"".join(ip.data.data for _, ip in read if ip.data.sport == 40000)
  s2c = b"".join(ip.data.data for _, ip in read if ip.data.sport == 443)
  assert c2s == b"hello" * 700 + b"bye" and s2c == b"x" * 4000
  assert max(len(ip.data.data) for _, ip in read) == 1460
  # Sequence numbers advance by the bytes sent (SYN and FIN count one).
  data = [ip.data for _, ip in read if ip.data.sport == 40000]
  assert data[-1].seq - data[0].seq == len(c2s) + 2
  empty_acks = [t for _, ip in read if not (t := ip.data).data and t.flags == dpkt.tcp.TH_ACK]
  assert len(empty_acks) >= 3
  # In capture (time) order nothing acknowledges bytes that were not sent yet.
  sent = {}
  for _, ip in read:
    tcp = ip.data
    if tcp.flags & dpkt.tcp.TH_ACK:
      assert tcp.ack <= sent[tcp.dport]
    grows = len(tcp.data) + bool(tcp.flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN))
    sent[tcp.sport] = max(sent.get(tcp.sport, 0), tcp.seq + grows)


def test_snaplen_cuts_records_and_pcapng_roundtrips(tmp_path):
  packets = synthetic.make_flow_packets("2001:db8::1", "2001:db8::2", client_port=5555,
                                        messages=[("c", b"a" * 1000)], teardown="rst")
  synthetic.write_pcap(str(tmp_path / "cut.pcap"), packets, snaplen=100)
  with open(tmp_path / "cut.pcap", "rb") as f:
    lengths = [len(buf) for _, buf in dpkt.pcap.Reader(f)]
  assert max(lengths) == 100 and len(lengths) == len(packets)
  synthetic.write_pcapng(str(tmp_path / "f.pcapng"), packets)
  read = _read_packets(tmp_path / "f.pcapng")
  assert [bytes(ip) for _, ip in read] == [p for _, p in packets]
  assert read[-1][1].data.flags & dpkt.tcp.TH_RST


def test_client_hello_is_parseable_tls():
  import numpy as np
  record = synthetic_tls.client_hello(np.random.default_rng(0), sni="a.example",
                                      ciphers=(0xC02B, 0x002F), extensions=(0x0010, 0x0000),
                                      alpn=("h2",), grease=True, pad_to=512)
  assert len(record) == 5 + 512 and record[:3] == b"\x16\x03\x01"
  hello = dpkt.ssl.TLSHandshake(dpkt.ssl.TLSRecord(record).data).data
  types = [t for t, _ in hello.extensions]
  assert types[1:] == [0x0010, 0x0000, 0x0015] and types[0] & 0x0F0F == 0x0A0A
  assert dict(hello.extensions)[0][5:] == b"a.example"


def test_tiny_demo_is_fast(tmp_path):
  start = time.perf_counter()
  summary = synthetic.write_demo_dataset(str(tmp_path), num_classes=6, max_flows_per_class=200,
                                         imbalance=20.0)
  assert time.perf_counter() - start < 10.0  # ~0.3 s unloaded
  assert sum(os.path.getsize(tmp_path / f) for f in summary["files"]) > 1_000_000


def test_demo_is_learnable_but_not_trivially_separable(tmp_path):
  """A random forest on the PASS features lands well above chance and below perfect."""
  import numpy as np
  from sklearn.ensemble import RandomForestClassifier
  from sklearn.metrics import accuracy_score, f1_score
  from sklearn.model_selection import train_test_split
  from input_pipeline import extract

  synthetic.write_demo_dataset(str(tmp_path), num_classes=6, max_flows_per_class=200,
                               imbalance=20.0, seed=0)
  flows, _ = extract.extract_dataset(str(tmp_path), workers=1)
  flows = [f for f in flows if f.label is not None]
  features = np.zeros((len(flows), 32 + 128))
  for row, flow in zip(features, flows):
    row[:len(flow.lengths)] = flow.lengths
    row[32:32 + len(flow.payload)] = np.frombuffer(flow.payload, np.uint8)
  y = np.array([f.label for f in flows])
  x_train, x_test, y_train, y_test = train_test_split(features, y, test_size=0.25,
                                                      random_state=0, stratify=y)
  forest = RandomForestClassifier(100, random_state=0).fit(x_train, y_train)
  predicted = forest.predict(x_test)
  assert f1_score(y_test, predicted, average="macro") > 0.45   # chance: 1/6
  assert accuracy_score(y_test, predicted) < 0.99
