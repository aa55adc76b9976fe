"""SMOTE on encoder embeddings (paper Table V): resample the model's features, refit a head.

The paper applies SMOTE to feature vectors. Token ids have no geometry to interpolate in, but the
encoder's pooled output (the classification layer's input) has. An embedding arm takes the
finished run of another arm of the same seed (`Arm.embed_from`, in Table V the `base` arm: w/o PLI,
CPT), embeds the labelled training and test flows with that run's kept checkpoint, standardises
the embeddings on the training rows, optionally SMOTE-resamples them (`Arm.smote`) and fits a
multinomial logistic regression: a linear softmax head, the same model class as the network's own
head, now trained on balanced rows with the encoder frozen.

`embed_linear` (same head, no SMOTE) is the reference: the difference between its row and
`smote_embed`'s is SMOTE's alone, not the head refit's.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from pass_jax import jsonio
from pass_jax.experiment_arms import ArmError


def labelled_outputs(state, data, split: str, config, mesh):
  """(embedding float32[N, D], probs float32[N, C], label int32[N]) of the labelled rows of one
  split of `data` (an evaluate.Data), predicted by `state`."""
  from pass_jax.trainers import evaluate  # pylint: disable=g-import-not-at-top
  arrays = data.split(split)
  labels = np.asarray(arrays["label"])
  keep = labels >= 0    # label_fraction < 1 leaves unlabelled train rows
  pred = evaluate.predict_arrays(state, arrays, config, mesh)
  return pred["embedding"][keep], pred["probs"][keep], labels[keep].astype(np.int32)


def embed_labelled(config, run_dir: str, data_dir: str, splits=("train", "test"), *, mesh=None):
  """{split: (embedding float32[N, D], label int32[N])} of the labelled rows of each split, from
  run_dir's kept checkpoint (the one its evaluate stage scored: M0 or the best PLI round),
  restored once for all of them."""
  from pass_jax import sharding  # pylint: disable=g-import-not-at-top
  from pass_jax.trainers import evaluate, pseudo_label  # pylint: disable=g-import-not-at-top
  data = evaluate.Data.from_dir(data_dir)
  mesh = mesh or sharding.make_mesh()
  state, _ = evaluate.restore_classifier(
      config, pseudo_label.final_checkpoint_dir(run_dir), mesh=mesh,
      num_classes=data.num_classes, vocab_size=data.vocab_size, seq_len=data.seq_len)
  out = {}
  for split in splits:
    emb, _, labels = labelled_outputs(state, data, split, config, mesh)
    out[split] = (emb, labels)
  return out


def fit_head(X_train, y_train, X_test, *, seed: int, smote: bool, num_classes: int):
  """Standardise on train, SMOTE (optionally), fit logistic regression.

  Returns:
    (pred int32[N_test], probs float32[N_test, num_classes], train_rows int).
  """
  from sklearn import linear_model, preprocessing  # pylint: disable=g-import-not-at-top
  from pass_jax.baselines import imbalance  # pylint: disable=g-import-not-at-top
  # Standardised first: SMOTE's nearest neighbours and the regulariser both assume comparable
  # feature scales.
  scaler = preprocessing.StandardScaler().fit(X_train)
  X_tr, X_te = scaler.transform(X_train), scaler.transform(X_test)
  y_tr = np.asarray(y_train)
  if smote:
    X_tr, y_tr = imbalance.smote(X_tr, y_tr, seed)
  head = linear_model.LogisticRegression(max_iter=2000, random_state=seed)
  head.fit(X_tr, y_tr)
  probs = np.zeros((len(X_te), num_classes), np.float32)
  probs[:, head.classes_] = head.predict_proba(X_te)
  return probs.argmax(axis=1).astype(np.int32), probs, int(len(y_tr))


def run_embedding_arm(arm, seed: int, source_config, source_dir: str, data_dir: str,
                      arm_dir: str) -> dict[str, Any]:
  """The arm's metrics on the test split; result.json + predictions.npz in arm_dir."""
  from input_pipeline import tfds_builder  # pylint: disable=g-import-not-at-top
  # experiments imports this module at its top; its shared cached fit is reached at call time.
  from pass_jax import experiments  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(os.path.join(source_dir, "report.json")):
    raise ArmError(
        f"arm {arm.name} embeds with arm {arm.embed_from}'s model, which has not finished in "
        f"{source_dir}; run {arm.embed_from} first (it comes before {arm.name} in the table)")
  source_report = jsonio.read_json(os.path.join(source_dir, "report.json"))
  params = {"arm": arm.to_json(), "seed": seed, "data_dir": os.path.abspath(data_dir),
            "source_dir": os.path.abspath(source_dir),
            "source_test_f1": float(source_report["test"]["macro_f1"])}

  def fit():
    class_names = [str(c) for c in tfds_builder.load_metadata(data_dir)["class_names"]]
    emb = embed_labelled(source_config, source_dir, data_dir)
    (X_train, y_train), (X_test, y_test) = emb["train"], emb["test"]
    fit_start = time.time()
    pred, probs, train_rows = fit_head(X_train, y_train, X_test, seed=seed, smote=arm.smote,
                                       num_classes=len(class_names))
    return pred, probs, y_test, class_names, train_rows, time.time() - fit_start

  return experiments.run_cached_fit(arm_dir, params, fit)
