"""Config validation: every bad value reported at once, before any data is read or compiled.

`validate(config)` is pure (no jax); `check_runtime(config, num_devices, num_processes)` adds the
checks that need to know the machine (batch sizes that must split evenly over devices and hosts).
"""
from typing import Any

STAGES = ("all", "extract", "build", "pretrain", "finetune", "pseudo_label", "evaluate")
CHOICES = {
    "variant": ("tiny", "small", "paper"),
    "data.split": ("flow", "capture", "given"),
    "data.length_kind": ("ip", "payload"),
    "data.features": ("both", "rp", "pl"),
    "model.name": ("transformer", "cnn", "bilstm", "bigru"),
    "model.pooling": ("cls", "mean"),
    "model.norm": ("post", "pre"),
    "model.dtype": ("float32", "bfloat16"),
    "finetune.loss": ("ce", "focal"),
    "finetune.sampling": ("none", "ros", "rus", "class_weight"),
    "pli.weights": ("learnable", "fixed"),
    "pli.init": ("pretrained", "previous"),
    "eval_split": ("test", "validation", "train"),
    "optim.schedule": ("linear", "cosine", "constant"),
}


# Path fields made absolute on entry, so that a workdir's config.json and a build's build.json
# compare equal whether a re-run spells the path `../shared/x` or `/work/shared/x`.
PATH_FIELDS = ("data.root", "data.prebuilt", "data.labels_csv", "data.split_file")


def absolute_paths(config) -> None:
  """Rewrites the non-empty PATH_FIELDS of `config` in place as absolute, normalised paths."""
  import os  # pylint: disable=g-import-not-at-top
  for dotted in PATH_FIELDS:
    section, field = dotted.split(".")
    value = config[section][field]
    if value and "://" not in value:
      config[section][field] = os.path.abspath(os.path.expanduser(value))


class ConfigError(ValueError):
  """A config holds values the pipeline cannot run with; the message lists all of them."""


