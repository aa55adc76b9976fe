"""Train state, optimizer and the jitted steps: contrastive, classify, predict.

The NNX model is split once into a static graph (`ModelDef`) and a pure dict
of parameters; each step merges them back inside `jax.jit` (cheaper than
`nnx.jit`, and the state is a plain pytree that Orbax, optax and the sharding
rules handle directly). Dropout keys come from `fold_in(state.rng, state.step)`,
so a run is reproducible and two calls on the same state give the same result.
"""
import dataclasses
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from pass_jax import losses
from pass_jax import sharding
from pass_jax.models import ClassifierHead, ProjectionHead, make_encoder
from pass_jax.models.heads import LossWeights

TASKS = ("pretrain", "classify")


class PretrainModel(nnx.Module):
  """Encoder + projection head: tokens -> points on the contrastive sphere."""

  def __init__(self, config, *, vocab_size: int, seq_len: int, rngs: nnx.Rngs):
    self.encoder = make_encoder(config.model, vocab_size=vocab_size,
                                seq_len=seq_len, rngs=rngs)
    d = self.encoder.out_dim
    self.projection = ProjectionHead(d, d, config.model.proj_dim, rngs=rngs)

  def __call__(self, tokens_BxL, *, deterministic: bool):
    pooled_BxD = self.encoder(tokens_BxL, deterministic=deterministic)
    return self.projection(pooled_BxD), pooled_BxD


class ClassifyModel(nnx.Module):
  """Encoder + linear classifier (+ learnable loss weights for PLI)."""

  def __init__(self, config, *, num_classes: int, vocab_size: int, seq_len: int,
               rngs: nnx.Rngs):
    self.encoder = make_encoder(config.model, vocab_size=vocab_size,
                                seq_len=seq_len, rngs=rngs)
    self.classifier = ClassifierHead(self.encoder.out_dim, num_classes, rngs=rngs)
    if config.pli.weights == "learnable":
      self.loss_weights = LossWeights((config.pli.w_labeled, config.pli.w_pseudo),
                                      config.pli.min_weight)
    elif config.pli.weights != "fixed":
      raise ValueError(f"pli.weights must be learnable|fixed, got {config.pli.weights!r}")

  def __call__(self, tokens_BxL, *, deterministic: bool):
    pooled_BxD = self.encoder(tokens_BxL, deterministic=deterministic)
    return self.classifier(pooled_BxD), pooled_BxD


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """The static half of a split model; hashable, so equal models share a compile.

  Attributes:
    task: 'pretrain' | 'classify'.
    graphdef: the NNX graph, merged with a params dict inside each step.
    rng_treedef, rng_specs: structure and (shape, dtype) of the dropout
      streams' keys and counts. Only shapes are kept (never arrays, which could
      leak tracers into a static field): each step rebuilds the streams and
      reseeds them from the step's key.
  """
  task: str
  graphdef: Any
  rng_treedef: Any
  rng_specs: tuple[tuple[tuple[int, ...], Any], ...]

  @classmethod
  def from_split(cls, task: str, graphdef, rng_state: dict) -> "ModelDef":
    leaves, treedef = jax.tree.flatten(rng_state)
    return cls(task, graphdef, treedef, tuple((x.shape, x.dtype) for x in leaves))

  def merge(self, params, dropout_key: Optional[jax.Array] = None) -> nnx.Module:
    def blank(shape, dtype):
      if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return jnp.broadcast_to(jax.random.key(0), shape)
      return jnp.zeros(shape, dtype)

    rng_state = jax.tree.unflatten(self.rng_treedef,
                                   [blank(*spec) for spec in self.rng_specs])
    model = nnx.merge(self.graphdef, params, rng_state)
    if dropout_key is not None:
      nnx.reseed(model, dropout=dropout_key)
    return model


