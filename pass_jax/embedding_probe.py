"""How well an encoder's embeddings separate the classes at each stage of a run: the paper's
Fig. 4 (t-SNE pictures of the learnt features) as numbers that can be compared across runs and
seeds.

The embedding is the classification layer's input (`predict_arrays(...)["embedding"]`), taken
from three encoders of one finished run:

- `init`: a fresh encoder of the run's config, initialised from its seed, never trained. The
  floor: what a random projection of the tokens already separates.
- `cpt`: the encoder after contrastive pre-training, before any fine-tuning step (runs with
  `pretrain.enabled`). What CPT alone learnt; the paper's claim is that it clusters apps.
- `final`: the kept classifier checkpoint (M0 or the best PLI round), as the test metrics score it.

Three scores per encoder, from the labelled training rows to the test rows:

- `knn_f1`: macro-F1 of a k-nearest-neighbour vote (cosine distance) of the training embeddings.
  No head is fitted: it asks whether the geometry alone puts flows of one app together.
- `linear_f1`: macro-F1 of a logistic regression on standardised embeddings (a linear probe),
  the usual yardstick of a representation.
- `silhouette`: mean cosine silhouette of the test embeddings grouped by true class, in [-1, 1]:
  what a t-SNE picture shows as tight, separated clusters.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

STAGES = ("init", "cpt", "final")


def scores(X_train, y_train, X_test, y_test, *, num_classes: int, k: int = 5,
           seed: int = 0) -> dict[str, float]:
  """{'knn_f1', 'linear_f1', 'silhouette'} of one set of embeddings; see the module docstring.

  The silhouette is NaN when the test rows hold fewer than 2 classes or a single row per class
  everywhere (it is undefined there).
  """
  from sklearn import metrics as sk_metrics, neighbors  # pylint: disable=g-import-not-at-top
  from pass_jax import metrics  # pylint: disable=g-import-not-at-top
  from pass_jax.embedding_arm import fit_head  # pylint: disable=g-import-not-at-top
  X_train, X_test = np.asarray(X_train, np.float64), np.asarray(X_test, np.float64)
  y_train, y_test = np.asarray(y_train), np.asarray(y_test)
  if not len(y_train) or not len(y_test):
    raise ValueError(f"need labelled train and test rows; got {len(y_train)} and {len(y_test)}")
  knn = neighbors.KNeighborsClassifier(n_neighbors=min(k, len(y_train)), metric="cosine")
  knn_pred = knn.fit(X_train, y_train).predict(X_test)
  linear_pred, _, _ = fit_head(X_train, y_train, X_test, seed=seed, smote=False,
                               num_classes=num_classes)
  present = np.unique(y_test)
  silhouette = float("nan")
  if 2 <= len(present) < len(y_test):
    silhouette = float(sk_metrics.silhouette_score(X_test, y_test, metric="cosine"))
  return {
      "knn_f1": float(metrics.classification_metrics(y_test, knn_pred, num_classes)["macro_f1"]),
      "linear_f1": float(
          metrics.classification_metrics(y_test, linear_pred, num_classes)["macro_f1"]),
      "silhouette": silhouette,
  }


def stage_states(config, run_dir: str, data, ckpt_dir: str, mesh) -> dict[str, Any]:
  """{stage: classify state} for the stages this run has; `init` and `cpt` carry an untrained
  head, which the scores never read."""
  from pass_jax import train_steps  # pylint: disable=g-import-not-at-top
  from pass_jax.trainers import evaluate, pretrain  # pylint: disable=g-import-not-at-top
  shape = dict(num_classes=data.num_classes, vocab_size=data.vocab_size, seq_len=data.seq_len)
  states = {"init": train_steps.create_train_state(
      config, task="classify", mesh=mesh, rng=config.seed, total_steps=1, **shape)}
  pretrain_dir = os.path.join(run_dir, "pretrain", "ckpt")
  if config.pretrain.enabled and os.path.isdir(pretrain_dir):
    encoder = pretrain.load_encoder_params(config, pretrain_dir, mesh=mesh,
                                           vocab_size=data.vocab_size, seq_len=data.seq_len)
    states["cpt"] = train_steps.create_train_state(
        config, task="classify", mesh=mesh, rng=config.seed, total_steps=1,
        encoder_params=encoder, **shape)
  states["final"], _ = evaluate.restore_classifier(config, ckpt_dir, mesh=mesh, **shape)
  return states


def probe_run(run_dir: str, *, k: int = 5, mesh=None) -> dict[str, Any]:
  """Scores of every stage of one finished run, plus what they were computed on.

  Returns:
    {'run', 'train_rows', 'test_rows', 'stages': {stage: scores}, 'final_test_f1': macro-F1
    of the final state's own head (equals the run's reported test macro-F1)}.
  """
  from pass_jax import classify, metrics, sharding  # pylint: disable=g-import-not-at-top
  from pass_jax.embedding_arm import labelled_outputs  # pylint: disable=g-import-not-at-top
  config, data, ckpt_dir = classify.load_run(run_dir)
  mesh = mesh or sharding.make_mesh()
  states = stage_states(config, run_dir, data, ckpt_dir, mesh)
  out: dict[str, Any] = {"run": os.path.abspath(run_dir), "stages": {}}
  for stage, state in states.items():
    X_tr, _, y_tr = labelled_outputs(state, data, "train", config, mesh)
    X_te, probs_te, y_te = labelled_outputs(state, data, "test", config, mesh)
    out["train_rows"], out["test_rows"] = int(len(y_tr)), int(len(y_te))
    out["stages"][stage] = scores(X_tr, y_tr, X_te, y_te, num_classes=data.num_classes, k=k,
                                  seed=int(config.seed))
    if stage == "final":
      out["final_test_f1"] = float(metrics.classification_metrics(
          y_te, probs_te.argmax(-1), data.num_classes)["macro_f1"])
  return out
