"""Weights over an ensemble of weak supervisors, fitted on ground truth.

Two ways to weight weak models, as the field does:

- `Stacked`: learned weights (RAVEN's idea, arXiv 2510.21332): the members
  train on train_gt minus a held-out slice, and the weights are the mixture
  weights that maximise the held-out slice's likelihood under the mixed
  class probabilities (`stacking_weights`). RAVEN itself learns its weights
  jointly with the strong model, without ground truth; this is the version
  the issue names, fitted on ground truth the members never trained on.
- `Boosted`: AdaBoost over the members in turn (EnsemW2S, arXiv 2410.04571),
  in its k-class form SAMME (Zhu et al. 2009): member t trains on train_gt
  resampled by the distribution D_t (the first on train_gt as it is, D_0
  uniform), its weight is alpha_t = log((1 - e_t) / e_t) + log(k - 1) with
  e_t its D_t-weighted error on train_gt, and D_{t+1} puts exp(alpha_t)
  times more weight on what it got wrong (`samme_round`). Resampling stands
  in for a weighted loss (Freund and Schapire's boosting by resampling), so
  the shared train step needs no per-example weights.

The ensemble then mixes the members' class probabilities with the weights
(w2s/supervisors.py): soft labels for the student, and its own Pweak.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Stacked:
  """Learned weights: members fit on train_gt minus `holdout_examples` rows
  (drawn per fine-tuning seed), weights fit on those rows."""

  holdout_examples: int = 100

  def __post_init__(self):
    if not (isinstance(self.holdout_examples, int) and self.holdout_examples >= 2):
      raise ValueError(f"Stacked.holdout_examples={self.holdout_examples!r}: expected an int >= 2")

  @property
  def tag(self) -> str:
    return f"stacked on {self.holdout_examples} held-out"


@dataclasses.dataclass(frozen=True)
class Boosted:
  """SAMME over the members in order; each round after the first trains on
  a resample of train_gt drawn with `resample_seed` and the fine-tuning seed."""

  resample_seed: int = 0

  @property
  def tag(self) -> str:
    return "boosted"


Weighting = Stacked | Boosted


def holdout_split(n: int, k: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(fit, held-out) row indices of an n-row split, k held out, drawn with `seed`.

  Raises:
    ValueError: k leaves fewer than 2 rows to fit on.
  """
  if not 2 <= k <= n - 2:
    raise ValueError(
      f"Stacked.holdout_examples={k}: expected in [2, {n - 2}] (train_gt has {n} "
      "examples; the members train on the rest)"
    )
  perm = np.random.default_rng([seed, 7919]).permutation(n)
  return np.sort(perm[k:]), np.sort(perm[:k])


def stacking_weights(*, probs: np.ndarray, labels: np.ndarray, iters: int = 1000) -> np.ndarray:
  """The mixture weights w (on the simplex) maximising sum_i log sum_m w_m
  probs[m, i, labels[i]]: the likelihood of the true labels under the mixed
  class probabilities. The problem is concave in w; EM's update (each
  weight becomes its mean responsibility) climbs it monotonically from the
  uniform mixture.

  Args:
    probs: [members, N, classes] each member's class probabilities.
    labels: [N] the true classes.
    iters: EM steps.

  Returns:
    [members] float64 weights, >= 0, summing to 1.
  """
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  if probs.ndim != 3 or labels.shape != probs.shape[1:2]:
    raise ValueError(
      f"stacking_weights: probs {probs.shape} and labels {labels.shape}: expected "
      "[members, N, classes] and [N]"
    )
  # Each member's probability of the truth, floored: a member sure and wrong
  # on every row must not zero the whole mixture.
  p = np.maximum(np.take_along_axis(probs, labels[None, :, None], axis=2)[..., 0], 1e-12)
  w = np.full(len(p), 1.0 / len(p))
  for _ in range(iters):
    r = w[:, None] * p
    w = (r / r.sum(0, keepdims=True)).mean(1)
  return w


def samme_round(
  *, probs: np.ndarray, labels: np.ndarray, distribution: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """One SAMME round for a member, per seed.

  Args:
    probs: [seeds, N, classes] the member's class probabilities on the rows.
    labels: [N] the true classes.
    distribution: [seeds, N] the round's weights over rows (each sums to 1).

  Returns:
    (alpha [seeds], next distribution [seeds, N]): alpha is
    log((1 - e) / e) + log(k - 1) with e the weighted error (clipped to
    [1e-6, 1 - 1e-6]), and 0 for a member no better than chance (e >= 1 - 1/k,
    where SAMME would stop: its votes carry nothing); the next distribution
    multiplies each wrong row's weight by exp(alpha) and renormalises, so
    that the member's weighted error under it is exactly 1 - 1/k.
  """
  probs, d = np.asarray(probs, np.float64), np.asarray(distribution, np.float64)
  k = probs.shape[-1]
  wrong = (probs.argmax(-1) != np.asarray(labels)[None]).astype(np.float64)
  error = np.clip((d * wrong).sum(1), 1e-6, 1 - 1e-6)
  alpha = np.where(error < 1 - 1 / k, np.log((1 - error) / error) + np.log(k - 1), 0.0)
  nxt = d * np.exp(alpha[:, None] * wrong)
  return alpha, nxt / nxt.sum(1, keepdims=True)


def normalized(alphas: np.ndarray) -> np.ndarray:
  """[seeds, members] SAMME weights as mixture weights: each seed's alphas
  over their sum, or equal weights where every member is at chance (all 0)."""
  alphas = np.asarray(alphas, np.float64)
  total = alphas.sum(1, keepdims=True)
  equal = np.full_like(alphas, 1.0 / alphas.shape[1])
  return np.where(total > 0, alphas / np.where(total > 0, total, 1.0), equal)
