"""Curating a pretraining pool with a weak LM: how much planted bad data each criterion removes."""

import time
from pathlib import Path

import numpy as np

from w2s_jax import pipeline, pretrain, scores, selection, stages, testbed
from w2s_jax.data import Dataset
from w2s_jax.objectives import LossConfig
from w2s_jax.results import package_versions, prepare_out_dir, summary_table, write_json_atomic

KEEP_FRACS = (0.9, 0.8, 0.7, 0.5)
POOL_CRITERIA = ("likelihood", "min_prob", "likelihood_ratio", "random")
ALIASES = {"mean_logprob": "likelihood"}  # the weak-response score of the same function


def pool_scores(ctx, pool: Dataset, *, weak_size: str, reference=None) -> dict:
  """Per-document scores of the pool (higher is kept).

  likelihood: the weak LM's mean per-token log-likelihood (scores.mean_logprob,
  the `mean_logprob` that ranks weak responses). min_prob: its lowest token
  probability in the document (scores.min_prob, also a weak-response score).
  likelihood_ratio: likelihood minus a reference LM's (Moore and Lewis 2010),
  with the reference pretrained on the unfiltered pool itself, so the ratio
  asks "more typical of clean text than of the pool?". random: a baseline.
  """
  batch = ctx.cfg.eval_batch_size
  params, model_cfg, _ = ctx.pretrained(weak_size)
  tokens = scores.token_scores(params, model_cfg, pool, batch_size=batch, mesh=ctx.mesh)
  ll = tokens["mean_logprob"]
  out = {"likelihood": ll, "min_prob": tokens["min_prob"],
         "random": np.random.default_rng(0).permutation(len(pool)).astype(np.float64)}
  if reference is not None:
    ref, ref_cfg = reference
    ref_ll = scores.sequence_log_likelihood(ref, ref_cfg, pool, batch_size=batch, mesh=ctx.mesh)
    out["likelihood_ratio"] = np.asarray(scores.log_likelihood_ratio(
        log_likelihood=ll, reference_log_likelihood=ref_ll))
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
      row = {"criterion": name, "keep_frac": keep,
             "bad_removed": float(np.mean(~kept[bad])),
             "clean_kept": float(np.mean(kept[~bad]))}
      for k, kind in enumerate(testbed.BAD_KINDS):
        row[f"removed/{kind}"] = float(np.mean(~kept[pool_kind == k]))
      rows.append(row)
  return rows


def pool_criterion(name: str) -> str:
  """A pool criterion's name (POOL_CRITERIA, or an alias); a clear error otherwise."""
  name = ALIASES.get(name, name)
  if name not in POOL_CRITERIA:
    raise ValueError(f"pool criterion {name!r}: expected one of {POOL_CRITERIA} "
                     f"(or {sorted(ALIASES)})")
  return name


def run(cfg, *, keep: float, out_dir: Path, cache_dir, progress=True, bad_frac=0.2,
        criterion: str = "likelihood") -> dict:
  """Removal by every criterion; the strong model pretrained on the clean
  corpus, the pool and the pool filtered by `criterion` at `keep`."""
  criterion = pool_criterion(criterion)
  started = time.perf_counter()
  out_dir = prepare_out_dir(out_dir)
  ctx = stages.Context(cfg, cache_dir=cache_dir, progress=progress)
  pool, kind = testbed.corrupted_pool(ctx.world, ctx.corpus, bad_frac=bad_frac)
  pool_tag = f"pool-bad{bad_frac:g}"
  ref_params, ref_cfg, _ = pretrain.pretrained_model(
      cfg, cfg.weak_size, ctx.task, pool, ctx.mesh, ctx.cache, progress, corpus_tag=pool_tag)
  criteria = pool_scores(ctx, pool, weak_size=cfg.weak_size, reference=(ref_params, ref_cfg))
  removal = removal_table(kind, criteria, sorted({*KEEP_FRACS, keep}, reverse=True))

  kept = selection.top_fraction(scores=criteria[criterion], keep_frac=keep)
  corpora = {"clean": None, "pool": pool,
             f"pool, {criterion}@{keep:g}": pool.take(kept)}
  weak = stages.weak_stage(ctx, cfg.weak_size)
  w2s = {}
  for name, corpus in corpora.items():
    if corpus is not None:
      ctx.pretrain_on(cfg.strong_size, corpus, f"{pool_tag}/{name}")
    ceiling = stages.ceiling_stage(ctx, cfg.strong_size)
    result = stages.w2s_stage(ctx, cfg.strong_size, weak, LossConfig("xent"))
    summary = stages.summarize(weak, result, ceiling, splits=ctx.eval_splits,
                                 num_resamples=cfg.bootstrap_resamples)
    info = ctx.pretrained(cfg.strong_size)[2]
    w2s[name] = {"summary": summary, "strong_facts": info["lives"], "docs": len(ctx.corpus if corpus is None else corpus)}
  results = {"config": pipeline.config_to_dict(cfg), "versions": package_versions(),
             "keep": keep, "criterion": criterion, "bad_frac": bad_frac, "removal": removal,
             "w2s": w2s,
             "seconds": time.perf_counter() - started}
  write_json_atomic(Path(out_dir) / "results.json", results)
  return results


def format_report(results: dict) -> str:
  lines = [f"bad documents removed (pool: {results['bad_frac']:.0%} bad, kinds "
           f"{', '.join(testbed.BAD_KINDS)})",
           f"{'criterion':18s} {'keep':>5s} {'bad removed':>12s} {'clean kept':>11s}  per kind"]
  for r in results["removal"]:
    kinds = "  ".join(f"{k} {r[f'removed/{k}']:.0%}" for k in testbed.BAD_KINDS)
    lines.append(f"{r['criterion']:18s} {r['keep_frac']:5.2f} {r['bad_removed']:12.1%} "
                 f"{r['clean_kept']:11.1%}  {kinds}")
  lines.append("\nstrong model pretrained on each corpus, then W2S with naive KD (test split)")
  rows = []
  for name, r in results["w2s"].items():
    rows.append({"name": f"{name} ({r['docs']} docs, facts {r['strong_facts']:.0%})",
                 **r["summary"]["test"]})
  lines.append(summary_table(rows))
  lines.append(f"\ntotal {results['seconds']:.0f}s")
  return "\n".join(lines)
