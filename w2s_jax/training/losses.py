"""Pure W2S losses. Each returns the batch-mean scalar loss.

`labels` are soft label probabilities of shape [batch, classes]. Targets built
from labels or from the student's own predictions are held constant: no
gradient ever flows into them.
"""

import jax
import jax.numpy as jnp

from w2s_jax.models.scoring import next_token_log_probs


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


def balanced_labels(*, labels, eps=1e-7):
  """EleutherAI/w2s's `balance_batch`, for k classes: each class's label
  log-probability centred over the batch, then renormalised per example. A
  class the weak model favours across the batch loses that lean; for 2
  classes this is sigmoid(logodds - mean(logodds)) exactly."""
  log_labels = jnp.log(labels.astype(jnp.float32) + eps)
  return jax.nn.softmax(log_labels - jnp.mean(log_labels, axis=0, keepdims=True), axis=-1)


def hardened_predictions(*, logits, labels, shares=None):
  """The student's hard predictions, one-hot, with the labels' class balance.

  Classes 1, ..., k-1 in turn each take a share of the batch (`shares`, by
  default the mean of each label column) from the examples not yet taken:
  those least likely not to be that class (1 - p_c below the share's
  quantile among the examples left); class 0 takes the rest. So every class
  but 0 gets its share of the batch (within one example) and class 0 the
  remainder. For 2 classes this is Burns et al.'s rule exactly: [p0 >= tau,
  p0 < tau], tau the quantile of p0 at mean(labels[:, 1]).
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  prior = jnp.mean(labels.astype(jnp.float32), axis=0) if shares is None else shares
  batch, num_classes = probs.shape
  taken = jnp.zeros((batch,), bool)
  hard = [None] * num_classes
  for c in range(1, num_classes):
    # 1 - p_c as the sum of the other classes: for 2 classes, p0 itself.
    not_c = jnp.sum(jnp.delete(probs, c, axis=1), axis=1)
    if c == 1:  # nothing taken yet: the binary rule's own quantile
      tau = jnp.quantile(not_c, prior[1], method="linear")
    else:
      left = batch - jnp.sum(taken)
      share = jnp.clip(prior[c] * batch / jnp.maximum(left, 1), 0.0, 1.0)
      tau = jnp.nanquantile(jnp.where(taken, jnp.nan, not_c), share, method="linear")
    hard[c] = ~taken & (not_c < tau)
    taken = taken | hard[c]
  hard[0] = ~taken
  return jax.lax.stop_gradient(jnp.stack(hard, axis=-1).astype(jnp.float32))


def logconf(*, logits, labels, step_frac, warmup_frac=0.1, aux_coef=0.5, balance_batch=False):
  """Auxiliary confidence loss of Burns et al. (2023): cross-entropy against
  the labels mixed with the student's hardened predictions (any number of
  classes; hardened_predictions keeps the labels' class balance). With
  balance_batch (EleutherAI/w2s), the labels are balanced_labels and the
  hardening gives every class an equal share of the batch."""
  c = logconf_coef(step_frac=step_frac, warmup_frac=warmup_frac, aux_coef=aux_coef)
  shares = None
  if balance_batch:
    labels = balanced_labels(labels=labels)
    shares = jnp.full((labels.shape[-1],), 1.0 / labels.shape[-1], jnp.float32)
  hard = hardened_predictions(logits=logits, labels=labels, shares=shares)
  return _soft_xent(logits, (1.0 - c) * labels + c * hard)


def window(*, logits, labels, radius=0.15):
  """EleutherAI/w2s's confidence window: cross-entropy against the labels on
  the examples where the student is unsure (its top probability below
  1/k + radius), summed and divided by the whole batch; confident examples
  contribute nothing. For 2 classes the window is p_max < 0.5 + radius."""
  probs = jax.lax.stop_gradient(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
  unsure = jnp.max(probs, axis=-1) < 1.0 / probs.shape[-1] + radius
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  per_example = -jnp.sum(jax.lax.stop_gradient(labels) * logp, axis=-1)
  return jnp.sum(jnp.where(unsure, per_example, 0.0)) / logits.shape[0]


def entropy(*, logits, labels, step_frac, warmup_frac=0.1, aux_coef=0.75):
  """EleutherAI/w2s's log-entropy loss: logconf with the student's entropy in
  place of its hardened quasi-entropy, (1 - c) * xent(labels) + c * H(student),
  c ramping to aux_coef over warmup_frac. Minimising H pushes the student to
  commit, as logconf's hardened term does, without a batch quantile."""
  c = logconf_coef(step_frac=step_frac, warmup_frac=warmup_frac, aux_coef=aux_coef)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  student_entropy = -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))
  return (1.0 - c) * _soft_xent(logits, labels) + c * student_entropy


