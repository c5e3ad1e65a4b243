"""Every loss in w2s_jax.losses against hand computations in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.models import transformer
from w2s_jax.training import losses, objectives
from w2s_jax.training.classifier_losses import Kl, LogConf, Product, Xent
from w2s_jax.training.combined import combined_classifier_objective

from fakes import np_log_softmax, np_softmax, tiny_model_cfg

LOGITS = np.array([[2.0, -1.0], [0.3, 0.8], [-1.5, 0.5], [0.0, 1.2]], np.float32)
LABELS = np.array(
  [
    [0.9, 0.1],
    [0.2, 0.8],
    [1.0, 0.0],  # a zero entry: 0 log 0 = 0 for kl
    [0.35, 0.65],
  ],
  np.float32,
)


def np_xent(logits, labels):
  return float(-np.mean(np.sum(np.asarray(labels, np.float64) * np_log_softmax(logits), -1)))


# ---------------------------------------------------------------- xent, kl


def test_xent_matches_hand_computation():
  # Row by row, written out: -sum_c y_c log softmax(z)_c, then the mean.
  rows = []
  for z, y in zip(LOGITS.astype(np.float64), LABELS.astype(np.float64)):
    logz = np.log(np.exp(z[0]) + np.exp(z[1]))
    rows.append(-(y[0] * (z[0] - logz) + y[1] * (z[1] - logz)))
  expected = np.mean(rows)
  got = float(losses.xent(logits=jnp.asarray(LOGITS), labels=jnp.asarray(LABELS)))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_xent_with_temperature_divides_logits():
  expected = np_xent(LOGITS / 2.0, LABELS)
  got = float(losses.xent(logits=LOGITS, labels=LABELS, temperature=2.0))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # And it is really different from temperature 1 (the test can fail).
  assert abs(got - np_xent(LOGITS, LABELS)) > 1e-3


def test_xent_three_classes():
  logits = np.array([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0], [3.0, 0.0, -3.0]], np.float32)
  labels = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], np.float32)
  np.testing.assert_allclose(
    float(losses.xent(logits=logits, labels=labels)), np_xent(logits, labels), rtol=1e-6
  )


def test_kl_matches_hand_computation_with_zero_label():
  logp = np_log_softmax(LOGITS)
  y = LABELS.astype(np.float64)
  total = 0.0
  for i in range(len(y)):
    for c in range(2):
      if y[i, c] > 0:  # 0 log 0 = 0
        total += y[i, c] * (np.log(y[i, c]) - logp[i, c])
  expected = total / len(y)
  got = float(losses.kl(logits=LOGITS, labels=LABELS))
  assert np.isfinite(got)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_kl_is_xent_minus_label_entropy_and_zero_at_match():
  y = LABELS.astype(np.float64)
  ent = -np.mean([sum(v * np.log(v) for v in row if v > 0) for row in y])
  np.testing.assert_allclose(
    float(losses.kl(logits=LOGITS, labels=LABELS)), np_xent(LOGITS, LABELS) - ent, rtol=1e-5
  )
  # KL(p || p) = 0 when the logits are the log of the labels.
  labels = np.array([[0.25, 0.75], [0.6, 0.4]], np.float32)
  np.testing.assert_allclose(float(losses.kl(logits=np.log(labels), labels=labels)), 0.0, atol=1e-6)


# ---------------------------------------------------------------- product


def np_product_target(logits, labels, alpha, beta):
  p = np_softmax(logits)
  t = p**beta * np.asarray(labels, np.float64) ** alpha
  return t / t.sum(-1, keepdims=True)


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0), (2.0, 0.5)])
def test_product_matches_hand_computation(alpha, beta):
  labels = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.35, 0.65]], np.float32)
  target = np_product_target(LOGITS, labels, alpha, beta)
  expected = np_xent(LOGITS, target)
  got = float(losses.product(logits=LOGITS, labels=labels, alpha=alpha, beta=beta))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_product_alpha_beta_matter():
  labels = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.35, 0.65]], np.float32)
  a = float(losses.product(logits=LOGITS, labels=labels, alpha=1.0, beta=1.0))
  b = float(losses.product(logits=LOGITS, labels=labels, alpha=0.5, beta=2.0))
  assert abs(a - b) > 1e-3


# ---------------------------------------------------------------- logconf


@pytest.mark.parametrize(
  "step_frac,expected",
  [
    (0.0, 0.0),
    (0.025, 0.5 * 0.25),  # a quarter of the warmup
    (0.05, 0.25),  # half the warmup: aux_coef / 2
    (0.1, 0.5),  # end of the warmup
    (0.3, 0.5),  # past the warmup
    (1.0, 0.5),
  ],
)
def test_logconf_coef_linear_ramp(step_frac, expected):
  # c = aux_coef * min(1, step_frac / warmup_frac), warmup_frac=0.1, aux_coef=0.5
  c = float(losses.logconf_coef(step_frac=step_frac, warmup_frac=0.1, aux_coef=0.5))
  assert c == pytest.approx(0.5 * min(1.0, step_frac / 0.1), abs=1e-7)
  assert c == pytest.approx(expected, abs=1e-7)


def test_logconf_coef_differs_from_openai_buggy_ramp():
  warmup, aux = 0.2, 0.4
  step_frac = warmup / 2
  ours = float(losses.logconf_coef(step_frac=step_frac, warmup_frac=warmup, aux_coef=aux))
  openai = step_frac * aux  # openai/weak-to-strong: coef = step_frac during warmup, * aux_coef
  assert ours == pytest.approx(aux / 2, abs=1e-7)
  assert abs(ours - openai) > 1e-3


def test_hardened_predictions_threshold_hand_interpolation():
  logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.5, 0.0], [-2.0, 1.0]], np.float32)
  labels = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 0.0]], np.float32)
  p0 = np_softmax(logits)[:, 0]
  q = labels[:, 1].mean()  # 0.375
  assert q == pytest.approx(0.375)
  s = np.sort(p0)
  h = q * (len(s) - 1)  # 1.125
  lo = int(np.floor(h))
  tau = s[lo] + (h - lo) * (s[lo + 1] - s[lo])
  np.testing.assert_allclose(tau, np.quantile(p0, q, method="linear"), rtol=1e-12)
  # s[1] < tau < s[2]: exactly the two largest p0 are >= tau.
  expected = np.stack([p0 >= tau, p0 < tau], -1).astype(np.float32)
  assert expected[:, 0].sum() == 2
  got = np.asarray(losses.hardened_predictions(logits=logits, labels=labels))
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("step_frac", [0.0, 0.05, 0.1, 0.7])
def test_logconf_matches_hand_computation(step_frac):
  warmup_frac, aux_coef = 0.1, 0.5
  logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.5, 0.0], [-2.0, 1.0], [0.1, 0.2]], np.float32)
  labels = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.55, 0.45]], np.float32)
  c = aux_coef * min(1.0, step_frac / warmup_frac)
  p0 = np_softmax(logits)[:, 0]
  tau = np.quantile(p0, labels[:, 1].astype(np.float64).mean(), method="linear")
  hard = np.stack([p0 >= tau, p0 < tau], -1).astype(np.float64)
  target = (1 - c) * labels.astype(np.float64) + c * hard
  expected = np_xent(logits, target)
  got = float(
    losses.logconf(
      logits=logits, labels=labels, step_frac=step_frac, warmup_frac=warmup_frac, aux_coef=aux_coef
    )
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  if step_frac == 0.0:
    np.testing.assert_allclose(got, np_xent(logits, labels), rtol=1e-5)
  else:
    assert abs(got - np_xent(logits, labels)) > 1e-4


def _binary_logconf_of_today(logits, labels, step_frac):
  """The 2-class loss as it was before k classes (Burns et al.'s rule)."""
  probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  tau = jnp.quantile(probs[:, 0], jnp.mean(labels[:, 1]), method="linear")
  hard = jnp.stack([probs[:, 0] >= tau, probs[:, 0] < tau], axis=-1).astype(jnp.float32)
  c = losses.logconf_coef(step_frac=step_frac)
  return hard, losses.xent(logits=logits, labels=(1.0 - c) * labels + c * hard)


@pytest.mark.parametrize("batch", [5, 8, 32, 33])
def test_k_class_logconf_at_two_classes_is_the_binary_loss(batch):
  rng = np.random.default_rng(batch)
  for trial in range(20):
    logits = rng.normal(size=(batch, 2)).astype(np.float32) * (1 + trial % 3)
    p1 = rng.uniform(size=batch) if trial % 2 else rng.integers(0, 2, batch).astype(float)
    labels = np.stack([1 - p1, p1], -1).astype(np.float32)
    hard, expected = _binary_logconf_of_today(logits, labels, 0.7)
    got_hard = losses.hardened_predictions(logits=logits, labels=labels)
    np.testing.assert_array_equal(np.asarray(got_hard), np.asarray(hard))
    got = losses.logconf(logits=logits, labels=labels, step_frac=0.7)
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_classes", [3, 4, 6])
def test_k_class_hardening_keeps_the_labels_class_balance(num_classes):
  """Each row one class; classes 1..k-1 get their label share of the batch
  within one example, class 0 the rest; and the most confident examples of
  a class are the ones it takes."""
  rng = np.random.default_rng(num_classes)
  batch = 40
  for _ in range(10):
    logits = rng.normal(size=(batch, num_classes)).astype(np.float32) * 2
    labels = rng.dirichlet(np.full(num_classes, 0.5), size=batch).astype(np.float32)
    hard = np.asarray(jax.jit(losses.hardened_predictions)(logits=logits, labels=labels))
    np.testing.assert_array_equal(hard.sum(1), 1.0)
    share = labels.mean(0) * batch
    counts = hard.sum(0)
    assert np.all(np.abs(counts[1:] - share[1:]) <= 1.0), (counts, share)
    assert counts[0] == batch - counts[1:].sum()
    # Class 1 chooses first, from every example: it takes the ones most likely to be it.
    p1 = np_softmax(logits)[:, 1]
    taken = hard[:, 1] == 1
    if taken.any() and (~taken).any():
      assert p1[taken].min() >= p1[~taken].max()


def test_k_class_hardening_by_hand():
  # 4 examples, 3 classes; label shares: class 1 gets 0.25 * 4 = 1, class 2 gets 1.
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.3, 0.5, 0.2]], np.float32)
  labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)
  hard = np.asarray(losses.hardened_predictions(logits=np.log(probs), labels=labels))
  # Class 1: 1 - p1 = [0.8, 0.4, 0.7, 0.5], its quantile at 0.25 is 0.475: example 1 only.
  # Class 2, of examples 0, 2, 3: 1 - p2 = [0.9, 0.5, 0.8], share 1/3, quantile 0.7: example 2.
  np.testing.assert_array_equal(hard, np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]))
  # The mix and the loss for k classes: labels and hardened predictions, as for 2.
  got = float(losses.logconf(logits=np.log(probs), labels=labels, step_frac=1.0))
  np.testing.assert_allclose(got, np_xent(np.log(probs), 0.5 * labels + 0.5 * hard), rtol=1e-5)


