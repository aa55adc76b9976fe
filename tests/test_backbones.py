"""The baseline backbones keep the encoder's face, ignore [PAD] and can learn."""
import importlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pass_jax.models import backbones

NAMES = ("cnn", "bilstm", "bigru")
VOCAB = 40
RP, PL = 6, 5                 # m/2 RP tokens and n PL tokens of the toy layout
L = 2 + RP + PL
CLS, SEP = 2, 3


def _model_cfg(name):
  cfg = importlib.import_module("configs.pass").get_config("tiny").model
  cfg.name = name
  return cfg


def _make(name, seed=0, seq_len=L):
  return backbones.make_backbone(_model_cfg(name), vocab_size=VOCAB, seq_len=seq_len,
                                 rngs=nnx.Rngs(seed))


def _row(rp, pl):
  """A contract token row: [CLS] rp.. [PAD].. [SEP] pl.. [PAD].."""
  row = np.zeros(L, np.int32)
  row[0] = CLS
  row[1:1 + len(rp)] = rp
  row[1 + RP] = SEP
  row[2 + RP:2 + RP + len(pl)] = pl
  return row


def _batch():
  rng = np.random.RandomState(0)
  return np.stack([
      _row(rng.randint(4, VOCAB, RP), rng.randint(4, VOCAB, PL)),
      _row(rng.randint(4, VOCAB, 3), rng.randint(4, VOCAB, 2)),
      _row(rng.randint(4, VOCAB, 1), []),
      _row([], rng.randint(4, VOCAB, 4)),
  ])


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_determinism(name):
  model = _make(name)
  tokens = jnp.asarray(_batch())
  out1 = model(tokens, deterministic=True)
  out2 = model(tokens, deterministic=True)
  assert out1.shape == (4, model.out_dim)
  assert out1.dtype == jnp.float32
  assert np.isfinite(np.asarray(out1)).all()
  np.testing.assert_array_equal(np.asarray(out1), np.asarray(out2))
  # Dropout acts only when asked to.
  noisy = model(tokens, deterministic=False)
  assert not np.allclose(np.asarray(noisy), np.asarray(out1))
  # Same seed, same parameters, same outputs.
  np.testing.assert_allclose(np.asarray(_make(name)(tokens, deterministic=True)),
                             np.asarray(out1), rtol=1e-6, atol=1e-6)


def test_cnn_takes_paper_length():
  model = _make("cnn", seq_len=2 + 64 + 32)
  tokens = jnp.full((2, 98), 5, jnp.int32)
  assert model(tokens, deterministic=True).shape == (2, model.out_dim)


@pytest.mark.parametrize("name", NAMES)
def test_pad_embedding_is_never_read(name):
  model = _make(name)
  tokens = jnp.asarray(_batch())
  before = np.asarray(model(tokens, deterministic=True))
  table = model.embed.embedding
  table[...] = table[...].at[0].set(50.0 * jax.random.normal(jax.random.key(1), table.shape[1:]))
  after = np.asarray(model(tokens, deterministic=True))
  np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_real_tokens_do_matter(name):
  model = _make(name)
  tokens = _batch()
  changed = tokens.copy()
  changed[:, 2 + RP] = 7  # first PL token, read by every backbone
  changed[2, 2 + RP + 1:] = 0
  out = np.asarray(model(jnp.asarray(tokens), deterministic=True))
  out_changed = np.asarray(model(jnp.asarray(changed), deterministic=True))
  assert np.abs(out - out_changed).max(axis=1).min() > 1e-6


@pytest.mark.parametrize("name", ("bilstm", "bigru"))
def test_recurrent_models_ignore_where_pads_sit(name):
  model = _make(name)
  row = _row([10, 11, 12], [20, 21])       # [CLS] 3 RP, 3 [PAD], [SEP], 2 PL, 3 [PAD]
  packed = np.zeros(L, np.int32)           # same tokens, every [PAD] at the end
  packed[:7] = [CLS, 10, 11, 12, SEP, 20, 21]
  out = np.asarray(model(jnp.asarray(np.stack([row, packed])), deterministic=True))
  np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-5)


def test_bigru_reads_only_packet_lengths():
  model = _make("bigru")
  rng = np.random.RandomState(3)
  pl = rng.randint(4, VOCAB, PL)
  rows = np.stack([_row(rng.randint(4, VOCAB, RP), pl), _row([], pl), _row([9], pl)])
  out = np.asarray(model(jnp.asarray(rows), deterministic=True))
  np.testing.assert_allclose(out[1], out[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[2], out[0], rtol=1e-5, atol=1e-5)


def test_compact_tokens():
  tokens = jnp.asarray([[2, 5, 0, 3, 6, 0], [0, 0, 0, 0, 0, 0]])
  packed, lengths = backbones.compact_tokens(tokens, tokens != 0)
  np.testing.assert_array_equal(np.asarray(packed), [[2, 5, 3, 6, 0, 0], [0] * 6])
  np.testing.assert_array_equal(np.asarray(lengths), [4, 0])


def test_unknown_name_raises():
  with pytest.raises(ValueError, match="unknown baseline"):
    _make("resnet")


class _Classifier(nnx.Module):

  def __init__(self, name):
    self.backbone = _make(name)
    self.head = nnx.Linear(self.backbone.out_dim, 2, rngs=nnx.Rngs(1))

  def __call__(self, tokens, *, deterministic):
    return self.head(self.backbone(tokens, deterministic=deterministic))


@pytest.mark.parametrize("name", NAMES)
def test_adam_steps_reduce_loss_on_separable_toy(name):
  # Class = which of two tokens opens the PL part; RP is noise. Every backbone,
  # BiGRU included, sees the PL part.
  rng = np.random.RandomState(0)
  labels = np.arange(32) % 2
  tokens = np.stack([
      _row(rng.randint(4, VOCAB, RP), [10 + y] + list(rng.randint(12, VOCAB, PL - 1)))
      for y in labels])
  tokens, labels = jnp.asarray(tokens), jnp.asarray(labels)
  model = _Classifier(name)
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  def loss_fn(model):
    logits = model(tokens, deterministic=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  first = float(step(model, optimizer))
  for _ in range(24):
    last = float(step(model, optimizer))
  assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_compute_returns_float32(name):
  cfg = _model_cfg(name)
  cfg.dtype = "bfloat16"
  model = backbones.make_backbone(cfg, vocab_size=VOCAB, seq_len=L, rngs=nnx.Rngs(0))
  out = model(jnp.asarray(_batch()), deterministic=False)
  assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()
