"""PASS losses: weighted InfoNCE for pre-training, weighted CE / focal for tuning.

Every formula here is written out in docs/design/model.md and checked against a
plain numpy loop in tests/test_losses.py. Functions are pure jnp; the step
functions in train_steps.py call them.
"""
from typing import Optional

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


def _normalize(x_BxP: jax.Array) -> jax.Array:
  x_BxP = x_BxP.astype(jnp.float32)
  return x_BxP / jnp.maximum(jnp.linalg.norm(x_BxP, axis=-1, keepdims=True), 1e-8)


def contrastive_loss(
    h_BxP: jax.Array,
    h2_BxP: jax.Array,
    z_BxP: jax.Array,
    *,
    strong_B: jax.Array,
    label_B: jax.Array,
    tau: float,
    alpha: float,
    weak_weight: float,
    y_label_B: Optional[jax.Array] = None,
    valid_B: Optional[jax.Array] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """InfoNCE with the anchor's second dropout view as positive.

  For anchor i with views h_i, h'_i and sampled negatives z_k = f(y_k):

    L_i = -log  e^{s(h_i,h'_i)/tau} / ( e^{s(h_i,h'_i)/tau}
                  + sum_{j != i} m_ij e^{s(h_i,h'_j)/tau}
                  + sum_k  w_ik n_ik e^{s(h_i,z_k)/tau} )

  with s the cosine similarity, w_ii = alpha if y_i is a strong negative else
  weak_weight, w_ik = weak_weight for k != i (y_k is strong or weak only with
  respect to its own anchor x_k), m_ij = 0 when x_j is known to share x_i's
  label (label >= 0), n_ik = 0 when y_label is given and y_k shares x_i's label.
  Rows with valid=False are neither anchors nor negatives. Loss = mean_i L_i.

  Args:
    h_BxP, h2_BxP: projections of the two dropout views of the anchors x.
    z_BxP: projections of the negatives y.
    strong_B: 1.0 where y_i is a strong negative of x_i, 0.0 where weak.
    label_B: class of x_i (-1 unknown: then never masked as same-class).
    tau, alpha, weak_weight: temperature and negative weights.
    y_label_B: optional class of y_k, to drop false negatives of other anchors.
    valid_B: optional bool mask of real (non-padding) rows.

  Returns:
    (loss, metrics) with metrics 'accuracy' (the positive is the most similar
    candidate), 'pos_sim' and 'neg_sim' (mean cosine to the own negative).
  """
  b = h_BxP.shape[0]
  valid_B = jnp.ones((b,), bool) if valid_B is None else valid_B.astype(bool)
  h_BxP, h2_BxP, z_BxP = _normalize(h_BxP), _normalize(h2_BxP), _normalize(z_BxP)
  sim_views_BxB = h_BxP @ h2_BxP.T       # [i, j] = s(h_i, h'_j)
  sim_negs_BxB = h_BxP @ z_BxP.T         # [i, k] = s(h_i, z_k)

  eye_BxB = jnp.eye(b, dtype=bool)
  known_B = label_B >= 0
  same_class_BxB = (label_B[:, None] == label_B[None, :]) & known_B[:, None]
  keep_views_BxB = eye_BxB | ~same_class_BxB
  keep_negs_BxB = jnp.ones((b, b), bool)
  if y_label_B is not None:
    keep_negs_BxB = ~((label_B[:, None] == y_label_B[None, :]) & known_B[:, None])
  keep_views_BxB &= valid_B[None, :]
  keep_negs_BxB &= valid_B[None, :]

  strong_B = strong_B.astype(jnp.float32)
  own_weight_B = alpha * strong_B + weak_weight * (1.0 - strong_B)
  weight_negs_BxB = jnp.where(eye_BxB, own_weight_B[:, None], weak_weight)
  keep_negs_BxB &= weight_negs_BxB > 0
  # log w folds the weights into the logits: w e^{s/tau} = e^{s/tau + log w}.
  log_w_negs_BxB = jnp.where(keep_negs_BxB,
                             jnp.log(jnp.where(keep_negs_BxB, weight_negs_BxB, 1.0)),
                             _NEG_INF)
  logits_views_BxB = jnp.where(keep_views_BxB, sim_views_BxB / tau, _NEG_INF)
  logits_Bx2B = jnp.concatenate(
      [logits_views_BxB, sim_negs_BxB / tau + log_w_negs_BxB], axis=1)
  positive_B = jnp.diagonal(sim_views_BxB) / tau
  loss_B = jax.nn.logsumexp(logits_Bx2B, axis=1) - positive_B

  unweighted_Bx2B = jnp.concatenate(
      [logits_views_BxB, jnp.where(keep_negs_BxB, sim_negs_BxB / tau, _NEG_INF)],
      axis=1)
  correct_B = jnp.argmax(unweighted_Bx2B, axis=1) == jnp.arange(b)
  metrics = {
      "accuracy": masked_mean(correct_B, valid_B),
      "pos_sim": masked_mean(jnp.diagonal(sim_views_BxB), valid_B),
      "neg_sim": masked_mean(jnp.diagonal(sim_negs_BxB), valid_B),
  }
  return masked_mean(loss_B, valid_B), metrics


def masked_mean(x_B: jax.Array, mask_B: jax.Array) -> jax.Array:
  mask_B = mask_B.astype(jnp.float32)
  return jnp.sum(x_B.astype(jnp.float32) * mask_B) / jnp.maximum(mask_B.sum(), 1.0)


def cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array, *,
                  gamma: float = 0.0) -> jax.Array:
  """Per-example -(1 - p_t)^gamma log p_t: plain CE at gamma=0, else focal loss.

  Labels < 0 (no class) give 0.
  """
  logp_BxC = jax.nn.log_softmax(logits_BxC.astype(jnp.float32), axis=-1)
  onehot_BxC = jax.nn.one_hot(labels_B, logits_BxC.shape[-1], dtype=jnp.float32)
  logp_t_B = jnp.sum(onehot_BxC * logp_BxC, axis=-1)
  if gamma == 0.0:
    return -logp_t_B
  # Focal loss (Lin et al. 2017): down-weights examples already fitted well.
  return -((1.0 - jnp.exp(logp_t_B)) ** gamma) * logp_t_B


