"""Cascading inference: the weak model answers, or defers to the strong one.

A query whose router score is below a threshold is answered by the strong model
and pays for both passes. Routers are jnp (callable inside jit) and, like
`w2s_jax.curation.scores` (a classifier's routers: per_query.py), higher
means "keep the weak answer"; curves, baselines and summaries work on a
per-query table on host (numpy).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.models.scoring import mean_logprob as _mean_token_logprob

BASES = ("cascade", "strong_only")


def _token_args(logprobs, mask):
  logprobs, mask = jnp.asarray(logprobs), jnp.asarray(mask)
  if logprobs.ndim < 1 or logprobs.shape != mask.shape:
    raise ValueError(
      f"logprobs shape {logprobs.shape}, mask shape {mask.shape}: "
      "expected equal shapes [..., tokens]"
    )
  return logprobs, mask.astype(bool)


def mean_logprob(*, logprobs, mask):
  """Mean log-prob of the masked-in response tokens, [..., T] -> [...]
  (scores.mean_logprob, the curation score), except that an empty response
  gives NaN, which `defer_mask` defers: no evidence is no confidence."""
  logprobs, mask = _token_args(logprobs, mask)
  return jnp.where(mask.any(-1), _mean_token_logprob(logprobs=logprobs, mask=mask), jnp.nan)


def quantile_prob(*, logprobs, mask, q):
  """Chow-Quantile (Gupta et al., ICLR 2024): the q-quantile of the per-token
  probabilities, linear between order statistics as np.quantile; q=0 is the
  least likely token, since one bad token can sink a generation the mean hides.
  Padding sorts after the real tokens, so it never counts; empty gives NaN."""
  if not isinstance(q, jax.core.Tracer) and not 0 <= float(q) <= 1:
    raise ValueError(f"quantile_prob q={q}: expected in [0, 1] (0 is the least likely token)")
  logprobs, mask = _token_args(logprobs, mask)
  probs = jnp.sort(jnp.where(mask, jnp.exp(logprobs), jnp.inf), axis=-1)
  last = jnp.maximum(mask.sum(-1) - 1, 0)
  pos = q * last
  lo = jnp.floor(pos).astype(jnp.int32)
  take = lambda i: jnp.take_along_axis(probs, i[..., None], -1)[..., 0]
  below, above = take(lo), take(jnp.minimum(lo + 1, last))
  return jnp.where(mask.any(-1), below + (pos - lo) * (above - below), jnp.nan)


def sample_agreement(*, answers):
  """answers [samples, queries] of answer ids -> the share of samples giving the
  most common answer. The mode, not sample 0's: the majority vote's confidence,
  whatever the sample order (a greedy answer outside the mode agrees less)."""
  answers = jnp.asarray(answers)
  if answers.ndim != 2 or answers.shape[0] < 1:
    raise ValueError(f"answers shape {answers.shape}: expected [samples >= 1, queries]")
  return (answers[:, None, :] == answers[None, :, :]).sum(1).max(0) / answers.shape[0]


def defer_mask(*, scores, threshold):
  """True where the strong model answers: scores < threshold, written as
  not(scores >= threshold) so that a NaN score (an empty response) defers."""
  return ~(jnp.asarray(scores) >= threshold)


class Point(NamedTuple):
  accuracy: float
  cost: float  # mean per query


class Curve(NamedTuple):
  """Operating points for k = 0..N deferred queries, each array [N + 1]."""

  defer_rate: np.ndarray
  accuracy: np.ndarray
  cost: np.ndarray  # mean per query: weak for all, plus strong for the deferred
  thresholds: np.ndarray  # defer_mask(scores, thresholds[k]) defers k if achievable; NaN: none
  achievable: np.ndarray  # False inside a tie: the expectation of a random tie-break


def _vector(fn, name, value, n=None, *, low=-np.inf, high=np.inf, strict=False):
  """float64 [n] (n=None: any non-empty 1-D); costs may be scalars."""
  arr, is_cost = np.asarray(value, np.float64), name.endswith("cost")
  if n is not None and arr.ndim == 0 and is_cost:
    arr = np.full(n, float(arr))
  if arr.ndim != 1 or len(arr) == 0 or len(arr) != (n or len(arr)):
    raise ValueError(
      f"{fn}: {name} has shape {arr.shape}, expected "
      + ("a non-empty 1-D array" if n is None else f"({n},)")
      + " or a scalar" * is_cost
    )
  bad = np.isnan(arr) | (arr <= low if strict else arr < low) | (arr > high)
  bad |= np.isinf(arr) & (name != "scores")
  if bad.any():
    want = (
      "no NaN" if name == "scores" else f"finite values in {'(' if strict else '['}{low}, {high}]"
    )
    raise ValueError(
      f"{fn}: {name}[{np.flatnonzero(bad)[0]}]={arr[bad][0]} "
      f"({bad.sum()} bad values): expected {want}"
    )
  return arr


def _table(fn, scores, weak_correct, strong_correct, weak_cost, strong_cost):
  first = _vector(fn, *(("weak_correct", weak_correct) if scores is None else ("scores", scores)))
  n = len(first)
  return (
    first,
    _vector(fn, "weak_correct", weak_correct, n, low=0, high=1),
    _vector(fn, "strong_correct", strong_correct, n, low=0, high=1),
    _vector(fn, "weak_cost", weak_cost, n, low=0),
    _vector(fn, "strong_cost", strong_cost, n, low=0, strict=True),
  )


def _sorted_curve(s, gain, cost):
  """Rows sorted by ascending score [B, N] -> summed gain and strong cost of the
  k least confident [B, N + 1], and which k a threshold reaches exactly. No
  threshold splits tied scores, so inside a tie the points are the straight
  line between its ends: the expectation of deferring k at random among them."""
  b, n = s.shape
  ks = np.arange(n + 1)
  cum = lambda x: np.concatenate([np.zeros((b, 1)), np.cumsum(x, 1)], 1)
  achievable = np.ones((b, n + 1), bool)
  achievable[:, 1:n] = s[:, :-1] < s[:, 1:]
  lo = np.maximum.accumulate(np.where(achievable, ks, 0), 1)
  hi = np.minimum.accumulate(np.where(achievable, ks, n)[:, ::-1], 1)[:, ::-1]
  frac = (ks - lo) / np.maximum(hi - lo, 1)
  at = lambda c, i: np.take_along_axis(c, i, 1)
  interp = lambda c: (1 - frac) * at(c, lo) + frac * at(c, hi)
  return interp(cum(gain)), interp(cum(cost)), achievable


def _curve(w, wc, gains, costs, thresholds=None, achievable=None):
  n = len(w)
  return Curve(
    np.arange(n + 1) / n,
    w.mean() + gains / n,
    wc.mean() + costs / n,
    np.full(n + 1, np.nan) if thresholds is None else thresholds,
    np.ones(n + 1, bool) if achievable is None else achievable,
  )


def deferral_curve(*, scores, weak_correct, strong_correct, weak_cost, strong_cost) -> Curve:
  """Every threshold at once, from one sort (ties by index, though the tie
  averaging makes their order irrelevant) and cumulative sums."""
  scores, w, s, wc, sc = _table(
    "deferral_curve", scores, weak_correct, strong_correct, weak_cost, strong_cost
  )
  order = np.lexsort((np.arange(len(scores)), scores))
  gains, costs, ok = _sorted_curve(scores[order][None], (s - w)[order][None], sc[order][None])
  return _curve(w, wc, gains[0], costs[0], np.append(scores[order], np.inf), ok[0])


def _point(fn, name, correct, cost):
  c = _vector(fn, f"{name}_correct", correct, low=0, high=1)
  return Point(
    float(c.mean()),
    float(_vector(fn, f"{name}_cost", cost, len(c), low=0, strict=name == "strong").mean()),
  )


def weak_only(*, weak_correct, weak_cost) -> Point:
  return _point("weak_only", "weak", weak_correct, weak_cost)


def strong_only(*, strong_correct, strong_cost) -> Point:
  """The strong model alone: no weak pass, so cheaper than deferring everything."""
  return _point("strong_only", "strong", strong_correct, strong_cost)


def random_curve(*, weak_correct, strong_correct, weak_cost, strong_cost) -> Curve:
  """k queries deferred at random, in expectation: the straight line from
  weak-only to all-deferred, in accuracy and in cost."""
  _, w, s, wc, sc = _table(
    "random_curve", None, weak_correct, strong_correct, weak_cost, strong_cost
  )
  frac = np.arange(len(w) + 1) / len(w)
  return _curve(w, wc, frac * (s - w).sum(), frac * sc.sum())


def oracle_curve(*, weak_correct, strong_correct, weak_cost, strong_cost) -> Curve:
  """Hindsight: defer in descending gain / strong_cost, gain = strong - weak
  correctness (ties by index). Why it bounds every router: a router's point
  (tie-averaged or interpolated) defers query i with some p_i in [0, 1], for
  accuracy mean(weak) + sum p_i gain_i / N at cost mean(weak_cost) +
  sum p_i strong_cost_i / N. At a given cost the best p solves a fractional
  knapsack, filled exactly in descending gain / cost (moving cost from a lower
  to a higher ratio never loses): this curve interpolated in cost. At a given
  defer rate the best are the k largest gains, which this order defers when
  correctness is 0/1 (1/cost > 0 > -1/cost: weak wrong and strong right, then
  equal, then weak right and strong wrong) or costs are uniform."""
  _, w, s, wc, sc = _table(
    "oracle_curve", None, weak_correct, strong_correct, weak_cost, strong_cost
  )
  order = np.lexsort((np.arange(len(w)), -(s - w) / sc))
  cum = lambda x: np.concatenate([[0.0], np.cumsum(x[order])])
  return _curve(w, wc, cum(s - w), cum(sc))


def accuracy_at_cost(curve: Curve, *, cost):
  """Accuracy at a mean cost per query, linear between points (randomising one
  query reaches them); NaN outside the curve's costs, where no cascade runs."""
  cost, lo, hi = np.asarray(cost, np.float64), curve.cost[0], curve.cost[-1]
  slack = 1e-9 * max(abs(lo), abs(hi))  # the ends, summed in another order
  cost = np.where((cost >= lo - slack) & (cost <= hi + slack), np.clip(cost, lo, hi), cost)
  acc = np.interp(cost, curve.cost, curve.accuracy, left=np.nan, right=np.nan)
  return float(acc) if acc.ndim == 0 else acc