@dataclasses.dataclass(frozen=True)
class OptimizerDef:
  """What defines the optimizer, as hashable numbers (static in the state).

  Adam(W) with linear warmup then `schedule` decay, and global-norm clipping.
  """
  lr: float
  total_steps: int
  warmup_steps: int
  schedule: str
  b1: float
  b2: float
  weight_decay: float
  grad_clip: float

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, stage: str,
                  total_steps: int) -> "OptimizerDef":
    """stage 'pretrain' uses config.pretrain.lr, anything else finetune.lr."""
    o = config.optim
    if o.schedule not in ("linear", "cosine", "constant"):
      raise ValueError(f"optim.schedule must be linear|cosine|constant, got "
                       f"{o.schedule!r}")
    lr = config.pretrain.lr if stage == "pretrain" else config.finetune.lr
    total_steps = max(int(total_steps), 1)
    warmup = min(int(round(o.warmup * total_steps)), total_steps - 1)
    return cls(float(lr), total_steps, warmup, o.schedule, float(o.b1),
               float(o.b2), float(o.weight_decay), float(o.grad_clip))

  def lr_schedule(self) -> optax.Schedule:
    decay_steps = self.total_steps - self.warmup_steps
    decay = {"linear": lambda: optax.linear_schedule(self.lr, 0.0, decay_steps),
             "cosine": lambda: optax.cosine_decay_schedule(self.lr, decay_steps),
             "constant": lambda: optax.constant_schedule(self.lr)}[self.schedule]()
    return optax.join_schedules(
        [optax.linear_schedule(0.0, self.lr, self.warmup_steps), decay],
        [self.warmup_steps])

  def tx(self) -> optax.GradientTransformation:
    schedule = self.lr_schedule()
    if self.weight_decay > 0:
      # Decay matrices only: biases, LayerNorm scales and the loss
      # log-variances have no reason to shrink towards zero.
      decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
      opt = optax.adamw(schedule, b1=self.b1, b2=self.b2,
                        weight_decay=self.weight_decay, mask=decay_mask)
    else:
      opt = optax.adam(schedule, b1=self.b1, b2=self.b2)
    clip = [optax.clip_by_global_norm(self.grad_clip)] if self.grad_clip > 0 else []
    return optax.chain(*clip, opt)


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; checkpoint the pytree fields.

  step int32[], params (pure dict of arrays), opt_state (optax), rng uint32[2]
  (raw key data, so checkpoints hold plain arrays); static and hashable:
  model_def and optimizer.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model_def: ModelDef = flax.struct.field(pytree_node=False)
  optimizer: OptimizerDef = flax.struct.field(pytree_node=False)

  @property
  def tx(self) -> optax.GradientTransformation:
    return self.optimizer.tx()


def make_optimizer(config: ml_collections.ConfigDict, *, stage: str,
                   total_steps: int):
  """(optax transformation, lr schedule) for a stage of `total_steps` steps."""
  o = OptimizerDef.from_config(config, stage=stage, total_steps=total_steps)
  return o.tx(), o.lr_schedule()


def state_shardings(mesh: Mesh, state: TrainState, *, fsdp: bool) -> TrainState:
  """Where each field of the state lives: model state per the fsdp rule."""
  model = lambda tree: sharding.param_shardings(mesh, tree, fsdp=fsdp)
  rep = sharding.replicated(mesh)
  return state.replace(step=rep, params=model(state.params),
                       opt_state=model(state.opt_state), rng=rep)


def _as_key(rng) -> jax.Array:
  if isinstance(rng, int):
    return jax.random.key(rng)
  rng = jnp.asarray(rng)
  return rng if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) else (
      jax.random.wrap_key_data(rng))


