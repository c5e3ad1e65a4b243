"""Accuracy, PGR, and hierarchical bootstrap intervals over pretraining draws,
fine-tuning seeds and test examples."""

import numpy as np


def correct(*, probs, labels) -> np.ndarray:
  """1.0 where argmax(probs) equals the label (int labels or soft labels)."""
  probs, labels = np.asarray(probs), np.asarray(labels)
  if labels.ndim == probs.ndim:
    labels = labels.argmax(-1)
  return (probs.argmax(-1) == labels).astype(np.float64)


def accuracy(*, probs, labels) -> float:
  return float(np.mean(correct(probs=probs, labels=labels)))


def pgr(*, weak, w2s, ceiling) -> float:
  """Performance gap recovered: (w2s - weak) / (ceiling - weak); NaN if ceiling <= weak."""
  weak, w2s, ceiling = float(weak), float(w2s), float(ceiling)
  if not ceiling > weak:
    return float("nan")
  return (w2s - weak) / (ceiling - weak)


def _pgr_array(weak, w2s, ceiling):
  gap = ceiling - weak
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(gap > 0, (w2s - weak) / np.where(gap > 0, gap, 1.0), np.nan)


def _resampled_means(per_run_correct, ex_counts, run_weights):
  """Mean accuracy of each replicate: examples and runs drawn with replacement."""
  per_run = ex_counts @ per_run_correct.T / ex_counts.sum(1, keepdims=True)  # [R, runs]
  return (per_run * run_weights).sum(1) / run_weights.sum(1)


def _run_weights(rng, members: list[np.ndarray], num_runs: int, num_resamples: int, *, outer: bool):
  """[R, runs]: how often each run is drawn in each replicate.

  members[g] are the runs (fine-tuning seeds) of pretraining draw g. With
  `outer`, the draws themselves are resampled with replacement first; then
  each drawn draw's runs are resampled within it. A draw drawn k times
  contributes k independent resamples of its n runs, which together are one
  multinomial of k * n over them.
  """
  weights = np.zeros((num_resamples, num_runs))
  if outer and len(members) > 1:
    g = len(members)
    group_counts = rng.multinomial(g, np.full(g, 1 / g), size=num_resamples)
  else:
    group_counts = None
  for i, runs in enumerate(members):
    n = len(runs)
    if group_counts is None:  # every draw once (for one draw: the two-level bootstrap)
      weights[:, runs] = rng.multinomial(n, np.full(n, 1 / n), size=num_resamples) if n > 1 else 1.0
    elif n > 1:
      weights[:, runs] = rng.multinomial(group_counts[:, i] * n, np.full(n, 1 / n))
    else:
      weights[:, runs] = group_counts[:, i : i + 1]
  return weights


def _percentiles(reps, level):
  tail = 100 * (1 - level) / 2
  finite = reps[np.isfinite(reps)]
  if not len(finite):
    return float("nan"), float("nan")
  lo, hi = np.percentile(finite, [tail, 100 - tail])
  return float(lo), float(hi)