def cost_to_reach(curve: Curve, *, target_accuracy: float) -> float:
  """Least mean cost at which the curve (linear between points) reaches the
  target, with 1e-12 slack for rounding; inf if it never does, so that "cheaper
  than" comparisons stay true and a missing point cannot average in as 0."""
  if math.isnan(target_accuracy):
    raise ValueError("cost_to_reach target_accuracy=nan: expected a number")
  acc, cost = curve.accuracy, curve.cost
  reached = np.flatnonzero(acc >= target_accuracy - 1e-12)
  if not len(reached) or reached[0] == 0:
    return float(cost[0]) if len(reached) else math.inf
  k = reached[0]
  t = min(1.0, max(0.0, (target_accuracy - acc[k - 1]) / (acc[k] - acc[k - 1])))
  return float(cost[k - 1] + t * (cost[k] - cost[k - 1]))


def cost_to_reach_strong(curve: Curve, *, fraction: float = 0.95, of: str = "gain") -> float:
  """Cost to reach a fraction of the strong model's accuracy. of="gain" (the
  default reported) targets weak + fraction * (strong - weak), a share of what
  deferral can add, NaN if the strong model is no better; of="accuracy" targets
  fraction * strong, which a weak model near the strong one may meet for free.
  Weak and strong accuracy are the curve's ends, k = 0 and k = N."""
  if not 0 < fraction <= 1 or of not in ("gain", "accuracy"):
    raise ValueError(
      f"cost_to_reach_strong fraction={fraction}, of={of!r}: expected "
      "fraction in (0, 1] and of 'gain' or 'accuracy'"
    )
  weak, strong = float(curve.accuracy[0]), float(curve.accuracy[-1])
  if of == "accuracy":
    return cost_to_reach(curve, target_accuracy=fraction * strong)
  if not strong > weak:
    return math.nan
  return cost_to_reach(curve, target_accuracy=weak + fraction * (strong - weak))


