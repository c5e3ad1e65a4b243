"""Cascade routers, deferral curves, baselines and summaries against loops and hand numbers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.cascade import routers
from w2s_jax.curation import scores


def _take(table, idx):
  n = len(table["scores"])
  return {k: np.broadcast_to(v, (n,))[idx] for k, v in table.items()}


def _table(seed, n=40, *, binary=True, uniform_cost=False, ties=True):
  rng = np.random.default_rng(seed)
  s = rng.integers(0, 8, n).astype(float) if ties else rng.random(n)
  if binary:
    weak, strong = (rng.random(n) < 0.6) * 1.0, (rng.random(n) < 0.8) * 1.0
  else:
    weak, strong = 0.8 * rng.random(n), 0.2 + 0.8 * rng.random(n)
  strong_cost = 10.0 if uniform_cost else rng.uniform(5, 20, n)
  return dict(
    scores=s,
    weak_correct=weak,
    strong_correct=strong,
    weak_cost=rng.uniform(0.5, 2, n),
    strong_cost=strong_cost,
  )


def _loop_curve(scores, weak_correct, strong_correct, weak_cost, strong_cost):
  """One threshold at a time: defer the k least confident, ties shared evenly."""
  n = len(scores)
  strong_cost = np.broadcast_to(strong_cost, (n,))
  ordered = np.sort(scores)
  acc, cost = [], []
  for k in range(n + 1):
    p = np.zeros(n)
    if k:
      t = ordered[k - 1]
      below, tied = scores < t, scores == t
      p = below + tied * (k - below.sum()) / tied.sum()
    acc.append(np.mean(weak_correct * (1 - p) + strong_correct * p))
    cost.append(np.mean(weak_cost + p * strong_cost))
  return np.array(acc), np.array(cost)


@pytest.mark.parametrize("seed", range(5))
def test_curve_matches_threshold_loop(seed):
  table = _table(seed, binary=seed % 2 == 0)
  curve = routers.deferral_curve(**table)
  acc, cost = _loop_curve(**table)
  np.testing.assert_allclose(curve.accuracy, acc, atol=1e-12)
  np.testing.assert_allclose(curve.cost, cost, atol=1e-12)
  np.testing.assert_allclose(curve.defer_rate, np.arange(41) / 40)
  # Where achievable, the returned threshold defers exactly k; elsewhere k splits a tie.
  ordered = np.sort(table["scores"])
  np.testing.assert_array_equal(curve.achievable[1:-1], ordered[:-1] < ordered[1:])
  assert (~curve.achievable).any()
  for k in np.flatnonzero(curve.achievable):
    defer = np.asarray(routers.defer_mask(scores=table["scores"], threshold=curve.thresholds[k]))
    assert defer.sum() == k
    hard = np.where(defer, table["strong_correct"], table["weak_correct"]).mean()
    assert curve.accuracy[k] == pytest.approx(hard, abs=1e-12)
  # Tie handling makes the curve independent of query order.
  perm = np.random.default_rng(seed).permutation(40)
  shuffled = routers.deferral_curve(**_take(table, perm))
  np.testing.assert_allclose(shuffled.accuracy, curve.accuracy, atol=1e-12)


def test_hand_example():
  table = dict(
    scores=[0.9, 0.2, 0.5, 0.7],
    weak_correct=[1, 0, 1, 0],
    strong_correct=[1, 1, 0, 1],
    weak_cost=1.0,
    strong_cost=[10, 10, 20, 10],
  )
  curve = routers.deferral_curve(**table)
  np.testing.assert_allclose(curve.accuracy, [0.5, 0.75, 0.5, 0.75, 0.75])
  np.testing.assert_allclose(curve.cost, [1, 3.5, 8.5, 11, 13.5])
  np.testing.assert_allclose(curve.thresholds, [0.2, 0.5, 0.7, 0.9, np.inf])
  assert curve.achievable.all()
  base = {k: table[k] for k in ("weak_correct", "strong_correct", "weak_cost", "strong_cost")}
  assert routers.weak_only(weak_correct=table["weak_correct"], weak_cost=1.0) == (0.5, 1.0)
  assert routers.strong_only(
    strong_correct=table["strong_correct"], strong_cost=table["strong_cost"]
  ) == (0.75, 12.5)
  oracle = routers.oracle_curve(**base)
  np.testing.assert_allclose(oracle.accuracy, [0.5, 0.75, 1, 1, 0.75])
  np.testing.assert_allclose(oracle.cost, [1, 3.5, 6, 8.5, 13.5])
  random = routers.random_curve(**base)
  np.testing.assert_allclose(random.accuracy, [0.5, 0.5625, 0.625, 0.6875, 0.75])
  assert routers.area_vs_random(curve, random) == pytest.approx(0.03125)
  assert routers.accuracy_at_cost(curve, cost=2.25) == pytest.approx(0.625)
  np.testing.assert_allclose(
    routers.accuracy_at_cost(curve, cost=[0.5, 6, 20]), [np.nan, 0.625, np.nan]
  )
  assert routers.cost_to_reach(curve, target_accuracy=0.75) == pytest.approx(3.5)
  assert routers.cost_to_reach(curve, target_accuracy=0.4) == pytest.approx(1.0)
  assert routers.cost_to_reach(curve, target_accuracy=0.8) == np.inf
  assert routers.cost_to_reach_strong(curve, fraction=0.95) == pytest.approx(1 + 0.95 * 2.5)
  assert routers.cost_to_reach_strong(curve, fraction=0.95, of="accuracy") == pytest.approx(
    1 + 0.85 * 2.5
  )
  assert routers.cost_to_reach_strong(curve, fraction=1.0) == pytest.approx(3.5)
  # IBC per point (k = 1..3): 0.25/2.5, 0/7.5, 0.25/10; base 0.25/12.5 (cascade), 0.25/11.5.
  mean_ibc = (0.1 + 0 + 0.025) / 3
  assert routers.ibc_lift(curve) == pytest.approx(mean_ibc / 0.02 - 1)
  assert routers.ibc_lift(curve, base="strong_only") == pytest.approx(mean_ibc / (0.25 / 11.5) - 1)


def test_ibc_lift_of_perfect_router():
  table = dict(
    scores=[0.1, 0.2, 0.8, 0.9],
    weak_correct=[0, 0, 1, 1],
    strong_correct=[1, 1, 1, 1],
    weak_cost=1.0,
    strong_cost=9.0,
  )
  curve = routers.deferral_curve(**table)
  np.testing.assert_allclose(curve.cost, [1, 3.25, 5.5, 7.75, 10])
  # IBC at k = 1, 2, 3: 1/9, 1/9, 2/27 -> mean 8/81; base 0.5/9 = 1/18 -> lift 144/81 - 1.
  assert routers.ibc_lift(curve) == pytest.approx(7 / 9)
  assert routers.ibc_lift(curve, base="strong_only") == pytest.approx(8 / 81 * 16 - 1)
  del table["scores"]
  assert routers.ibc_lift(routers.oracle_curve(**table)) == pytest.approx(7 / 9)


@pytest.mark.parametrize("seed", range(3))
def test_random_is_straight_and_has_zero_lift(seed):
  table = _table(seed, binary=False)
  del table["scores"]
  random = routers.random_curve(**table)
  for y in (random.accuracy, random.cost):
    np.testing.assert_allclose(np.diff(y, 2), 0, atol=1e-12)
  full = routers.deferral_curve(scores=np.arange(40.0), **table)
  for field in ("accuracy", "cost"):
    np.testing.assert_allclose(getattr(random, field)[[0, -1]], getattr(full, field)[[0, -1]])
  assert routers.ibc_lift(random) == pytest.approx(0, abs=1e-12)
  # AutoMix's base charges the strong model alone: random pays the weak pass on top.
  assert routers.ibc_lift(random, base="strong_only") == pytest.approx(
    -np.mean(table["weak_cost"]) / np.mean(table["strong_cost"])
  )
  assert routers.area_vs_random(random, random) == 0
  swapped = routers.random_curve(
    **{**table, "weak_correct": table["strong_correct"], "strong_correct": table["weak_correct"]}
  )
  assert np.isnan(routers.ibc_lift(swapped))  # the strong model is no better: undefined


@pytest.mark.parametrize("seed", range(4))
def test_oracle_bounds_every_router(seed):
  rng = np.random.default_rng(100 + seed)
  for binary, uniform in ((True, False), (False, True), (False, False)):
    table = _table(seed, binary=binary, uniform_cost=uniform)
    gain = table["strong_correct"] - table["weak_correct"]
    oracle = routers.oracle_curve(**{k: v for k, v in table.items() if k != "scores"})
    candidates = [
      table["scores"],
      rng.random(40),
      gain,
      -gain,
      np.zeros(40),
      rng.integers(0, 3, 40) + 0.1 * gain,
    ]
    grid = np.linspace(oracle.cost[0], oracle.cost[-1], 101)
    for router in candidates:
      curve = routers.deferral_curve(**{**table, "scores": router})
      if binary or uniform:  # every defer rate
        assert (oracle.accuracy >= curve.accuracy - 1e-12).all()
      assert (routers.accuracy_at_cost(oracle, cost=curve.cost) >= curve.accuracy - 1e-12).all()
      assert (
        routers.accuracy_at_cost(oracle, cost=grid)
        >= routers.accuracy_at_cost(curve, cost=grid) - 1e-12
      ).all()
  # Brute force on a small table: at each k the oracle defers the best k-subset.
  table = _table(seed, n=7)
  oracle = routers.oracle_curve(**{k: v for k, v in table.items() if k != "scores"})
  gain = table["strong_correct"] - table["weak_correct"]
  for k in range(8):
    best = max((gain[list(c)].sum() for c in itertools.combinations(range(7), k)), default=0)
    assert oracle.accuracy[k] == pytest.approx(table["weak_correct"].mean() + best / 7)


def test_ibc_lift_interval():
  table = _table(7, n=60, ties=False)
  table["scores"] = table["scores"] + 2 * table["weak_correct"]  # an informative router
  out = routers.ibc_lift_interval(**table, num_resamples=300, seed=3)
  assert out["mean"] == pytest.approx(routers.ibc_lift(routers.deferral_curve(**table)))
  assert out["lo"] < out["mean"] < out["hi"] and out["lo"] > 0
  assert out == routers.ibc_lift_interval(**table, num_resamples=300, seed=3)
  # One replicate is the lift of the curve on that resample, ties and all.
  for base in routers.BASES:
    one = routers.ibc_lift_interval(**table, num_resamples=1, seed=5, base=base)
    idx = np.random.default_rng(5).integers(0, 60, (1, 60))[0]
    resampled = routers.deferral_curve(**_take(table, idx))
    assert one["lo"] == pytest.approx(routers.ibc_lift(resampled, base=base))


def test_quantile_prob():
  probs = np.array([[0.9, 0.5, 0.7, 0.2], [0.3, 0.6, 0.1, 0.8]])
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
  logprobs = np.log(probs)
  q = lambda v, lp=logprobs, m=mask: np.asarray(routers.quantile_prob(logprobs=lp, mask=m, q=v))
  np.testing.assert_allclose(q(0.0), [0.5, 0.1], rtol=1e-6)  # the masked-in minimum
  np.testing.assert_allclose(q(0.5), [0.7, 0.45], rtol=1e-6)
  np.testing.assert_allclose(q(0.25), [0.6, 0.25], rtol=1e-6)
  np.testing.assert_allclose(q(1.0), [0.9, 0.8], rtol=1e-6)
  # Padding on either side, with any values, changes nothing.
  padded_lp = np.concatenate([np.full((2, 3), -np.inf), logprobs, np.zeros((2, 2))], 1)
  padded_mask = np.concatenate([np.zeros((2, 3)), mask, np.zeros((2, 2))], 1)
  for v in (0.0, 0.3, 0.5, 1.0):
    np.testing.assert_allclose(q(v, padded_lp, padded_mask), q(v), rtol=1e-6)
  rng = np.random.default_rng(0)
  lp, m = np.log(rng.random((5, 9))), rng.random((5, 9)) < 0.6
  m[:, 0] = True
  jitted = jax.jit(lambda lp, m, v: routers.quantile_prob(logprobs=lp, mask=m, q=v))
  for v in (0.0, 0.1, 0.5, 0.9):
    want = [np.quantile(np.exp(lp[i][m[i]]), v) for i in range(5)]
    np.testing.assert_allclose(jitted(lp, m, v), want, rtol=1e-5)
  assert np.isnan(q(0.5, logprobs, np.zeros_like(mask))).all()  # empty response


def test_mean_logprob_and_defer_mask():
  lp = np.array([[-0.1, -0.5, -9.0], [-1.0, -2.0, -3.0]])
  mask = np.array([[1, 1, 0], [0, 1, 1]])
  out = routers.mean_logprob(logprobs=lp, mask=mask)
  np.testing.assert_allclose(out, [-0.3, -2.5], rtol=1e-6)
  junk = np.where(mask, lp, -np.inf)
  np.testing.assert_allclose(routers.mean_logprob(logprobs=junk, mask=mask), out)
  empty = routers.mean_logprob(logprobs=lp, mask=np.zeros_like(mask))
  assert np.isnan(empty).all()
  defer = jax.jit(lambda s, t: routers.defer_mask(scores=s, threshold=t))
  np.testing.assert_array_equal(
    defer(jnp.array([0.1, 0.5, 0.9, jnp.nan]), 0.5), [True, False, False, True]
  )  # NaN (empty) defers


def test_classification_routers_and_sample_agreement():
  probs = jnp.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
  # A classifier's routers are the curation scores (cascade/per_query.py).
  np.testing.assert_allclose(scores.confidence(probs=probs), [0.7, 0.4])
  np.testing.assert_allclose(scores.margin(probs=probs), [0.5, 0.05], rtol=1e-5)
  expected = -(probs * jnp.log(probs)).sum(-1)
  np.testing.assert_allclose(scores.neg_entropy(probs=probs), -expected, rtol=1e-5)
  answers = jnp.array([[1, 2, 3], [1, 2, 4], [5, 2, 4], [1, 2, 4]])
  np.testing.assert_allclose(
    jax.jit(lambda a: routers.sample_agreement(answers=a))(answers), [0.75, 1.0, 0.75]
  )
  np.testing.assert_allclose(routers.sample_agreement(answers=answers[:1]), [1, 1, 1])


def test_bad_inputs():
  good = dict(
    scores=[0.1, 0.2], weak_correct=[1, 0], strong_correct=[1, 1], weak_cost=1.0, strong_cost=2.0
  )
  cases = [
    (dict(scores=[0.1, np.nan]), r"scores\[1\]=nan \(1 bad values\): expected no NaN"),
    (dict(weak_correct=[1, 0, 1]), r"weak_correct has shape \(3,\), expected \(2,\)"),
    (dict(strong_correct=[1, 2]), r"strong_correct\[1\]=2.0"),
    (dict(strong_cost=[2.0, 0.0]), r"strong_cost\[1\]=0.0 .* \(0, inf\]"),
    (dict(weak_cost=[[1.0]]), r"weak_cost has shape \(1, 1\), expected \(2,\) or a scalar"),
    (dict(scores=[]), r"scores has shape \(0,\)"),
  ]
  for change, message in cases:
    with pytest.raises(ValueError, match=message):
      routers.deferral_curve(**{**good, **change})
  with pytest.raises(ValueError, match=r"q=1.5: expected in \[0, 1\]"):
    routers.quantile_prob(logprobs=np.zeros((1, 2)), mask=np.ones((1, 2)), q=1.5)
  with pytest.raises(ValueError, match=r"mask shape \(1, 3\)"):
    routers.mean_logprob(logprobs=np.zeros((1, 2)), mask=np.ones((1, 3)))
  with pytest.raises(ValueError, match="answers shape"):
    routers.sample_agreement(answers=jnp.zeros(3))
  curve = routers.deferral_curve(**good)
  with pytest.raises(ValueError, match="base='automix'"):
    routers.ibc_lift(curve, base="automix")
  with pytest.raises(ValueError, match="of='strong'"):
    routers.cost_to_reach_strong(curve, of="strong")
  with pytest.raises(ValueError, match="fraction=0"):
    routers.cost_to_reach_strong(curve, fraction=0)
  with pytest.raises(ValueError, match="level=1.5"):
    routers.ibc_lift_interval(**good, level=1.5)
  with pytest.raises(ValueError, match="weak_correct has shape"):
    routers.weak_only(weak_correct=[], weak_cost=1.0)
  short = routers.deferral_curve(
    **{k: v[:1] if isinstance(v, list) else v for k, v in good.items()}
  )
  with pytest.raises(ValueError, match=">= 2 queries"):
    routers.ibc_lift(short)