def _get(config, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _has(config, dotted: str) -> bool:
  try:
    _get(config, dotted)
    return True
  except (KeyError, AttributeError):
    return False


def validate(config) -> None:
  """Raises ConfigError naming every offending field, its value and what is allowed."""
  errs: list[str] = []

  def need(cond: bool, key: str, why: str):
    if not cond:
      value = _get(config, key) if _has(config, key) else "<missing>"
      errs.append(f"config.{key}={value!r}: {why}")

  def rng(key: str, lo: float, hi: float, *, lo_open=False, hi_open=False):
    v = _get(config, key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    need(ok, key, f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")

  def positive(key: str, *, zero_ok=False):
    v = _get(config, key)
    need(isinstance(v, (int, float)) and (v >= 0 if zero_ok else v > 0), key,
         "must be >= 0" if zero_ok else "must be > 0")

  for key, allowed in CHOICES.items():
    if not _has(config, key):
      errs.append(f"config.{key} is missing")
      continue
    need(_get(config, key) in allowed, key, f"must be one of {allowed}")
  need(config.stage in STAGES, "stage", f"must be one of {STAGES}")

  # Data.
  d = config.data
  if d.split == "given":
    need(bool(d.split_file), "data.split_file", "split=given needs a CSV of `pcap,split` rows")
  ratios = tuple(d.split_ratios)
  need(len(ratios) == 3 and all(r >= 0 for r in ratios) and abs(sum(ratios) - 1) < 1e-6,
       "data.split_ratios", "must be three non-negative fractions (train, val, test) summing to 1")
  if len(ratios) == 3:
    need(ratios[0] > 0 and ratios[1] > 0, "data.split_ratios",
         "train and validation fractions must be > 0 (validation picks the best model)")
  rng("data.label_fraction", 0.0, 1.0, lo_open=True)
  positive("data.payload_bytes")
  need(d.payload_bytes % 2 == 0, "data.payload_bytes",
       "m must be even: RP tokens are 2-byte (4 hex digit) words")
  positive("data.num_lengths")
  positive("data.idle_timeout")
  positive("data.min_payload_bytes", zero_ok=True)
  positive("data.min_flows_per_class", zero_ok=True)
  positive("data.vocab_max_size", zero_ok=True)
  positive("data.vocab_min_count", zero_ok=True)
  positive("data.workers", zero_ok=True)
  positive("data.shuffle_buffer")
  positive("data.prefetch", zero_ok=True)
  need(d.demo.num_classes >= 2, "data.demo.num_classes", "a classifier needs >= 2 classes")
  positive("data.demo.max_flows_per_class")
  need(d.demo.imbalance >= 1.0, "data.demo.imbalance", "largest/smallest class size is >= 1")

  # Model.
  m = config.model
  for key in ("num_layers", "num_heads", "head_dim", "d_model", "ffn_dim", "proj_dim"):
    positive(f"model.{key}")
  rng("model.dropout", 0.0, 1.0, hi_open=True)
  rng("model.attention_dropout", 0.0, 1.0, hi_open=True)
  if m.name == "transformer":
    need(m.num_heads * m.head_dim == m.d_model, "model.d_model",
         f"must equal num_heads * head_dim = {m.num_heads} * {m.head_dim} "
         f"(attention output is projected back to d_model)")

  # Stages.
  for stage in ("pretrain", "finetune"):
    positive(f"{stage}.batch_size")
    positive(f"{stage}.lr")
    positive(f"{stage}.steps", zero_ok=True)
    s = config[stage]
    need(s.steps > 0 or s.epochs > 0, f"{stage}.epochs", "needs epochs > 0 or steps > 0")
  p = config.pretrain
  positive("pretrain.num_triples")
  positive("pretrain.tau")
  positive("pretrain.alpha", zero_ok=True)
  positive("pretrain.weak_weight", zero_ok=True)
  positive("pretrain.max_tries")
  need(p.alpha > 0 or p.weak_weight > 0, "pretrain.alpha",
       "strong and weak negative weights cannot both be 0")
  need(p.weak_fraction < 0 or 0.0 <= p.weak_fraction <= 1.0, "pretrain.weak_fraction",
       "must be < 0 (the paper's uniform draw) or a share in [0, 1]")
  positive("finetune.focal_gamma", zero_ok=True)
  positive("finetune.min_steps", zero_ok=True)

  q = config.pli
  rng("pli.threshold", 0.0, 1.0, lo_open=True)
  for t in tuple(q.threshold_candidates):
    if not 0.0 < t <= 1.0:
      errs.append(f"config.pli.threshold_candidates holds {t!r}: each must be in (0, 1]")
  need(isinstance(q.cv_folds, int) and q.cv_folds >= 2, "pli.cv_folds",
       "cross-validation needs >= 2 folds")
  rng("pli.target_accuracy", 0.0, 1.0, lo_open=True)
  positive("pli.epsilon", zero_ok=True)
  positive("pli.limit", zero_ok=True)
  positive("pli.resample_cap")
  positive("pli.w_labeled", zero_ok=True)
  positive("pli.w_pseudo", zero_ok=True)
  rng("pli.min_weight", 0.0, 1.0, hi_open=True)

  # Optimiser and cadence.
  rng("optim.warmup", 0.0, 1.0, hi_open=True)
  positive("optim.weight_decay", zero_ok=True)
  positive("optim.grad_clip", zero_ok=True)
  rng("optim.b1", 0.0, 1.0, hi_open=True)
  rng("optim.b2", 0.0, 1.0, hi_open=True)
  positive("log_every")
  positive("eval_every", zero_ok=True)
  positive("checkpoint_every")
  positive("keep_checkpoints")
  positive("report.tsne_max_points")

  if errs:
    raise ConfigError(f"{len(errs)} bad value(s):\n  " + "\n  ".join(errs))


def check_runtime(config, *, num_devices: int, num_processes: int) -> None:
  """Global batches must split evenly: first over processes, then over all devices."""
  errs = []
  for stage in ("pretrain", "finetune"):
    b = config[stage].batch_size
    if b % num_devices:
      errs.append(f"config.{stage}.batch_size={b} is not divisible by the {num_devices} devices "
                  f"of the mesh (each device takes an equal slice of the global batch)")
    elif b % num_processes:
      errs.append(f"config.{stage}.batch_size={b} is not divisible by {num_processes} processes")
  if errs:
    raise ConfigError("batch sizes do not fit this machine:\n  " + "\n  ".join(errs))
