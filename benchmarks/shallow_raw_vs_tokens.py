r"""How much do the shallow baselines lose by reading token rows instead of the raw flows?

The experiment runner's shallow arms decode their features from the build's token rows, so a
payload byte pair or a length that the vocabulary never saw in training is `[UNK]` and counts as
absent, exactly as for PASS. The datasets README measured LightGBM on features taken straight from
the flows. This script scores both on the same split of one build and prints the difference.

  python benchmarks/shallow_raw_vs_tokens.py W/data_seed0 [W/data_seed1 ...] [--method lgbm]

Each build dir must come from `python -m pass_jax.experiments` (it holds build.json with the
data settings, splits.json and the token rows); its flows are re-extracted from build.json's root
with those settings (pass_jax/baselines/raw.py). The experiment tables carry the same comparison
as the `lgbm_raw` arms; this script adds how much of the test payload is `[UNK]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline import tfds_builder  # noqa: E402
from pass_jax import experiments, metrics  # noqa: E402
from pass_jax.baselines import features, shallow  # noqa: E402


def score(build_dir: str, method: str, kind: str, root: str | None) -> dict[str, float]:
  num_classes = len(tfds_builder.load_metadata(build_dir)["class_names"])
  seed = json.load(open(os.path.join(build_dir, "build.json")))["seed"]
  out = {}
  for name, k in (("raw", "raw_" + kind), ("tokens", kind)):
    X_tr, y_tr = experiments.shallow_features(build_dir, "train", k, root)
    X_te, y_te = experiments.shallow_features(build_dir, "test", k, root)
    pred, _ = shallow.fit_predict(method, X_tr, y_tr, X_te, seed, num_classes=num_classes)
    m = metrics.classification_metrics(y_te, pred, num_classes)
    out[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
  # How much of the test payload the vocabulary hides.
  vocab = tfds_builder.load_vocab(build_dir)
  test = tfds_builder.load_split_arrays(build_dir, "test")
  payloads, _ = features.decode_tokens(test["tokens"][test["label"] >= 0], vocab.tokens,
                                       vocab.payload_bytes, vocab.num_lengths)
  decoded = np.concatenate(payloads) if payloads else np.zeros(0)
  out["test_payload_bytes_unk"] = float(np.isnan(decoded).mean()) if decoded.size else 0.0
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("build_dirs", nargs="+")
  p.add_argument("--method", default="lgbm", choices=sorted(shallow.METHODS))
  p.add_argument("--features", default="", help="feature kind (default: the method's own)")
  p.add_argument("--root", default=None, help="data root (default: build.json's; needed for "
                 "generated demo data, e.g. W/demo_data)")
  a = p.parse_args()
  kind = a.features or shallow.DEFAULT_FEATURES[a.method]
  rows = []
  print(f"{a.method} on {kind} features: test accuracy / macro-F1")
  print("| build | raw flows | token rows | macro-F1 difference | test bytes [UNK] |")
  print("|---|---|---|---|---|")
  for d in a.build_dirs:
    r = score(d, a.method, kind, a.root)
    rows.append(r["raw"]["macro_f1"] - r["tokens"]["macro_f1"])
    print(f"| {d} | {r['raw']['accuracy']:.4f} / {r['raw']['macro_f1']:.4f} | "
          f"{r['tokens']['accuracy']:.4f} / {r['tokens']['macro_f1']:.4f} | "
          f"{rows[-1]:+.4f} | {r['test_payload_bytes_unk']:.1%} |", flush=True)
  print(f"mean macro-F1 difference (raw - tokens): {np.mean(rows):+.4f} over {len(rows)} build(s)")


if __name__ == "__main__":
  main()
