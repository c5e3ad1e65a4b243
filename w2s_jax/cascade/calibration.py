"""Calibration of a classifier's confidences: temperature scaling and ECE.

A cascade's confidence router works best when the weak model's max
probability means what it says; `fit_temperature` rescales its logits on
held-out labels (Guo et al. 2017) and `expected_calibration_error` measures
the gap between confidence and accuracy.
"""

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.w2s import metrics


@jax.jit
def _inverse_temperature(logits, labels):
  target = jnp.take_along_axis(logits, labels[:, None], 1)[:, 0]

  def step(_, bounds):  # bisect log(beta) on the sign of dNLL/dbeta = E_p[z] - z_label
    lo, hi = bounds
    mid = (lo + hi) / 2
    p = jax.nn.softmax(jnp.exp(mid) * logits, -1)
    rising = jnp.mean(jnp.sum(p * logits, -1) - target) > 0
    return jnp.where(rising, lo, mid), jnp.where(rising, mid, hi)

  lo, hi = jax.lax.fori_loop(0, 50, step, (jnp.log(1e-2), jnp.log(1e2)))
  return jnp.exp((lo + hi) / 2)


def fit_temperature(*, logits, labels) -> float:
  """T minimising the NLL of softmax(logits / T) on held-out labels. The NLL is
  convex in beta = 1/T, so its slope changes sign once: 50 deterministic
  bisection steps on log(beta), with T in [1e-2, 1e2] (a bound comes back when
  the optimum lies beyond it, e.g. separable data wants T -> 0)."""
  logits, labels = np.asarray(logits, np.float32), np.asarray(labels)
  if (
    logits.ndim != 2
    or len(logits) == 0
    or logits.shape[1] < 2
    or not np.isfinite(logits).all()
    or labels.shape != logits.shape[:1]
    or not np.issubdtype(labels.dtype, np.integer)
    or not 0 <= labels.min() <= labels.max() < logits.shape[1]
  ):
    raise ValueError(
      f"fit_temperature: logits {logits.shape}, labels {labels.shape} "
      f"{labels.dtype}: expected finite logits [N >= 1, classes >= 2] and "
      f"int labels [N] in [0, classes)"
    )
  return float(1 / _inverse_temperature(jnp.asarray(logits), jnp.asarray(labels)))


def expected_calibration_error(*, probs, labels, num_bins: int = 15) -> float:
  """Equal-width bins (i/B, (i+1)/B] of max prob; sum_b n_b/N |acc_b - conf_b|,
  computed as sum_b |correct_b - confidence_b| / N."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  if (
    probs.ndim != 2
    or len(probs) == 0
    or labels.shape not in (probs.shape, probs.shape[:1])
    or num_bins < 1
  ):
    raise ValueError(
      f"expected_calibration_error: probs {probs.shape}, labels {labels.shape}, "
      f"num_bins={num_bins}: expected [N >= 1, classes], [N] or [N, classes], >= 1"
    )
  conf = probs.max(-1)
  bins = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)
  gap = np.bincount(bins, metrics.correct(probs=probs, labels=labels), num_bins) - np.bincount(
    bins, conf, num_bins
  )
  return float(np.abs(gap).sum() / len(conf))
