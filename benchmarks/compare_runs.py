"""Compares finished runs on the same test flows: macro-F1 with a bootstrap standard error, the
paired difference to the first run with a 95% interval, and the classes that move most.

  python benchmarks/compare_runs.py RUN_A RUN_B [RUN_C ...] [--samples=1000]

A RUN is a PASS pipeline workdir (it holds eval/test_predictions.npz and report.json), an arm's
seed directory of `pass_jax.experiments` (the same, or a shallow arm's predictions.npz), or the
.npz file itself. All runs must hold the same test flows in the same order: runs of one data seed
in one experiment workdir, or in workdirs that share the build settings that fix the split.
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


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+")
  parser.add_argument("--samples", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  loaded = [load(r) for r in args.runs]
  labels = loaded[0][0]
  for run, (y, _, _) in zip(args.runs, loaded):
    if y.shape != labels.shape or not np.array_equal(y, labels):
      raise SystemExit(f"{run}: its test labels differ from {args.runs[0]}'s; the runs were not "
                       "scored on the same flows")
  names = next((n for _, _, n in loaded if n), None)
  num_classes = max(len(names) if names else 0,
                    1 + max(int(max(y.max(), p.max())) for y, p, _ in loaded))
  preds = [p for _, p, _ in loaded]
  boot = metrics.bootstrap_macro_f1(labels, preds, num_classes, args.samples, args.seed)
  support = np.bincount(labels, minlength=num_classes)
  small = int(((support > 0) & (support <= _SMALL_CLASS)).sum())
  print(f"{labels.size} test flows, {int((support > 0).sum())} classes present, {small} of them "
        f"with <= {_SMALL_CLASS} flows; {args.samples} bootstrap resamples\n")
  print("| run | accuracy | macro-F1 | bootstrap se | minus first run, 95% |")
  print("|---|---|---|---|---|")
  per_class = []
  for k, (run, pred) in enumerate(zip(args.runs, preds)):
    m = metrics.classification_metrics(labels, pred, num_classes)
    per_class.append(np.asarray(m["per_class"]["f1"]))
    diff = "-"
    if k:
      d = boot[:, k] - boot[:, 0]
      lo, hi = np.percentile(d, [2.5, 97.5])
      diff = f"{m['macro_f1'] - metrics.macro_f1(labels, preds[0], num_classes):+.3f} " \
             f"[{lo:+.3f}, {hi:+.3f}]"
    print(f"| {run} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {boot[:, k].std():.3f} "
          f"| {diff} |")
  for k in range(1, len(preds)):
    moved = np.argsort(per_class[k] - per_class[0])
    worst = [c for c in moved[:3] if per_class[k][c] < per_class[0][c]]
    best = [c for c in moved[::-1][:3] if per_class[k][c] > per_class[0][c]]
    for title, chosen in (("lost", worst), ("gained", best)):
      if chosen:
        text = ", ".join(f"{names[c] if names else c} (n={support[c]}, "
                         f"{per_class[0][c]:.2f} -> {per_class[k][c]:.2f})" for c in chosen)
        print(f"\n{args.runs[k]} {title} against the first run: {text}")


if __name__ == "__main__":
  main()
