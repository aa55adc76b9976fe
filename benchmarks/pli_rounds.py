"""Prints, for finished runs, every PLI round's validation and test scores and pseudo-label accuracy.

  python benchmarks/pli_rounds.py W [W ...]

Round 0 is M0 (fine-tuning on the labelled flows only). The test column is computed here from each
round's best checkpoint, so M0 and every round can be compared on the same held-out flows; the
pipeline itself only evaluates the kept model.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position

from pass_jax import sharding  # pylint: disable=wrong-import-position
from pass_jax.trainers import evaluate, pseudo_label  # pylint: disable=wrong-import-position


def describe(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  data = evaluate.Data.from_dir(config.data.prebuilt or os.path.join(workdir, "data"))
  mesh = sharding.make_mesh()
  with open(os.path.join(workdir, "pli", "state.json")) as f:
    saved = json.load(f)
  rows = []
  for t, rec in enumerate(saved["rounds"]):
    state = pseudo_label._restore(config, workdir, t, data, mesh)  # pylint: disable=protected-access
    m, _ = evaluate.evaluate_arrays(state, data.split("test"), config, mesh,
                                    num_classes=data.num_classes)
    rows.append({"round": t, "val_macro_f1": rec["val_macro_f1"], "test_macro_f1": m["macro_f1"],
                 "test_accuracy": m["accuracy"], "accepted": rec.get("accepted"),
                 "pool_size": rec.get("pool_size"),
                 "pseudo_label_accuracy": rec.get("pseudo_label_accuracy"),
                 "kept": t == saved["best_round"]})
  return rows


def main(argv: list[str]) -> None:
  for workdir in argv:
    print(f"{workdir}")
    print("round | val macro-F1 | test macro-F1 | test acc | accepted/pool | pseudo-label acc")
    for r in describe(workdir):
      acc = "-" if r["pseudo_label_accuracy"] is None else f"{r['pseudo_label_accuracy']:.3f}"
      pool = "-" if r["accepted"] is None else f"{r['accepted']}/{r['pool_size']}"
      print(f"{r['round']:5d} | {r['val_macro_f1']:.4f} | {r['test_macro_f1']:.4f} | "
            f"{r['test_accuracy']:.4f} | {pool} | {acc}{'  (kept)' if r['kept'] else ''}")


if __name__ == "__main__":
  main(sys.argv[1:])
