"""Sequence baselines with the transformer encoder's face: 2D-CNN, BiLSTM, BiGRU.

The paper compares PASS against deep models that read the same flow: a
2D-CNN over the bytes as an image (its reference [3]), a BiLSTM over the
sequence, and FS-Net's bidirectional GRU over packet lengths. Each class here
follows the encoder contract (docs/design/contracts.md):

  Backbone(model_cfg, *, vocab_size, seq_len, rngs)
  backbone(tokens_BxL, *, deterministic) -> pooled_BxD, with D = backbone.out_dim

so pre-training, fine-tuning and pseudo-labelling run unchanged with
`config.model.name in {'cnn', 'bilstm', 'bigru'}`. Sizes come from the same
model_cfg fields as the transformer (d_model, ffn_dim, num_layers, dropout,
dtype). Token layout: [CLS], m/2 RP tokens, [SEP], n PL tokens, [PAD] where
the flow is shorter; [PAD] is id 0 and [SEP] id 3 (fixed by the contract).
"""
from __future__ import annotations

import math

from flax import nnx
import jax
import jax.numpy as jnp

PAD_ID = 0
SEP_ID = 3


def _dtype(model_cfg):
  return jnp.dtype(model_cfg.get("dtype", "float32"))


def compact_tokens(tokens_BxL: jax.Array, keep_BxL: jax.Array):
  """Moves the kept tokens of each row to the front, in order; the rest become [PAD].

  A recurrent model then sees the kept tokens back to back and stops at
  `lengths_B`, so where the [PAD]s sat in the row (the tail of RP, the tail
  of PL) cannot change its output. [SEP] stays among the kept tokens, so the
  RP/PL boundary is not lost.

  Returns:
    (compacted tokens int32[B, L], lengths int32[B]).
  """
  # Stable argsort of "dropped" puts kept positions first, in original order.
  order_BxL = jnp.argsort(~keep_BxL, axis=1, stable=True)
  compact_BxL = jnp.take_along_axis(tokens_BxL, order_BxL, axis=1)
  lengths_B = keep_BxL.sum(axis=1).astype(jnp.int32)
  valid_BxL = jnp.arange(tokens_BxL.shape[1])[None, :] < lengths_B[:, None]
  return jnp.where(valid_BxL, compact_BxL, PAD_ID), lengths_B


