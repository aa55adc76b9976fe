"""Shallow baselines on the real traffic sets in ../shared/datasets.

  .venv/bin/python benchmarks/baselines_real.py [--sets ndpi-apps,mobile-apps] \
      [--seeds 0,1,2] [--label_fraction 1.0] [--cache /tmp/flows] [--json out.json]

Per set: extract flows with the pipeline's defaults (m=128, n=32, IP lengths,
flows with >= 1 payload byte, classes with >= 10 flows), split them with the
pipeline's own stratified per-flow 8:1:1 split (input_pipeline/splits.py) for
each seed, train every shallow method on the training flows and report test
accuracy / macro-F1, mean +- std over seeds. The validation part is left
unused: these methods are not tuned.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import pickle
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from input_pipeline import extract, flows as flows_lib, splits as splits_lib  # noqa: E402
from pass_jax import metrics  # noqa: E402
from pass_jax.baselines import features, shallow  # noqa: E402

# (name in the table, shallow method, feature kind)
RUNS = (
    ("RF on length stats", "rf_stats", "stats"),
    ("LightGBM on length stats", "lgbm", "stats"),
    ("LightGBM on lengths + bytes", "lgbm", "flat"),
    ("same, class-balanced", "lgbm_balanced", "flat"),
)


def load_flows(set_dir: pathlib.Path, cache: pathlib.Path | None):
  cache_file = cache / f"{set_dir.name}.pkl" if cache else None
  if cache_file and cache_file.exists():
    return pickle.loads(cache_file.read_bytes())
  labels_csv = set_dir / "labels.csv"
  flows, report = extract.extract_dataset(
      set_dir, labels_csv=labels_csv if labels_csv.exists() else None,
      flow_cfg=flows_lib.FlowConfig(), min_payload_bytes=1, tls_only=False,
      min_flows_per_class=10, workers=2)
  if cache_file and flows:
    cache.mkdir(parents=True, exist_ok=True)
    cache_file.write_bytes(pickle.dumps((flows, report)))
  return flows, report


def run_set(set_dir, seeds, label_fraction, cache):
  t0 = time.time()
  flows, report = load_flows(set_dir, cache)
  labelled = [f for f in flows if f.label is not None]
  if not labelled:
    failed = report.get("files_failed", [])[:3]
    raise SystemExit(f"{set_dir.name}: no labelled flows; first failures: {failed}")
  print(f"{set_dir.name}: {len(flows)} flows, {len(labelled)} labelled, "
        f"{len({f.label for f in labelled})} classes ({time.time() - t0:.0f}s extraction)")
  x_by_kind = {k: features.flow_features(labelled, k) for k in {r[2] for r in RUNS}}
  scores = {name: [] for name, _, _ in RUNS}
  for seed in seeds:
    split = splits_lib.make_splits(labelled, method="flow", ratios=(0.8, 0.1, 0.1), seed=seed,
                                   label_fraction=label_fraction)
    train, test = split.index["train"], split.index["test"]
    y_train, y_test = split.label["train"], split.label["test"]
    for name, method, kind in RUNS:
      x = x_by_kind[kind]
      pred, _ = shallow.fit_predict(method, x[train], y_train, x[test], seed=seed,
                                    num_classes=split.num_classes)
      m = metrics.classification_metrics(y_test, pred, split.num_classes)
      scores[name].append((m["accuracy"], m["macro_f1"]))
  return {name: np.asarray(v) for name, v in scores.items()}, len(labelled)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
  parser.add_argument("--sets", default="ndpi-apps,mobile-apps")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--label_fraction", type=float, default=1.0)
  parser.add_argument("--cache", default="", help="folder to keep extracted flows in")
  parser.add_argument("--json", default="", help="write the scores here")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  cache = pathlib.Path(args.cache) if args.cache else None
  out = {}
  lines = ["| set | method | accuracy | macro-F1 |", "|---|---|---|---|"]
  for set_name in args.sets.split(","):
    set_dir = pathlib.Path(args.datasets) / set_name
    if not set_dir.is_dir():
      print(f"skipping {set_name}: {set_dir} not found")
      continue
    scores, n = run_set(set_dir, seeds, args.label_fraction, cache)
    out[set_name] = {"flows": n, "seeds": seeds, "label_fraction": args.label_fraction,
                     "scores": {k: v.tolist() for k, v in scores.items()}}
    for name, v in scores.items():
      mean, std = v.mean(axis=0), v.std(axis=0)
      lines.append(f"| {set_name} | {name} | {mean[0]:.3f} +- {std[0]:.3f} "
                   f"| {mean[1]:.3f} +- {std[1]:.3f} |")
  print("\n".join(lines))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
