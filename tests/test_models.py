"""Encoder and heads: shapes, parameter counts, PAD masking, dropout, dtype."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pass_jax.models import ClassifierHead, ProjectionHead, make_encoder
from pass_jax.models.encoder import Dropout, num_params_formula
from pass_jax.models.heads import LossWeights

VOCAB, L = 50, 18


def _model_cfg(variant="tiny", **overrides):
  cfg = importlib.import_module("configs.pass").get_config(variant).model
  cfg.update(overrides)
  return cfg


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _tokens(b=4, seed=0, lengths=(18, 10, 5, 12)):
  rs = np.random.RandomState(seed)
  tokens = rs.randint(4, VOCAB, (b, L)).astype(np.int32)
  tokens[:, 0] = 2   # [CLS]
  for row, n in enumerate(lengths[:b]):
    tokens[row, n:] = 0   # [PAD]
  return jnp.asarray(tokens)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_tiny_shapes_and_parameter_count(norm):
  cfg = _model_cfg(norm=norm)
  enc = make_encoder(cfg, vocab_size=VOCAB, seq_len=L, rngs=nnx.Rngs(0))
  assert enc.out_dim == cfg.d_model
  assert _count(nnx.state(enc, nnx.Param)) == num_params_formula(
      cfg, vocab_size=VOCAB, seq_len=L)
  pooled = enc(_tokens(), deterministic=True)
  assert pooled.shape == (4, cfg.d_model) and pooled.dtype == jnp.float32


def test_paper_variant_count_and_shapes_without_allocating():
  cfg = _model_cfg("paper")
  vocab, seq_len = 8000, 98
  enc = nnx.eval_shape(lambda: make_encoder(cfg, vocab_size=vocab, seq_len=seq_len,
                                            rngs=nnx.Rngs(0)))
  n = _count(nnx.state(enc, nnx.Param))
  # Written out for the paper shapes (d=512, 8x64 heads, FFN 1024, N=6):
  block = 4 * (512 * 512 + 512) + (512 * 1024 + 1024) + (1024 * 512 + 512) + 4 * 512
  assert n == vocab * 512 + seq_len * 512 + 2 * 512 + 6 * block
  assert n == num_params_formula(cfg, vocab_size=vocab, seq_len=seq_len)
  assert 15e6 < n < 25e6   # ~20M with this vocabulary
  out = jax.eval_shape(
      lambda t: make_encoder(cfg, vocab_size=vocab, seq_len=seq_len,
                             rngs=nnx.Rngs(0))(t, deterministic=True),
      jax.ShapeDtypeStruct((3, seq_len), jnp.int32))
  assert out.shape == (3, 512)


@pytest.mark.parametrize("pooling,norm", [("cls", "post"), ("mean", "pre"),
                                          ("mean", "post")])
def test_pad_positions_do_not_reach_the_output(pooling, norm):
  cfg = _model_cfg(pooling=pooling, norm=norm)
  enc = make_encoder(cfg, vocab_size=VOCAB, seq_len=L, rngs=nnx.Rngs(0))
  tokens = _tokens()
  before = enc(tokens, deterministic=True)
  # Change everything a PAD position could contribute: the [PAD] embedding and
  # the position vectors beyond the shortest row.
  noise = jax.random.normal(jax.random.key(1), (L, cfg.d_model))
  enc.token_embed.embedding[0] = 100.0 * noise[0]
  enc.pos_embed[5:] = enc.pos_embed[5:] + noise[5:]
  after = enc(tokens, deterministic=True)
  np.testing.assert_allclose(np.asarray(after[2]), np.asarray(before[2]), atol=1e-5)
  # ... while rows that use those positions do change (the check is not vacuous).
  assert not np.allclose(np.asarray(after[0]), np.asarray(before[0]), atol=1e-3)


def test_dropout_off_is_deterministic_and_on_is_random():
  enc = make_encoder(_model_cfg(), vocab_size=VOCAB, seq_len=L, rngs=nnx.Rngs(0))
  tokens = _tokens()
  a = enc(tokens, deterministic=True)
  b = enc(tokens, deterministic=True)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = enc(tokens, deterministic=False)
  d = enc(tokens, deterministic=False)
  assert not np.allclose(np.asarray(c), np.asarray(d))
  no_dropout = make_encoder(_model_cfg(dropout=0.0, attention_dropout=0.0),
                            vocab_size=VOCAB, seq_len=L, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(no_dropout(tokens, deterministic=False)),
                             np.asarray(a), atol=1e-6)


def test_byte_dropout_rate_scale_and_broadcast():
  x = jnp.ones((64, 4, 32, 32))
  drop = Dropout(0.1, broadcast_dims=(1,), rngs=nnx.Rngs(dropout=0))
  y = np.asarray(drop(x, deterministic=False))
  kept = y > 0
  assert abs(kept.mean() - (1 - 26 / 256)) < 0.005          # rate rounded to 26/256
  np.testing.assert_allclose(y[kept], 256 / 230, rtol=1e-6)  # exact 1/keep scale
  assert (kept == kept[:, :1]).all()                        # one mask for all heads
  assert not (kept[:1] == kept[1:2]).all()                  # but not for all examples
  assert drop(x, deterministic=True) is x


def test_bfloat16_compute_keeps_float32_params():
  tokens = _tokens()
  f32 = make_encoder(_model_cfg(), vocab_size=VOCAB, seq_len=L, rngs=nnx.Rngs(0))
  bf16 = make_encoder(_model_cfg(dtype="bfloat16"), vocab_size=VOCAB, seq_len=L,
                      rngs=nnx.Rngs(0))
  assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {
      jnp.dtype(jnp.float32)}
  out = bf16(tokens, deterministic=True)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np.asarray(f32(tokens, deterministic=True)),
                             atol=0.1)


def test_heads_and_loss_weights():
  rngs = nnx.Rngs(0)
  x = jnp.ones((3, 8))
  assert ProjectionHead(8, 8, 4, rngs=rngs)(x).shape == (3, 4)
  assert ClassifierHead(8, 5, rngs=rngs)(x).shape == (3, 5)
  np.testing.assert_allclose(np.asarray(LossWeights((1.0, 0.5), 0.05)()), [1.0, 0.5],
                             rtol=1e-6)
  with pytest.raises(ValueError):
    LossWeights((1.0, 0.01), 0.05)


def test_make_encoder_dispatch():
  with pytest.raises(ValueError, match="unknown model.name"):
    make_encoder(_model_cfg(name="rnn"), vocab_size=VOCAB, seq_len=L, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="pooling"):
    make_encoder(_model_cfg(pooling="max"), vocab_size=VOCAB, seq_len=L,
                 rngs=nnx.Rngs(0))
  cnn = make_encoder(_model_cfg(name="cnn"), vocab_size=VOCAB, seq_len=L,
                     rngs=nnx.Rngs(0))
  assert cnn(_tokens(), deterministic=True).shape == (4, cnn.out_dim)
