"""The PASS traffic encoder: a small BERT-style Transformer over flow tokens.

A token row is `[CLS] rp_1 .. rp_{m/2} [SEP] pl_1 .. pl_n` padded with `[PAD]=0`
(docs/design/contracts.md). The encoder embeds tokens, adds a learned position
embedding, runs `num_layers` blocks of masked multi-head self-attention + a ReLU
FFN, and pools one vector per flow: the `[CLS]` position (default) or a masked
mean over non-PAD positions. `[PAD]` keys are masked out of every attention
softmax, so what sits at PAD positions never reaches a real position.

Dropout sits where BERT has it (embeddings, attention probabilities, the output
of each sub-layer): two passes with different dropout masks are the SimCSE
positive pair of the contrastive pre-training.
"""
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

PAD_ID = 0
# Large but finite: a row of only PAD keys (never produced by the vocab, which
# always emits [CLS]) would otherwise softmax to NaN.
_MASK_VALUE = -1e9


def compute_dtype(model_cfg: ml_collections.ConfigDict) -> jnp.dtype:
  """model.dtype names the compute dtype; parameters always stay float32."""
  return jnp.dtype(model_cfg.get("dtype", "float32"))


def _dense(in_dim: int, out_dim: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  # BERT's init: N(0, 0.02) kernels, zero biases.
  return nnx.Linear(in_dim, out_dim, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


class Dropout(nnx.Dropout):
  """nnx.Dropout that draws 8 random bits per element instead of 32.

  Random bits are most of a small model's step on CPU (threefry), so four mask
  bytes come from each 32-bit word. The drop rate is rounded to a multiple of
  1/256 (0.1 -> 26/256) and kept values are scaled by the exact 1/keep.
  """

  def __call__(self, x, *, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    shape = list(x.shape)
    for dim in self.broadcast_dims:
      shape[dim] = 1
    *lead, last = shape
    words = jax.random.bits(self.rngs(), (*lead, -(-last // 4)), jnp.uint32)
    bytes_ = jax.lax.bitcast_convert_type(words, jnp.uint8)   # [..., n/4, 4]
    bytes_ = bytes_.reshape(*lead, -1)[..., :last]
    threshold = min(round(self.rate * 256), 256)
    keep = bytes_ >= threshold
    scale = 256.0 / max(256 - threshold, 1)
    return jnp.where(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros_like(x))


class MultiHeadSelfAttention(nnx.Module):
  """Self-attention with a key padding mask and dropout on the probabilities."""

  def __init__(self, d_model: int, num_heads: int, head_dim: int,
               attention_dropout: float, dtype, *, rngs: nnx.Rngs):
    self.num_heads, self.head_dim = num_heads, head_dim
    inner = num_heads * head_dim
    self.query = _dense(d_model, inner, dtype, rngs)
    self.key = _dense(d_model, inner, dtype, rngs)
    self.value = _dense(d_model, inner, dtype, rngs)
    self.out = _dense(inner, d_model, dtype, rngs)
    # One mask per (example, query, key), shared by the heads: a head-sized
    # fraction of the random bits, which dominate a small model's step on CPU.
    # Still per example, so the two SimCSE views of a flow differ (flax's
    # broadcast_dropout would share it across the batch too).
    self.dropout = Dropout(attention_dropout, broadcast_dims=(1,), rngs=rngs)

  def __call__(self, x_BxLxD, mask_BxL, *, deterministic: bool):
    b, l, _ = x_BxLxD.shape
    split = lambda t: t.reshape(b, l, self.num_heads, self.head_dim)
    q_BxLxHxK = split(self.query(x_BxLxD))
    k_BxLxHxK = split(self.key(x_BxLxD))
    v_BxLxHxK = split(self.value(x_BxLxD))
    logits_BxHxLxL = jnp.einsum("bqhk,bshk->bhqs", q_BxLxHxK, k_BxLxHxK)
    # Softmax in float32 even under bf16 compute: it is where bf16 hurts most.
    logits_BxHxLxL = logits_BxHxLxL.astype(jnp.float32) / jnp.sqrt(self.head_dim)
    keep_Bx1x1xL = mask_BxL[:, None, None, :]
    logits_BxHxLxL = jnp.where(keep_Bx1x1xL, logits_BxHxLxL, _MASK_VALUE)
    probs_BxHxLxL = jax.nn.softmax(logits_BxHxLxL, axis=-1).astype(x_BxLxD.dtype)
    probs_BxHxLxL = self.dropout(probs_BxHxLxL, deterministic=deterministic)
    ctx_BxLxHxK = jnp.einsum("bhqs,bshk->bqhk", probs_BxHxLxL, v_BxLxHxK)
    return self.out(ctx_BxLxHxK.reshape(b, l, -1))


class FeedForward(nnx.Module):
  """Position-wise FFN: Linear -> ReLU -> Linear (the paper's FFN with ReLU)."""

  def __init__(self, d_model: int, ffn_dim: int, dtype, *, rngs: nnx.Rngs):
    self.up = _dense(d_model, ffn_dim, dtype, rngs)
    self.down = _dense(ffn_dim, d_model, dtype, rngs)

  def __call__(self, x_BxLxD):
    return self.down(jax.nn.relu(self.up(x_BxLxD)))


class TransformerBlock(nnx.Module):
  """Attention + FFN sub-layers, each with a residual and a LayerNorm.

  norm='post' is the original Transformer/BERT order, x = LN(x + f(x)), the
  one the paper describes; norm='pre', x = x + f(LN(x)), trains more stably
  with larger learning rates and deeper stacks.
  """

  def __init__(self, model_cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    d, dtype = model_cfg.d_model, compute_dtype(model_cfg)
    self.pre_norm = model_cfg.norm == "pre"
    self.attention = MultiHeadSelfAttention(
        d, model_cfg.num_heads, model_cfg.head_dim, model_cfg.attention_dropout,
        dtype, rngs=rngs)
    self.ffn = FeedForward(d, model_cfg.ffn_dim, dtype, rngs=rngs)
    self.attention_norm = nnx.LayerNorm(d, dtype=dtype, param_dtype=jnp.float32,
                                        rngs=rngs)
    self.ffn_norm = nnx.LayerNorm(d, dtype=dtype, param_dtype=jnp.float32,
                                  rngs=rngs)
    self.attention_dropout = Dropout(model_cfg.dropout, rngs=rngs)
    self.ffn_dropout = Dropout(model_cfg.dropout, rngs=rngs)

  def __call__(self, x_BxLxD, mask_BxL, *, deterministic: bool):
    def sublayer(x, f, norm, dropout):
      if self.pre_norm:
        return x + dropout(f(norm(x)), deterministic=deterministic)
      return norm(x + dropout(f(x), deterministic=deterministic))

    attend = lambda h: self.attention(h, mask_BxL, deterministic=deterministic)
    x_BxLxD = sublayer(x_BxLxD, attend, self.attention_norm,
                       self.attention_dropout)
    return sublayer(x_BxLxD, self.ffn, self.ffn_norm, self.ffn_dropout)


class TrafficEncoder(nnx.Module):
  """tokens int32[B, L] -> pooled float32[B, d_model] (the backbone interface)."""

  def __init__(self, model_cfg: ml_collections.ConfigDict, *, vocab_size: int,
               seq_len: int, rngs: nnx.Rngs):
    if model_cfg.pooling not in ("cls", "mean"):
      raise ValueError(f"model.pooling must be cls|mean, got {model_cfg.pooling!r}")
    if model_cfg.norm not in ("post", "pre"):
      raise ValueError(f"model.norm must be post|pre, got {model_cfg.norm!r}")
    d, dtype = model_cfg.d_model, compute_dtype(model_cfg)
    self.pooling, self.seq_len, self.out_dim = model_cfg.pooling, seq_len, d
    self.dtype = dtype
    init = nnx.initializers.normal(0.02)
    self.token_embed = nnx.Embed(vocab_size, d, dtype=dtype,
                                 param_dtype=jnp.float32, embedding_init=init,
                                 rngs=rngs)
    # Learned positions (BERT) rather than sinusoids: rows have a fixed length
    # and a fixed layout (RP bytes, then packet lengths), so each position has
    # its own meaning that a learned vector can capture directly.
    self.pos_embed = nnx.Param(init(rngs.params(), (seq_len, d), jnp.float32))
    # Post-norm normalises the embedding sum (BERT); pre-norm instead needs a
    # final LayerNorm because its residual stream is never normalised. One
    # LayerNorm serves either role.
    self.norm = nnx.LayerNorm(d, dtype=dtype, param_dtype=jnp.float32,
                                    rngs=rngs)
    self.embed_dropout = Dropout(model_cfg.dropout, rngs=rngs)
    self.blocks = nnx.List([TransformerBlock(model_cfg, rngs=rngs)
                            for _ in range(model_cfg.num_layers)])
    self.pre_norm = model_cfg.norm == "pre"

  def __call__(self, tokens_BxL: jax.Array, *, deterministic: bool) -> jax.Array:
    if tokens_BxL.shape[-1] != self.seq_len:
      raise ValueError(f"tokens have length {tokens_BxL.shape[-1]}, "
                       f"encoder was built for {self.seq_len}")
    mask_BxL = tokens_BxL != PAD_ID
    x_BxLxD = self.token_embed(tokens_BxL) + self.pos_embed[...].astype(self.dtype)
    if not self.pre_norm:
      x_BxLxD = self.norm(x_BxLxD)
    x_BxLxD = self.embed_dropout(x_BxLxD, deterministic=deterministic)
    for block in self.blocks:
      x_BxLxD = block(x_BxLxD, mask_BxL, deterministic=deterministic)
    if self.pre_norm:
      x_BxLxD = self.norm(x_BxLxD)
    x_BxLxD = x_BxLxD.astype(jnp.float32)
    if self.pooling == "cls":
      return x_BxLxD[:, 0]
    weights_BxL = mask_BxL.astype(jnp.float32)
    total_BxD = jnp.einsum("bl,bld->bd", weights_BxL, x_BxLxD)
    return total_BxD / jnp.maximum(weights_BxL.sum(-1, keepdims=True), 1.0)


def num_params_formula(model_cfg: ml_collections.ConfigDict, *, vocab_size: int,
                       seq_len: int) -> int:
  """Parameter count of TrafficEncoder, from the shapes above (for tests/docs)."""
  d, f = model_cfg.d_model, model_cfg.ffn_dim
  inner = model_cfg.num_heads * model_cfg.head_dim
  attention = 3 * (d * inner + inner) + (inner * d + d)
  ffn = (d * f + f) + (f * d + d)
  block = attention + ffn + 2 * (2 * d)
  return vocab_size * d + seq_len * d + 2 * d + model_cfg.num_layers * block
