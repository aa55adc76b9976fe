"""Pseudo-label iteration (PLI): the host-side loop between sharded fine-tuning rounds.

Round 0 is M0 (the `finetune` stage). Round t: M_{t-1} predicts the whole unlabeled pool (sharded
over every device and process, each pool flow exactly once); flows whose top-class confidence is
>= thr get that class; pseudo-labelled flows are resampled class-inverse (minority classes drawn
more); M_t is trained on labelled + pseudo-labelled rows (loss weights w1/w2, fixed or learnable,
see losses.py), starting from M_{t-1}'s encoder (or the CPT encoder, `pli.init`) and validated as
many times as M0 was (m0_validation_looks). Stop when validation macro-F1 gains <= epsilon over
the best so far, or after `limit` rounds. The model kept is the best round on validation; M0 wins
ties, so PLI never returns a model that lost to M0.

Progress lives in W/pli/state.json (written after each finished round); each round's training
resumes from its own checkpoints in W/pli/round_<t>/, so a run killed mid-loop continues at the
round and step it was in.
"""
import os
import time
from typing import Any, Mapping

import numpy as np

from input_pipeline import streams
from pass_jax import checkpoint
from pass_jax import jsonio
from pass_jax.trainers import evaluate
from pass_jax.trainers import finetune
from pass_jax.trainers import pretrain

Arrays = Mapping[str, np.ndarray]


# ----------------------------------------------------------------------------- host-side rules
def select_confident(probs_NxC: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray]:
  """(row indices, pseudo-labels, confidences) of the rows whose top probability >= threshold."""
  probs_NxC = np.asarray(probs_NxC)
  if probs_NxC.shape[0] == 0:
    empty = np.zeros(0, np.int64)
    return empty, empty, np.zeros(0, np.float32)
  conf_N = probs_NxC.max(-1)
  idx = np.flatnonzero(conf_N >= threshold)
  return idx, probs_NxC[idx].argmax(-1).astype(np.int64), conf_N[idx]


def gain_too_small(best_f1: float, new_f1: float, epsilon: float) -> bool:
  """The paper's stop rule: stop once a round improves macro-F1 by <= epsilon over the best."""
  return (new_f1 - best_f1) <= epsilon


def best_round(rounds: list[dict[str, Any]]) -> int:
  """Index of the round with the highest validation macro-F1; the earliest wins ties (M0 first)."""
  scores = [r["val_macro_f1"] for r in rounds]
  return int(np.argmax(scores))


def pseudo_label_rows(pool: Arrays, idx: np.ndarray, labels: np.ndarray, *, resample: bool,
                      p_train: np.ndarray, cap: int, seed: int) -> dict[str, np.ndarray]:
  """Training rows for the accepted pseudo-labels, class-inverse resampled when asked.

  Resampling keeps the number of rows (one draw per accepted flow) but draws class i with
  probability s_i = (1/p_i) / sum_j (1/p_j) (p from the labelled training data), each flow at most
  `cap` times, so minority classes get more of the pseudo-labelled rows.
  """
  if resample and len(idx):
    pick = streams.resample_class_inverse(labels, p_train, n=len(idx), seed=seed, cap=cap)
  else:
    pick = np.arange(len(idx))
  return {"tokens": np.asarray(pool["tokens"])[idx[pick]],
          "label": labels[pick].astype(np.int32),
          "weight": np.ones(len(pick), np.float32),
          "is_pseudo": np.ones(len(pick), np.float32)}


def balance_labelled(train: Arrays, num_pseudo: int, labeled_share: float) -> dict[str, np.ndarray]:
  """The labelled training rows, repeated so they make up about `labeled_share` of a round's rows.

  Pseudo-labels usually outnumber labels many times over (10% labels: ~9 pool flows per label);
  without this the labelled rows, the only clean signal, would be seen ~10x less often than in M0.
  """
  keep = np.asarray(train["label"]) >= 0
  labelled = {k: np.asarray(v)[keep] for k, v in train.items()}
  n = int(keep.sum())
  if not n or labeled_share <= 0:
    return labelled
  reps = max(1, int(round(labeled_share / (1.0 - labeled_share) * num_pseudo / n)))
  return {k: np.concatenate([v] * reps) for k, v in labelled.items()}