# ---------------------------------------------------------------- combined, lm_xent


def test_combined_is_weighted_sum_of_xents():
  weak_logits = LOGITS
  weak_labels = LABELS
  gt_logits = np.array([[0.1, 0.2], [1.0, -1.0], [-0.3, 0.9]], np.float32)
  gt_labels = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
  alpha = 0.3
  expected = alpha * np_xent(weak_logits, weak_labels) + (1 - alpha) * np_xent(gt_logits, gt_labels)
  got = float(
    losses.combined(
      weak_logits=weak_logits,
      weak_labels=weak_labels,
      gt_logits=gt_logits,
      gt_labels=gt_labels,
      alpha=alpha,
    )
  )
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def np_lm_xent(logits, tokens, mask):
  logp = np_log_softmax(logits)
  total, count = 0.0, 0
  b, t = tokens.shape
  for i in range(b):
    for j in range(t - 1):
      if mask[i, j] and mask[i, j + 1]:
        total -= logp[i, j, tokens[i, j + 1]]
        count += 1
  return total / count


def test_lm_xent_with_mask_excludes_padding():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
  tokens = np.array(
    [
      [1, 4, 2, 6, 0],  # right padded (1 pad)
      [0, 0, 1, 3, 5],  # left padded
      [1, 2, 3, 4, 5],
    ],
    np.int32,
  )
  mask = np.array([[1, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int32)
  expected = np_lm_xent(logits, tokens, mask)
  # 3 + 2 + 4 target positions
  got = float(losses.lm_xent(logits=logits, tokens=tokens, mask=mask))
  np.testing.assert_allclose(got, expected, rtol=1e-5)

  # Garbage at padded positions (tokens and logits) changes nothing.
  tokens2, logits2 = tokens.copy(), logits.copy()
  pad = mask == 0
  tokens2[pad] = 6
  logits2[pad] = 100.0 * rng.normal(size=(pad.sum(), 7))
  got2 = float(losses.lm_xent(logits=logits2, tokens=tokens2, mask=mask))
  np.testing.assert_allclose(got2, got, rtol=1e-6)

  # Without the mask the value is different (so the mask is really used).
  unmasked = float(losses.lm_xent(logits=logits, tokens=tokens, mask=np.ones_like(mask)))
  assert abs(unmasked - got) > 1e-3


# ---------------------------------------------------------------- gradients


def _loss_fns():
  return {
    "xent": lambda lg, lb: losses.xent(logits=lg, labels=lb),
    "xent_T2": lambda lg, lb: losses.xent(logits=lg, labels=lb, temperature=2.0),
    "kl": lambda lg, lb: losses.kl(logits=lg, labels=lb),
    "product": lambda lg, lb: losses.product(logits=lg, labels=lb, alpha=0.7, beta=1.5),
    "logconf_warm": lambda lg, lb: losses.logconf(logits=lg, labels=lb, step_frac=0.05),
    "logconf_late": lambda lg, lb: losses.logconf(logits=lg, labels=lb, step_frac=0.9),
    "window": lambda lg, lb: losses.window(logits=lg, labels=lb, radius=0.4),
    "entropy": lambda lg, lb: losses.entropy(logits=lg, labels=lb, step_frac=0.9),
    "adaptconf": lambda lg, lb: losses.adaptconf(logits=lg, labels=lb),
  }


@pytest.mark.parametrize("name", list(_loss_fns()))
def test_no_gradient_reaches_labels(name):
  fn = _loss_fns()[name]
  labels = jnp.asarray(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.35, 0.65]], np.float32))
  g_labels = jax.grad(fn, argnums=1)(jnp.asarray(LOGITS), labels)
  np.testing.assert_array_equal(np.asarray(g_labels), 0.0)
  g_logits = np.asarray(jax.grad(fn, argnums=0)(jnp.asarray(LOGITS), labels))
  assert np.all(np.isfinite(g_logits))
  assert np.abs(g_logits).max() > 1e-4


