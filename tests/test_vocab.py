"""Token layout, frequency order, [UNK], save/load, ablations and SNI masking."""
import numpy as np
import pytest

from input_pipeline import vocab as vocab_lib
from input_pipeline.records import FlowRecord
from input_pipeline.vocab import CLS_ID, PAD_ID, SEP_ID, UNK_ID, Vocab


def _flow(payload: bytes, lengths, index=0, sni=None, label="a") -> FlowRecord:
  return FlowRecord(capture="c.pcap", index=index, client_ip="10.0.0.1", client_port=1000 + index,
                    server_ip="10.0.0.2", server_port=443, first_ts=0.0, payload=payload,
                    lengths=np.asarray(lengths, np.int32), sni=sni, label=label)


def _random_flows(n, seed=0, m=16, k=6):
  rng = np.random.default_rng(seed)
  flows = []
  for i in range(n):
    plen = int(rng.integers(0, m + 1))
    payload = rng.integers(0, 4, plen).astype(np.uint8).tobytes()   # few values -> repeats
    lens = rng.choice([-1500, -60, 52, 1500, 40, 70000, -70000], int(rng.integers(0, k + 1)))
    flows.append(_flow(payload, lens, index=i))
  return flows


def test_layout_and_padding_with_odd_trailing_byte():
  flow = _flow(bytes([0x1a, 0x2b, 0x3c]), [+1500, -60])
  vocab = Vocab.build([flow], payload_bytes=8, num_lengths=3)
  ids = vocab.encode(flow)
  assert vocab.seq_len == 2 + 4 + 3 == len(ids)
  assert vocab.decode(ids) == ["[CLS]", "1a2b", "3c__", "[PAD]", "[PAD]", "[SEP]",
                               "+1500", "-60", "[PAD]"]
  assert ids.dtype == np.int32 and ids[0] == CLS_ID and ids[5] == SEP_ID


def test_odd_payload_bytes_config_and_payload_beyond_m():
  flow = _flow(bytes(range(10)), [1, 2, 3, 4, 5])
  vocab = Vocab.build([flow], payload_bytes=5, num_lengths=2)
  assert vocab.decode(vocab.encode(flow)) == [
      "[CLS]", "0001", "0203", "04__", "[SEP]", "+1", "+2"]


def test_frequency_order_ties_by_string_and_specials_fixed():
  flows = [_flow(b"\x00\x02\x00\x01", [5]), _flow(b"\x00\x01", [-5]), _flow(b"\x00\x03", [5])]
  vocab = Vocab.build(flows, payload_bytes=4, num_lengths=1)
  assert vocab.tokens[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
  # 0001 and +5 twice (tie: "+5" < "0001" as strings), then singles by string.
  assert vocab.tokens[4:] == ["+5", "0001", "-5", "0002", "0003"]
  assert vocab.counts[4:] == [2, 2, 1, 1, 1]
  # Independent of flow order.
  again = Vocab.build(flows[::-1], payload_bytes=4, num_lengths=1)
  assert again.tokens == vocab.tokens


def test_unseen_values_map_to_unk_and_max_size_tail():
  train = [_flow(b"\x00\x01\x00\x01\x00\x02", [60, 60, -60])]
  vocab = Vocab.build(train, payload_bytes=6, num_lengths=3)
  ids = vocab.encode(_flow(b"\xff\xff\x00\x01", [61, 60]))
  assert ids[1] == UNK_ID and vocab.token_of(int(ids[2])) == "0001"
  assert ids[5] == UNK_ID and vocab.token_of(int(ids[6])) == "+60"
  capped = Vocab.build(train, payload_bytes=6, num_lengths=3, max_size=6)
  assert capped.tokens == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "+60", "0001"]
  assert capped.counts[1] == 2          # "-60" and "0002" were absorbed by [UNK]
  assert capped.encode(train[0])[3] == UNK_ID