class CNN2D(nnx.Module):
  """2D-CNN over the token row laid out as an image (paper reference [3]).

  Wang et al. read the first bytes of a flow as a 28x28 grey image: conv 5x5
  (32) - max-pool - conv 5x5 (64) - max-pool - dense. Here each token is one
  pixel whose d_model channels are its embedding; the L tokens fill an
  H x W grid row by row (W = ceil(sqrt(L))), the cells past L and [PAD]
  tokens are zeros. Two conv blocks with d_model and 2*d_model channels
  (kernel 3x3: the grid is only ~10x10), then a dense layer to d_model.
  """

  def __init__(self, model_cfg, *, vocab_size: int, seq_len: int, rngs: nnx.Rngs):
    d = model_cfg.d_model
    dtype = _dtype(model_cfg)
    self.seq_len = seq_len
    self.grid_w = math.ceil(math.sqrt(seq_len))
    self.grid_h = math.ceil(seq_len / self.grid_w)
    self.embed = nnx.Embed(vocab_size, d, dtype=dtype, rngs=rngs)
    self.conv1 = nnx.Conv(d, d, (3, 3), dtype=dtype, rngs=rngs)
    self.conv2 = nnx.Conv(d, 2 * d, (3, 3), dtype=dtype, rngs=rngs)
    # Two SAME max-pools with stride 2 halve each side, rounding up.
    pooled_h = math.ceil(math.ceil(self.grid_h / 2) / 2)
    pooled_w = math.ceil(math.ceil(self.grid_w / 2) / 2)
    self.dense = nnx.Linear(pooled_h * pooled_w * 2 * d, d, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(model_cfg.dropout, rngs=rngs)
    self.out_dim = d

  def __call__(self, tokens_BxL: jax.Array, *, deterministic: bool) -> jax.Array:
    batch = tokens_BxL.shape[0]
    x_BxLxD = self.embed(tokens_BxL)
    x_BxLxD = x_BxLxD * (tokens_BxL != PAD_ID)[..., None].astype(x_BxLxD.dtype)
    x_BxLxD = self.dropout(x_BxLxD, deterministic=deterministic)
    cells = self.grid_h * self.grid_w
    x_BxCxD = jnp.pad(x_BxLxD, ((0, 0), (0, cells - self.seq_len), (0, 0)))
    x_BxHxWxD = x_BxCxD.reshape(batch, self.grid_h, self.grid_w, -1)
    for conv in (self.conv1, self.conv2):
      x_BxHxWxD = nnx.relu(conv(x_BxHxWxD))
      x_BxHxWxD = nnx.max_pool(x_BxHxWxD, (2, 2), strides=(2, 2), padding="SAME")
    x_BxF = x_BxHxWxD.reshape(batch, -1)
    x_BxF = self.dropout(x_BxF, deterministic=deterministic)
    pooled_BxD = nnx.relu(self.dense(x_BxF))
    pooled_BxD = self.dropout(pooled_BxD, deterministic=deterministic)
    return pooled_BxD.astype(jnp.float32)


class _StackedBiRNN(nnx.Module):
  """num_layers bidirectional RNN layers over a left-packed sequence.

  Returns the top layer's outputs and every layer's final (forward, backward)
  hidden states. Inputs at positions >= lengths_B are zeroed; with
  `seq_lengths` the forward pass keeps the carry of step length-1 and the
  backward pass starts at step length-1, so outputs at valid positions and the
  final states depend on valid positions only.
  """

  def __init__(self, cell_type, in_dim: int, hidden: int, num_layers: int,
               dropout: float, dtype, rngs: nnx.Rngs):
    self.is_lstm = cell_type is nnx.OptimizedLSTMCell
    layers = []
    for i in range(num_layers):
      layer_in = in_dim if i == 0 else 2 * hidden
      fwd = nnx.RNN(cell_type(layer_in, hidden, dtype=dtype, rngs=rngs), rngs=rngs)
      bwd = nnx.RNN(cell_type(layer_in, hidden, dtype=dtype, rngs=rngs), rngs=rngs)
      layers.append(nnx.Bidirectional(fwd, bwd, rngs=rngs))
    self.layers = nnx.List(layers)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x_BxLxD, lengths_B, *, deterministic: bool):
    valid_BxL = jnp.arange(x_BxLxD.shape[1])[None, :] < lengths_B[:, None]
    # A row with nothing to read still needs one step; its only input is zeros.
    seq_lengths_B = jnp.maximum(lengths_B, 1)
    finals = []
    for i, layer in enumerate(self.layers):
      if i > 0:
        x_BxLxD = self.dropout(x_BxLxD, deterministic=deterministic)
      x_BxLxD = jnp.where(valid_BxL[..., None], x_BxLxD, 0)
      (carry_fwd, carry_bwd), x_BxLxD = layer(
          x_BxLxD, seq_lengths=seq_lengths_B, return_carry=True)
      # LSTM carries are (c, h); GRU carries are h.
      h_fwd = carry_fwd[1] if self.is_lstm else carry_fwd
      h_bwd = carry_bwd[1] if self.is_lstm else carry_bwd
      finals.append(jnp.concatenate([h_fwd, h_bwd], axis=-1))
    return x_BxLxD, finals


