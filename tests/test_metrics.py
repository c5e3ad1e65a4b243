"""PGR and bootstrap intervals on constructed numbers."""

import math

import numpy as np
import pytest

from w2s_jax.w2s import metrics


def test_pgr_constructed_numbers():
  assert metrics.pgr(weak=0.6, w2s=0.7, ceiling=0.8) == pytest.approx(0.5)
  assert metrics.pgr(weak=0.6, w2s=0.8, ceiling=0.8) == pytest.approx(1.0)
  assert metrics.pgr(weak=0.6, w2s=0.6, ceiling=0.8) == pytest.approx(0.0)
  assert metrics.pgr(weak=0.6, w2s=0.5, ceiling=0.8) == pytest.approx(-0.5)  # negative allowed
  assert metrics.pgr(weak=0.5, w2s=0.95, ceiling=0.9) == pytest.approx(1.125)  # above ceiling
  assert math.isnan(metrics.pgr(weak=0.8, w2s=0.7, ceiling=0.8))  # ceiling == weak
  assert math.isnan(metrics.pgr(weak=0.8, w2s=0.7, ceiling=0.6))  # ceiling < weak


def test_correct_and_accuracy():
  probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
  np.testing.assert_array_equal(
    metrics.correct(probs=probs, labels=[0, 1, 0, 1]), [1.0, 1.0, 0.0, 0.0]
  )
  soft = np.array([[0.8, 0.2], [0.1, 0.9], [0.9, 0.1], [0.2, 0.8]])
  np.testing.assert_array_equal(metrics.correct(probs=probs, labels=soft), [1, 1, 0, 0])
  assert metrics.accuracy(probs=probs, labels=[0, 1, 1, 1]) == pytest.approx(0.75)
  # with a seed axis: [seeds, N, C] against [N] labels
  stacked = np.stack([probs, probs[:, ::-1]])
  np.testing.assert_array_equal(
    metrics.correct(probs=stacked, labels=[0, 1, 0, 1]), [[1, 1, 0, 0], [0, 0, 1, 1]]
  )


def _bernoulli(rng, p, shape):
  return (rng.random(shape) < p).astype(np.float64)


def _width(stat):
  return stat["hi"] - stat["lo"]


def test_bootstrap_point_estimates_and_intervals_contain_them():
  rng = np.random.default_rng(0)
  weak = _bernoulli(rng, 0.6, (3, 200))
  w2s = _bernoulli(rng, 0.7, (3, 200))
  ceiling = _bernoulli(rng, 0.85, (3, 200))
  out = metrics.bootstrap_w2s(
    weak_correct=weak, w2s_correct=w2s, ceiling_correct=ceiling, num_resamples=500
  )
  pw, ps, pc = weak.mean(), w2s.mean(), ceiling.mean()
  assert out["weak"]["mean"] == pytest.approx(pw)
  assert out["w2s"]["mean"] == pytest.approx(ps)
  assert out["ceiling"]["mean"] == pytest.approx(pc)
  assert out["pgr"]["mean"] == pytest.approx((ps - pw) / (pc - pw))
  for name in ("weak", "w2s", "ceiling", "pgr"):
    s = out[name]
    assert s["lo"] <= s["mean"] <= s["hi"], (name, s)
    assert s["lo"] < s["hi"]
  per_seed = [(s - w) / (c - w) for w, s, c in zip(weak.mean(1), w2s.mean(1), ceiling.mean(1))]
  np.testing.assert_allclose(out["pgr"]["per_seed"], per_seed)
  assert out["pgr"]["undefined_frac"] == 0.0


def test_bootstrap_interval_shrinks_with_n():
  widths = {}
  for n in (60, 6000):
    rng = np.random.default_rng(1)
    out = metrics.bootstrap_w2s(
      weak_correct=_bernoulli(rng, 0.6, (1, n)),
      w2s_correct=_bernoulli(rng, 0.7, (1, n)),
      ceiling_correct=_bernoulli(rng, 0.8, (1, n)),
      num_resamples=400,
    )
    widths[n] = {k: _width(out[k]) for k in ("weak", "w2s", "ceiling", "pgr")}
  for k in ("weak", "w2s", "ceiling", "pgr"):
    # 100x the examples: about 10x narrower; ask for at least 4x.
    assert widths[6000][k] * 4 < widths[60][k], (k, widths)