def area_vs_random(curve: Curve, random: Curve) -> float:
  """Area between the accuracy-vs-defer-rate curves (trapezoids) per unit defer
  rate: the router's mean accuracy edge over deferring at random."""
  if curve.defer_rate.shape != random.defer_rate.shape:
    raise ValueError(
      f"area_vs_random: curves have {len(curve.defer_rate)} and "
      f"{len(random.defer_rate)} points, expected the same queries"
    )
  d, gap = curve.defer_rate, curve.accuracy - random.accuracy
  return float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(d)) / (d[-1] - d[0]))


def _lift(dacc, dcost, strong_gap):
  """dacc, dcost [B, N + 1] over weak-only -> IBC lift [B], NaN where undefined."""
  gap = dcost[:, -1] if strong_gap is None else strong_gap
  with np.errstate(divide="ignore", invalid="ignore"):
    base = np.where(gap > 0, dacc[:, -1] / gap, np.nan)
    ibc = np.mean(dacc[:, 1:-1] / dcost[:, 1:-1], 1)
    return np.where(base > 0, (ibc - base) / base, np.nan)


def ibc_lift(curve: Curve, *, base: str = "cascade") -> float:
  """AutoMix's lift in incremental benefit per cost, averaged over the points
  with defer rate in (0, 1): IBC = (acc - acc_weak) / (cost - cost_weak), lift =
  (IBC - IBC_base) / IBC_base (the mean lift is the mean IBC's lift). "cascade"
  draws the base line to the all-deferred point (weak + strong cost), so random
  deferral has lift 0; "strong_only" to the strong model's own cost, as AutoMix
  does (random deferral: -weak/strong cost). NaN if strong is no better."""
  if base not in BASES or len(curve.cost) < 3:
    raise ValueError(
      f"ibc_lift base={base!r} on {len(curve.cost) - 1} queries: expected "
      f"one of {BASES} and >= 2 queries"
    )
  gap = None if base == "cascade" else np.array([curve.cost[-1] - 2 * curve.cost[0]])
  return float(
    _lift((curve.accuracy - curve.accuracy[0])[None], (curve.cost - curve.cost[0])[None], gap)[0]
  )