def test_min_count_drops_rare_tokens_and_combines_with_max_size():
  train = [_flow(b"\x00\x01\x00\x01\x00\x02", [60, 60, -60]),
           _flow(b"\x00\x01\x00\x03", [60, -60])]
  # Counts: 0001 x3, +60 x3, -60 x2, 0002 x1, 0003 x1.
  vocab = Vocab.build(train, payload_bytes=6, num_lengths=3, min_count=2)
  assert vocab.tokens[4:] == ["+60", "0001", "-60"]
  assert vocab.counts[1] == 2           # 0002 and 0003 went to [UNK]
  assert vocab.encode(train[0])[3] == UNK_ID
  both = Vocab.build(train, payload_bytes=6, num_lengths=3, min_count=2, max_size=5)
  assert both.tokens[4:] == ["+60"] and both.counts[1] == 2 + 3 + 2
  # min_count 0 or 1 keeps every token, as without it.
  assert Vocab.build(train, payload_bytes=6, num_lengths=3, min_count=1).tokens == \
      Vocab.build(train, payload_bytes=6, num_lengths=3).tokens


def test_vectorised_encoding_matches_per_token_lookup():
  flows = _random_flows(300, seed=1)
  vocab = Vocab.build(flows[:200], payload_bytes=16, num_lengths=6)
  ids = vocab.encode_batch(flows)
  for flow, row in zip(flows, ids):
    p = flow.payload
    rp = [f"{p[i]:02x}{p[i + 1]:02x}" if i + 1 < len(p) else f"{p[i]:02x}__"
          for i in range(0, len(p), 2)]
    pl = [f"{int(v):+d}" for v in flow.lengths]
    expect = ([CLS_ID] + [vocab.id_of(t) for t in rp] + [PAD_ID] * (8 - len(rp)) + [SEP_ID]
              + [vocab.id_of(t) for t in pl] + [PAD_ID] * (6 - len(pl)))
    assert row.tolist() == expect


@pytest.mark.parametrize("features", ["rp", "pl"])
def test_feature_ablations_keep_layout(features):
  flows = _random_flows(50, seed=2)
  both = Vocab.build(flows, payload_bytes=16, num_lengths=6)
  one = Vocab.build(flows, payload_bytes=16, num_lengths=6, features=features)
  ids = one.encode_batch(flows)
  assert ids.shape == both.encode_batch(flows).shape
  rp, pl = ids[:, 1:9], ids[:, 10:]
  dropped, kept = (pl, rp) if features == "rp" else (rp, pl)
  assert (dropped == PAD_ID).all() and (kept != PAD_ID).any()
  assert all((t[0] in "+-") == (features == "pl") for t in one.tokens[4:])


def test_save_load_round_trip(tmp_path):
  flows = _random_flows(100, seed=3)
  vocab = Vocab.build(flows, payload_bytes=16, num_lengths=6, features="both",
                      max_size=20, mask_sni=True)
  path = tmp_path / "vocab.txt"
  vocab.save(path)
  text = path.read_text().splitlines()
  assert text[0].startswith("#") and "payload_bytes=16" in text[1]
  assert text[3] == "[PAD]\t0"
  loaded = Vocab.load(path)
  assert loaded.tokens == vocab.tokens and loaded.counts == vocab.counts
  assert (loaded.payload_bytes, loaded.num_lengths, loaded.features, loaded.mask_sni) == (
      16, 6, "both", True)
  np.testing.assert_array_equal(loaded.encode_batch(flows), vocab.encode_batch(flows))
  (tmp_path / "bad.txt").write_text("hello\n")
  with pytest.raises(ValueError, match="not a pass_jax vocabulary"):
    Vocab.load(tmp_path / "bad.txt")


def test_mask_sni_zeroes_full_and_truncated_names():
  hello = b"\x16\x03\x01" + b"www.example.com" + b"\x00\x10"
  full = _flow(hello, [], sni="www.example.com")
  cut = _flow(b"\x16\x03\x01" + b"www.exa", [], sni="www.example.com")
  other = _flow(hello, [], sni="other.org")
  arrays = vocab_lib.FlowArrays.from_flows([full, cut, other], 32, 4, mask_sni=True)
  assert arrays.payload[0, 3:18].tolist() == [0] * 15
  assert arrays.payload[0, :3].tolist() == [0x16, 3, 1] and arrays.payload[0, 18] == 0
  assert arrays.payload[1, 3:10].tolist() == [0] * 7
  assert bytes(arrays.payload[2, 3:18]) == b"www.example.com"
  plain = vocab_lib.FlowArrays.from_flows([full], 32, 4, mask_sni=False)
  assert bytes(plain.payload[0, 3:18]) == b"www.example.com"