def bootstrap_w2s(
  *,
  weak_correct,
  w2s_correct,
  ceiling_correct,
  pretraining=None,
  num_resamples: int = 2000,
  level: float = 0.95,
  seed: int = 0,
) -> dict:
  """Point estimates and percentile intervals for Pweak, Pw2s, Pceiling and PGR.

  Inputs are [runs, examples] arrays of 0/1 correctness on one shared test
  set; a run is one fine-tuning seed of one pretraining draw (`pretraining`
  names each run's draw). Each replicate resamples hierarchically, the same
  draw for all three models (paired): the pretraining draws with
  replacement, then the fine-tuning seeds within each drawn one, then the
  test examples. So the interval covers every random draw of the pipeline
  the runs span. PGR's point estimate is the PGR of the mean accuracies.

  Args:
    weak_correct, w2s_correct, ceiling_correct: [runs, examples] scores.
    pretraining: [runs], each run's pretraining draw (any labels); None: one
      draw for all (the interval then covers fine-tuning seeds and examples only).
    num_resamples: bootstrap replicates.
    level: the intervals' coverage.
    seed: the resampling's seed (the intervals are reproducible).

  Returns:
    {"weak", "w2s", "ceiling", "pgr"}: each {mean, lo, hi}, the full
    interval; "pgr" also per_seed (each run's own PGR) and undefined_frac
    (the share of replicates where the ceiling does not beat the weak model,
    left out of its interval). "fixed_pretraining": {metric: {lo, hi}}, the
    interval within the pretrained models at hand (fine-tuning seeds and
    examples resampled, each pretraining draw kept once); with one draw it
    equals the full one. "draws": {pretraining, runs, examples}, what
    stands behind the intervals.
  """
  arrays = [
    np.atleast_2d(np.asarray(a, np.float64)) for a in (weak_correct, w2s_correct, ceiling_correct)
  ]
  shapes = {a.shape for a in arrays}
  if len(shapes) != 1:
    raise ValueError(f"bootstrap_w2s: correctness arrays differ in shape: {sorted(shapes)}")
  num_runs, num_examples = arrays[0].shape
  if num_examples == 0:
    raise ValueError("bootstrap_w2s: no test examples")
  if not 0 < level < 1:
    raise ValueError(f"bootstrap_w2s level={level}: expected in (0, 1)")
  groups = np.zeros(num_runs, np.int64) if pretraining is None else np.asarray(pretraining)
  if groups.shape != (num_runs,):
    raise ValueError(
      f"bootstrap_w2s: pretraining has shape {groups.shape}: expected ({num_runs},), "
      "one pretraining draw per run"
    )
  members = [np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())]
  rng = np.random.default_rng(seed)
  ex_counts = rng.multinomial(
    num_examples, np.full(num_examples, 1 / num_examples), size=num_resamples
  ).astype(np.float64)
  points = [a.mean() for a in arrays]
  points.append(pgr(weak=points[0], w2s=points[1], ceiling=points[2]))

  def replicate(outer: bool):
    weights = _run_weights(rng, members, num_runs, num_resamples, outer=outer)
    reps = [_resampled_means(a, ex_counts, weights) for a in arrays]
    return [*reps, _pgr_array(*reps)]

  reps = replicate(outer=True)
  within = replicate(outer=False) if len(members) > 1 else reps
  out = {}
  for name, point, rep in zip(("weak", "w2s", "ceiling", "pgr"), points, reps):
    lo, hi = _percentiles(rep, level)
    out[name] = {"mean": float(point), "lo": lo, "hi": hi}
  per_seed = [a.mean(1) for a in arrays]
  out["pgr"]["per_seed"] = [pgr(weak=w, w2s=s, ceiling=c) for w, s, c in zip(*per_seed)]
  out["pgr"]["undefined_frac"] = float(1 - len(reps[3][np.isfinite(reps[3])]) / num_resamples)
  out["fixed_pretraining"] = {
    name: dict(zip(("lo", "hi"), _percentiles(rep, level)))
    for name, rep in zip(("weak", "w2s", "ceiling", "pgr"), within)
  }
  out["draws"] = {"pretraining": len(members), "runs": num_runs, "examples": num_examples}
  return out


def misfit(*, student_probs, weak_probs, eps: float = 1e-7) -> np.ndarray:
  """The student's misfit to the labels it was taught: mean KL(weak || student)
  over the examples, per seed ([seeds, N, classes] in, [seeds] out). Zero
  when the student reproduces the weak labels; the theory of Charikar et al.
  (2024) and Mulgund & Pabbaraju (2025) bounds the gain over the weak model
  from below by it."""
  s = np.clip(np.asarray(student_probs, np.float64), eps, 1.0)
  w = np.asarray(weak_probs, np.float64)
  if s.shape != w.shape:
    raise ValueError(
      f"misfit: student_probs {s.shape} and weak_probs {w.shape}: expected equal shapes"
    )
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(w > 0, w * (np.log(np.clip(w, eps, 1.0)) - np.log(s)), 0.0)
  return terms.sum(-1).mean(-1)


def error_consistency(*, a_correct, b_correct) -> float:
  """Chance-adjusted agreement of two models' errors (Cohen's kappa on
  right/wrong; CAPA with hard answers on a two-class task, Goel et al. 2025):
  (observed - expected) / (1 - expected), where expected is what two
  independent models of these accuracies would agree. 1: the same errors;
  0: no more alike than chance. NaN when expected is 1 (a model always right
  or always wrong)."""
  a, b = np.asarray(a_correct) >= 0.5, np.asarray(b_correct) >= 0.5
  observed = float(np.mean(a == b))
  pa, pb = float(a.mean()), float(b.mean())
  expected = pa * pb + (1 - pa) * (1 - pb)
  return float("nan") if expected >= 1 else (observed - expected) / (1 - expected)


