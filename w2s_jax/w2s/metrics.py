"""Accuracy, PGR, and bootstrap intervals over test examples and seeds."""

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


def _resampled_means(per_seed_correct, ex_counts, seed_counts):
  """Mean accuracy of each replicate: examples and seeds drawn with replacement."""
  per_seed = ex_counts @ per_seed_correct.T / ex_counts.sum(1, keepdims=True)  # [R, S]
  return (per_seed * seed_counts).sum(1) / seed_counts.sum(1)


def bootstrap_w2s(
  *,
  weak_correct,
  w2s_correct,
  ceiling_correct,
  num_resamples: int = 2000,
  level: float = 0.95,
  seed: int = 0,
) -> dict:
  """Point estimates and percentile intervals for Pweak, Pw2s, Pceiling and PGR.

  Inputs are [seeds, examples] arrays of 0/1 correctness on one shared test
  set. Each replicate draws the seeds and the test examples with replacement,
  the same draw for all three models (paired), so the PGR interval reflects
  test-set noise and seed-to-seed variation together. PGR's point estimate is
  the PGR of the seed-mean accuracies.

  Args:
    weak_correct, w2s_correct, ceiling_correct: [seeds, examples] scores.
    num_resamples: bootstrap replicates.
    level: the intervals' coverage.
    seed: the resampling's seed (the intervals are reproducible).

  Returns:
    {"weak", "w2s", "ceiling", "pgr"}: each {mean, lo, hi}; "pgr" also
    per_seed (each seed's own PGR) and undefined_frac (the share of
    replicates where the ceiling does not beat the weak model, left out of
    its interval).
  """
  arrays = [
    np.atleast_2d(np.asarray(a, np.float64)) for a in (weak_correct, w2s_correct, ceiling_correct)
  ]
  shapes = {a.shape for a in arrays}
  if len(shapes) != 1:
    raise ValueError(f"bootstrap_w2s: correctness arrays differ in shape: {sorted(shapes)}")
  num_seeds, num_examples = arrays[0].shape
  if num_examples == 0:
    raise ValueError("bootstrap_w2s: no test examples")
  if not 0 < level < 1:
    raise ValueError(f"bootstrap_w2s level={level}: expected in (0, 1)")
  rng = np.random.default_rng(seed)
  ex_counts = rng.multinomial(
    num_examples, np.full(num_examples, 1 / num_examples), size=num_resamples
  ).astype(np.float64)
  if num_seeds > 1:
    seed_counts = rng.multinomial(
      num_seeds, np.full(num_seeds, 1 / num_seeds), size=num_resamples
    ).astype(np.float64)
  else:
    seed_counts = np.ones((num_resamples, 1))
  reps = [_resampled_means(a, ex_counts, seed_counts) for a in arrays]
  reps.append(_pgr_array(*reps))
  points = [a.mean() for a in arrays]
  points.append(pgr(weak=points[0], w2s=points[1], ceiling=points[2]))
  tail = 100 * (1 - level) / 2
  out = {}
  for name, point, rep in zip(("weak", "w2s", "ceiling", "pgr"), points, reps):
    finite = rep[np.isfinite(rep)]
    lo, hi = (
      np.percentile(finite, [tail, 100 - tail]) if len(finite) else (float("nan"), float("nan"))
    )
    out[name] = {"mean": float(point), "lo": float(lo), "hi": float(hi)}
  per_seed = [a.mean(1) for a in arrays]
  out["pgr"]["per_seed"] = [pgr(weak=w, w2s=s, ceiling=c) for w, s, c in zip(*per_seed)]
  out["pgr"]["undefined_frac"] = float(1 - len(reps[3][np.isfinite(reps[3])]) / num_resamples)
  return out


def accuracy_interval(
  correct_matrix, *, num_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> dict:
  """Mean accuracy with a bootstrap interval over seeds and examples."""
  c = np.atleast_2d(np.asarray(correct_matrix, np.float64))
  r = bootstrap_w2s(
    weak_correct=c,
    w2s_correct=c,
    ceiling_correct=c,
    num_resamples=num_resamples,
    level=level,
    seed=seed,
  )
  return r["weak"]
