"""The losses against plain numpy loops written straight from docs/design/model.md."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pass_jax import losses


def _cos(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _contrastive_loop(h, h2, z, strong, label, tau, alpha, weak, y_label=None,
                      valid=None):
  """L_i = -log e^{s_ii'} / (sum_j m_ij e^{s_ij'} + sum_k w_ik n_ik e^{s(h_i,z_k)})."""
  b = len(h)
  valid = np.ones(b, bool) if valid is None else valid
  per_anchor = []
  for i in range(b):
    if not valid[i]:
      continue
    positive = math.exp(_cos(h[i], h2[i]) / tau)
    denominator = positive
    for j in range(b):
      same_class = label[i] >= 0 and label[j] == label[i]
      if j != i and valid[j] and not same_class:
        denominator += math.exp(_cos(h[i], h2[j]) / tau)
    for k in range(b):
      if not valid[k]:
        continue
      if y_label is not None and label[i] >= 0 and y_label[k] == label[i]:
        continue
      w = (alpha if strong[k] else weak) if k == i else weak
      denominator += w * math.exp(_cos(h[i], z[k]) / tau)
    per_anchor.append(-math.log(positive / denominator))
  return float(np.mean(per_anchor))


def _random_views(b=6, p=5, seed=0):
  rs = np.random.RandomState(seed)
  h = rs.randn(b, p).astype(np.float32)
  h2 = h + 0.3 * rs.randn(b, p).astype(np.float32)
  z = rs.randn(b, p).astype(np.float32)
  strong = np.array([1, 0, 1, 1, 0, 0], np.float32)[:b]
  label = np.array([0, 1, 0, 2, -1, 1], np.int32)[:b]
  return h, h2, z, strong, label


@pytest.mark.parametrize("alpha,weak,tau", [(2.0, 1.0, 0.05), (3.0, 0.5, 0.5)])
def test_contrastive_matches_loop(alpha, weak, tau):
  h, h2, z, strong, label = _random_views()
  got, metrics = losses.contrastive_loss(h, h2, z, strong_B=strong, label_B=label,
                                         tau=tau, alpha=alpha, weak_weight=weak)
  want = _contrastive_loop(h, h2, z, strong, label, tau, alpha, weak)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["pos_sim"]),
                             np.mean([_cos(a, b) for a, b in zip(h, h2)]), rtol=1e-5)


def test_contrastive_with_y_labels_and_padding_matches_loop():
  h, h2, z, strong, label = _random_views(seed=1)
  y_label = np.array([1, 0, 2, 0, 0, 2], np.int32)
  valid = np.array([1, 1, 1, 1, 1, 0], bool)
  got, _ = losses.contrastive_loss(h, h2, z, strong_B=strong, label_B=label, tau=0.1,
                                   alpha=2.0, weak_weight=1.0, y_label_B=y_label,
                                   valid_B=valid)
  want = _contrastive_loop(h, h2, z, strong, label, 0.1, 2.0, 1.0, y_label, valid)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_strong_negatives_weigh_more():
  h, h2, z, _, label = _random_views(seed=2)
  args = dict(label_B=label, tau=0.1, weak_weight=1.0)
  all_strong = np.ones(len(h), np.float32)
  loss_a1, _ = losses.contrastive_loss(h, h2, z, strong_B=all_strong, alpha=1.0, **args)
  loss_a2, _ = losses.contrastive_loss(h, h2, z, strong_B=all_strong, alpha=2.0, **args)
  loss_weak, _ = losses.contrastive_loss(h, h2, z, strong_B=0 * all_strong, alpha=2.0,
                                         **args)
  assert float(loss_a2) > float(loss_a1)
  np.testing.assert_allclose(float(loss_weak), float(loss_a1), rtol=1e-6)


def test_contrastive_gradient_is_finite_with_masked_entries():
  h, h2, z, strong, _ = _random_views(seed=3)
  same_label = np.zeros(len(h), np.int32)   # every in-batch view masked out
  grad = jax.grad(lambda a: losses.contrastive_loss(
      a, h2, z, strong_B=strong, label_B=same_label, tau=0.05, alpha=2.0,
      weak_weight=1.0)[0])(jnp.asarray(h))
  assert np.all(np.isfinite(grad))


def _ce_loop(logits, labels, gamma):
  out = []
  for row, y in zip(logits, labels):
    p = np.exp(row - row.max())
    p = p / p.sum()
    out.append(-((1 - p[y]) ** gamma) * math.log(p[y]))
  return np.array(out)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_cross_entropy_and_focal_match_loop(gamma):
  rs = np.random.RandomState(0)
  logits = rs.randn(7, 4).astype(np.float32) * 3
  labels = rs.randint(0, 4, 7)
  got = losses.cross_entropy(logits, labels, gamma=gamma)
  np.testing.assert_allclose(np.asarray(got), _ce_loop(logits, labels, gamma),
                             rtol=1e-5)


def test_group_losses_by_hand():
  loss = np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32)
  weight = np.array([1.0, 2.0, 1.0, 0.5, 1.0], np.float32)
  is_pseudo = np.array([0, 0, 1, 1, 0], np.float32)
  valid = np.array([1, 1, 1, 1, 0], bool)
  group, present = losses.group_losses(loss, weight_B=weight, is_pseudo_B=is_pseudo,
                                       valid_B=valid)
  np.testing.assert_allclose(np.asarray(group), [(1 + 4) / 2, (3 + 2) / 2])
  np.testing.assert_array_equal(np.asarray(present), [1.0, 1.0])
  group, present = losses.group_losses(loss, weight_B=weight, is_pseudo_B=0 * is_pseudo,
                                       valid_B=valid)
  np.testing.assert_allclose(np.asarray(group), [(1 + 4 + 3 + 2) / 4, 0.0])
  np.testing.assert_array_equal(np.asarray(present), [1.0, 0.0])


def test_fixed_weights():
  got = losses.fixed_weighted_loss(jnp.array([2.0, 4.0]), (1.0, 0.5))
  assert float(got) == pytest.approx(4.0)


def test_learnable_weights_start_at_config_and_respect_floor():
  floor = 0.05
  s = losses.initial_log_vars((1.0, 0.5), floor)
  np.testing.assert_allclose(np.asarray(losses.effective_weights(s, floor)),
                             [1.0, 0.5], rtol=1e-6)
  # Optimise the weights alone against huge losses: they shrink, never below floor.
  big = jnp.array([50.0, 500.0])
  grad = jax.jit(jax.grad(lambda s: losses.uncertainty_weighted_loss(
      big, jnp.ones(2), s, floor)))
  for _ in range(300):
    s = s - 0.5 * grad(s)
  w = np.asarray(losses.effective_weights(s, floor))
  assert np.all(w >= floor) and np.all(w < 0.1)
  # Stationary point of the unfloored part: exp(-s) = 1 / (2 L).
  s_star = jnp.log(2 * big)
  np.testing.assert_allclose(np.asarray(grad(s_star)), [0.0, 0.0], atol=1e-6)


def test_learnable_loss_by_hand_and_absent_group_untouched():
  floor = 0.05
  s = jnp.array([0.2, -0.3])
  group = jnp.array([1.5, 0.7])
  got = losses.uncertainty_weighted_loss(group, jnp.ones(2), s, floor)
  w = floor + np.exp(-np.asarray(s))
  np.testing.assert_allclose(float(got), float(np.sum(w * group + 0.5 * s)), rtol=1e-6)
  grad = jax.grad(lambda s: losses.uncertainty_weighted_loss(
      group, jnp.array([1.0, 0.0]), s, floor))(s)
  assert float(grad[1]) == 0.0 and float(grad[0]) != 0.0