def ibc_lift_interval(
  *,
  scores,
  weak_correct,
  strong_correct,
  weak_cost,
  strong_cost,
  num_resamples: int = 1000,
  level: float = 0.95,
  seed: int = 0,
  base: str = "cascade",
) -> dict:
  """`ibc_lift` of the deferral curve, with a percentile interval over queries
  resampled with replacement (columns paired). A resample is sorted as ranks in
  the full data's order, so blocks of replicates share one vectorised pass."""
  fn = "ibc_lift_interval"
  scores, w, s, wc, sc = _table(fn, scores, weak_correct, strong_correct, weak_cost, strong_cost)
  if not 0 < level < 1 or num_resamples < 1:
    raise ValueError(
      f"{fn} level={level}, num_resamples={num_resamples}: "
      "expected level in (0, 1) and num_resamples >= 1"
    )
  point = ibc_lift(
    deferral_curve(scores=scores, weak_correct=w, strong_correct=s, weak_cost=wc, strong_cost=sc),
    base=base,
  )
  n = len(scores)
  order = np.lexsort((np.arange(n), scores))
  rank = np.argsort(order)
  rng, lifts, block = np.random.default_rng(seed), [], max(1, 2**21 // n)
  for start in range(0, num_resamples, block):
    q = order[np.sort(rank[rng.integers(0, n, (min(block, num_resamples - start), n))], 1)]
    gains, costs, _ = _sorted_curve(scores[q], (s - w)[q], sc[q])
    gap = None if base == "cascade" else sc[q].mean(1) - wc[q].mean(1)
    lifts.append(_lift(gains / n, costs / n, gap))
  lifts = np.concatenate(lifts)
  finite, tail = lifts[np.isfinite(lifts)], 100 * (1 - level) / 2
  lo, hi = np.percentile(finite, [tail, 100 - tail]) if len(finite) else (math.nan, math.nan)
  return {
    "mean": point,
    "lo": float(lo),
    "hi": float(hi),
    "undefined_frac": float(1 - len(finite) / len(lifts)),
  }