class BiLSTM(nnx.Module):
  """Bidirectional LSTM over every non-[PAD] token ([CLS], RP, [SEP], PL).

  num_layers stacked layers, d_model/2 units per direction; the pooled
  vector is the top layer's last forward and last backward hidden states
  (D = d_model).
  """

  def __init__(self, model_cfg, *, vocab_size: int, seq_len: int, rngs: nnx.Rngs):
    del seq_len  # any length: the recurrence does not care
    d = model_cfg.d_model
    dtype = _dtype(model_cfg)
    self.embed = nnx.Embed(vocab_size, d, dtype=dtype, rngs=rngs)
    self.rnn = _StackedBiRNN(nnx.OptimizedLSTMCell, d, d // 2, model_cfg.num_layers,
                             model_cfg.dropout, dtype, rngs)
    self.dropout = nnx.Dropout(model_cfg.dropout, rngs=rngs)
    self.out_dim = 2 * (d // 2)

  def __call__(self, tokens_BxL: jax.Array, *, deterministic: bool) -> jax.Array:
    packed_BxL, lengths_B = compact_tokens(tokens_BxL, tokens_BxL != PAD_ID)
    x_BxLxD = self.dropout(self.embed(packed_BxL), deterministic=deterministic)
    _, finals = self.rnn(x_BxLxD, lengths_B, deterministic=deterministic)
    pooled_BxD = self.dropout(finals[-1], deterministic=deterministic)
    return pooled_BxD.astype(jnp.float32)


class BiGRU(nnx.Module):
  """FS-Net's encoder: stacked bidirectional GRU over the packet lengths only.

  Reads the PL tokens (positions after [SEP], [PAD] dropped) and ignores RP
  entirely, as FS-Net sees only the length sequence. Like FS-Net the flow
  vector concatenates the final states of every layer and direction, then a
  dense SELU layer maps it to D = d_model. FS-Net's reconstruction decoder is
  an auxiliary training loss, not part of the encoder, and is left out.
  """

  def __init__(self, model_cfg, *, vocab_size: int, seq_len: int, rngs: nnx.Rngs):
    del seq_len
    d = model_cfg.d_model
    dtype = _dtype(model_cfg)
    hidden = d // 2
    self.embed = nnx.Embed(vocab_size, d, dtype=dtype, rngs=rngs)
    self.rnn = _StackedBiRNN(nnx.GRUCell, d, hidden, model_cfg.num_layers,
                             model_cfg.dropout, dtype, rngs)
    self.dense = nnx.Linear(model_cfg.num_layers * 2 * hidden, d, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(model_cfg.dropout, rngs=rngs)
    self.out_dim = d

  def __call__(self, tokens_BxL: jax.Array, *, deterministic: bool) -> jax.Array:
    positions_BxL = jnp.arange(tokens_BxL.shape[1])[None, :]
    # First [SEP] of each row; everything after it is PL.
    sep_B = jnp.argmax(tokens_BxL == SEP_ID, axis=1)
    keep_BxL = (positions_BxL > sep_B[:, None]) & (tokens_BxL != PAD_ID)
    packed_BxL, lengths_B = compact_tokens(tokens_BxL, keep_BxL)
    x_BxLxD = self.dropout(self.embed(packed_BxL), deterministic=deterministic)
    _, finals = self.rnn(x_BxLxD, lengths_B, deterministic=deterministic)
    z_BxF = self.dropout(jnp.concatenate(finals, axis=-1), deterministic=deterministic)
    pooled_BxD = nnx.selu(self.dense(z_BxF))
    return pooled_BxD.astype(jnp.float32)


BACKBONES = {"cnn": CNN2D, "bilstm": BiLSTM, "bigru": BiGRU}


def make_backbone(model_cfg, *, vocab_size: int, seq_len: int, rngs: nnx.Rngs):
  """The baseline named by model_cfg.name ('cnn' | 'bilstm' | 'bigru')."""
  if model_cfg.name not in BACKBONES:
    raise ValueError(f"unknown baseline backbone {model_cfg.name!r}; "
                     f"choose one of {sorted(BACKBONES)}")
  return BACKBONES[model_cfg.name](model_cfg, vocab_size=vocab_size,
                                   seq_len=seq_len, rngs=rngs)