def create_train_state(config: ml_collections.ConfigDict, *, task: str,
                       num_classes: Optional[int], vocab_size: int, seq_len: int,
                       mesh: Mesh, rng, encoder_params=None,
                       total_steps: Optional[int] = None) -> TrainState:
  """A fresh state for `task`, placed on `mesh`.

  Args:
    config: the pipeline config (model, pretrain/finetune lr, optim, pli, mesh).
    task: 'pretrain' (encoder + projection head) or 'classify' (encoder +
      classifier, + learnable loss weights when pli.weights == 'learnable').
    num_classes: classifier width (ignored for pretrain).
    vocab_size, seq_len: token vocabulary size and row length L.
    mesh: from sharding.make_mesh.
    rng: int seed or jax key; parameters and dropout keys derive from it.
    encoder_params: `encoder_params(pretrain_state)` to start from.
    total_steps: length of the run for the lr schedule; default the stage's
      `steps` config (must then be > 0).
  """
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  stage = "pretrain" if task == "pretrain" else "finetune"
  if total_steps is None:
    total_steps = config[stage].steps
    if total_steps <= 0:
      raise ValueError(f"pass total_steps: config.{stage}.steps is not set")
  init_key, train_key = jax.random.split(_as_key(rng))
  # `default` also feeds streams that some backbones ask for (nnx.RNN: carry).
  rngs = nnx.Rngs(default=init_key, dropout=jax.random.fold_in(init_key, 1))
  if task == "pretrain":
    model = PretrainModel(config, vocab_size=vocab_size, seq_len=seq_len, rngs=rngs)
  else:
    model = ClassifyModel(config, num_classes=num_classes, vocab_size=vocab_size,
                          seq_len=seq_len, rngs=rngs)
  graphdef, params, rng_state, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
  if jax.tree.leaves(rest):
    raise ValueError("models may hold only nnx.Param and dropout streams; found "
                     f"other state: {rest}")
  params = nnx.to_pure_dict(params)
  if encoder_params is not None:
    _check_same_shapes(params["encoder"], encoder_params)
    # A copy: this state will be donated to its steps, which must not delete
    # the buffers of the pre-trained state (or of the next PLI round's seed).
    params["encoder"] = jax.tree.map(jnp.copy, encoder_params)
  optimizer = OptimizerDef.from_config(config, stage=stage,
                                       total_steps=total_steps)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.tx().init(params),
                     rng=jax.random.key_data(train_key),
                     model_def=ModelDef.from_split(task, graphdef,
                                                   nnx.to_pure_dict(rng_state)),
                     optimizer=optimizer)
  return jax.device_put(state, state_shardings(mesh, state, fsdp=config.mesh.fsdp))


def _check_same_shapes(expected, given):
  shapes = lambda t: jax.tree.map(jnp.shape, t)
  if jax.tree.structure(expected) != jax.tree.structure(given) or (
      shapes(expected) != shapes(given)):
    raise ValueError("encoder_params do not match this config's encoder: "
                     f"{shapes(given)} vs {shapes(expected)}")


def encoder_params(state: TrainState):
  """The encoder's parameters, to seed `create_train_state(encoder_params=)`."""
  return state.params["encoder"]


def _step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def _apply_gradients(state: TrainState, grads) -> tuple[TrainState, dict]:
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"grad_norm": optax.tree.norm(grads),
             "lr": state.optimizer.lr_schedule()(state.step)}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), metrics


def _jit_step(step_fn, config, mesh: Mesh):
  """jit with the state donated, batch split over `data` and outputs pinned.

  The state's tree is only known once a state exists, but its sharding rule
  depends on shapes alone, so it is applied inside the trace; an output
  constraint is what `out_shardings` would do.
  """
  fsdp = config.mesh.fsdp

  def wrapped(state: TrainState, batch):
    batch = jax.lax.with_sharding_constraint(batch, sharding.batch_sharding(mesh))
    state, metrics = step_fn(state, batch)
    state = jax.lax.with_sharding_constraint(
        state, state_shardings(mesh, state, fsdp=fsdp))
    metrics = jax.lax.with_sharding_constraint(
        {k: v.astype(jnp.float32) for k, v in metrics.items()},
        sharding.replicated(mesh))
    return state, metrics

  return jax.jit(wrapped, donate_argnums=0)


