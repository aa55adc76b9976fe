"""Heads on top of the pooled flow vector.

`ProjectionHead` maps pooled vectors into the space where the contrastive loss
measures cosine similarity during pre-training (SimCLR/SimCSE: a non-linear
projection keeps the encoder output more general than the loss space).
`ClassifierHead` is the linear layer of fine-tuning, and `LossWeights` holds the
learnable weights of labelled vs pseudo-labelled loss (docs/design/model.md).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from pass_jax import losses


class ProjectionHead(nnx.Module):
  """Linear -> ReLU -> Linear."""

  def __init__(self, in_dim: int, hidden: int, out_dim: int, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(in_dim, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, out_dim, rngs=rngs)
    self.out_dim = out_dim

  def __call__(self, pooled_BxD: jax.Array) -> jax.Array:
    return self.out(jax.nn.relu(self.hidden(pooled_BxD)))


class ClassifierHead(nnx.Module):
  """Linear map from the pooled vector to class logits (float32)."""

  def __init__(self, in_dim: int, num_classes: int, rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_dim, num_classes, rngs=rngs)
    self.num_classes = num_classes

  def __call__(self, pooled_BxD: jax.Array) -> jax.Array:
    return self.linear(pooled_BxD.astype(jnp.float32))


class LossWeights(nnx.Module):
  """Learnable log-variances s = [s_labeled, s_pseudo] of pseudo-label training.

  The effective weights are floor + exp(-s) (losses.effective_weights); s starts
  where they equal the configured initial weights (1.0 and 0.5 by default).
  """

  def __init__(self, initial_weights: tuple[float, float], floor: float):
    if min(initial_weights) <= floor:
      raise ValueError(f"initial weights {initial_weights} must exceed the "
                       f"floor pli.min_weight={floor}")
    self.log_vars = nnx.Param(losses.initial_log_vars(initial_weights, floor))
    self.floor = floor

  def __call__(self) -> jax.Array:
    return losses.effective_weights(self.log_vars[...], self.floor)
