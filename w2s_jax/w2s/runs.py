"""A cell's runs: its stages on every pretraining draw, pooled, and their
summary (PGR and the accuracies with hierarchical intervals, and the
imitation diagnostics)."""

import dataclasses

import numpy as np

from w2s_jax.w2s import curves, metrics
from w2s_jax.w2s.stages import Evaluated, WeakStage


@dataclasses.dataclass(frozen=True)
class Runs:
  """A cell's runs pooled over pretraining draws: run r is fine-tuning seed
  seeds[r] on pretraining draw draws[r]. weak, w2s, ceiling: {eval key:
  [runs, N]}; the rest [runs] (kept_label_accuracy and misfit None where
  the cell has none); answers: {"weak", "w2s", "ceiling": {split: [runs, N,
  fields]}} (Evaluator.assess); curves: {"weak", "w2s", "ceiling": curve
  arrays, values [points, runs]} ({} without curves)."""

  draws: np.ndarray
  seeds: np.ndarray
  weak: dict
  w2s: dict
  ceiling: dict
  weak_label_accuracy: np.ndarray
  kept_label_accuracy: np.ndarray | None
  misfit: np.ndarray | None
  answers: dict = dataclasses.field(default_factory=dict)
  curves: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def of(cls, weak: WeakStage, w2s: Evaluated, ceiling: Evaluated, *, draw: int, seeds) -> "Runs":
    """One pretraining draw's stages."""
    return cls(
      draws=np.full(len(seeds), draw),
      seeds=np.asarray(seeds),
      weak=weak.scores,
      w2s=w2s.scores,
      ceiling=ceiling.scores,
      weak_label_accuracy=np.asarray(weak.label_accuracy),
      kept_label_accuracy=w2s.kept_label_accuracy,
      misfit=w2s.misfit,
      answers={"weak": weak.answers, "w2s": w2s.answers, "ceiling": ceiling.answers},
      curves={
        stage: evaluated.curve
        for stage, evaluated in (("weak", weak), ("w2s", w2s), ("ceiling", ceiling))
        if evaluated.curve
      },
    )

  @classmethod
  def pooled(cls, runs: list["Runs"]) -> "Runs":
    """Every draw's runs, draw-major."""

    def cat(values):
      return None if values[0] is None else np.concatenate([np.asarray(v) for v in values])

    def cat_scores(dicts):
      return {k: np.concatenate([d[k] for d in dicts]) for k in dicts[0]}

    return cls(
      draws=cat([r.draws for r in runs]),
      seeds=cat([r.seeds for r in runs]),
      weak=cat_scores([r.weak for r in runs]),
      w2s=cat_scores([r.w2s for r in runs]),
      ceiling=cat_scores([r.ceiling for r in runs]),
      weak_label_accuracy=cat([r.weak_label_accuracy for r in runs]),
      kept_label_accuracy=cat([r.kept_label_accuracy for r in runs]),
      misfit=cat([r.misfit for r in runs]),
      answers={m: cat_scores([r.answers[m] for r in runs]) for m in runs[0].answers},
      curves={stage: curves.pooled([r.curves[stage] for r in runs]) for stage in runs[0].curves},
    )


def summarize(runs: Runs, *, keys, num_resamples: int, truth=None, answer_names=None) -> dict:
  """PGR and the three accuracies with their intervals, and the imitation diagnostics.

  Args:
    runs: a cell's runs over every pretraining draw.
    keys: the evaluation keys to summarize.
    num_resamples: bootstrap resamples.
    truth, answer_names: a generative task's right answers per evaluation
      split [N, fields] and the fields' names (Evaluator.truth_answers,
      .answer_names), for its answer imitation (a classifier's answer is its
      class: imitation() says it all).

  Returns:
    {key: {"weak", "w2s", "ceiling", "pgr": {mean, lo, hi, ...},
    "fixed_pretraining", "draws", "imitation"}}: a paired, hierarchical
    bootstrap over pretraining draws, seeds and examples
    (metrics.bootstrap_w2s), and how the student and the ceiling follow the
    weak model (metrics.imitation; for a generative task, under a split's
    headline key, also "answers": metrics.answer_imitation for the student and
    the ceiling).
  """
  out = {}
  for key in keys:
    out[key] = metrics.bootstrap_w2s(
      weak_correct=runs.weak[key],
      w2s_correct=runs.w2s[key],
      ceiling_correct=runs.ceiling[key],
      pretraining=runs.draws,
      num_resamples=num_resamples,
    )
    out[key]["imitation"] = metrics.imitation(
      weak_correct=runs.weak[key], w2s_correct=runs.w2s[key], ceiling_correct=runs.ceiling[key]
    )
    split = key.partition(":")[0]
    answers = runs.answers.get("weak", {})
    if truth and key == split and split in answers:
      out[key]["imitation"]["answers"] = {
        student: metrics.answer_imitation(
          weak=answers[split],
          student=runs.answers[student][split],
          truth=truth[split],
          names=answer_names,
        )
        for student in ("w2s", "ceiling")
      }
  return out
