"""Compares finished runs on the same test flows: macro-F1 with a bootstrap standard error, the
paired difference to the first run with a 95% interval, and the classes that move most.

  python benchmarks/compare_runs.py RUN_A RUN_B [RUN_C ...] [--samples=1000]
  python benchmarks/compare_runs.py W/lgbm/seed{seed} W/pass/seed{seed} --seeds=0,1,2

A RUN is a PASS pipeline workdir (it holds eval/test_predictions.npz and report.json), an arm's
seed directory of `pass_jax.experiments` (the same, or a shallow arm's predictions.npz), or the
.npz file itself. All runs must hold the same test flows in the same order: runs of one data seed
in one experiment workdir, or in workdirs that share the build settings that fix the split.

With --seeds, `{seed}` in each RUN is replaced by every seed in turn; after the per-seed tables
comes the mean over seeds of each run's macro-F1 and of its difference to the first run, with a
95% interval from averaging one independent bootstrap draw per seed (the seeds' test flows are
disjoint draws, so their resampling errors are independent).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pass_jax import metrics  # pylint: disable=wrong-import-position

_SMALL_CLASS = 3   # test flows at or below which one flow moves a class's F1 by >= 1/3


def load(run: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
  """(labels, predictions, class names or None) of one run's test split."""
  if run.endswith(".npz"):
    path, folder = run, os.path.dirname(run)
  else:
    folder = run
    candidates = [os.path.join(run, "eval", "test_predictions.npz"),
                  os.path.join(run, "predictions.npz")]
    path = next((c for c in candidates if os.path.isfile(c)), None)
    if path is None:
      raise SystemExit(f"{run}: no test predictions (looked for {', '.join(candidates)})")
  saved = np.load(path)
  pred = saved["pred"] if "pred" in saved else saved["probs"].argmax(-1)
  names = None
  report = os.path.join(folder, "report.json")
  if os.path.isfile(report):
    with open(report) as f:
      names = json.load(f).get("classes")
  return saved["label"], pred, names


def compare(runs: list[str], samples: int, seed: int) -> dict:
  """Per run: accuracy, macro-F1, per-class F1; plus the paired bootstrap matrix [samples, runs]."""
  loaded = [load(r) for r in runs]
  labels = loaded[0][0]
  for run, (y, _, _) in zip(runs, loaded):
    if y.shape != labels.shape or not np.array_equal(y, labels):
      raise SystemExit(f"{run}: its test labels differ from {runs[0]}'s; the runs were not "
                       "scored on the same flows")
  names = next((n for _, _, n in loaded if n), None)
  num_classes = max(len(names) if names else 0,
                    1 + max(int(max(y.max(), p.max())) for y, p, _ in loaded))
  preds = [p for _, p, _ in loaded]
  scored = [metrics.classification_metrics(labels, p, num_classes) for p in preds]
  return {"labels": labels, "names": names, "num_classes": num_classes, "metrics": scored,
          "boot": metrics.bootstrap_macro_f1(labels, preds, num_classes, samples, seed)}


def _interval(draws: np.ndarray) -> str:
  lo, hi = np.percentile(draws, [2.5, 97.5])
  return f"[{lo:+.3f}, {hi:+.3f}]"


def print_one(runs: list[str], result: dict, samples: int) -> None:
  labels, names, boot, scored = result["labels"], result["names"], result["boot"], \
      result["metrics"]
  support = np.bincount(labels, minlength=result["num_classes"])
  small = int(((support > 0) & (support <= _SMALL_CLASS)).sum())
  print(f"{labels.size} test flows, {int((support > 0).sum())} classes present, {small} of them "
        f"with <= {_SMALL_CLASS} flows; {samples} bootstrap resamples\n")
  print("| run | accuracy | macro-F1 | bootstrap se | minus first run, 95% |")
  print("|---|---|---|---|---|")
  for k, (run, m) in enumerate(zip(runs, scored)):
    diff = "-"
    if k:
      diff = f"{m['macro_f1'] - scored[0]['macro_f1']:+.3f} {_interval(boot[:, k] - boot[:, 0])}"
    print(f"| {run} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {boot[:, k].std():.3f} "
          f"| {diff} |")
  first = np.asarray(scored[0]["per_class"]["f1"])
  for run, m in zip(runs[1:], scored[1:]):
    f1 = np.asarray(m["per_class"]["f1"])
    moved = np.argsort(f1 - first)
    for title, chosen in (("lost", [c for c in moved[:3] if f1[c] < first[c]]),
                          ("gained", [c for c in moved[::-1][:3] if f1[c] > first[c]])):
      if chosen:
        text = ", ".join(f"{names[c] if names else c} (n={support[c]}, "
                         f"{first[c]:.2f} -> {f1[c]:.2f})" for c in chosen)
        print(f"\n{run} {title} against the first run: {text}")


def print_pooled(runs: list[str], results: list[dict], seeds: list[str]) -> None:
  f1 = np.array([[m["macro_f1"] for m in r["metrics"]] for r in results])     # [seeds, runs]
  boot = np.mean([r["boot"] for r in results], axis=0)                         # [samples, runs]
  print(f"\nMean over seeds {','.join(seeds)}:\n")
  print("| run | macro-F1 per seed | mean | minus first run, 95% |")
  print("|---|---|---|---|")
  for k, run in enumerate(runs):
    diff = "-" if not k else \
        f"{(f1[:, k] - f1[:, 0]).mean():+.3f} {_interval(boot[:, k] - boot[:, 0])}"
    print(f"| {run} | {' '.join(f'{v:.3f}' for v in f1[:, k])} | {f1[:, k].mean():.3f} "
          f"| {diff} |")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+")
  parser.add_argument("--samples", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0, help="of the bootstrap")
  parser.add_argument("--seeds", default="", help="comma list; replaces {seed} in each RUN")
  args = parser.parse_args(argv)
  seeds = [s for s in args.seeds.split(",") if s]
  if not seeds:
    print_one(args.runs, compare(args.runs, args.samples, args.seed), args.samples)
    return
  results = []
  for i, s in enumerate(seeds):
    runs = [r.replace("{seed}", s) for r in args.runs]
    print(f"## seed {s}\n")
    results.append(compare(runs, args.samples, args.seed + i))
    print_one(runs, results[-1], args.samples)
    print()
  print_pooled(args.runs, results, seeds)


if __name__ == "__main__":
  main()
