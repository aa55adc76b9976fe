"""The PASS pipeline, stage by stage, into one workdir W.

  build         pcaps -> flows -> vocabulary, splits, tfds shards     W/data/
  pretrain      contrastive pre-training on Alg. 1 triples            W/pretrain/
  finetune      M0: encoder + linear head on the labelled flows       W/finetune/
  pseudo_label  PLI rounds on the unlabeled pool                      W/pli/
  evaluate      the kept model on the test split; report and pictures W/report.{json,md}, W/*.png

Every stage writes W/<stage>.done.json when it has finished, and a stage whose marker exists is
skipped, so re-running the same command after a crash continues where it stopped (a stage that
was cut off mid-way resumes from its own checkpoints). `config.stage` runs one stage alone.
"""
import os
import time
from typing import Any

import jax

from pass_jax import checkpoint
from pass_jax import jsonio

STAGE_ORDER = ("build", "pretrain", "finetune", "pseudo_label", "evaluate")
# Config sections that decide what the stored data and checkpoints mean: a workdir made with
# other values cannot be continued with these.
_MUST_MATCH = ("variant", "model", "data")


class PipelineError(RuntimeError):
  """A run cannot go on; the message says why and what to do."""


def _log(config, msg: str) -> None:
  if jax.process_index() == 0 and not config.quiet:
    print(msg, flush=True)


def _marker(workdir: str, stage: str) -> str:
  return os.path.join(workdir, f"{stage}.done.json")


def _write_json(path: str, obj: Any) -> None:
  jsonio.write_json(path, obj, process0_only=True)


def _sync(name: str) -> None:
  """All processes wait here (files written by process 0 are visible after it)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


_ERROR_BYTES = 2048


def _gather_errors(error: str) -> list[str]:
  """Every process's error message ('' for none), on every process; also a barrier.

  A process that fails alone while the others wait at the next collective would hang the job (or
  leave it to a launcher to kill): sharing the outcome lets every process stop with the reason.
  """
  if jax.process_count() == 1:
    return [error] if error else []
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  raw = error.encode()[:_ERROR_BYTES].ljust(_ERROR_BYTES, b"\0")
  got = multihost_utils.process_allgather(np.frombuffer(raw, np.uint8))
  msgs = [bytes(np.asarray(row, np.uint8)).rstrip(b"\0").decode(errors="replace")
          for row in np.asarray(got).reshape(jax.process_count(), _ERROR_BYTES)]
  return [m for m in msgs if m]


def check_workdir(config, workdir: str) -> None:
  """Refuses a workdir that holds another run's data or checkpoints, before any work starts."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise PipelineError(f"--workdir {workdir} exists and is not a directory")
  saved_path = os.path.join(workdir, "config.json")
  # logs/ alone is what launch/local_multiprocess.sh creates before the processes start.
  if not os.path.isdir(workdir) or not set(os.listdir(workdir)) - {"logs"}:
    return
  if not os.path.isfile(saved_path):
    known = {"config.json", "data", "demo_data", "pretrain", "finetune", "pli", "tb", "eval"}
    if not set(os.listdir(workdir)) & known:
      raise PipelineError(f"--workdir {workdir} is not empty and holds no pass_jax run "
                          "(no config.json); choose a new or empty directory")
    raise PipelineError(f"--workdir {workdir} holds pass_jax outputs but no config.json; it "
                        "cannot be checked against this config, choose a new directory")
  saved = jsonio.read_json(saved_path)
  current = checkpoint.config_to_dict(config)
  diffs = [d for d in checkpoint.config_differences(saved, current)
           if d.split(":")[0].split(".")[0] in _MUST_MATCH
           and not d.startswith(("data.workers", "data.prefetch", "data.shuffle_buffer"))]
  if diffs:
    raise PipelineError(
        f"--workdir {workdir} was made with another config ({'; '.join(diffs[:6])}); its data "
        "and checkpoints do not fit this one. Use a new workdir, or the same config values.")


