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


# --- The hierarchical bootstrap: pretraining draws, fine-tuning seeds, examples ---------

Z95 = 1.959964


def _pgr_free(out, name="weak"):
  return out[name]["mean"], out[name]["lo"], out[name]["hi"]


def test_only_examples_varying_gives_the_binomial_interval():
  # Every run (3 draws x 2 seeds) answers alike: only the examples vary.
  rng = np.random.default_rng(10)
  row = _bernoulli(rng, 0.7, (1, 4000))
  c = np.repeat(row, 6, axis=0)
  out = metrics.bootstrap_w2s(
    weak_correct=c,
    w2s_correct=c,
    ceiling_correct=c,
    pretraining=[0, 0, 1, 1, 2, 2],
    num_resamples=4000,
  )
  p, lo, hi = _pgr_free(out)
  half = Z95 * math.sqrt(p * (1 - p) / 4000)
  assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
  assert out["fixed_pretraining"]["weak"] == pytest.approx({"lo": lo, "hi": hi}, abs=2e-3)
  assert out["draws"] == {"pretraining": 3, "runs": 6, "examples": 4000}


def test_only_pretraining_varying_gives_the_interval_of_the_draws_mean():
  # 200 pretraining draws, 2 identical seeds each, every example scored alike
  # within a run: the interval is the textbook one of a mean of 200 values, and
  # within fixed pretrained models nothing varies at all.
  rng = np.random.default_rng(11)
  values = rng.normal(0.6, 0.05, 200)
  c = np.repeat(np.repeat(values, 2)[:, None], 30, axis=1)
  out = metrics.bootstrap_w2s(
    weak_correct=c,
    w2s_correct=c,
    ceiling_correct=c,
    pretraining=np.repeat(np.arange(200), 2),
    num_resamples=4000,
  )
  mean, lo, hi = _pgr_free(out)
  assert mean == pytest.approx(values.mean())
  assert (hi - lo) / 2 == pytest.approx(Z95 * values.std() / math.sqrt(200), rel=0.1)
  fixed = out["fixed_pretraining"]["weak"]
  assert fixed["lo"] == pytest.approx(mean) and fixed["hi"] == pytest.approx(mean)


def test_only_finetuning_seeds_varying_gives_the_interval_of_the_seeds_mean():
  # One pretraining draw, 300 seeds whose runs score every example alike.
  rng = np.random.default_rng(12)
  values = rng.normal(0.5, 0.04, 300)
  c = np.repeat(values[:, None], 20, axis=1)
  out = metrics.bootstrap_w2s(
    weak_correct=c, w2s_correct=c, ceiling_correct=c, pretraining=np.zeros(300), num_resamples=4000
  )
  _, lo, hi = _pgr_free(out)
  assert (hi - lo) / 2 == pytest.approx(Z95 * values.std() / math.sqrt(300), rel=0.1)
  assert out["fixed_pretraining"]["weak"] == {"lo": lo, "hi": hi}  # one draw: the same interval


def test_a_dominant_pretraining_level_widens_the_interval():
  # 4 pretraining draws far apart, 3 seeds each close together, 400 examples.
  rng = np.random.default_rng(13)
  draw_acc = np.array([0.55, 0.65, 0.75, 0.85])
  runs = np.repeat(draw_acc, 3) + rng.normal(0, 0.005, 12)
  weak = _bernoulli(rng, 0.5, (12, 400))
  w2s = (rng.random((12, 400)) < runs[:, None]).astype(float)
  ceiling = np.ones((12, 400))
  out = metrics.bootstrap_w2s(
    weak_correct=weak,
    w2s_correct=w2s,
    ceiling_correct=ceiling,
    pretraining=np.repeat([7, 8, 9, 10], 3),
    num_resamples=2000,
  )
  for name in ("w2s", "pgr"):
    full = out[name]["hi"] - out[name]["lo"]
    fixed = out["fixed_pretraining"][name]["hi"] - out["fixed_pretraining"][name]["lo"]
    assert full > 3 * fixed, (name, full, fixed)
    assert out[name]["lo"] <= out[name]["mean"] <= out[name]["hi"]


