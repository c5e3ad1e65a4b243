"""Curating a pretraining pool with a weak LM: scoring documents, and how much
planted bad data each criterion removes (testbed.corrupted_pool plants it)."""

import numpy as np

from w2s_jax.curation import scores, selection
from w2s_jax.data import testbed
from w2s_jax.data.dataset import Dataset
from w2s_jax.models import scoring

KEEP_FRACS = (0.9, 0.8, 0.7, 0.5)
POOL_CRITERIA = ("likelihood", "min_prob", "likelihood_ratio", "random")
ALIASES = {"mean_logprob": "likelihood"}  # the weak-response score of the same function


def pool_scores(*, params, model_cfg, pool: Dataset, batch_size: int, mesh, reference=None) -> dict:
  """Per-document scores of the pool (higher is kept).

  likelihood: the weak LM's mean per-token log-likelihood (scoring.mean_logprob,
  the `mean_logprob` that ranks weak responses). min_prob: its lowest token
  probability in the document (scoring.min_prob, also a weak-response score).
  likelihood_ratio: likelihood minus a reference LM's (Moore and Lewis 2010),
  with the reference (reference: (params, model_cfg)) pretrained on the
  unfiltered pool itself, so the ratio
  asks "more typical of clean text than of the pool?". random: a baseline.
  """
  tokens = scoring.token_scores(params, model_cfg, pool, batch_size=batch_size, mesh=mesh)
  ll = tokens["mean_logprob"]
  out = {
    "likelihood": ll,
    "min_prob": tokens["min_prob"],
    "random": np.random.default_rng(0).permutation(len(pool)).astype(np.float64),
  }
  if reference is not None:
    ref, ref_cfg = reference
    ref_ll = scoring.sequence_log_likelihood(ref, ref_cfg, pool, batch_size=batch_size, mesh=mesh)
    out["likelihood_ratio"] = np.asarray(
      scores.log_likelihood_ratio(log_likelihood=ll, reference_log_likelihood=ref_ll)
    )
  return out


def removal_table(pool_kind: np.ndarray, criteria: dict, keep_fracs) -> list[dict]:
  """For each criterion and keep fraction: the share of bad documents removed,
  overall and per kind, and the share of clean documents kept."""
  rows = []
  bad = pool_kind >= 0
  for name, values in criteria.items():
    for keep in keep_fracs:
      kept = np.zeros(len(values), bool)
      kept[selection.top_fraction(scores=values, keep_frac=keep)] = True
      row = {
        "criterion": name,
        "keep_frac": keep,
        "bad_removed": float(np.mean(~kept[bad])),
        "clean_kept": float(np.mean(kept[~bad])),
      }
      for k, kind in enumerate(testbed.BAD_KINDS):
        row[f"removed/{kind}"] = float(np.mean(~kept[pool_kind == k]))
      rows.append(row)
  return rows


def pool_criterion(name: str) -> str:
  """A pool criterion's name (POOL_CRITERIA, or an alias); a clear error otherwise."""
  name = ALIASES.get(name, name)
  if name not in POOL_CRITERIA:
    raise ValueError(
      f"pool criterion {name!r}: expected one of {POOL_CRITERIA} (or {sorted(ALIASES)})"
    )
  return name