def test_product_and_logconf_targets_held_constant_in_logit_gradient():
  """d/dz of mean xent against a constant target t is (softmax(z) - t) / B."""
  labels = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.35, 0.65]], np.float32)
  b = len(labels)
  p = np_softmax(LOGITS)

  target = np_product_target(LOGITS, labels, 0.7, 1.5)
  g = jax.grad(lambda z: losses.product(logits=z, labels=labels, alpha=0.7, beta=1.5))(LOGITS)
  np.testing.assert_allclose(np.asarray(g), (p - target) / b, atol=1e-6)

  c = 0.5 * min(1.0, 0.05 / 0.1)
  p0 = p[:, 0]
  tau = np.quantile(p0, labels[:, 1].astype(np.float64).mean(), method="linear")
  hard = np.stack([p0 >= tau, p0 < tau], -1).astype(np.float64)
  target = (1 - c) * labels + c * hard
  g = jax.grad(lambda z: losses.logconf(logits=z, labels=labels, step_frac=0.05))(LOGITS)
  np.testing.assert_allclose(np.asarray(g), (p - target) / b, atol=1e-6)

  g = jax.grad(lambda z: losses.xent(logits=z, labels=labels, temperature=2.0))(LOGITS)
  np.testing.assert_allclose(np.asarray(g), (np_softmax(LOGITS / 2) - labels) / (2 * b), atol=1e-6)


