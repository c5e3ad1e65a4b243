"""Selecting examples by score: top fraction or threshold, optionally per class.

Pure functions of numpy arrays returning sorted indices of the kept examples.
Higher scores are kept; ties break toward the lower index, so a selection is
a deterministic function of its inputs.
"""

import dataclasses

import numpy as np

# What a filter may rank by: a classification task's weak soft labels (and the
# weak LM's likelihood of the example's text), a generative task's weak
# responses (weak_curation.py), a pretraining pool's documents (curation.py).
CLASSIFICATION_CRITERIA = ("confidence", "margin", "neg_entropy", "agreement", "likelihood")
GENERATIVE_CRITERIA = ("mean_logprob", "min_prob", "ifd", "self_consistency")
CRITERIA = (*CLASSIFICATION_CRITERIA, *GENERATIVE_CRITERIA, "likelihood_ratio")


class EmptySelectionError(ValueError):
  """A selection kept nothing: never train on an empty set."""


def _ranked(scores):
  """Indices from best to worst; equal scores keep index order."""
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 1:
    raise ValueError(f"scores: expected a 1-D array, got shape {scores.shape}")
  if np.isnan(scores).any():
    raise ValueError(f"scores: {int(np.isnan(scores).sum())} NaN values; expected finite scores")
  return np.lexsort((np.arange(len(scores)), -scores))


def _apportion(shares, total):
  """Whole numbers summing to total, near the real shares (largest remainder;
  ties go to the earlier class)."""
  base = np.floor(shares).astype(int)
  remainder = shares - base
  extra = np.lexsort((np.arange(len(shares)), -remainder))[: total - base.sum()]
  base[extra] += 1
  return base


def top_fraction(*, scores, keep_frac: float, labels=None) -> np.ndarray:
  """The best round(keep_frac * n) examples; with labels, that fraction of each class."""
  if not 0 < keep_frac <= 1:
    raise ValueError(f"keep_frac={keep_frac}: expected in (0, 1]")
  order = _ranked(scores)
  total = int(round(keep_frac * len(order)))
  if labels is None:
    kept = order[:total]
  else:
    labels = np.asarray(labels)
    if labels.shape != np.shape(scores):
      raise ValueError(f"labels shape {labels.shape} != scores shape {np.shape(scores)}")
    classes, sizes = np.unique(labels, return_counts=True)
    quotas = _apportion(keep_frac * sizes, total)
    ranked_labels = labels[order]
    kept = np.concatenate([order[ranked_labels == c][:q] for c, q in zip(classes, quotas)])
  if len(kept) == 0:
    raise EmptySelectionError(
      f"top_fraction kept 0 of {len(order)} examples (keep_frac={keep_frac}"
      f"{', per class' if labels is not None else ''}): nothing to train on"
    )
  return np.sort(kept)


def by_threshold(*, scores, threshold: float, labels=None) -> np.ndarray:
  """Examples scoring >= threshold. With labels, the same number of examples is
  kept, but as the best of each class in proportion, so balance is kept."""
  scores = np.asarray(scores, np.float64)
  _ranked(scores)  # validates
  kept = np.flatnonzero(scores >= threshold)
  if len(kept) == 0:
    raise EmptySelectionError(
      f"by_threshold kept 0 of {len(scores)} examples: none scores >= {threshold} "
      f"(max score {scores.max() if len(scores) else 'n/a'})"
    )
  if labels is None:
    return kept
  return top_fraction(scores=scores, keep_frac=len(kept) / len(scores), labels=labels)


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  """Which examples of the weak-labelled set (or of the weak responses, for a
  generative task) the strong model trains on."""

  criterion: str = "confidence"
  keep_frac: float = 1.0
  # Keep the weak labels' class balance; for a generative task, the balance of a
  # class-like answer field where the task has one (the testbed's region), else off.
  stratified: bool = True

  def __post_init__(self):
    if self.criterion not in CRITERIA:
      raise ValueError(f"FilterConfig.criterion={self.criterion!r}: expected one of {CRITERIA}")
    if not 0 < self.keep_frac <= 1:
      raise ValueError(f"FilterConfig.keep_frac={self.keep_frac}: expected in (0, 1]")

  @property
  def tag(self) -> str:
    return f"{self.criterion}@{self.keep_frac:g}{'/strat' if self.stratified else ''}"
