"""Fine-tuning (M0) and every later classifier fit: one loop, resumable, best-on-validation kept.

`train_classifier` is the loop; pseudo-label rounds call it with `extra_arrays` (pseudo-labelled
rows carrying `weight` / `is_pseudo`) and their own `workdir_stage`. `run_finetune` is the
pipeline stage: it picks the encoder (pre-trained or from scratch) and calls the loop.

Layout of a stage directory S (W/finetune, W/pli/round_<t>):
  S/ckpt/<step>/   latest checkpoints (config.keep_checkpoints of them): state + meta
  S/best/<step>/   the single best-on-validation state (macro-F1; earliest step wins ties)
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
from pass_jax.baselines import imbalance
from pass_jax.trainers import evaluate
from pass_jax.trainers import pretrain

Arrays = Mapping[str, np.ndarray]


def training_columns(config, train_arrays: Arrays, extra_arrays: Arrays | None, *,
                     num_classes: int, seed: int) -> dict[str, np.ndarray]:
  """The rows one fine-tuning run iterates over: labelled train rows, resampled or weighted per
  config.finetune.sampling, then the pseudo-labelled extra rows (kept as given)."""
  cols = streams.classify_columns(train_arrays)
  keep = cols["label"] >= 0  # label_fraction < 1 leaves unlabelled rows in train
  cols = {k: v[keep] for k, v in cols.items()}
  method = config.finetune.sampling
  if method in ("ros", "rus"):
    idx, _, _ = imbalance.resample(method, cols["label"], seed=seed)
    cols = {k: v[idx] for k, v in cols.items()}
  elif method == "class_weight":
    cols["weight"] = cols["weight"] * imbalance.class_weights(cols["label"], num_classes)[
        cols["label"]]
  if extra_arrays is not None and len(extra_arrays["tokens"]):
    extra = streams.classify_columns(extra_arrays)
    if "is_pseudo" not in extra_arrays:
      extra["is_pseudo"] = np.ones_like(extra["is_pseudo"])
    cols = {k: np.concatenate([cols[k], extra[k]]) for k in cols}
  return cols


def fill_one_batch(cols: dict[str, np.ndarray], global_batch: int) -> dict[str, np.ndarray]:
  """Repeats every row k = ceil(global_batch / n) times when n rows do not fill one global batch.

  With few labels (10% of a small dataset: 2 flows per class) the labelled rows can be fewer than
  a batch; repeating all of them equally keeps the class mix and lets fine-tuning run instead of
  failing. A batch may then hold a row twice, and `min_steps` sets how long it trains.
  """
  n = len(cols["label"])
  if n == 0 or n >= global_batch:
    return cols
  k = -(-global_batch // n)
  return {key: np.concatenate([v] * k) for key, v in cols.items()}


def steps_for(stage_cfg, num_rows: int, global_batch: int, num_processes: int) -> tuple[int, int]:
  """(steps_per_epoch, total_steps): epochs (float) unless stage_cfg.steps > 0.

  An epoch is as many global batches as the rows fill without repeats (the streams cut every
  global batch across processes, so every process runs the same number of steps). With few
  labels an epoch is a handful of steps, so `min_steps` (when the stage has it) sets a floor:
  10% of a small dataset's labels would otherwise give M0 some 30 updates.
  """
  local = global_batch // num_processes
  steps_per_epoch = (num_rows // num_processes) // local
  if steps_per_epoch < 1:
    raise ValueError(f"{num_rows} training rows do not fill one global batch of {global_batch}")
  total = stage_cfg.steps if stage_cfg.steps > 0 else max(1, math.ceil(stage_cfg.epochs *
                                                                       steps_per_epoch))
  if stage_cfg.steps <= 0:
    total = max(total, int(stage_cfg.get("min_steps", 0)))
  return steps_per_epoch, int(total)


def train_classifier(config, *, train_arrays: Arrays, val_arrays: Arrays, workdir_stage: str,
                     mesh, num_classes: int, vocab_size: int,
                     init_encoder_params=None, extra_arrays: Arrays | None = None,
                     stage: str = "finetune", seed: int | None = None,
                     vocab_ref: dict | None = None, tb_dir: str | None = None,
                     num_evals: int | None = None) -> tuple[Any, dict[str, Any]]:
  """Trains encoder + classifier, resuming from S/ckpt when it holds a checkpoint.

  Validation runs every config.eval_every steps (0: once per epoch) and at the last step, or,
  when `num_evals` is given, about that many times evenly spaced: PLI rounds pass M0's count so
  that every model compared on validation was picked as the best of as many looks.

  Returns (best_state, history): the state with the best validation macro-F1 (the final state
  when there are no validation rows), and {stage: [train scalars], f'{stage}_eval': [val
  scalars], 'best': {'step', 'val_macro_f1'}, 'total_steps'}.
  """
  workdir_stage = os.path.abspath(workdir_stage)
  seed = config.seed if seed is None else int(seed)
  fc = config.finetune
  seq_len = int(np.shape(train_arrays["tokens"])[1])
  config_check.check_runtime(config, num_devices=mesh.size, num_processes=jax.process_count())

  # --- Input: rows, epoch length, total steps.
  cols = training_columns(config, train_arrays, extra_arrays, num_classes=num_classes, seed=seed)
  cols = fill_one_batch(cols, fc.batch_size)
  steps_per_epoch, total_steps = steps_for(fc, len(cols["label"]), fc.batch_size,
                                           jax.process_count())
  eval_every = config.eval_every or steps_per_epoch
  if num_evals:
    eval_every = max(1, total_steps // int(num_evals))
  has_val = len(val_arrays["tokens"]) > 0

  # --- Model and steps.
  state = train_steps.create_train_state(
      config, task="classify", num_classes=num_classes, vocab_size=vocab_size, seq_len=seq_len,
      mesh=mesh, rng=jax.random.key(seed), encoder_params=init_encoder_params,
      total_steps=total_steps)
  classify_step = train_steps.make_classify_step(config, mesh)
  predict_step = evaluate.predict_step_for(config, mesh)

  # --- Checkpoints: resume from the latest; the best one lives apart so retention never drops it.
  ckpt = checkpoint.Checkpointer(os.path.join(workdir_stage, "ckpt"),
                                 max_to_keep=config.keep_checkpoints)
  best_ckpt = checkpoint.Checkpointer(os.path.join(workdir_stage, "best"), max_to_keep=1)
  history = {stage: [], f"{stage}_eval": [], "best": {"step": -1, "val_macro_f1": -1.0},
             "total_steps": total_steps}
  start_step = 0
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    checkpoint.check_resumable(meta, config, steps_per_epoch=steps_per_epoch,
                               total_steps=total_steps, directory=ckpt.directory)
    start_step, history = int(meta["step"]), meta["history"]
  if best_ckpt.latest_step() is not None:
    # The best may be newer than the latest checkpoint (evaluated after it, then killed).
    history["best"] = best_ckpt.restore_meta()["best"]

  def meta_at(step: int) -> dict[str, Any]:
    return {"stage": stage, "total_steps": total_steps, "history": history,
            "data": checkpoint.data_position(step, steps_per_epoch, seed),
            "config": checkpoint.config_to_dict(config), "vocab": vocab_ref}

  # --- Loop.
  log = logging_utils.MetricLogger(tb_dir or os.path.join(workdir_stage, "tb"), stage=stage,
                                   total_steps=total_steps, start_step=start_step,
                                   quiet=config.quiet)
  if start_step:
    log.print(f"[{stage}] resuming at step {start_step}/{total_steps} from {ckpt.directory}")
  batches = checkpoint.resumable_batches(
      lambda s: streams.train_stream(cols, global_batch=fc.batch_size, seed=s,
                                     shuffle_buffer=config.data.shuffle_buffer,
                                     prefetch=config.data.prefetch, repeat=False),
      steps_per_epoch=steps_per_epoch, start_step=start_step, seed=seed)
  pending = []  # device scalars since the last log: fetched together, no per-step host sync
  for step in range(start_step + 1, total_steps + 1):
    state, step_metrics = classify_step(state, sharding.shard_batch(mesh, next(batches)))
    pending.append(step_metrics)
    last = step == total_steps

    if step % config.log_every == 0 or last:
      avg = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
      pending = []
      history[stage].append({"step": step, **avg})
      log.write(step, avg, prefix=stage, progress=True, console=("loss", "accuracy", "lr"))

    if has_val and (step % eval_every == 0 or last):
      m, _ = evaluate.evaluate_arrays(state, val_arrays, config, mesh, num_classes=num_classes,
                                      predict_step=predict_step)
      scalars = {k: m[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")}
      history[f"{stage}_eval"].append({"step": step, **scalars})
      log.write(step, scalars, prefix=f"{stage}_val")
      if m["macro_f1"] > history["best"]["val_macro_f1"]:
        history["best"] = {"step": step, "val_macro_f1": m["macro_f1"]}
        best_ckpt.save(step, state, dict(meta_at(step), best=history["best"]))

    if step % config.checkpoint_every == 0 or last:
      ckpt.save(step, state, meta_at(step))

  # --- Final model: best on validation (or the last state when there is no validation split).
  ckpt.close()
  if not has_val:
    history["best"] = {"step": total_steps, "val_macro_f1": None}
    best_ckpt.save(total_steps, state, dict(meta_at(total_steps), best=history["best"]))
  best_ckpt.wait()
  state, _ = best_ckpt.restore(state)
  best_ckpt.close()
  log.print(f"[{stage}] done at step {total_steps}: best val macro-F1 "
            f"{history['best']['val_macro_f1']} at step {history['best']['step']}")
  log.close()
  return state, history


def run_finetune(config, workdir: str, data: "evaluate.Data | str", encoder_params=None, *,
                 mesh=None) -> tuple[Any, dict[str, Any]]:
  """Stage `finetune` (M0) into W/finetune; returns (best_state, history).

  The encoder starts from `encoder_params` when given, else from the latest checkpoint of
  W/pretrain/ckpt when config.pretrain.enabled, else from scratch (the `w/o CPT` ablation).
  """
  workdir = os.path.abspath(workdir)
  data = evaluate.as_data(data)
  mesh = mesh or sharding.make_mesh()
  if encoder_params is None and config.pretrain.enabled:
    encoder_params = pretrain.load_encoder_params(
        config, os.path.join(workdir, "pretrain", "ckpt"), mesh=mesh,
        vocab_size=data.vocab_size, seq_len=data.seq_len)
  return train_classifier(
      config, train_arrays=data.split("train"), val_arrays=data.split("validation"),
      workdir_stage=os.path.join(workdir, "finetune"), mesh=mesh, num_classes=data.num_classes,
      vocab_size=data.vocab_size, init_encoder_params=encoder_params, stage="finetune",
      vocab_ref=data.vocab_ref, tb_dir=os.path.join(workdir, "tb", "finetune"))