def test_combined_no_gradient_to_weak_or_gt_labels():
  weak_labels = jnp.asarray(LABELS)
  gt_labels = jnp.asarray(np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], np.float32))
  gt_logits = jnp.asarray(np.array([[0.1, 0.2], [1.0, -1.0], [-0.3, 0.9]], np.float32))

  def fn(wl, wy, gl, gy):
    return losses.combined(weak_logits=wl, weak_labels=wy, gt_logits=gl, gt_labels=gy, alpha=0.4)

  g_wl, g_wy, g_gl, g_gy = jax.grad(fn, argnums=(0, 1, 2, 3))(
    jnp.asarray(LOGITS), weak_labels, gt_logits, gt_labels
  )
  np.testing.assert_array_equal(np.asarray(g_wy), 0.0)
  np.testing.assert_array_equal(np.asarray(g_gy), 0.0)
  assert np.abs(np.asarray(g_wl)).max() > 1e-4
  assert np.abs(np.asarray(g_gl)).max() > 1e-4


# ---------------------------------------------------------------- objectives


@pytest.mark.parametrize(
  "cfg,direct",
  [
    (Xent(temperature=3.0), lambda z, y, f: losses.xent(logits=z, labels=y, temperature=3.0)),
    (Kl(), lambda z, y, f: losses.kl(logits=z, labels=y)),
    (
      Product(alpha=0.5, beta=2.0),
      lambda z, y, f: losses.product(logits=z, labels=y, alpha=0.5, beta=2.0),
    ),
    (
      LogConf(warmup_frac=0.4, aux_coef=0.8),
      lambda z, y, f: losses.logconf(
        logits=z, labels=y, step_frac=f, warmup_frac=0.4, aux_coef=0.8
      ),
    ),
  ],
)
def test_each_loss_applies_its_own_hyperparameters(cfg, direct):
  for step_frac in (0.1, 0.9):
    np.testing.assert_allclose(
      float(cfg.loss(logits=LOGITS, labels=LABELS, step_frac=step_frac)),
      float(direct(LOGITS, LABELS, step_frac)),
      rtol=1e-6,
    )


