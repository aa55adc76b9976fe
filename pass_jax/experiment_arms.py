"""The arms of the paper's experiments (Tables III-VI, Fig. 6) as data.

An arm is either a PASS pipeline run (`overrides` of the base config: dotted keys -> values) or a
shallow classifier (`shallow` names a `baselines.shallow` method) on flat features of the same token
rows. Overrides of `data.*` fields that change what is extracted or tokenised (features, m, n)
give the arm its own dataset build; every other arm of an experiment shares one build per seed,
so all of them see the same splits and the same vocabulary.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

EXPERIMENTS = ("table3", "table4", "table5", "table6", "sensitivity")
METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


class ArmError(RuntimeError):
  """An arm cannot run or its stored result cannot be used; the message says why."""

# config.data fields that change the built dataset; an arm overriding one gets its own build.
BUILD_FIELDS = ("features", "payload_bytes", "num_lengths", "length_kind", "count_empty_acks",
                "idle_timeout", "min_payload_bytes", "tls_only", "min_flows_per_class",
                "vocab_max_size", "vocab_min_count", "mask_sni", "split", "split_file",
                "split_ratios", "label_fraction", "labels_csv")

# The fine-tuned model alone: no contrastive pre-training, no pseudo-label iteration.
_PLAIN = {"pretrain.enabled": False, "pli.enabled": False}


@dataclasses.dataclass(frozen=True)
class Arm:
  """One row of a result table."""
  name: str
  description: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  shallow: str = ""       # a baselines.shallow method -> a shallow arm
  features: str = ""      # its flat feature kind (baselines.features.KINDS)
  smote: bool = False     # SMOTE-resample the training features (flat or embedded) first
  embed_from: str = ""    # an embedding arm: refit a head on this finished arm's embeddings

  @property
  def is_shallow(self) -> bool:
    return bool(self.shallow)

  def build_overrides(self) -> dict[str, Any]:
    """The `data.*` overrides that change the dataset build (field name -> value)."""
    return {k.split(".", 1)[1]: v for k, v in self.overrides.items()
            if k.startswith("data.") and k.split(".", 1)[1] in BUILD_FIELDS}

  def to_json(self) -> dict[str, Any]:
    out = {"name": self.name, "description": self.description,
           "overrides": dict(self.overrides), "shallow": self.shallow,
           "features": self.features, "smote": self.smote}
    if self.embed_from:
      # Only when set: results stored before the field existed keep matching their arm.
      out["embed_from"] = self.embed_from
    return out


def _shallow(name: str, description: str, features: str = "", smote: bool = False) -> Arm:
  from pass_jax.baselines import shallow  # pylint: disable=g-import-not-at-top
  method = "lgbm" if smote else name
  return Arm(name, description, shallow=method,
             features=features or shallow.DEFAULT_FEATURES[method], smote=smote)


def table3() -> list[Arm]:
  """Methods compared (paper Table III): shallow baselines, deep backbones, PASS."""
  arms = [
      _shallow("rf_stats", "random forest on packet-length statistics (AppScanner-like)"),
      _shallow("lgbm", "LightGBM on flat lengths + payload bytes"),
      _shallow("lgbm_balanced", "LightGBM, class-balanced weights"),
      # The same two read from the flows, not the token rows: no [UNK] (baselines/raw.py).
      Arm("lgbm_raw", "LightGBM on flat features of the raw flows (no vocabulary)",
          shallow="lgbm", features="raw_flat"),
      Arm("lgbm_balanced_raw", "LightGBM, class-balanced, on the raw flows",
          shallow="lgbm_balanced", features="raw_flat"),
  ]
  for name, what in (("cnn", "2D-CNN fine-tuned on the tokens"),
                     ("bilstm", "BiLSTM fine-tuned on the tokens"),
                     ("bigru", "BiGRU (FS-Net-like) fine-tuned on the packet lengths")):
    arms.append(Arm(name, f"{what} (no CPT, no PLI)", {"model.name": name, **_PLAIN}))
  arms.append(Arm("pass", "PASS: transformer, CPT + fine-tuning + PLI"))
  return arms


def table4() -> list[Arm]:
  """Ablations (paper Table IV)."""
  return [
      Arm("pass", "PASS (CPT + PLI, RP + PL)"),
      Arm("wo_pli", "w/o PLI", {"pli.enabled": False}),
      Arm("wo_pli_cpt", "w/o PLI, CPT", dict(_PLAIN)),
      Arm("wo_pli_cpt_pl", "w/o PLI, CPT, PL (raw payload only)",
          {**_PLAIN, "data.features": "rp"}),
      Arm("wo_pli_cpt_rp", "w/o PLI, CPT, RP (packet lengths only)",
          {**_PLAIN, "data.features": "pl"}),
  ]


def table5() -> list[Arm]:
  """Imbalance remedies on the w/o PLI+CPT model (paper Table V).

  The paper applies SMOTE to feature vectors; tokens have no geometry to interpolate in. SMOTE
  therefore runs twice: on the `base` model's embeddings with a refit linear head
  (pass_jax/embedding_arm.py; `embed_linear` is the same head without SMOTE), and on the flat
  features before LightGBM (`lgbm` is its reference).
  """
  return [
      Arm("base", "w/o PLI, CPT; plain cross-entropy", dict(_PLAIN)),
      Arm("ros", "random over-sampling", {**_PLAIN, "finetune.sampling": "ros"}),
      Arm("rus", "random under-sampling", {**_PLAIN, "finetune.sampling": "rus"}),
      Arm("class_weight", "class-balanced loss weights",
          {**_PLAIN, "finetune.sampling": "class_weight"}),
      Arm("focal", "focal loss", {**_PLAIN, "finetune.loss": "focal"}),
      Arm("embed_linear", "base's embeddings, linear head refit (reference for smote_embed)",
          embed_from="base"),
      Arm("smote_embed", "SMOTE on base's embeddings, linear head refit", smote=True,
          embed_from="base"),
      _shallow("smote", "SMOTE on flat features, then LightGBM", smote=True),
      _shallow("lgbm", "LightGBM on the same flat features (reference for SMOTE)"),
  ]


def table6() -> list[Arm]:
  """CPT and PLI moved onto other backbones (paper Table VI)."""
  arms = []
  for name in ("cnn", "bilstm"):
    for suffix, cpt, pli in (("plain", False, False), ("pli", False, True),
                             ("cpt", True, False), ("cpt_pli", True, True)):
      label = {"plain": "fine-tuned only", "pli": "+ PLI", "cpt": "+ CPT",
               "cpt_pli": "+ CPT + PLI"}[suffix]
      arms.append(Arm(f"{name}_{suffix}", f"{name} {label}",
                      {"model.name": name, "pretrain.enabled": cpt, "pli.enabled": pli}))
  return arms


TRIPLE_FACTORS = (0.25, 0.5, 1.0, 2.0)
HALF_M_N = ((8, 4), (16, 8), (32, 16), (64, 32))


def sensitivity(base_config) -> list[Arm]:
  """Fig. 6: macro-F1 and training time against the number of CPT triples and [m/2, n]."""
  base = int(base_config.pretrain.num_triples)
  arms = [Arm(f"triples_x{f:g}", f"PASS, {max(1, round(base * f))} pre-training triples",
              {"pretrain.num_triples": max(1, round(base * f))}) for f in TRIPLE_FACTORS]
  for half_m, n in HALF_M_N:
    arms.append(Arm(f"mn_{half_m}_{n}", f"PASS, [m/2, n] = [{half_m}, {n}]",
                    {"data.payload_bytes": 2 * half_m, "data.num_lengths": n}))
  return arms


def arms_for(experiment: str, base_config) -> list[Arm]:
  if experiment not in EXPERIMENTS:
    raise ValueError(f"unknown experiment {experiment!r}; choose one of {EXPERIMENTS}")
  if experiment == "sensitivity":
    return sensitivity(base_config)
  return {"table3": table3, "table4": table4, "table5": table5, "table6": table6}[experiment]()


def find(experiment: str, base_config, name: str) -> Arm:
  """The arm `name` of `experiment` (an embedding arm's source), selected or not."""
  arms = {a.name: a for a in arms_for(experiment, base_config)}
  if name not in arms:
    raise ArmError(f"experiment {experiment} has no arm {name!r}")
  return arms[name]


def select(arms: list[Arm], names) -> list[Arm]:
  """The arms named in `names` (all when empty), in the experiment's order."""
  if not names:
    return arms
  known = [a.name for a in arms]
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"unknown arm(s) {unknown}; this experiment has {known}")
  return [a for a in arms if a.name in names]