def test_one_pretraining_draw_is_the_two_level_bootstrap():
  rng = np.random.default_rng(14)
  args = dict(
    weak_correct=_bernoulli(rng, 0.6, (3, 80)),
    w2s_correct=_bernoulli(rng, 0.7, (3, 80)),
    ceiling_correct=_bernoulli(rng, 0.9, (3, 80)),
    num_resamples=300,
  )
  unlabelled = metrics.bootstrap_w2s(**args)
  assert metrics.bootstrap_w2s(**args, pretraining=[5, 5, 5]) == unlabelled
  assert unlabelled["draws"]["pretraining"] == 1
  for name in ("weak", "w2s", "ceiling", "pgr"):
    assert unlabelled["fixed_pretraining"][name] == {
      "lo": unlabelled[name]["lo"],
      "hi": unlabelled[name]["hi"],
    }


def test_draws_with_one_run_each_and_unequal_draws_work():
  rng = np.random.default_rng(15)
  weak = _bernoulli(rng, 0.6, (5, 100))
  w2s = _bernoulli(rng, 0.7, (5, 100))
  ceiling = _bernoulli(rng, 0.9, (5, 100))
  for groups in ([0, 1, 2, 3, 4], [0, 0, 0, 1, 2]):
    out = metrics.bootstrap_w2s(
      weak_correct=weak, w2s_correct=w2s, ceiling_correct=ceiling, pretraining=groups
    )
    assert out["draws"]["pretraining"] == len(set(groups))
    for name in ("weak", "w2s", "ceiling", "pgr"):
      assert out[name]["lo"] <= out[name]["mean"] <= out[name]["hi"]
  with pytest.raises(ValueError, match=r"pretraining has shape \(4,\): expected \(5,\)"):
    metrics.bootstrap_w2s(
      weak_correct=weak, w2s_correct=w2s, ceiling_correct=ceiling, pretraining=[0, 0, 1, 1]
    )


def test_zero_gap_with_several_draws_leaves_pgr_undefined():
  ones = np.ones((4, 30))
  out = metrics.bootstrap_w2s(
    weak_correct=ones, w2s_correct=ones, ceiling_correct=ones, pretraining=[0, 0, 1, 1]
  )
  assert math.isnan(out["pgr"]["mean"]) and out["pgr"]["undefined_frac"] == 1.0
  assert math.isnan(out["fixed_pretraining"]["pgr"]["lo"])


# --- Imitation diagnostics ------------------------------------------------------------


def test_imitation_by_hand():
  # 8 examples, one run. The weak model is right on 0-3; the student follows
  # it except on example 2 (wrong where weak is right) and 5 (right where weak
  # is wrong); the ceiling is right everywhere but 7.
  weak = np.array([[1, 1, 1, 1, 0, 0, 0, 0]])
  w2s = np.array([[1, 1, 0, 1, 0, 1, 0, 0]])
  ceiling = np.array([[1, 1, 1, 1, 1, 1, 1, 0]])
  out = metrics.imitation(weak_correct=weak, w2s_correct=w2s, ceiling_correct=ceiling)
  assert out["w2s"] == {
    "agreement": 6 / 8,
    "agreement_weak_right": 3 / 4,
    "agreement_weak_wrong": 3 / 4,
  }
  assert out["ceiling"] == {
    "agreement": 5 / 8,
    "agreement_weak_right": 1.0,
    "agreement_weak_wrong": 1 / 4,
  }
  # weak 4/8 right, ceiling 7/8: expected agreement 0.5*0.875 + 0.5*0.125 = 0.5;
  # observed 5/8: kappa (0.625 - 0.5) / 0.5 = 0.25.
  assert out["error_consistency"] == pytest.approx(0.25)


