"""Contrastive pre-training (CPT): one resumable loop over Alg. 1 triples.

Triples are drawn once from the labelled training rows with a fixed seed, so a resumed run sees
the same triples; each epoch shuffles them with `checkpoint.epoch_seed(seed, epoch)`.

Layout of W/pretrain:
  ckpt/<step>/   state (encoder + projection head + Adam) and meta, config.keep_checkpoints kept
"""
import math
import os
from typing import Any, Mapping

import jax
import numpy as np

from input_pipeline import streams
from pass_jax import checkpoint
from pass_jax import config_check
from pass_jax import logging_utils
from pass_jax import sharding
from pass_jax import train_steps
from pass_jax.trainers import evaluate

Arrays = Mapping[str, np.ndarray]


def pretrain_encoder(config, *, train_arrays: Arrays, workdir_stage: str, mesh, vocab_size: int,
                     vocab_ref: dict | None = None, tb_dir: str | None = None
                     ) -> tuple[Any, dict[str, Any]]:
  """Runs (or resumes, or finds finished) CPT; returns (final state, history)."""
  workdir_stage = os.path.abspath(workdir_stage)
  pc, seed = config.pretrain, config.seed
  seq_len = int(np.shape(train_arrays["tokens"])[1])
  config_check.check_runtime(config, num_devices=mesh.size, num_processes=jax.process_count())

  # --- Input: Alg. 1 triples over labelled train rows, fixed by the seed.
  triples = streams.sample_triples(train_arrays["label"], train_arrays["comm_key"],
                                   pc.num_triples, seed=seed, max_tries=pc.max_tries,
                                   weak_fraction=pc.weak_fraction)
  num_triples = len(triples["anchor"])
  local = pc.batch_size // jax.process_count()
  steps_per_epoch = (num_triples // jax.process_count()) // local
  if steps_per_epoch < 1:
    raise ValueError(f"{num_triples} triples do not fill one global batch of {pc.batch_size} "
                     "(pre-training needs >= 2 labelled training rows)")
  total_steps = pc.steps if pc.steps > 0 else max(1, math.ceil(pc.epochs * steps_per_epoch))

  # --- Model and step.
  state = train_steps.create_train_state(
      config, task="pretrain", num_classes=None, vocab_size=vocab_size, seq_len=seq_len,
      mesh=mesh, rng=jax.random.key(seed), total_steps=total_steps)
  contrastive_step = train_steps.make_contrastive_step(config, mesh)

  # --- Checkpoint: resume from the latest one.
  ckpt = checkpoint.Checkpointer(os.path.join(workdir_stage, "ckpt"),
                                 max_to_keep=config.keep_checkpoints)
  history = {"pretrain": [], "total_steps": total_steps}
  start_step = 0
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    checkpoint.check_resumable(meta, config, steps_per_epoch=steps_per_epoch,
                               total_steps=total_steps, directory=ckpt.directory)
    start_step, history = int(meta["step"]), meta["history"]

  def meta_at(step: int) -> dict[str, Any]:
    return {"stage": "pretrain", "total_steps": total_steps, "history": history,
            "data": dict(checkpoint.data_position(step, steps_per_epoch, seed),
                         num_triples=num_triples),
            "config": checkpoint.config_to_dict(config), "vocab": vocab_ref}

  # --- Loop.
  log = logging_utils.MetricLogger(tb_dir or os.path.join(workdir_stage, "tb"), stage="pretrain",
                                   total_steps=total_steps, start_step=start_step,
                                   quiet=config.quiet)
  if start_step:
    log.print(f"[pretrain] resuming at step {start_step}/{total_steps} from {ckpt.directory}")
  batches = checkpoint.resumable_batches(
      lambda s: streams.triple_stream(train_arrays, triples, global_batch=pc.batch_size, seed=s,
                                      shuffle_buffer=config.data.shuffle_buffer,
                                      prefetch=config.data.prefetch, repeat=False),
      steps_per_epoch=steps_per_epoch, start_step=start_step, seed=seed)
  pending = []
  for step in range(start_step + 1, total_steps + 1):
    state, step_metrics = contrastive_step(state, sharding.shard_batch(mesh, next(batches)))
    pending.append(step_metrics)
    last = step == total_steps

    if step % config.log_every == 0 or last:
      avg = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
      pending = []
      history["pretrain"].append({"step": step, **avg})
      log.write(step, avg, prefix="pretrain", progress=True,
                console=("loss", "accuracy", "lr"))

    if step % config.checkpoint_every == 0 or last:
      ckpt.save(step, state, meta_at(step))

  ckpt.close()
  log.print(f"[pretrain] done at step {total_steps}")
  log.close()
  return state, history


def load_encoder_params(config, ckpt_dir: str, *, mesh, vocab_size: int, seq_len: int,
                        step: int | None = None):
  """The encoder of a pre-training checkpoint (latest step by default), placed on `mesh`."""
  like = train_steps.create_train_state(
      config, task="pretrain", num_classes=None, vocab_size=vocab_size, seq_len=seq_len,
      mesh=mesh, rng=jax.random.key(config.seed), total_steps=1)
  with checkpoint.Checkpointer(ckpt_dir) as ckpt:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no pre-training checkpoint in {ckpt.directory}; run the pretrain "
                              "stage first or set config.pretrain.enabled=False")
    meta = ckpt.restore_meta(step)
    if step is None and meta["step"] < meta["total_steps"]:
      # A killed pre-training run must finish first, or fine-tuning would start from half of it.
      raise FileNotFoundError(f"pre-training in {ckpt.directory} stopped at step {meta['step']} "
                              f"of {meta['total_steps']}; rerun the pretrain stage to finish it")
    state, _ = ckpt.restore(like, step=meta["step"])
  return train_steps.encoder_params(state)


def run_pretrain(config, workdir: str, data: "evaluate.Data | str", *,
                 mesh=None) -> tuple[Any, str]:
  """Stage `pretrain` into W/pretrain; returns (encoder params, checkpoint directory)."""
  workdir = os.path.abspath(workdir)
  data = evaluate.as_data(data)
  mesh = mesh or sharding.make_mesh()
  stage_dir = os.path.join(workdir, "pretrain")
  state, _ = pretrain_encoder(config, train_arrays=data.split("train"), workdir_stage=stage_dir,
                              mesh=mesh, vocab_size=data.vocab_size, vocab_ref=data.vocab_ref,
                              tb_dir=os.path.join(workdir, "tb", "pretrain"))
  return train_steps.encoder_params(state), os.path.join(stage_dir, "ckpt")
