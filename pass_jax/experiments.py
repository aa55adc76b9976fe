r"""Runs one of the paper's experiments (Tables III-VI, Fig. 6) arm by arm, seed by seed.

  python -m pass_jax.experiments --experiment=table4 --config=configs/pass.py:small \
      --workdir=runs/t4 [--config.data.root=DIR ...] [--seeds=0,1,2] [--arms=pass,wo_pli]

Layout of the workdir W:
  W/demo_data/                 the generated dataset, when config.data.root is ""
  W/data_seed<k>[_<tag>]/      one build per seed (data.seed = k) shared by every arm of that
                               seed; arms that change the tokens (features, m, n) get a tagged one
  W/<arm>/seed<k>/             a PASS arm's pipeline workdir (report.json when finished; its
                               output in W/<arm>/seed<k>.log), or a shallow arm's result.json
                               + predictions.npz
  W/<experiment>.{md,json}     the table: mean +- std over seeds per arm, errors, wall times
  W/sensitivity.png            Fig. 6 (sensitivity only)

An arm is finished when its report.json (PASS) or result.json (shallow) exists; a re-run skips
it, provided it was made with the same config (else the arm is reported as an error instead of
silently mixing two configs in one table). An arm that fails is recorded with its message and the
others still run; a re-run retries it. Single process only.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
import time
import traceback
from typing import Any, Sequence

import numpy as np

from pass_jax import checkpoint
from pass_jax import embedding_arm
from pass_jax import experiment_arms
from pass_jax import experiment_tables
from pass_jax import jsonio

METRICS = experiment_arms.METRICS
_TRAIN_STAGES = ("pretrain", "finetune", "pseudo_label")
# Data fields that never change what a build holds.
# (The demo settings are checked by W/demo_data/demo.json.)
_BUILD_IGNORED = ("workers", "prefetch", "shuffle_buffer", "prebuilt", "demo")


ArmError = experiment_arms.ArmError


def _set(config, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise ArmError(f"config has no field {dotted}")
  node[leaf] = value


def arm_config(base, arm: experiment_arms.Arm, seed: int, data_dir: str):
  """The base config with the arm's overrides, the seed, and the shared build as data.prebuilt."""
  cfg = copy.deepcopy(base)
  for key, value in arm.overrides.items():
    _set(cfg, key, value)
  cfg.seed = seed
  cfg.data.seed = seed
  cfg.data.prebuilt = os.path.abspath(data_dir)
  cfg.stage = "all"
  return cfg


# ----------------------------------------------------------------------------- datasets
def build_settings(data_cfg) -> dict[str, Any]:
  """The data fields a build is made from, as recorded in its build.json."""
  return {k: v for k, v in checkpoint.config_to_dict(data_cfg).items() if k not in _BUILD_IGNORED}