def test_combined_objective_equals_weighted_classifier_objectives():
  cfg = tiny_model_cfg(vocab_size=9, max_len=5)
  params = transformer.init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  params = {
    **params,
    "cls_head": {"kernel": jnp.asarray(rng.normal(size=(9, 2)), jnp.float32), "bias": jnp.zeros(2)},
  }

  def batch(n):
    tokens = rng.integers(0, 9, size=(n, 5)).astype(np.int32)
    p = rng.uniform(size=n).astype(np.float32)
    return {"tokens": tokens, "mask": np.ones_like(tokens), "labels": np.stack([1 - p, p], -1)}

  weak, gt = batch(4), batch(4)
  alpha = 0.25
  key = jax.random.key(0)
  combined_loss, aux = jax.jit(combined_classifier_objective(cfg, alpha=alpha))(
    params,
    {**{f"weak_{k}": v for k, v in weak.items()}, **{f"gt_{k}": v for k, v in gt.items()}},
    0.0,
    key,
  )
  xent_fn = jax.jit(objectives.classifier_objective(cfg, Xent()))
  weak_loss, weak_aux = xent_fn(params, weak, 0.0, key)
  gt_loss, _ = xent_fn(params, gt, 0.0, key)
  np.testing.assert_allclose(
    float(combined_loss), alpha * float(weak_loss) + (1 - alpha) * float(gt_loss), rtol=1e-5
  )
  assert abs(float(weak_loss) - float(gt_loss)) > 1e-4
  assert float(aux["label_agreement"]) == float(weak_aux["label_agreement"])
  with pytest.raises(ValueError, match="alpha=1.5"):
    combined_classifier_objective(cfg, alpha=1.5)


def _eleuther_balanced_logconf(logits, p1, step_frac, warmup_frac=0.1, aux_coef=0.5):
  """EleutherAI/w2s's log_confidence_loss with balance_batch, in numpy: labels
  as p(class 1), balanced in log-odds, hardened at the median of p0."""
  logodds = np.log(p1 + 1e-7) - np.log(1 - p1 + 1e-7)
  p1 = 1 / (1 + np.exp(-(logodds - logodds.mean())))
  c = aux_coef * min(1.0, step_frac / warmup_frac)
  p0 = np_softmax(logits)[:, 0]
  tau = np.quantile(p0, 0.5, method="linear")
  hard = np.stack([p0 >= tau, p0 < tau], -1).astype(np.float64)
  return np_xent(logits, (1 - c) * np.stack([1 - p1, p1], -1) + c * hard)