# ----------------------------------------------------------------------------- stages
def stage_build(config, workdir: str) -> dict[str, Any]:
  from input_pipeline import build as build_lib  # pylint: disable=g-import-not-at-top
  root = config.data.root
  if not root:
    from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
    root = os.path.join(workdir, "demo_data")
    demo = config.data.demo
    if jax.process_index() == 0 and not os.path.isfile(os.path.join(root, "DONE")):
      _log(config, f"[build] no data.root given: generating the demo dataset in {root}")
      synthetic.write_demo_dataset(root, num_classes=demo.num_classes,
                                   max_flows_per_class=demo.max_flows_per_class,
                                   imbalance=demo.imbalance, seed=demo.seed)
      open(os.path.join(root, "DONE"), "w").close()
    _sync("demo_data")  # every process reads its share of these captures next
  elif not os.path.exists(root):
    raise PipelineError(f"data root not found: {root} (config.data.root)")
  out_dir = os.path.join(workdir, "data")
  if jax.process_index() == 0:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()  # carriage-return bars garble logs; our summary follows
  if jax.process_count() > 1:
    result = _build_sharded(config, root, out_dir)
  else:
    try:
      result = build_lib.build_dataset(config.data, root, out_dir, workers=config.data.workers)
    except (build_lib.BuildError, FileNotFoundError, ValueError) as e:
      raise PipelineError(f"building the dataset from {root} failed: {e}") from e
  if result is not None:
    _log(config, result.summary())
  _sync("build")
  return {"root": os.path.abspath(root), "data_dir": out_dir}


def _build_sharded(config, root: str, out_dir: str):
  """Multi-process build: each process reads its share of the captures, process 0 merges.

  See input_pipeline/shard_extract.py. The result (process 0; None elsewhere) is the dataset a
  single-process build writes. A failure on any process stops all of them with its reason.
  """
  from input_pipeline import shard_extract  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  pi, pc = jax.process_index(), jax.process_count()
  error = ""
  try:
    plan = shard_extract.plan(config.data, root)
    shard_extract.read_share(config.data, plan, os.path.join(out_dir, "parts"), process_index=pi,
                             process_count=pc, workers=config.data.workers)
  except (FileNotFoundError, ValueError, OSError) as e:  # LabelsError is a ValueError
    error = f"process {pi}: {e}"
  errors = _gather_errors(error)  # also the barrier: every part is on disk after it
  if errors:
    raise PipelineError(f"reading the captures under {root} failed: {'; '.join(errors)}")
  result = None
  if pi == 0:
    try:
      result = shard_extract.build_from_shares(config.data, root, out_dir, process_count=pc,
                                               workers=config.data.workers, start=start)
    except (ValueError, FileNotFoundError, OSError) as e:  # BuildError is a ValueError
      error = str(e)
  errors = _gather_errors(error)
  if errors:
    raise PipelineError(f"building the dataset from {root} failed: {'; '.join(errors)}")
  return result


def stage_pretrain(config, workdir: str, data) -> dict[str, Any]:
  from pass_jax.trainers import pretrain  # pylint: disable=g-import-not-at-top
  if not config.pretrain.enabled:
    _log(config, "[pretrain] disabled (config.pretrain.enabled=False): the w/o CPT ablation")
    return {"skipped": True}
  _, ckpt_dir = pretrain.run_pretrain(config, workdir, data)
  return {"ckpt_dir": ckpt_dir}


def stage_finetune(config, workdir: str, data) -> dict[str, Any]:
  from pass_jax.trainers import finetune  # pylint: disable=g-import-not-at-top
  try:
    _, history = finetune.run_finetune(config, workdir, data)
  except FileNotFoundError as e:
    raise PipelineError(str(e)) from e
  return {"history": history}