def round_record(t: int, *, pool: Arrays, idx: np.ndarray, labels: np.ndarray, rows: Arrays,
                 class_names: list[str], history: dict[str, Any], stage: str,
                 seconds: float, threshold: float) -> dict[str, Any]:
  """What the user sees of one round (log, TensorBoard, report.json)."""
  n_pool = len(pool["tokens"])
  rec = {"round": t, "threshold": threshold, "pool_size": n_pool, "accepted": int(len(idx)),
         "accepted_fraction": float(len(idx) / n_pool) if n_pool else 0.0,
         "accepted_per_class": {name: int(c) for name, c in zip(
             class_names, np.bincount(labels, minlength=len(class_names)))},
         "train_rows_pseudo": int(len(rows["label"])),
         "pseudo_label_accuracy": None, "val_macro_f1": float(history["best"]["val_macro_f1"]),
         "best_step": int(history["best"]["step"]), "seconds": round(seconds, 2)}
  hidden = np.asarray(pool.get("hidden_label", np.full(n_pool, -1)))[idx]
  known = hidden >= 0
  if known.any():  # the pool came from hidden training labels: how good are the pseudo-labels?
    rec["pseudo_label_accuracy"] = float(np.mean(hidden[known] == labels[known]))
    rec["pseudo_label_accuracy_n"] = int(known.sum())
    # Per pseudo-label class (the precision of the rows a class gets): errors concentrate in the
    # minority classes, which class-inverse resampling then draws most often, so the overall
    # figure hides what hurts. None where no accepted flow of that class has a hidden label.
    right = hidden[known] == labels[known]
    rec["pseudo_label_accuracy_per_class"] = {
        name: (float(right[labels[known] == c].mean()) if np.any(labels[known] == c) else None)
        for c, name in enumerate(class_names)}
  last = history.get(stage, [])
  if last:
    for key in ("w_labeled", "w_pseudo"):
      if key in last[-1]:
        rec[key] = float(last[-1][key])
  return rec


