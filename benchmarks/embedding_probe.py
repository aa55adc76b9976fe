"""The paper's Fig. 4 as numbers: how well each stage's encoder separates the apps.

  python benchmarks/embedding_probe.py RUN [RUN ...] [--k=5] [--json=out.json]
  python benchmarks/embedding_probe.py W/pass/seed{seed} W/wo_pli_cpt/seed{seed} --seeds=0,1,2

A RUN is a finished pipeline workdir (`python -m pass_jax.main`) or an arm's seed directory of
`pass_jax.experiments`. For each run it embeds the labelled train and test flows with the encoder
as initialised (`init`), after contrastive pre-training (`cpt`, when the run pre-trained) and as
kept after fine-tuning and PLI (`final`), and prints k-NN and linear-probe macro-F1 and the cosine
silhouette of the test embeddings (`pass_jax/embedding_probe.py` says what each measures). With
--seeds, `{seed}` in each RUN takes every seed in turn and the last table gives mean +- std.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pass_jax import embedding_probe  # pylint: disable=wrong-import-position

_SCORES = ("knn_f1", "linear_f1", "silhouette")


def _short(run: str) -> str:
  """The last two parts of a run's path (`arm/seed0`), enough to tell the rows apart."""
  parts = os.path.normpath(run).split(os.sep)
  return "/".join(parts[-2:])


def _row(cells) -> str:
  return "| " + " | ".join(cells) + " |"


def print_table(title: str, rows: list[tuple[str, str, list[dict]]]) -> None:
  """rows: (run, stage, [scores of each seed]); one line per (run, stage)."""
  print(f"\n{title}\n")
  print(_row(("run", "stage", *_SCORES)))
  print(_row(("---",) * (2 + len(_SCORES))))
  for run, stage, per_seed in rows:
    cells = []
    for key in _SCORES:
      vals = np.array([s[key] for s in per_seed], np.float64)
      if len(vals) > 1:
        cells.append(f"{np.nanmean(vals):.3f} +- {np.nanstd(vals, ddof=1):.3f}")
      else:
        cells.append(f"{vals[0]:.3f}")
    print(_row((run, stage, *cells)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("runs", nargs="+")
  parser.add_argument("--seeds", default="", help="comma-separated; fills {seed} in each RUN")
  parser.add_argument("--k", type=int, default=5, help="neighbours of the k-NN vote")
  parser.add_argument("--json", default="", help="also write every figure here")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()] or [None]
  results = {}
  for seed in seeds:
    for run in args.runs:
      path = run.format(seed=seed) if seed is not None else run
      if not os.path.isdir(path):
        raise SystemExit(f"{path}: no such run directory")
      got = embedding_probe.probe_run(path, k=args.k)
      results[path] = got
      title = (f"{path}: {got['train_rows']} labelled train / {got['test_rows']} test flows; "
               f"final head's test macro-F1 {got['final_test_f1']:.3f}")
      print_table(title, [(_short(path), stage, [s])
                          for stage, s in got["stages"].items()])
  if seeds != [None]:
    pooled = []
    for run in args.runs:
      per_seed = [results[run.format(seed=s)]["stages"] for s in seeds]
      for stage in embedding_probe.STAGES:
        if all(stage in p for p in per_seed):
          pooled.append((_short(run), stage, [p[stage] for p in per_seed]))
    print_table(f"mean +- std over seeds {args.seeds}", pooled)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