class Builds:
  """Dataset builds of one experiment workdir, made on first use and kept across re-runs."""

  def __init__(self, base, workdir: str):
    self.base, self.workdir = base, workdir
    self._failed: dict[str, str] = {}

  def root(self) -> str:
    root = self.base.data.root
    if root:
      return root
    from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
    root = os.path.join(self.workdir, "demo_data")
    demo = self.base.data.demo.to_dict()
    marker = os.path.join(root, "demo.json")
    if os.path.isfile(marker):
      saved = jsonio.read_json(marker)
      if saved != demo:
        raise ArmError(f"{root} was generated with demo settings {saved}, not {demo}; "
                       "use a new --workdir")
      return root
    shutil.rmtree(root, ignore_errors=True)   # a generation cut off half-way
    synthetic.write_demo_dataset(root, **demo)
    jsonio.write_json(marker, demo)
    return root

  def data_dir(self, seed: int, overrides: dict[str, Any]) -> str:
    """W/data_seed<k>[_tag], built from config.data + overrides with data.seed = seed."""
    data_cfg = copy.deepcopy(self.base.data)
    for key, value in overrides.items():
      data_cfg[key] = value
    data_cfg.seed = seed
    changed = {k: v for k, v in sorted(overrides.items()) if self.base.data[k] != v}
    tag = "".join(f"_{k}-{v}" for k, v in changed.items())
    out = os.path.join(self.workdir, f"data_seed{seed}{tag}")
    if out in self._failed:
      raise ArmError(self._failed[out])
    want = build_settings(data_cfg)
    marker = os.path.join(out, "build.json")
    if os.path.isfile(marker):
      # Nested under "data" so that fields added since the build read as their old value.
      diffs = checkpoint.config_differences({"data": jsonio.read_json(marker)}, {"data": want})
      if diffs:
        raise ArmError(f"{out} was built with other data settings ({'; '.join(diffs[:4])}); "
                       "use a new --workdir")
      return out
    try:
      from input_pipeline import build as build_lib  # pylint: disable=g-import-not-at-top
      shutil.rmtree(out, ignore_errors=True)
      root = self.root()
      print(f"[experiments] building {out} from {root}", flush=True)
      with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        build_lib.build_dataset(data_cfg, root, out, workers=data_cfg.workers)
    except Exception as e:  # pylint: disable=broad-except
      self._failed[out] = f"dataset build {out} failed: {type(e).__name__}: {e}"
      raise ArmError(self._failed[out]) from e
    jsonio.write_json(marker, want)
    return out


# ----------------------------------------------------------------------------- arms
def kept_val_macro_f1(report: dict[str, Any]) -> float | None:
  """Validation macro-F1 of the model scored on test (None without a validation split).

  Every fit keeps its best-on-validation checkpoint and PLI keeps its best round, so this is the
  best score in the run's validation record: what a choice between arms should be made on.
  """
  scores = [r.get("val_macro_f1") for r in report.get("pli_rounds") or []]
  scores += [e.get("macro_f1") for e in report.get("history", {}).get("finetune_eval", [])]
  scores = [float(s) for s in scores if s is not None]
  return max(scores) if scores else None


def _pass_result(arm_dir: str) -> dict[str, Any]:
  report = jsonio.read_json(os.path.join(arm_dir, "report.json"))
  seconds = jsonio.read_json(os.path.join(arm_dir, "stage_seconds.json"))
  return {**{k: float(report["test"][k]) for k in METRICS},
          experiment_tables.VAL: kept_val_macro_f1(report),
          "train_s": float(sum(seconds.get(s, 0.0) for s in _TRAIN_STAGES)),
          "wall_s": float(sum(seconds.values())), "stage_seconds": seconds}


def run_pass_arm(cfg, arm_dir: str) -> dict[str, Any]:
  """The full pipeline in arm_dir (resumed if cut off); metrics from its report.json."""
  from pass_jax import config_check  # pylint: disable=g-import-not-at-top
  from pass_jax import pipeline  # pylint: disable=g-import-not-at-top
  if os.path.isfile(os.path.join(arm_dir, "report.json")):
    diffs = checkpoint.config_differences(jsonio.read_json(os.path.join(arm_dir, "config.json")),
                                          checkpoint.config_to_dict(cfg))
    if diffs:
      raise ArmError(f"{arm_dir} holds a finished run of another config ({'; '.join(diffs[:4])})"
                     "; use a new --workdir or delete that arm")
    return {**_pass_result(arm_dir), "skipped": True}
  config_check.validate(cfg)
  # The log sits beside arm_dir: the pipeline refuses a non-empty workdir without its config.json.
  os.makedirs(os.path.dirname(arm_dir), exist_ok=True)
  with open(arm_dir + ".log", "a") as log, contextlib.redirect_stdout(log):
    pipeline.run(cfg, arm_dir)
  return _pass_result(arm_dir)


