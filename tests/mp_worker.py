"""Runs the real fine-tuning trainer on a tiny separable token dataset, as its own process.

Used by test_resume.py (a run that is SIGKILLed and restarted) and test_multiprocess.py (two
processes joined by jax.distributed). The parent sets XLA_FLAGS / JAX_PLATFORMS in the environment.

  python tests/mp_worker.py --workdir W [--steps N] [--checkpoint_every K]
      [--coordinator localhost:PORT --num_processes 2 --process_id I]

Prints `RESULT {json}` (final step, best, params digest) as its last line.
"""
import argparse
import hashlib
import importlib
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

NUM_CLASSES, SEQ_LEN, VOCAB_SIZE = 4, 12, 48


def toy_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
  """Token rows whose class is written at two positions, among random filler tokens."""
  rng = np.random.default_rng(seed)
  label = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
  tokens = rng.integers(4 + NUM_CLASSES, VOCAB_SIZE, (n, SEQ_LEN)).astype(np.int32)
  tokens[:, 0] = 2  # [CLS]
  tokens[:, 3] = 4 + label
  tokens[:, 7] = 4 + (label + 1) % NUM_CLASSES
  comm_key = np.array([f"addr:10.0.{c}.{i % 3}:443" for i, c in enumerate(label)])
  return {"tokens": tokens, "label": label, "comm_key": comm_key}


def tiny_config(steps: int, checkpoint_every: int):
  config = importlib.import_module("configs.pass").get_config("tiny")
  m = config.model
  m.num_layers, m.num_heads, m.head_dim, m.d_model, m.ffn_dim = 1, 2, 8, 16, 32
  config.finetune.batch_size = 16
  config.finetune.steps = steps
  config.finetune.lr = 3e-3
  config.log_every = 2
  config.eval_every = 4
  config.checkpoint_every = checkpoint_every
  config.keep_checkpoints = 3
  config.data.shuffle_buffer = 1000
  config.quiet = False
  return config


def params_digest(params) -> tuple[str, list[float]]:
  """sha256 over every parameter's bytes (same on every process) and the flat values' head."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  host = multihost_utils.process_allgather(params, tiled=True)
  h = hashlib.sha256()
  flat = []
  for leaf in jax.tree.leaves(host):
    a = np.ascontiguousarray(np.asarray(leaf, np.float32))
    h.update(a.tobytes())
    flat.append(a.reshape(-1))
  return h.hexdigest(), np.concatenate(flat)[:8].tolist()


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=int, default=24)
  ap.add_argument("--checkpoint_every", type=int, default=4)
  ap.add_argument("--coordinator", default="")
  ap.add_argument("--num_processes", type=int, default=1)
  ap.add_argument("--process_id", type=int, default=0)
  args = ap.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  if args.coordinator:
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)
  from pass_jax import sharding  # pylint: disable=g-import-not-at-top
  from pass_jax.trainers import evaluate, finetune  # pylint: disable=g-import-not-at-top

  config = tiny_config(args.steps, args.checkpoint_every)
  mesh = sharding.make_mesh()
  state, history = finetune.train_classifier(
      config, train_arrays=toy_arrays(160, seed=0), val_arrays=toy_arrays(40, seed=1),
      workdir_stage=os.path.join(args.workdir, "finetune"), mesh=mesh,
      num_classes=NUM_CLASSES, vocab_size=VOCAB_SIZE)
  digest, head = params_digest(state.params)
  # Every row predicted once, whatever the process count: rows never written would sum to 0.
  probs = evaluate.predict_arrays(state, toy_arrays(37, seed=2), config, mesh)["probs"]
  result = {"pred_rows": len(probs), "pred_row_sums_ok": bool(np.allclose(probs.sum(-1), 1.0)),
            "pred_digest": hashlib.sha256(probs.argmax(-1).tobytes()).hexdigest(),
            "process_index": jax.process_index(), "process_count": jax.process_count(),
            "devices": jax.device_count(), "step": int(jax.device_get(state.step)),
            "best": history["best"], "last_loss": history["finetune"][-1]["loss"],
            "digest": digest, "head": head}
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
