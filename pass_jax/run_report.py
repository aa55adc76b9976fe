"""The evaluate stage: the kept model on a split, then W/report.{json,md} and the pictures.

Gathers what the earlier stages left in W (extraction report, split sizes, training histories,
PLI rounds, stage times) so report.py only formats.
"""
import json
import os
from typing import Any

import jax
import numpy as np

from pass_jax import checkpoint
from pass_jax import report as report_lib
from pass_jax.trainers import evaluate
from pass_jax.trainers import pseudo_label


def _read(path: str, default=None):
  if not os.path.isfile(path):
    return default
  with open(path) as f:
    return json.load(f)


def kept_checkpoint_dir(config, workdir: str) -> str:
  """The final model: the best PLI round (M0 when PLI is off or never beat it)."""
  if config.pli.enabled:
    return pseudo_label.final_checkpoint_dir(workdir)
  return os.path.join(workdir, "finetune", "best")


def collect_history(workdir: str) -> dict[str, list]:
  """Training curves of every stage, from the stage markers and checkpoint metadata."""
  history: dict[str, list] = {}
  pre_dir = os.path.join(workdir, "pretrain", "ckpt")
  if os.path.isdir(pre_dir):
    with checkpoint.Checkpointer(pre_dir) as ckpt:
      if ckpt.latest_step() is not None:
        history.update({k: v for k, v in ckpt.restore_meta()["history"].items()
                        if isinstance(v, list)})
  fine = _read(os.path.join(workdir, "finetune.done.json"), {}).get("history", {})
  history.update({k: v for k, v in fine.items() if isinstance(v, list)})
  return history


def evaluate_and_report(config, workdir: str, data: evaluate.Data,
                        stage_seconds: dict[str, float]) -> dict[str, Any]:
  split = config.eval_split
  ckpt_dir = kept_checkpoint_dir(config, workdir)
  if not os.path.isdir(ckpt_dir):
    from pass_jax.pipeline import PipelineError  # pylint: disable=g-import-not-at-top
    raise PipelineError(f"no trained model in {ckpt_dir}: run the finetune stage first")
  metrics = evaluate.run_evaluate(config, workdir, data, split=split, ckpt_dir=ckpt_dir)
  # On every process: opening an Orbax CheckpointManager is a collective (it syncs the processes
  # when it creates its directory), so process 0 alone would wait for peers that never come.
  history = collect_history(workdir)
  preds = np.load(os.path.join(workdir, "eval", f"{split}_predictions.npz")) if (
      jax.process_index() == 0) else None
  if jax.process_index() != 0:
    return {"split": split, "macro_f1": metrics["macro_f1"]}

  train_labels = np.asarray(data.split("train")["label"])
  pli_state = _read(os.path.join(workdir, "pli", "state.json"), {})
  labels = preds["label"]
  known = labels >= 0
  report_lib.write_report(
      workdir, config=config,
      dataset_report=_read(os.path.join(data.data_dir or os.path.join(workdir, "data"),
                                        "extract_report.json"), {}),
      split_sizes={s: int(len(data.split(s)["label"])) for s in
                   ("train", "validation", "test", "unlabeled")},
      stage_seconds=stage_seconds,
      test_metrics={**metrics, "split": split},
      class_names=data.class_names,
      train_class_counts=np.bincount(train_labels[train_labels >= 0],
                                     minlength=data.num_classes).tolist(),
      history=history,
      pli_rounds=pli_state.get("rounds", []),
      tsne={"embeddings": preds["embedding"][known], "labels": labels[known]})
  if not config.quiet:
    print(f"[evaluate] {split}: accuracy {metrics['accuracy']:.4f}, macro-F1 "
          f"{metrics['macro_f1']:.4f}, macro-P {metrics['macro_precision']:.4f}, macro-R "
          f"{metrics['macro_recall']:.4f} ({ckpt_dir}); report in "
          f"{os.path.join(workdir, 'report.md')}", flush=True)
  return {"split": split, "checkpoint": ckpt_dir,
          **{k: metrics[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")}}