def _mean_of_defined(values) -> float:
  """Mean over the finite values; NaN (without a warning) when there are none."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if len(finite) else float("nan")


def _conditional(student, where):
  """Mean of student over the `where` examples, per run; NaN where none."""
  counts = where.sum(-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(counts > 0, (student * where).sum(-1) / counts, np.nan)


def imitation(*, weak_correct, w2s_correct, ceiling_correct) -> dict:
  """How closely the W2S student and the ceiling follow the weak model.

  Inputs are [runs, examples] correctness (scores >= 0.5 count as right).
  For each student: "agreement" (both right or both wrong: on a two-class
  task, the same answer), "agreement_weak_right" (the student right where
  the weak model is right) and "agreement_weak_wrong" (the student wrong
  where the weak model is wrong: on a two-class task, copying its error),
  each the mean over runs of the per-run rate. "error_consistency": weak
  against ceiling (error_consistency), mean over runs. Burns et al.
  (2023, section 5) read imitation off the weak-wrong agreement: a student
  that learns the weak model's errors agrees there.
  """
  weak = np.atleast_2d(np.asarray(weak_correct)) >= 0.5
  out = {}
  for name, student in (("w2s", w2s_correct), ("ceiling", ceiling_correct)):
    right = np.atleast_2d(np.asarray(student)) >= 0.5
    out[name] = {
      "agreement": float(np.mean(right == weak)),
      "agreement_weak_right": _mean_of_defined(_conditional(right, weak)),
      "agreement_weak_wrong": _mean_of_defined(_conditional(~right, ~weak)),
    }
  ceiling = np.atleast_2d(np.asarray(ceiling_correct))
  out["error_consistency"] = _mean_of_defined(
    [error_consistency(a_correct=w, b_correct=c) for w, c in zip(weak, ceiling)]
  )
  return out


def answer_imitation(*, weak, student, truth, names=None) -> dict:
  """How often a student gives the weak model's own answer, field by field.

  Unlike imitation(), which compares right and wrong, this compares the
  answers themselves: on a generative task two wrong answers differ, and
  only the same wrong answer is a copied error.

  Args:
    weak, student: answers [runs, examples, fields] (Evaluator.assess; -1:
      none given), run r of the student trained on run r of the weak model.
    truth: the right answers [examples, fields].
    names: the fields' names (default field0, field1, ...).

  Returns:
    {"all": rates over every field, "fields": {name: rates}}, rates being
    "agreement" (the same answer), "agreement_weak_right" (the same answer
    where the weak model's is right) and "agreement_weak_wrong" (the same
    answer where the weak model's is wrong: its error copied), each the
    mean over runs of the per-run rate (NaN where a run has no such field).
  """
  weak, student, truth = np.asarray(weak), np.asarray(student), np.asarray(truth)
  if weak.shape != student.shape or weak.shape[1:] != truth.shape:
    raise ValueError(
      f"answer_imitation: weak {weak.shape}, student {student.shape}, truth {truth.shape}: "
      "expected [runs, examples, fields] twice and [examples, fields]"
    )
  names = list(names or (f"field{i}" for i in range(truth.shape[-1])))
  same, right = student == weak, weak == truth[None]

  def rates(same, right):  # [runs, n]
    return {
      "agreement": float(np.mean(same)),
      "agreement_weak_right": _mean_of_defined(_conditional(same, right)),
      "agreement_weak_wrong": _mean_of_defined(_conditional(same, ~right)),
    }

  runs = len(weak)
  return {
    "all": rates(same.reshape(runs, -1), right.reshape(runs, -1)),
    "fields": {name: rates(same[..., i], right[..., i]) for i, name in enumerate(names)},
  }


def correlation_interval(*, x, y, num_resamples: int = 2000, level: float = 0.95, seed=0):
  """Pearson's r of paired points with a percentile bootstrap interval over the
  points: {r, lo, hi, n}; NaN with fewer than 3 points."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f"correlation_interval: x {x.shape}, y {y.shape}: expected equal 1-D shapes")
  if len(x) < 3:
    return {"r": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": len(x)}
  idx = np.random.default_rng(seed).integers(0, len(x), (num_resamples, len(x)))
  xs = x[idx] - x[idx].mean(1, keepdims=True)
  ys = y[idx] - y[idx].mean(1, keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    reps = (xs * ys).sum(1) / np.sqrt((xs**2).sum(1) * (ys**2).sum(1))
  lo, hi = _percentiles(reps, level)
  with np.errstate(invalid="ignore", divide="ignore"):
    r = float(np.corrcoef(x, y)[0, 1])
  return {"r": r, "lo": lo, "hi": hi, "n": len(x)}


def accuracy_interval(
  correct_matrix,
  *,
  pretraining=None,
  num_resamples: int = 2000,
  level: float = 0.95,
  seed: int = 0,
) -> dict:
  """Mean accuracy with a bootstrap interval over seeds and examples, and
  pretraining draws where `pretraining` names each run's (bootstrap_w2s)."""
  c = np.atleast_2d(np.asarray(correct_matrix, np.float64))
  r = bootstrap_w2s(
    weak_correct=c,
    w2s_correct=c,
    ceiling_correct=c,
    pretraining=pretraining,
    num_resamples=num_resamples,
    level=level,
    seed=seed,
  )
  return r["weak"]