def shallow_features(data_dir: str, split: str, kind: str, root: str | None = None):
  """(X float32[N, F], y int32[N]) of the labelled rows of a split, from its token rows; a
  `raw_<kind>` reads the build's flows from `root` instead (baselines/raw.py)."""
  from input_pipeline import tfds_builder  # pylint: disable=g-import-not-at-top
  from pass_jax.baselines import features  # pylint: disable=g-import-not-at-top
  if kind.startswith("raw_"):
    from pass_jax.baselines import raw  # pylint: disable=g-import-not-at-top
    return raw.split_features(data_dir, split, kind.removeprefix("raw_"), root=root)
  vocab = tfds_builder.load_vocab(data_dir)
  arrays = tfds_builder.load_split_arrays(data_dir, split)
  keep = arrays["label"] >= 0   # label_fraction < 1 leaves unlabelled rows in train
  X = features.token_features(arrays["tokens"][keep], vocab.tokens, kind,
                              m=vocab.payload_bytes, n=vocab.num_lengths)
  return X, arrays["label"][keep].astype(np.int32)


def _what_decides(params: dict[str, Any]) -> dict[str, Any]:
  # An arm's description is prose: the same fit (say `lgbm`, in Tables III and V) may carry
  # another description in another table and still share one result in a shared workdir.
  arm = {k: v for k, v in params.get("arm", {}).items() if k != "description"}
  return {**params, "arm": arm}


def run_cached_fit(arm_dir: str, params: dict[str, Any], fit) -> dict[str, Any]:
  """A shallow or embedding arm: `fit()` once per arm_dir, scored on the test split.

  fit() -> (pred int32[N], probs float32[N, C], y_test int32[N], class_names, train_rows,
  train_s). Writes predictions.npz, metrics.json and result.json ({params, result}); a stored
  result is read back when its params equal `params`, and refused otherwise.
  """
  from pass_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  result_path = os.path.join(arm_dir, "result.json")
  if os.path.isfile(result_path):
    saved = jsonio.read_json(result_path)
    if _what_decides(saved["params"]) != _what_decides(params):
      raise ArmError(f"{arm_dir} holds a result of other settings ({saved['params']}); use a "
                     "new --workdir or delete that arm")
    return {**saved["result"], "skipped": True}
  start = time.time()
  pred, probs, y_test, class_names, train_rows, train_s = fit()
  m = metrics_lib.classification_metrics(y_test, pred, len(class_names), class_names)
  result = {**{k: float(m[k]) for k in METRICS}, "train_s": train_s,
            "wall_s": time.time() - start, "train_rows": int(train_rows)}
  os.makedirs(arm_dir, exist_ok=True)
  np.savez(os.path.join(arm_dir, "predictions.npz"), pred=pred, probs=probs, label=y_test)
  jsonio.write_json(os.path.join(arm_dir, "metrics.json"), m)
  jsonio.write_json(result_path, {"params": params, "result": result})
  return result


def run_shallow_arm(arm: experiment_arms.Arm, seed: int, data_dir: str,
                    arm_dir: str, root: str | None = None) -> dict[str, Any]:
  """fit_predict on the labelled train rows of the shared build, scored on its test rows."""
  from input_pipeline import tfds_builder  # pylint: disable=g-import-not-at-top
  from pass_jax.baselines import imbalance, shallow  # pylint: disable=g-import-not-at-top

  def fit():
    class_names = [str(c) for c in tfds_builder.load_metadata(data_dir)["class_names"]]
    X_train, y_train = shallow_features(data_dir, "train", arm.features, root)
    X_test, y_test = shallow_features(data_dir, "test", arm.features, root)
    fit_start = time.time()
    if arm.smote:
      X_train, y_train = imbalance.smote(X_train, y_train, seed)
    pred, probs = shallow.fit_predict(arm.shallow, X_train, y_train, X_test, seed,
                                      num_classes=len(class_names))
    return pred, probs, y_test, class_names, len(y_train), time.time() - fit_start

  params = {"arm": arm.to_json(), "seed": seed, "data_dir": os.path.abspath(data_dir)}
  return run_cached_fit(arm_dir, params, fit)