def adaptconf_weights(*, logits, labels):
  """AdaptConf's per-example beta(x) (Guo et al. 2024, arXiv 2402.03749): how
  much to trust the student's own hard prediction over the weak label,
  exp(u_w) / (exp(u_w) + exp(u_s)), u = -log of a distribution's top
  probability (its cross-entropy against its own hardened prediction). An
  unsure weak label (u_w large) hands the example to the student; an unsure
  student (u_s large) keeps the weak label. Held constant."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  u_student = -jnp.max(logp, axis=-1)
  u_weak = -jnp.log(jnp.max(labels.astype(jnp.float32), axis=-1) + 1e-12)
  return jax.lax.stop_gradient(jax.nn.sigmoid(u_weak - u_student))


def adaptconf(*, logits, labels, beta=None):
  """Cross-entropy against (1 - beta) * labels + beta * the student's own
  one-hot prediction, per example; beta None: adaptconf_weights (AdaptConf).
  beta = 0 is naive KD, beta = 1 self-training on the student's own labels."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  own = jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1], dtype=jnp.float32)
  if beta is None:
    beta = adaptconf_weights(logits=logits, labels=labels)
  beta = jnp.broadcast_to(jnp.asarray(beta, jnp.float32), probs.shape[:1])[:, None]
  return _soft_xent(logits, (1.0 - beta) * labels + beta * own)


def combined(*, weak_logits, weak_labels, gt_logits, gt_labels, alpha):
  """alpha * KD on a weak-labelled batch + (1 - alpha) * xent on a ground-truth batch."""
  return alpha * xent(logits=weak_logits, labels=weak_labels) + (1.0 - alpha) * xent(
    logits=gt_logits, labels=gt_labels
  )


def lm_xent(*, logits, tokens, mask):
  """Next-token cross-entropy, averaged over real (mask = 1) target tokens."""
  target_logp, weight = next_token_log_probs(logits=logits, tokens=tokens, mask=mask)
  return -jnp.sum(target_logp * weight) / jnp.maximum(jnp.sum(weight), 1.0)


# --- Token-level losses for generation ---------------------------------------
# A sequence is prompt + response: tokens, logits [batch, seq, (vocab)], and a
# loss_mask [batch, seq] that is 1 on the response tokens a loss trains on.
# logits[:, t] predicts tokens[:, t + 1], so position t counts when
# loss_mask[:, t + 1] is 1: prompt and padding positions contribute nothing.
# Each loss is the mean over the counted positions of the whole batch. loss_mask
# may also hold float weights w: the loss is then sum(w * d) / max(sum(w), 1)
# (live.py weights two groups of rows so).


def _response_mean(values, loss_mask):
  weight = loss_mask[:, 1:].astype(jnp.float32)
  return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _log_probs(logits, temperature):
  return jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32) / temperature, axis=-1)


def response_xent(*, logits, tokens, loss_mask):
  """Next-token cross-entropy on the response tokens: SFT, or sequence-level KD
  when the response was written by the teacher."""
  target_logp, _ = next_token_log_probs(logits=logits, tokens=tokens, mask=loss_mask)
  return -_response_mean(target_logp, loss_mask)


def _kl(log_p, log_q):
  """KL(p || q) over the last axis, from log-probabilities; 0 log 0 = 0."""
  p = jnp.exp(log_p)
  return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def forward_kl(*, logits, teacher_logits, loss_mask, temperature=1.0):
  """KL(teacher || student) per response position, both softened by temperature
  (no T^2 rescaling): mean-seeking, the student covers all the teacher's mass."""
  teacher = jax.lax.stop_gradient(_log_probs(teacher_logits, temperature))
  return _response_mean(_kl(teacher, _log_probs(logits, temperature)), loss_mask)


def reverse_kl(*, logits, teacher_logits, loss_mask, temperature=1.0):
  """KL(student || teacher) per response position: mode-seeking, the student
  puts its mass where the teacher is confident."""
  teacher = jax.lax.stop_gradient(_log_probs(teacher_logits, temperature))
  return _response_mean(_kl(_log_probs(logits, temperature), teacher), loss_mask)


def generalized_jsd(*, logits, teacher_logits, loss_mask, beta, temperature=1.0):
  """Generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2023), per
  response position:

    M = beta * p_teacher + (1 - beta) * p_student
    JSD(beta) = beta * KL(p_teacher || M) + (1 - beta) * KL(p_student || M)

  (TRL's GKDTrainer uses the same convention.) It vanishes at beta = 0 and at
  beta = 1; near them it is a scaled plain KL: JSD(beta) / beta -> forward
  KL(teacher || student) as beta -> 0, and JSD(beta) / (1 - beta) -> reverse
  KL(student || teacher) as beta -> 1. So beta must lie in (0, 1): use
  forward_kl / reverse_kl for the end points.
  """
  if not 0 < beta < 1:
    raise ValueError(
      f"generalized_jsd beta={beta}: expected in (0, 1) (the end points are "
      "forward_kl and reverse_kl)"
    )
  teacher = jax.lax.stop_gradient(_log_probs(teacher_logits, temperature))
  student = _log_probs(logits, temperature)
  mixture = jnp.logaddexp(jnp.log(beta) + teacher, jnp.log1p(-beta) + student)
  jsd = beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)
  return _response_mean(jsd, loss_mask)
