"""The pool curation experiment: the weak LM filters a pretraining pool, and
the strong model pretrained on what it keeps goes through W2S.

The pool is the testbed corpus plus planted bad documents; the strong model
is pretrained on the clean corpus, the whole pool and the filtered pool, each
followed by the weak, ceiling and W2S (naive KD) stages.
"""

import time
from pathlib import Path

import numpy as np

from w2s_jax.curation import pool as pool_lib
from w2s_jax.curation import selection
from w2s_jax.data import testbed
from w2s_jax.infra import memory
from w2s_jax.infra.files import prepare_out_dir, write_json_atomic
from w2s_jax.infra.fingerprint import fingerprint
from w2s_jax.training import pretrain
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s import records, stages
from w2s_jax.w2s import runs as runs_lib
from w2s_jax.w2s.tables import summary_table


def run(
  cfg,
  *,
  keep: float,
  out_dir: Path,
  cache_dir,
  progress=True,
  bad_frac=0.2,
  criterion: str = "likelihood",
) -> dict:
  """Removal by every criterion; the strong model pretrained on the clean
  corpus, the pool and the pool filtered by `criterion` at `keep`."""
  criterion = pool_lib.pool_criterion(criterion)
  started, meter = time.perf_counter(), memory.Peak().start()
  out_dir = prepare_out_dir(out_dir)
  parts = parts_lib.build(cfg, cache_dir=cache_dir, progress=progress)
  if parts.task.world is None:
    raise ValueError(
      f"the pool curation experiment plants bad documents in the testbed's "
      f"corpus: the {parts.task.name} task has no testbed world"
    )
  clean = parts.task.corpus
  pool, kind = testbed.corrupted_pool(parts.task.world, clean, bad_frac=bad_frac)
  pool_tag = f"pool-bad{bad_frac:g}"
  runs, removal = {}, None
  # Every pretraining draw filters with its own weak model and pretrains its
  # own strong models: the intervals cover the curation's draw too.
  for draw in cfg.pretrain_seeds:
    draw_parts = parts.for_draw(draw)
    ref_params, ref_cfg, _ = pretrain.pretrained_model(
      cfg,
      cfg.weak_size,
      draw_parts.task,
      pool,
      draw_parts.mesh,
      draw_parts.models.cache,
      progress,
      corpus_tag=pool_tag,
      seed=draw,
    )
    weak_params, weak_cfg, _ = draw_parts.models.get(cfg.weak_size)
    criteria = pool_lib.pool_scores(
      params=weak_params,
      model_cfg=weak_cfg,
      pool=pool,
      batch_size=cfg.eval_batch_size,
      mesh=draw_parts.mesh,
      reference=(ref_params, ref_cfg),
    )
    if removal is None:  # the first draw's; a table per draw would repeat it closely
      removal = pool_lib.removal_table(
        kind, criteria, sorted({*pool_lib.KEEP_FRACS, keep}, reverse=True)
      )
    kept = selection.top_fraction(scores=criteria[criterion], keep_frac=keep)
    corpora = {"clean": None, "pool": pool, f"pool, {criterion}@{keep:g}": pool.take(kept)}
    weak = stages.weak_stage(draw_parts, cfg.weak_size)
    for name, corpus in corpora.items():
      if corpus is not None:
        draw_parts.models.pretrain_on(cfg.strong_size, corpus, f"{pool_tag}/{name}")
      ceiling = stages.ceiling_stage(draw_parts, cfg.strong_size)
      result = stages.w2s_stage(draw_parts, cfg.strong_size, weak, Xent())
      info = draw_parts.models.get(cfg.strong_size).info
      entry = runs.setdefault(
        name, {"runs": [], "facts": [], "docs": len(clean if corpus is None else corpus)}
      )
      entry["runs"].append(runs_lib.Runs.of(weak, result, ceiling, draw=draw, seeds=parts.seeds))
      entry["facts"].append(info["lives"])
  w2s = {
    name: {
      "summary": runs_lib.summarize(
        runs_lib.Runs.pooled(entry["runs"]),
        keys=parts.evaluator.eval_keys,
        num_resamples=cfg.bootstrap_resamples,
      ),
      "strong_facts": float(np.mean(entry["facts"])),
      "docs": entry["docs"],
    }
    for name, entry in runs.items()
  }
  results = {
    "schema": records.SCHEMA,
    "config": fingerprint(cfg),
    "environment": records.environment(),
    "keep": keep,
    "criterion": criterion,
    "bad_frac": bad_frac,
    "removal": removal,
    "w2s": w2s,
    "seconds": time.perf_counter() - started,
    "memory": meter.report(),
  }
  meter.stop()
  write_json_atomic(Path(out_dir) / "results.json", results)
  return results


def format_report(results: dict) -> str:
  lines = [
    f"bad documents removed (pool: {results['bad_frac']:.0%} bad, kinds "
    f"{', '.join(testbed.BAD_KINDS)})",
    f"{'criterion':18s} {'keep':>5s} {'bad removed':>12s} {'clean kept':>11s}  per kind",
  ]
  for r in results["removal"]:
    kinds = "  ".join(f"{k} {r[f'removed/{k}']:.0%}" for k in testbed.BAD_KINDS)
    lines.append(
      f"{r['criterion']:18s} {r['keep_frac']:5.2f} {r['bad_removed']:12.1%} "
      f"{r['clean_kept']:11.1%}  {kinds}"
    )
  lines.append("\nstrong model pretrained on each corpus, then W2S with naive KD (test split)")
  rows = []
  for name, r in results["w2s"].items():
    rows.append(
      {
        "corpus": f"{name} ({r['docs']} docs, facts {r['strong_facts']:.0%})",
        **r["summary"]["test"],
      }
    )
  lines.append(summary_table(rows, ("corpus",)))
  lines.append(f"\ntotal {results['seconds']:.0f}s; {memory.summary_line(results.get('memory'))}")
  return "\n".join(lines)