# ----------------------------------------------------------------------------- driver
def run_experiment(base, workdir: str, experiment: str, seeds: Sequence[int] = (0,),
                   arms: Sequence[experiment_arms.Arm] | Sequence[str] = (),
                   log=print) -> dict[str, Any]:
  """Runs every arm x seed (finished ones are read back), writes and returns the summary.

  `arms`: Arm objects, or names of the experiment's arms (empty: all of them).
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if not arms or isinstance(arms[0], str):
    arms = experiment_arms.select(experiment_arms.arms_for(experiment, base), list(arms))
  builds = Builds(base, workdir)
  results: dict[str, dict[str, dict]] = {}
  d = base.data
  summary = {"experiment": experiment,
             "title": getattr(experiment_arms, experiment).__doc__.splitlines()[0],
             "header": {"variant": base.variant, "seeds": list(seeds),
                        "data": d.root or os.path.join(workdir, "demo_data"), "split": d.split,
                        "label_fraction": d.label_fraction, "written": "",
                        "command": " ".join(sys.argv)},
             "base_config": checkpoint.config_to_dict(base)}
  for seed in seeds:
    for arm in arms:
      arm_dir = os.path.join(workdir, arm.name, f"seed{seed}")
      start = time.time()
      try:
        data_dir = builds.data_dir(seed, arm.build_overrides())
        if arm.is_shallow:
          out = run_shallow_arm(arm, seed, data_dir, arm_dir, root=builds.root())
        elif arm.embed_from:
          source = experiment_arms.find(experiment, base, arm.embed_from)
          out = embedding_arm.run_embedding_arm(
              arm, seed, arm_config(base, source, seed, data_dir),
              os.path.join(workdir, source.name, f"seed{seed}"), data_dir, arm_dir)
        else:
          out = run_pass_arm(arm_config(base, arm, seed, data_dir), arm_dir)
        res = {"status": "ok", **out}
        log(f"[experiments] {experiment} {arm.name} seed {seed}: "
            f"{'finished before, skipped' if out.get('skipped') else 'done'}; accuracy "
            f"{out['accuracy']:.4f}, macro-F1 {out['macro_f1']:.4f} ({out['wall_s']:.1f}s)")
      except Exception as e:  # pylint: disable=broad-except
        res = {"status": "error", "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc()[-4000:], "seconds": time.time() - start}
        log(f"[experiments] {experiment} {arm.name} seed {seed}: FAILED: {res['error']}")
      results.setdefault(arm.name, {})[str(seed)] = res
      summary["header"]["written"] = time.strftime("%Y-%m-%d %H:%M:%S")
      summary["arms"] = experiment_tables.summarize(arms, results)
      experiment_tables.write_tables(workdir, summary)   # after every arm, so a long run shows progress
  return summary


def main(argv) -> int:
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from pass_jax import config_check  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # Orbax/tfds log every file at INFO
  config = _CONFIG.value
  try:
    config_check.validate(config)
    config_check.absolute_paths(config)
    seeds = [int(s) for s in _SEEDS.value]
    summary = run_experiment(config, _WORKDIR.value, _EXPERIMENT.value, seeds, list(_ARMS.value))
  except (ValueError, ArmError) as e:
    print(f"pass_jax.experiments: {e}", file=sys.stderr)
    return 2
  w = os.path.abspath(_WORKDIR.value)
  print(experiment_tables.table_markdown(summary))
  print(f"[experiments] tables in {w}/{_EXPERIMENT.value}.md and .json")
  failed = sum(bool(r["errors"]) for r in summary["arms"])
  return 1 if failed else 0


if __name__ == "__main__":
  # Flags only when run as a program: importing this module (tests, notebooks) must not clash
  # with pass_jax.main's flags of the same names.
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "e.g. configs/pass.py:tiny",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Where every arm and the tables go.")
  _EXPERIMENT = flags.DEFINE_enum("experiment", None, experiment_arms.EXPERIMENTS,
                                  "Which table (or the Fig. 6 sensitivity study).")
  _SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds; each sets config.seed and data.seed.")
  _ARMS = flags.DEFINE_list("arms", [], "Only these arms (default: all of the experiment).")
  flags.mark_flags_as_required(["config", "workdir", "experiment"])
  app.run(lambda argv: sys.exit(main(argv)))