def m0_validation_looks(meta: Mapping[str, Any]) -> int:
  """How many times M0 was evaluated on validation (its best is the max of that many scores).

  From the metadata of W/finetune/best: M0 evaluated every `eval_every` steps (0: once per epoch)
  and at its last step. Rounds are evaluated as many times, evenly spaced: the best of 200 noisy
  looks (M0 on 41 labels is one step per epoch) beats the best of 4 (a round's epoch is ~60 steps)
  by chance alone, and the stop rule would then reject every round.
  """
  total = int(meta["total_steps"])
  every = int(meta["config"].get("eval_every") or 0) or int(meta["data"]["steps_per_epoch"])
  return max(1, total // every + (1 if total % every else 0))


# ----------------------------------------------------------------------------- threshold choice
def choose_threshold(config, data: evaluate.Data, workdir: str, *, mesh, encoder_params) -> float:
  """thr from config.pli.threshold_candidates by k-fold cross-validation on the labelled data.

  Each fold trains a classifier on the other folds and predicts the held-out one; for every
  candidate we measure the accuracy of the held-out predictions it would accept. The chosen thr
  is the lowest candidate whose accepted predictions reach config.pli.target_accuracy (more
  pseudo-labels at the precision we ask for); if none does, the highest candidate.
  """
  candidates = sorted(float(c) for c in config.pli.threshold_candidates)
  train = data.split("train")
  labelled = np.flatnonzero(np.asarray(train["label"]) >= 0)
  rng = np.random.default_rng([config.seed, 17])
  folds = np.array_split(rng.permutation(labelled), config.pli.cv_folds)
  probs, truth = [], []
  for k, held in enumerate(folds):
    rest = np.setdiff1d(labelled, held)
    fit = {key: np.asarray(v)[rest] for key, v in train.items()}
    state, _ = finetune.train_classifier(
        config, train_arrays=fit, val_arrays={k2: v[:0] for k2, v in fit.items()},
        workdir_stage=os.path.join(workdir, "pli", f"cv_fold_{k}"), mesh=mesh,
        num_classes=data.num_classes, vocab_size=data.vocab_size,
        init_encoder_params=encoder_params, stage=f"pli_cv{k}", seed=config.seed + 100 + k)
    held_arrays = {key: np.asarray(v)[held] for key, v in train.items()}
    probs.append(evaluate.predict_arrays(state, held_arrays, config, mesh)["probs"])
    truth.append(np.asarray(train["label"])[held])
  probs_NxC, truth_N = np.concatenate(probs), np.concatenate(truth)
  for thr in candidates:
    idx, labels, _ = select_confident(probs_NxC, thr)
    if len(idx) and np.mean(labels == truth_N[idx]) >= config.pli.target_accuracy:
      return thr
  return candidates[-1]


# ----------------------------------------------------------------------------- the loop
def _round_dir(workdir: str, t: int) -> str:
  return os.path.join(workdir, "finetune") if t == 0 else os.path.join(workdir, "pli",
                                                                        f"round_{t}")


def final_checkpoint_dir(workdir: str) -> str:
  """Best-on-validation checkpoint of the kept model: M0 unless a PLI round beat it."""
  saved = jsonio.read_json_or_none(os.path.join(workdir, "pli", "state.json"))
  if saved is not None:
    return os.path.join(_round_dir(workdir, int(saved.get("best_round", 0))), "best")
  return os.path.join(workdir, "finetune", "best")


def _restore(config, workdir, t, data, mesh):
  state, _ = evaluate.restore_classifier(
      config, os.path.join(_round_dir(workdir, t), "best"), mesh=mesh,
      num_classes=data.num_classes, vocab_size=data.vocab_size, seq_len=data.seq_len)
  return state


def run_pseudo_label(config, workdir: str, data: "evaluate.Data | str", *, mesh=None,
                     m0_history: dict[str, Any] | None = None, log=print) -> dict[str, Any]:
  """Stage `pseudo_label` into W/pli; returns the saved progress (rounds, best_round, done)."""
  from pass_jax import sharding  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(workdir)
  data = evaluate.as_data(data)
  mesh = mesh or sharding.make_mesh()
  pc = config.pli
  state_path = os.path.join(workdir, "pli", "state.json")
  saved = jsonio.read_json_or_none(state_path)
  if saved and saved.get("done"):
    return saved

  train, val, pool = data.split("train"), data.split("validation"), data.split("unlabeled")
  p_train = np.bincount(np.asarray(train["label"])[np.asarray(train["label"]) >= 0],
                        minlength=data.num_classes) / max(1, int((np.asarray(train["label"]) >= 0
                                                                  ).sum()))
  encoder_params = None
  if config.pretrain.enabled:
    encoder_params = pretrain.load_encoder_params(
        config, os.path.join(workdir, "pretrain", "ckpt"), mesh=mesh,
        vocab_size=data.vocab_size, seq_len=data.seq_len)

  if not saved or "m0_val_looks" not in saved:
    with checkpoint.Checkpointer(os.path.join(workdir, "finetune", "best")) as best_ckpt:
      m0_meta = best_ckpt.restore_meta()
    m0_history = m0_history or {"best": m0_meta["best"]}
    looks = m0_validation_looks(m0_meta)
  if not saved:
    thr = float(pc.threshold)
    if pc.threshold_candidates:
      thr = choose_threshold(config, data, workdir, mesh=mesh, encoder_params=encoder_params)
      log(f"[pli] threshold {thr} chosen by {pc.cv_folds}-fold cross-validation")
    saved = {"threshold": thr, "rounds": [{"round": 0, "val_macro_f1":
                                           float(m0_history["best"]["val_macro_f1"])}],
             "best_round": 0, "done": False, "stop_reason": None}
  if "m0_val_looks" not in saved:
    saved["m0_val_looks"] = looks
    jsonio.write_json(state_path, saved, process0_only=True)
  thr = float(saved["threshold"])

  current = _restore(config, workdir, len(saved["rounds"]) - 1, data, mesh)
  while not saved["done"]:
    t = len(saved["rounds"])
    if t > pc.limit:
      saved.update(done=True, stop_reason=f"reached the limit of {pc.limit} rounds")
      break
    start = time.time()
    probs = evaluate.predict_arrays(current, pool, config, mesh)["probs"]
    idx, labels, _ = select_confident(probs, thr)
    if not len(idx):
      saved.update(done=True, stop_reason=f"round {t}: no pool flow reached confidence {thr}")
      break
    rows = pseudo_label_rows(pool, idx, labels, resample=pc.resample, p_train=p_train,
                             cap=pc.resample_cap, seed=config.seed + t)
    round_train = balance_labelled(train, len(rows["label"]), pc.labeled_share)
    init = encoder_params
    if pc.init == "previous":
      from pass_jax import train_steps  # pylint: disable=g-import-not-at-top
      init = train_steps.encoder_params(current)
    stage = f"pli_round{t}"
    current, history = finetune.train_classifier(
        config, train_arrays=round_train, val_arrays=val, workdir_stage=_round_dir(workdir, t),
        mesh=mesh, num_classes=data.num_classes, vocab_size=data.vocab_size,
        init_encoder_params=init, extra_arrays=rows, stage=stage, seed=config.seed + t,
        vocab_ref=data.vocab_ref, tb_dir=os.path.join(workdir, "tb", stage),
        num_evals=saved["m0_val_looks"])
    rec = round_record(t, pool=pool, idx=idx, labels=labels, rows=rows,
                       class_names=data.class_names, history=history, stage=stage,
                       seconds=time.time() - start, threshold=thr)
    best_f1 = saved["rounds"][saved["best_round"]]["val_macro_f1"]
    saved["rounds"].append(rec)
    saved["best_round"] = best_round(saved["rounds"])
    _write_round_scalars(workdir, rec)
    log(f"[pli] round {t}: accepted {rec['accepted']}/{rec['pool_size']} pool flows"
        f" (pseudo-label acc {rec['pseudo_label_accuracy']}), val macro-F1 "
        f"{rec['val_macro_f1']:.4f} (best so far {best_f1:.4f})")
    if gain_too_small(best_f1, rec["val_macro_f1"], pc.epsilon):
      saved.update(done=True, stop_reason=f"round {t} gained <= epsilon={pc.epsilon}")
    jsonio.write_json(state_path, saved, process0_only=True)
  jsonio.write_json(state_path, saved, process0_only=True)
  log(f"[pli] done: {saved['stop_reason']}; keeping round {saved['best_round']}")
  return saved


def _write_round_scalars(workdir: str, rec: dict[str, Any]) -> None:
  """One TensorBoard point per round (W/tb/pli), x = round: what the log line and state.json say."""
  from pass_jax import logging_utils  # pylint: disable=g-import-not-at-top
  scalars = {k: rec[k] for k in ("pool_size", "accepted", "accepted_fraction", "val_macro_f1",
                                 "pseudo_label_accuracy", "w_labeled", "w_pseudo", "seconds")
             if rec.get(k) is not None}
  scalars.update({f"accepted_per_class/{name}": n
                  for name, n in rec["accepted_per_class"].items()})
  logger = logging_utils.MetricLogger(os.path.join(workdir, "tb", "pli"), stage="pli",
                                      total_steps=rec["round"], quiet=True)
  logger.write(rec["round"], scalars, prefix="pli")
  logger.close()  # the console line is the loop's own `[pli] round t` line