def group_losses(loss_B: jax.Array, *, weight_B: jax.Array,
                 is_pseudo_B: jax.Array, valid_B: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """Mean weighted loss of the labelled and of the pseudo-labelled rows.

  L_g = sum_{i in g} weight_i loss_i / max(|g|, 1), g in (labelled, pseudo):
  dividing by the row count (not the weight sum) keeps class weights effective.

  Returns:
    (losses_2, present_2): [L_labeled, L_pseudo] and 1.0 where the group has
    rows in this batch.
  """
  valid_B = valid_B.astype(jnp.float32)
  pseudo_B = is_pseudo_B.astype(jnp.float32) * valid_B
  member_2xB = jnp.stack([valid_B - pseudo_B, pseudo_B])
  count_2 = member_2xB.sum(axis=1)
  total_2 = member_2xB @ (weight_B.astype(jnp.float32) * loss_B)
  return total_2 / jnp.maximum(count_2, 1.0), (count_2 > 0).astype(jnp.float32)


def initial_log_vars(weights_2, floor: float) -> jax.Array:
  """The s_k with effective_weights(s) == weights (each must exceed floor)."""
  weights_2 = jnp.asarray(weights_2, jnp.float32)
  return -jnp.log(weights_2 - floor)


def effective_weights(log_vars_2: jax.Array, floor: float) -> jax.Array:
  """w_k = floor + exp(-s_k): never below floor, so no group is switched off."""
  return floor + jnp.exp(-log_vars_2)


def uncertainty_weighted_loss(losses_2: jax.Array, present_2: jax.Array,
                              log_vars_2: jax.Array, floor: float) -> jax.Array:
  """sum_k present_k (w_k L_k + s_k / 2), after Kendall et al. (2018).

  Minimising over s_k alone gives w_k - floor = 1 / (2 L_k): the regulariser
  s_k/2 keeps the weights from running to the floor, and a group absent from a
  batch leaves its s_k untouched (its terms are multiplied by 0).
  """
  w_2 = effective_weights(log_vars_2, floor)
  return jnp.sum(present_2 * (w_2 * losses_2 + 0.5 * log_vars_2))


def fixed_weighted_loss(losses_2: jax.Array, weights_2) -> jax.Array:
  """w_labeled L_labeled + w_pseudo L_pseudo (absent groups have L = 0)."""
  return jnp.sum(jnp.asarray(weights_2, jnp.float32) * losses_2)