def make_contrastive_step(config: ml_collections.ConfigDict, mesh: Mesh):
  """Jitted `(state, triples batch) -> (state, metrics)` for pre-training."""
  p = config.pretrain

  def step(state: TrainState, batch):
    x_BxL, y_BxL = batch["x"], batch["y"]
    b, l = x_BxL.shape
    # One encoder call on [x, x, y] interleaved per anchor (rows 3i..3i+2), so
    # each device's rows stay on that device; the two copies of x get
    # independent dropout masks: the SimCSE positive pair.
    tokens_Bx3xL = jnp.stack([x_BxL, x_BxL, y_BxL], axis=1)

    def loss_fn(params):
      model = state.model_def.merge(params, _step_key(state))
      proj_3BxP, _ = model(tokens_Bx3xL.reshape(3 * b, l), deterministic=False)
      proj_Bx3xP = proj_3BxP.reshape(b, 3, -1)
      return losses.contrastive_loss(
          proj_Bx3xP[:, 0], proj_Bx3xP[:, 1], proj_Bx3xP[:, 2],
          strong_B=batch["strong"], label_B=batch["label"], tau=p.tau,
          alpha=p.alpha, weak_weight=p.weak_weight,
          y_label_B=batch.get("y_label"), valid_B=batch.get("_mask"))

    (loss, loss_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state, metrics = _apply_gradients(state, grads)
    return state, {"loss": loss, **loss_metrics, **metrics}

  return _jit_step(step, config, mesh)


def make_classify_step(config: ml_collections.ConfigDict, mesh: Mesh):
  """Jitted `(state, classify batch) -> (state, metrics)` for (PLI) fine-tuning.

  Loss: per-example CE (focal when finetune.loss == 'focal') times
  batch['weight'], averaged per group (labelled / pseudo-labelled), combined
  with fixed pli weights or learnable ones (losses.uncertainty_weighted_loss).
  """
  f, pli = config.finetune, config.pli
  gamma = f.focal_gamma if f.loss == "focal" else 0.0

  def step(state: TrainState, batch):
    labels_B = batch["label"]
    ones_B = jnp.ones(labels_B.shape, jnp.float32)
    valid_B = (labels_B >= 0) & batch.get("_mask", ones_B).astype(bool)

    def loss_fn(params):
      model = state.model_def.merge(params, _step_key(state))
      logits_BxC, _ = model(batch["tokens"], deterministic=False)
      loss_B = losses.cross_entropy(logits_BxC, labels_B, gamma=gamma)
      group_2, present_2 = losses.group_losses(
          loss_B, weight_B=batch.get("weight", ones_B),
          is_pseudo_B=batch.get("is_pseudo", 0.0 * ones_B), valid_B=valid_B)
      if "loss_weights" in params:   # structure, hence known at trace time
        log_vars_2 = params["loss_weights"]["log_vars"]
        loss = losses.uncertainty_weighted_loss(group_2, present_2, log_vars_2,
                                                pli.min_weight)
        weights_2 = losses.effective_weights(log_vars_2, pli.min_weight)
      else:
        weights_2 = jnp.array([pli.w_labeled, pli.w_pseudo], jnp.float32)
        loss = losses.fixed_weighted_loss(group_2, weights_2)
      correct_B = jnp.argmax(logits_BxC, -1) == labels_B
      aux = {"accuracy": losses.masked_mean(correct_B, valid_B),
             "loss_labeled": group_2[0], "loss_pseudo": group_2[1],
             "w_labeled": weights_2[0], "w_pseudo": weights_2[1]}
      return loss, aux

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state, metrics = _apply_gradients(state, grads)
    return state, {"loss": loss, **aux, **metrics}

  return _jit_step(step, config, mesh)


def make_predict_step(config: ml_collections.ConfigDict, mesh: Mesh):
  """Jitted `(state, batch) -> {'logits', 'probs', 'embedding'}`, dropout off.

  `embedding` is the pooled encoder output (the classifier's input) for t-SNE.
  A pretrain state has no classifier and returns only 'embedding'.
  """
  del config
  batch_sharding = sharding.batch_sharding(mesh)

  def predict(state: TrainState, batch):
    tokens_BxL = jax.lax.with_sharding_constraint(batch["tokens"], batch_sharding)
    model = state.model_def.merge(state.params)
    head_BxC, pooled_BxD = model(tokens_BxL, deterministic=True)
    out = {"embedding": pooled_BxD}
    if state.model_def.task == "classify":
      out.update(logits=head_BxC, probs=jax.nn.softmax(head_BxC, axis=-1))
    return jax.lax.with_sharding_constraint(out, batch_sharding)

  return jax.jit(predict)