def test_error_consistency_limits():
  rng = np.random.default_rng(20)
  a = _bernoulli(rng, 0.6, 20000)
  assert metrics.error_consistency(a_correct=a, b_correct=a) == pytest.approx(1.0)
  independent = _bernoulli(rng, 0.7, 20000)
  assert abs(metrics.error_consistency(a_correct=a, b_correct=independent)) < 0.03
  assert metrics.error_consistency(a_correct=a, b_correct=1 - a) < -0.9
  assert math.isnan(metrics.error_consistency(a_correct=np.ones(5), b_correct=np.ones(5)))


def test_imitation_averages_runs_and_skips_runs_without_weak_errors():
  weak = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])  # run 2: no weak-wrong examples
  w2s = np.array([[1, 0, 0, 1], [1, 1, 1, 0]])
  out = metrics.imitation(weak_correct=weak, w2s_correct=w2s, ceiling_correct=w2s)
  assert out["w2s"]["agreement"] == pytest.approx((2 / 4 + 3 / 4) / 2)
  assert out["w2s"]["agreement_weak_right"] == pytest.approx((1 / 2 + 3 / 4) / 2)
  assert out["w2s"]["agreement_weak_wrong"] == pytest.approx(1 / 2)  # run 1 only


def test_misfit_by_hand_and_limits():
  weak = np.array([[[0.8, 0.2], [0.5, 0.5]]])
  student = np.array([[[0.6, 0.4], [0.5, 0.5]]])
  kl = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)
  np.testing.assert_allclose(
    metrics.misfit(student_probs=student, weak_probs=weak), [kl / 2], rtol=1e-6
  )
  np.testing.assert_allclose(metrics.misfit(student_probs=weak, weak_probs=weak), [0.0], atol=1e-7)
  hard = np.array([[[1.0, 0.0]]])
  assert metrics.misfit(student_probs=np.array([[[0.5, 0.5]]]), weak_probs=hard)[0] == (
    pytest.approx(math.log(2))
  )
  with pytest.raises(ValueError, match="expected equal shapes"):
    metrics.misfit(student_probs=weak, weak_probs=weak[:, :1])


def test_answer_imitation_by_hand():
  # 2 runs, 3 examples, 2 fields; -1: no answer given.
  truth = np.array([[1, 5], [2, 6], [3, 7]])
  weak = np.array([[[1, 5], [9, 6], [8, -1]], [[1, 4], [2, 6], [3, 7]]])
  student = np.array([[[1, 5], [9, 0], [3, -1]], [[0, 4], [2, 6], [3, 0]]])
  out = metrics.answer_imitation(weak=weak, student=student, truth=truth, names=("a", "b"))
  # run 0: same answers 1,1,0 / 1,0,1 -> 4 of 6; run 1: 0,1,1 / 1,1,0 -> 4 of 6
  assert out["all"]["agreement"] == pytest.approx(4 / 6)
  # weak right, run 0: (0,a) (0,b) (1,b) -> same 1,1,0 = 2/3; run 1: (0,a) (1,a) (2,a)
  # (1,b) (2,b) -> same 0,1,1,1,0 = 3/5
  assert out["all"]["agreement_weak_right"] == pytest.approx((2 / 3 + 3 / 5) / 2)
  # weak wrong, run 0: (1,a)=9 copied, (2,a)=8 not, (2,b)=-1 copied -> 2/3; run 1: (0,b)=4
  # copied -> 1
  assert out["all"]["agreement_weak_wrong"] == pytest.approx((2 / 3 + 1) / 2)
  # field a, weak wrong: run 0 examples 1, 2 -> 1/2; run 1 has none (NaN, left out)
  assert out["fields"]["a"]["agreement_weak_wrong"] == pytest.approx(0.5)
  same = metrics.answer_imitation(weak=weak, student=weak, truth=truth)
  assert same["all"] == {"agreement": 1.0, "agreement_weak_right": 1.0, "agreement_weak_wrong": 1.0}
  assert list(same["fields"]) == ["field0", "field1"]
  with pytest.raises(ValueError, match=r"expected \[runs, examples, fields\] twice"):
    metrics.answer_imitation(weak=weak, student=student[:, :2], truth=truth)
