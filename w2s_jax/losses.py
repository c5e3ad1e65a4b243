"""Pure W2S losses. Each returns the batch-mean scalar loss.

`labels` are soft label probabilities of shape [batch, classes]. Targets built
from labels or from the student's own predictions are held constant: no
gradient ever flows into them.
"""

import jax
import jax.numpy as jnp


def _soft_xent(logits, target):
  target = jax.lax.stop_gradient(target)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(target * logp, axis=-1))


def xent(*, logits, labels, temperature=1.0):
  """Cross-entropy of softmax(logits / temperature) against soft labels (KD).

  No T^2 rescaling is applied; scale the result yourself if you mix
  temperatures in one objective.
  """
  return _soft_xent(logits / temperature, labels)


def kl(*, logits, labels):
  """KL(labels || softmax(logits)), with 0 log 0 = 0."""
  labels = jax.lax.stop_gradient(labels.astype(jnp.float32))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  log_labels = jnp.log(jnp.where(labels > 0, labels, 1.0))
  return jnp.mean(jnp.sum(labels * (log_labels - logp), axis=-1))


def product(*, logits, labels, alpha=1.0, beta=1.0):
  """Cross-entropy against p^beta * labels^alpha, normalised and held constant."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  target = jnp.power(probs, beta) * jnp.power(labels.astype(jnp.float32), alpha)
  target = target / jnp.sum(target, axis=-1, keepdims=True)
  return _soft_xent(logits, target)


def logconf_coef(*, step_frac, warmup_frac=0.1, aux_coef=0.5):
  """Linear ramp from 0 to aux_coef over the first warmup_frac of training.

  openai/weak-to-strong uses step_frac itself as the ramp, which ends the
  warmup at warmup_frac * aux_coef and then jumps to aux_coef.
  """
  ramp = jnp.minimum(1.0, jnp.asarray(step_frac, jnp.float32) / warmup_frac)
  return aux_coef * ramp


def hardened_predictions(*, logits, labels):
  """[p0 >= tau, p0 < tau] with tau the quantile of p0 at q = mean(labels[:, 1]).

  The threshold makes the student's hard predictions carry the same class
  balance as the labels.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  q = jnp.mean(labels[:, 1].astype(jnp.float32))
  tau = jnp.quantile(probs[:, 0], q, method="linear")
  hard = jnp.stack([probs[:, 0] >= tau, probs[:, 0] < tau], axis=-1)
  return jax.lax.stop_gradient(hard.astype(jnp.float32))


def logconf(*, logits, labels, step_frac, warmup_frac=0.1, aux_coef=0.5):
  """Auxiliary confidence loss of Burns et al. (2023), for 2 classes."""
  if logits.shape[-1] != 2:
    raise ValueError(f"logconf: logits have {logits.shape[-1]} classes, expected 2")
  c = logconf_coef(step_frac=step_frac, warmup_frac=warmup_frac, aux_coef=aux_coef)
  hard = hardened_predictions(logits=logits, labels=labels)
  return _soft_xent(logits, (1.0 - c) * labels + c * hard)


def combined(*, weak_logits, weak_labels, gt_logits, gt_labels, alpha):
  """alpha * KD on a weak-labelled batch + (1 - alpha) * xent on a ground-truth batch."""
  return (alpha * xent(logits=weak_logits, labels=weak_labels)
          + (1.0 - alpha) * xent(logits=gt_logits, labels=gt_labels))


def next_token_log_probs(*, logits, tokens, mask):
  """(log p of each real next token, its 0/1 weight), both [batch, seq - 1].

  logits[:, t] predicts tokens[:, t + 1]; a target counts only when both it
  and the position predicting it are real.
  """
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  target_logp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  weight = (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32)
  return target_logp, weight


def lm_xent(*, logits, tokens, mask):
  """Next-token cross-entropy, averaged over real (mask = 1) target tokens."""
  target_logp, weight = next_token_log_probs(logits=logits, tokens=tokens, mask=mask)
  return -jnp.sum(target_logp * weight) / jnp.maximum(jnp.sum(weight), 1.0)
