"""Curating a pretraining pool with a weak LM: how much planted bad data each criterion removes."""

import time
from pathlib import Path

import numpy as np

from w2s_jax import pipeline, pretrain, scores, selection, stages, testbed
from w2s_jax.data import Dataset
from w2s_jax.objectives import LossConfig
from w2s_jax.results import package_versions, prepare_out_dir, summary_table, write_json_atomic

KEEP_FRACS = (0.9, 0.8, 0.7, 0.5)


def pool_scores(ctx, pool: Dataset, *, weak_size: str, reference=None) -> dict:
  """Per-document scores of the pool (higher is kept).

  likelihood: the weak LM's mean per-token log-likelihood. likelihood_ratio:
  that minus a reference LM's (Moore and Lewis 2010), with the reference
  pretrained on the unfiltered pool itself, so the ratio asks "more typical
  of clean text than of the pool?". random: a baseline.
  """
  batch = ctx.cfg.eval_batch_size
  params, model_cfg, _ = ctx.pretrained(weak_size)
  ll = scores.sequence_log_likelihood(params, model_cfg, pool, batch_size=batch, mesh=ctx.mesh)
  out = {"likelihood": ll,
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


def run(cfg, *, keep: float, out_dir: Path, cache_dir, progress=True, bad_frac=0.2) -> dict:
  started = time.perf_counter()
  out_dir = prepare_out_dir(out_dir)
  ctx = stages.Context(cfg, cache_dir=cache_dir, progress=progress)
  pool, kind = testbed.corrupted_pool(ctx.world, ctx.corpus, bad_frac=bad_frac)
  pool_tag = f"pool-bad{bad_frac:g}"
  ref_params, ref_cfg, _ = pretrain.pretrained_model(
      cfg, cfg.weak_size, ctx.task, pool, ctx.mesh, ctx.cache, progress, corpus_tag=pool_tag)
  criteria = pool_scores(ctx, pool, weak_size=cfg.weak_size, reference=(ref_params, ref_cfg))
  removal = removal_table(kind, criteria, sorted({*KEEP_FRACS, keep}, reverse=True))

  kept = selection.top_fraction(scores=criteria["likelihood"], keep_frac=keep)
  corpora = {"clean": None, "pool": pool,
             f"pool, likelihood@{keep:g}": pool.take(kept)}
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
             "keep": keep, "bad_frac": bad_frac, "removal": removal, "w2s": w2s,
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
