"""Throughput of the jitted steps: train and inference flows/s, compile time, memory, MFU.

  python benchmarks/bench_train.py                       # tiny + paper on all devices
  python benchmarks/bench_train.py --variants=tiny --steps=50 --batch=64

Random token rows of the paper layout (L = 2 + 128/2 + 32 = 98) stand in for
data: the steps' cost does not depend on token values. Model FLOPs come from
XLA's cost analysis of the compiled step (per device); MFU divides the
achieved FLOP/s by the device's peak from PEAK_FLOPS (dense bf16; None on CPU).
"""
import argparse
import importlib
import json
import resource
import time

import jax
import numpy as np

from pass_jax import sharding
from pass_jax import train_steps

# Dense bf16 peak FLOP/s per device, by jax `device_kind` prefix.
PEAK_FLOPS = {
    "NVIDIA H200": 989e12, "NVIDIA H100": 989e12, "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12, "NVIDIA A10": 125e12, "Tesla V100": 125e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def peak_flops(device) -> float | None:
  for prefix, flops in PEAK_FLOPS.items():
    if device.device_kind.startswith(prefix):
      return flops
  return None


def _batch(kind, batch_size, seq_len, vocab, rs):
  tokens = lambda: rs.randint(4, vocab, (batch_size, seq_len)).astype(np.int32)
  labels = rs.randint(0, 10, batch_size).astype(np.int32)
  if kind == "pretrain":
    return {"x": tokens(), "y": tokens(), "label": labels,
            "strong": (rs.rand(batch_size) < 0.5).astype(np.float32)}
  return {"tokens": tokens(), "label": labels,
          "weight": np.ones(batch_size, np.float32),
          "is_pseudo": (rs.rand(batch_size) < 0.3).astype(np.float32)}


def _time(fn, state, batch, steps, *, returns_state):
  """Compile (timed), warm up once, then time `steps` calls."""
  t0 = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  out = compiled(state, batch)
  state = out[0] if returns_state else state
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(steps):
    out = compiled(state, batch)
    state = out[0] if returns_state else state
  jax.block_until_ready(out)
  step_s = (time.perf_counter() - t0) / steps
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  mem = compiled.memory_analysis()
  temp_bytes = getattr(mem, "temp_size_in_bytes", 0) if mem is not None else 0
  return state, {"compile_s": compile_s, "step_s": step_s, "flops_per_device": flops,
                 "temp_bytes_per_device": temp_bytes}


def bench_variant(variant, *, steps, batch_size, seq_len, vocab, mesh,
                  dtype="float32", fsdp=False):
  config = importlib.import_module("configs.pass").get_config(variant)
  config.model.dtype = dtype
  config.mesh.fsdp = fsdp
  n_dev = mesh.devices.size
  batch_size = batch_size or config.finetune.batch_size
  batch_size = max(n_dev, batch_size - batch_size % n_dev)
  rs = np.random.RandomState(0)
  peak = peak_flops(jax.devices()[0])
  results = {"variant": variant, "devices": n_dev,
             "device_kind": jax.devices()[0].device_kind, "batch": batch_size,
             "seq_len": seq_len, "dtype": config.model.dtype}

  for task, make, stage_batch in (
      ("pretrain", train_steps.make_contrastive_step, "pretrain"),
      ("classify", train_steps.make_classify_step, "classify")):
    state = train_steps.create_train_state(
        config, task=task, num_classes=10, vocab_size=vocab, seq_len=seq_len,
        mesh=mesh, rng=0, total_steps=10_000)
    if task == "classify":
      n_params = sum(x.size for x in jax.tree.leaves(state.params))
      results["params"] = int(n_params)
    batch = sharding.shard_batch(mesh, _batch(stage_batch, batch_size, seq_len,
                                              vocab, rs))
    state, r = _time(make(config, mesh), state, batch, steps, returns_state=True)
    r["steps_per_s"] = 1.0 / r["step_s"]
    # A contrastive step encodes 3 rows per anchor; flows/s counts anchors.
    r["flows_per_s"] = batch_size / r["step_s"]
    if peak:
      r["mfu"] = r["flops_per_device"] / r["step_s"] / peak
    results[f"train_{task}"] = r
    if task == "classify":
      pbatch = sharding.shard_batch(mesh, {"tokens": np.asarray(batch["tokens"])})
      _, r = _time(train_steps.make_predict_step(config, mesh), state, pbatch, steps,
                   returns_state=False)
      r["flows_per_s"] = batch_size / r["step_s"]
      if peak:
        r["mfu"] = r["flops_per_device"] / r["step_s"] / peak
      results["predict"] = r
    del state

  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    results["peak_device_bytes"] = stats["peak_bytes_in_use"]
  results["host_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return results


def _print(r):
  line = (f"{r['variant']:6s} {r['devices']}x {r['device_kind']} batch={r['batch']} "
          f"L={r['seq_len']} {r['dtype']} params={r['params'] / 1e6:.2f}M")
  print(line)
  for key in ("train_pretrain", "train_classify", "predict"):
    s = r[key]
    mfu = f" MFU={100 * s['mfu']:.1f}%" if "mfu" in s else ""
    print(f"  {key:15s} {s.get('steps_per_s', 1 / s['step_s']):8.2f} steps/s "
          f"{s['flows_per_s']:9.0f} flows/s  compile {s['compile_s']:5.1f}s  "
          f"{s['flops_per_device'] / 1e9:8.2f} GFLOP/step/device  "
          f"{s['flops_per_device'] / s['step_s'] / 1e9:8.1f} GFLOP/s{mfu}")
  mem = r.get("peak_device_bytes")
  print(f"  peak device memory: {mem / 2**20:.0f} MiB" if mem else
        f"  host max RSS: {r['host_max_rss_bytes'] / 2**20:.0f} MiB "
        f"(temp per classify step: "
        f"{r['train_classify']['temp_bytes_per_device'] / 2**20:.1f} MiB/device)")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default="tiny,paper")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batch", type=int, default=0, help="0: config finetune batch")
  parser.add_argument("--seq_len", type=int, default=98)
  parser.add_argument("--vocab", type=int, default=8000)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--fsdp", action="store_true")
  parser.add_argument("--json", default="", help="also write the results here")
  args = parser.parse_args()
  mesh = sharding.make_mesh()
  all_results = []
  for v in args.variants.split(","):
    res = bench_variant(v, steps=args.steps, batch_size=args.batch,
                        seq_len=args.seq_len, vocab=args.vocab, mesh=mesh,
                        dtype=args.dtype, fsdp=args.fsdp)
    _print(res)
    all_results.append(res)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(all_results, f, indent=2)