def stage_pseudo_label(config, workdir: str, data) -> dict[str, Any]:
  from pass_jax.trainers import pseudo_label  # pylint: disable=g-import-not-at-top
  if not config.pli.enabled:
    _log(config, "[pseudo_label] disabled (config.pli.enabled=False): the w/o PLI ablation")
    return {"skipped": True}
  if not len(data.split("unlabeled")["tokens"]):
    _log(config, "[pseudo_label] the unlabeled pool is empty (label_fraction=1 and no "
         "unlabelled flows): nothing to pseudo-label")
    return {"skipped": True, "reason": "empty pool"}
  saved = pseudo_label.run_pseudo_label(config, workdir, data, log=lambda m: _log(config, m))
  return {"rounds": saved["rounds"], "best_round": saved["best_round"],
          "stop_reason": saved["stop_reason"]}


def stage_evaluate(config, workdir: str, data, stage_seconds: dict[str, float]) -> dict[str, Any]:
  from pass_jax import run_report  # pylint: disable=g-import-not-at-top
  return run_report.evaluate_and_report(config, workdir, data, stage_seconds)


# ----------------------------------------------------------------------------- driver
def run(config, workdir: str) -> None:
  """Runs config.stage (or every unfinished stage) in `workdir`."""
  from pass_jax.trainers import evaluate  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(workdir)
  check_workdir(config, workdir)
  # Which stages are finished is decided once, before anything is written: a process that looked
  # later could find a marker process 0 wrote in this very run, skip that stage and miss its
  # collectives.
  finished = {s for s in STAGE_ORDER if os.path.isfile(_marker(workdir, s))}
  _sync("start")  # and process 0 writes config.json only after every process has checked W
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, "config.json"), checkpoint.config_to_dict(config))
  wanted = STAGE_ORDER if config.stage == "all" else (
      ("build",) if config.stage in ("extract", "build") else (config.stage,))
  times_path = os.path.join(workdir, "stage_seconds.json")
  stage_seconds = jsonio.read_json_or_none(times_path) or {}
  data = None
  prebuilt = config.data.prebuilt
  if prebuilt and not os.path.isfile(os.path.join(prebuilt, "vocab.txt")):
    raise PipelineError(f"config.data.prebuilt={prebuilt} holds no built dataset (vocab.txt); "
                        "build one with `python -m input_pipeline.build`")
  for stage in STAGE_ORDER:
    if stage == "build" and prebuilt:
      continue  # experiments share one built dataset (same splits, same vocabulary) across arms
    if stage != "build" and data is None:
      data_dir = os.path.abspath(prebuilt) if prebuilt else os.path.join(workdir, "data")
      if not prebuilt and not os.path.isfile(_marker(workdir, "build")):
        raise PipelineError(f"stage {stage} needs the dataset in {data_dir}: run the build "
                            "stage first (config.stage=build or all)")
      data = evaluate.Data.from_dir(data_dir)
    done = stage in finished
    if stage not in wanted:
      continue
    # A stage run alone is always re-run (e.g. evaluate on another split); in `all` mode,
    # finished stages are skipped.
    if done and config.stage == "all":
      _log(config, f"[{stage}] already done ({_marker(workdir, stage)}); skipping")
      continue
    _log(config, f"[{stage}] starting")
    start = time.time()
    if stage == "build":
      out = stage_build(config, workdir)
    elif stage == "pretrain":
      out = stage_pretrain(config, workdir, data)
    elif stage == "finetune":
      out = stage_finetune(config, workdir, data)
    elif stage == "pseudo_label":
      out = stage_pseudo_label(config, workdir, data)
    else:
      out = stage_evaluate(config, workdir, data, stage_seconds)
    seconds = time.time() - start
    stage_seconds[stage] = round(seconds, 2)
    _write_json(times_path, stage_seconds)
    _write_json(_marker(workdir, stage), {"seconds": round(seconds, 2), **out})
    _sync(f"done_{stage}")
    _log(config, f"[{stage}] done in {seconds:.1f}s")
