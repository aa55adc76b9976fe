"""Flows per second through tokenization and each tf.data stream on this machine.

  python benchmarks/bench_streams.py [--flows 200000] [--m 128] [--n 32] [--batch 128]

Flows are random FlowRecords (payload m bytes, n lengths); numbers are for
one host process. Goal: >= 20,000 flows/s through the train stream.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from input_pipeline import streams  # noqa: E402
from input_pipeline import vocab as vocab_lib  # noqa: E402
from input_pipeline.records import FlowRecord  # noqa: E402


def _random_flows(num, m, n, seed=0):
  rng = np.random.default_rng(seed)
  # A skewed byte distribution, like real headers: many repeats, a long tail.
  payload = np.minimum(rng.geometric(0.02, (num, m)), 255).astype(np.uint8)
  lengths = rng.choice([-1500, -1448, -60, 40, 52, 517, 1500, 1200, -90], (num, n))
  lengths = lengths + rng.integers(-3, 4, (num, n))
  return [FlowRecord(capture=f"c{i // 100}.pcap", index=i % 100, client_ip="10.0.0.1",
                     client_port=i % 60000, server_ip="10.0.0.2", server_port=443,
                     first_ts=0.0, payload=payload[i].tobytes(),
                     lengths=lengths[i].astype(np.int32), cert_sha256=str(i % 50),
                     label=f"c{i % 20}") for i in range(num)]


def _rate(label, flows, seconds):
  print(f"{label:<42s} {flows / seconds:>12,.0f} flows/s  ({flows:,} in {seconds:.2f}s)")


def _drain(it, num_batches):
  next(it)                                    # graph building / warm-up
  start = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--flows", type=int, default=200_000)
  parser.add_argument("--m", type=int, default=128)
  parser.add_argument("--n", type=int, default=32)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--batches", type=int, default=1000)
  args = parser.parse_args()

  flows = _random_flows(args.flows, args.m, args.n)
  start = time.perf_counter()
  arrays = vocab_lib.FlowArrays.from_flows(flows, args.m, args.n)
  _rate("FlowRecord -> arrays", len(flows), time.perf_counter() - start)
  start = time.perf_counter()
  vocab = vocab_lib.Vocab.build(arrays, payload_bytes=args.m, num_lengths=args.n)
  _rate(f"vocabulary build ({vocab.size} tokens)", len(flows), time.perf_counter() - start)
  start = time.perf_counter()
  tokens = vocab.encode_arrays(arrays)
  _rate("encode arrays -> int32[N, L]", len(flows), time.perf_counter() - start)
  start = time.perf_counter()
  vocab.encode_batch(flows)
  _rate("tokenize FlowRecords end to end", len(flows), time.perf_counter() - start)

  labels = np.array([int(f.label[1:]) for f in flows], np.int32)
  data = {"tokens": tokens, "label": labels}
  b = args.batch
  it = streams.train_stream(data, global_batch=b, seed=0, process_index=0, process_count=1)
  _rate(f"train stream (batch {b})", b * args.batches, _drain(it, args.batches))
  weights = 1.0 / np.bincount(labels)[labels]
  it = streams.train_stream(data, global_batch=b, seed=0, sample_weights=weights,
                            process_index=0, process_count=1)
  _rate(f"train stream, sampling weights (batch {b})", b * args.batches,
        _drain(it, args.batches))
  start = time.perf_counter()
  rows = 0
  for batch in streams.eval_stream(data, global_batch=1024, process_index=0, process_count=1):
    rows += int(batch["_mask"].sum())
  _rate("eval stream (batch 1024, whole split)", rows, time.perf_counter() - start)
  comm = np.array([f.comm_key for f in flows])
  start = time.perf_counter()
  triples = streams.sample_triples(labels, comm, len(flows), seed=0)
  _rate("sample_triples (paper, uniform y)", len(triples["anchor"]),
        time.perf_counter() - start)
  start = time.perf_counter()
  streams.sample_triples(labels, comm, len(flows), seed=0, weak_fraction=0.5)
  _rate("sample_triples (weak_fraction 0.5)", len(flows), time.perf_counter() - start)
  it = streams.triple_stream(data, triples, global_batch=b, process_index=0, process_count=1)
  _rate(f"triple stream (batch {b}, 2 rows per triple)", b * args.batches,
        _drain(it, args.batches))


if __name__ == "__main__":
  main()
