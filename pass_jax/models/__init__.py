"""Encoders (transformer + baselines) and heads; `make_encoder` picks by name."""
import ml_collections
from flax import nnx

from pass_jax.models.encoder import TrafficEncoder
from pass_jax.models.heads import ClassifierHead, ProjectionHead

BASELINES = ("cnn", "bilstm", "bigru")


def make_encoder(model_cfg: ml_collections.ConfigDict, *, vocab_size: int,
                 seq_len: int, rngs: nnx.Rngs) -> nnx.Module:
  """The backbone named by model_cfg.name, with the shared interface.

  `Backbone(model_cfg, *, vocab_size, seq_len, rngs)`, called as
  `backbone(tokens_BxL, *, deterministic) -> pooled_BxD`, attribute `out_dim`.
  """
  if model_cfg.name == "transformer":
    return TrafficEncoder(model_cfg, vocab_size=vocab_size, seq_len=seq_len,
                          rngs=rngs)
  if model_cfg.name in BASELINES:
    # Imported lazily: the baselines are only needed for comparison runs.
    from pass_jax.models import backbones  # pylint: disable=g-import-not-at-top
    return backbones.make_backbone(model_cfg, vocab_size=vocab_size,
                                   seq_len=seq_len, rngs=rngs)
  raise ValueError(f"unknown model.name {model_cfg.name!r}; choose transformer "
                   f"or one of {BASELINES}")


__all__ = ["ClassifierHead", "ProjectionHead", "TrafficEncoder", "make_encoder"]