@pytest.mark.parametrize("batch", [6, 9, 32])
def test_balanced_logconf_at_two_classes_is_eleuthers(batch):
  rng = np.random.default_rng(100 + batch)
  for trial in range(10):
    logits = rng.normal(size=(batch, 2)).astype(np.float32) * (1 + trial % 3)
    # Weak labels leaning to class 1, the imbalance balance_batch removes.
    p1 = rng.beta(4, 1, size=batch) if trial % 2 else rng.integers(0, 2, batch).astype(float)
    labels = np.stack([1 - p1, p1], -1).astype(np.float32)
    for step_frac in (0.0, 0.05, 0.7):
      got = losses.logconf(logits=logits, labels=labels, step_frac=step_frac, balance_batch=True)
      expected = _eleuther_balanced_logconf(logits, p1.astype(np.float32), step_frac)
      np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)


def test_balanced_labels_and_hardening_for_k_classes():
  """balanced_labels removes a class's lean over the batch (each class's mean
  log-label equal); the balanced hardening gives every class 1/k of the batch."""
  rng = np.random.default_rng(7)
  batch, k = 36, 3
  labels = rng.dirichlet([6.0, 1.0, 1.0], size=batch).astype(np.float32)  # class 0 favoured
  balanced = np.asarray(losses.balanced_labels(labels=labels))
  np.testing.assert_allclose(balanced.sum(1), 1.0, rtol=1e-6)
  log_b = np.log(balanced)
  centred = log_b - log_b.mean(1, keepdims=True)  # per-example log-ratios, free of the norm
  np.testing.assert_allclose(centred.mean(0), 0.0, atol=1e-4)
  assert labels.mean(0)[0] > 0.6 and abs(balanced.mean(0)[0] - 1 / k) < 0.1
  logits = rng.normal(size=(batch, k)).astype(np.float32)
  hard = np.asarray(
    losses.hardened_predictions(logits=logits, labels=balanced, shares=np.full(k, 1 / k))
  )
  np.testing.assert_array_equal(hard.sum(0), [12, 12, 12])
  # Balanced labels already balanced: balancing is the identity (up to eps).
  even = np.full((batch, k), 1 / k, np.float32)
  np.testing.assert_allclose(np.asarray(losses.balanced_labels(labels=even)), even, atol=1e-6)


# ---------------------------------------------------------------- window, entropy, adaptconf


def _eleuther_window(logits, p1, radius):
  """EleutherAI/w2s's confidence_window_loss in numpy (labels as p(class 1))."""
  probs = np_softmax(logits)
  unsure = probs.max(-1) < 0.5 + radius
  target = np.stack([1 - p1, p1], -1).astype(np.float64)
  rows = -np.sum(target * np_log_softmax(logits), -1)
  return float(rows[unsure].sum() / len(logits))


@pytest.mark.parametrize("radius", [0.05, 0.15, 0.3])
def test_window_at_two_classes_is_eleuthers(radius):
  rng = np.random.default_rng(int(radius * 100))
  logits = rng.normal(size=(40, 2)).astype(np.float32) * 2
  p1 = rng.uniform(size=40).astype(np.float32)
  labels = np.stack([1 - p1, p1], -1)
  got = float(losses.window(logits=logits, labels=labels, radius=radius))
  expected = _eleuther_window(logits, p1, radius)
  assert expected > 0 and np.sum(np_softmax(logits).max(-1) >= 0.5 + radius) > 0
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_window_limits_and_k_classes():
  """A window as wide as the simplex is naive KD; a confident example adds
  nothing; for k classes the window starts at 1/k."""
  probs = np.array([[0.5, 0.3, 0.2], [0.36, 0.34, 0.30], [0.9, 0.05, 0.05]], np.float32)
  labels = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float32)
  logits = np.log(probs)
  wide = float(losses.window(logits=logits, labels=labels, radius=1.0))
  np.testing.assert_allclose(wide, np_xent(logits, labels), rtol=1e-5)
  # radius 0.1: the window is p_max < 1/3 + 0.1 = 0.433; only row 1 (0.36) is in it.
  got = float(losses.window(logits=logits, labels=labels, radius=0.1))
  np.testing.assert_allclose(got, -np.log(0.36) / 3, rtol=1e-5)