def test_bootstrap_degenerate_inputs():
  ones = np.ones((2, 30))
  out = metrics.bootstrap_w2s(
    weak_correct=ones, w2s_correct=ones, ceiling_correct=ones, num_resamples=200
  )
  for name in ("weak", "w2s", "ceiling"):
    assert out[name] == {"mean": 1.0, "lo": 1.0, "hi": 1.0}
  assert math.isnan(out["pgr"]["mean"])  # ceiling == weak: undefined
  assert out["pgr"]["undefined_frac"] == 1.0

  # Identical (non-constant) arrays for all three models: same intervals, PGR undefined.
  rng = np.random.default_rng(2)
  c = _bernoulli(rng, 0.5, (2, 40))
  out = metrics.bootstrap_w2s(weak_correct=c, w2s_correct=c, ceiling_correct=c, num_resamples=200)
  assert out["weak"] == out["w2s"] == out["ceiling"]
  assert math.isnan(out["pgr"]["mean"])
  assert out["pgr"]["undefined_frac"] == 1.0


def test_bootstrap_w2s_equal_to_ceiling_gives_pgr_exactly_one():
  # weak is wrong and ceiling right on every example: the gap is 1 in every replicate.
  weak = np.zeros((3, 50))
  ceiling = np.ones((3, 50))
  w2s = ceiling.copy()
  out = metrics.bootstrap_w2s(
    weak_correct=weak, w2s_correct=w2s, ceiling_correct=ceiling, num_resamples=300
  )
  assert out["pgr"]["mean"] == 1.0
  assert out["pgr"]["lo"] == 1.0 and out["pgr"]["hi"] == 1.0
  assert out["pgr"]["per_seed"] == [1.0, 1.0, 1.0]
  assert out["pgr"]["undefined_frac"] == 0.0

  # Same with noisy accuracies, as long as weak < ceiling on every example drawn.
  rng = np.random.default_rng(3)
  ceiling = _bernoulli(rng, 0.8, (2, 60))
  ceiling[:, :10] = 1.0
  weak = ceiling * _bernoulli(rng, 0.5, (2, 60))
  weak[:, :10] = 0.0  # 10 examples where weak < ceiling in every seed
  out = metrics.bootstrap_w2s(
    weak_correct=weak, w2s_correct=ceiling.copy(), ceiling_correct=ceiling, num_resamples=300
  )
  assert out["pgr"]["mean"] == 1.0
  assert (out["pgr"]["lo"], out["pgr"]["hi"]) == (1.0, 1.0)
  assert out["pgr"]["undefined_frac"] == 0.0


def test_bootstrap_shape_mismatch_and_bad_args_raise():
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.bootstrap_w2s(
      weak_correct=np.ones((2, 5)), w2s_correct=np.ones((2, 5)), ceiling_correct=np.ones((2, 6))
    )
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.bootstrap_w2s(
      weak_correct=np.ones((2, 5)), w2s_correct=np.ones((3, 5)), ceiling_correct=np.ones((2, 5))
    )
  with pytest.raises(ValueError, match="level=1.5"):
    metrics.bootstrap_w2s(
      weak_correct=np.ones(5), w2s_correct=np.ones(5), ceiling_correct=np.ones(5), level=1.5
    )


def test_bootstrap_is_deterministic_in_seed():
  rng = np.random.default_rng(4)
  args = dict(
    weak_correct=_bernoulli(rng, 0.6, (2, 80)),
    w2s_correct=_bernoulli(rng, 0.7, (2, 80)),
    ceiling_correct=_bernoulli(rng, 0.9, (2, 80)),
    num_resamples=200,
  )
  assert metrics.bootstrap_w2s(**args, seed=5) == metrics.bootstrap_w2s(**args, seed=5)
  assert metrics.bootstrap_w2s(**args, seed=5) != metrics.bootstrap_w2s(**args, seed=6)


def test_accuracy_interval():
  c = np.zeros((1, 10))
  c[0, :7] = 1
  out = metrics.accuracy_interval(c, num_resamples=300)
  assert out["mean"] == pytest.approx(0.7)
  assert 0.0 <= out["lo"] <= 0.7 <= out["hi"] <= 1.0