def test_entropy_loss_by_hand():
  c = 0.75 * min(1.0, 0.05 / 0.1)
  p = np_softmax(LOGITS)
  h = -np.mean(np.sum(p * np.log(p), -1))
  expected = (1 - c) * np_xent(LOGITS, LABELS) + c * h
  got = float(losses.entropy(logits=LOGITS, labels=LABELS, step_frac=0.05))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Before the ramp it is naive KD; its gradient pushes the student to commit.
  at0 = float(losses.entropy(logits=LOGITS, labels=LABELS, step_frac=0.0))
  np.testing.assert_allclose(at0, np_xent(LOGITS, LABELS), rtol=1e-6)
  even = np.full((2, 2), 0.5, np.float32)
  z = np.array([[0.3, 0.0], [0.0, 0.3]], np.float32)
  g = np.asarray(jax.grad(lambda z: losses.entropy(logits=z, labels=even, step_frac=1.0))(z))
  # Two classes, by hand: d xent/dz0 = (p0 - y0) / B, dH/dz0 = -p0 p1 (z0 - z1) / B.
  p0 = np_softmax(z)[0, 0]
  expected = 0.25 * (p0 - 0.5) / 2 + 0.75 * (-p0 * (1 - p0) * 0.3) / 2
  np.testing.assert_allclose(g[0, 0], expected, rtol=1e-5)
  assert g[0, 0] < 0  # the entropy term outweighs the even labels: the leading logit grows


def test_adaptconf_limits_and_weights():
  """beta = 0 is naive KD, beta = 1 self-training on the student's own hard
  labels; the adaptive beta trusts whichever of the two is surer."""
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(16, 3)).astype(np.float32) * 2
  labels = rng.dirichlet(np.ones(3), size=16).astype(np.float32)
  kd = float(losses.adaptconf(logits=logits, labels=labels, beta=0.0))
  np.testing.assert_allclose(kd, float(losses.xent(logits=logits, labels=labels)), rtol=1e-6)
  own = np.eye(3)[np.argmax(logits, -1)]
  self_train = float(losses.adaptconf(logits=logits, labels=labels, beta=1.0))
  np.testing.assert_allclose(self_train, np_xent(logits, own), rtol=1e-5)
  # By hand: a sure weak label and an unsure student keep the weak label.
  logits = np.log(np.array([[0.4, 0.6], [0.95, 0.05]], np.float32))
  labels = np.array([[0.99, 0.01], [0.55, 0.45]], np.float32)
  beta = np.asarray(losses.adaptconf_weights(logits=logits, labels=labels))
  u_s, u_w = -np.log([0.6, 0.95]), -np.log([0.99, 0.55])
  np.testing.assert_allclose(beta, np.exp(u_w) / (np.exp(u_w) + np.exp(u_s)), rtol=1e-5)
  assert beta[0] < 0.5 < beta[1]
  target = (1 - beta[:, None]) * labels + beta[:, None] * np.array([[0, 1], [1, 0]])
  got = float(losses.adaptconf(logits=logits, labels=labels))
  np.testing.assert_allclose(got, np_xent(logits, target), rtol=1e-5)


def test_new_losses_are_registered_with_checked_fields():
  from w2s_jax.training.classifier_losses import AdaptConf, Entropy, Window

  assert {"window", "entropy", "adaptconf"} <= set(objectives.known_losses("classification"))
  assert objectives.Loss.from_string("adaptconf") == AdaptConf()
  for bad, needle in (
    (lambda: Window(radius=0.0), "Window.radius=0.0"),
    (lambda: Entropy(aux_coef=2.0), "Entropy.aux_coef=2.0"),
    (lambda: AdaptConf(beta=1.5), "AdaptConf.beta=1.5"),
  ):
    with pytest.raises(ValueError, match=needle):
      bad()
