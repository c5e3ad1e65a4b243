"""The records every W2S run writes: one schema for single runs and sweeps.

docs/outputs.md describes each field. In short:

- a cell record (cells/<id>/results.json): one (weak, strong, loss, fine-tune,
  filter) point: its per-seed scores and its summary (Pweak, Pweak->strong,
  Pceiling, PGR with intervals) per evaluation key;
- a sweep row (sweep.jsonl): the cell record flattened for tables and charts;
- the run record (results.json): the config, the environment, each model's
  pretraining, the task's encoding, and every cell record. A single experiment
  is a sweep of one pair, so its results.json is this same record.
"""

import numpy as np

from w2s_jax.infra.files import package_versions
from w2s_jax.infra.fingerprint import fingerprint
from w2s_jax.w2s.grid import Cell

SCHEMA = "w2s-jax/results/2"
STATS = ("mean", "lo", "hi", "undefined_frac")


def cell_record(cell: Cell, *, seeds, weak, w2s, ceiling, summary, models, keys) -> dict:
  """weak: stages.WeakStage; w2s, ceiling: stages.Evaluated; models: {size: (params count,
  pretraining info)} for the cell's two sizes; summary: stages.summarize's."""
  n_weak, info_weak = models[cell.weak]
  n_strong, info_strong = models[cell.strong]
  return {
    "cell": fingerprint(cell),
    "id": cell.id,
    "label": cell.label,
    "seeds": list(seeds),
    "params": {"weak": n_weak, "strong": n_strong},
    # Parameters x pretraining tokens, the x-axis of Burns et al.'s charts.
    "strong_compute": float(n_strong) * info_strong.get("tokens", 0),
    "weak_compute": float(n_weak) * info_weak.get("tokens", 0),
    "pretraining": {"weak": info_weak, "strong": info_strong},
    "per_seed": {
      key: {
        "weak": weak.scores[key].mean(1).tolist(),
        "w2s": w2s.scores[key].mean(1).tolist(),
        "ceiling": ceiling.scores[key].mean(1).tolist(),
      }
      for key in keys
    },
    "weak_label_accuracy": np.asarray(weak.label_accuracy).tolist(),
    "kept_label_accuracy": (
      None if w2s.kept_label_accuracy is None else np.asarray(w2s.kept_label_accuracy).tolist()
    ),
    "summary": summary,
  }


def sweep_row(cell: Cell, record: dict) -> dict:
  """The flat row the sweep's tables and charts read."""
  combined = cell.loss.name == "combined"
  row = {
    "cell": cell.id,
    "weak": cell.weak,
    "strong": cell.strong,
    "loss": cell.loss.tag,
    "filter": cell.filter.tag if cell.filter else "none",
    "criterion": cell.filter.criterion if cell.filter else "none",
    "keep_frac": cell.filter.keep_frac if cell.filter else 1.0,
    "kd_weight": cell.loss.kd_weight if combined else None,
    "gt_examples": cell.loss.gt_examples if combined else None,
    "weak_params": record["params"]["weak"],
    "strong_params": record["params"]["strong"],
    "strong_compute": record["strong_compute"],
    "weak_compute": record["weak_compute"],
    "seeds": record["seeds"],
    "weak_label_accuracy": float(np.mean(record["weak_label_accuracy"])),
    "kept_label_accuracy": (
      float(np.mean(record["kept_label_accuracy"])) if record.get("kept_label_accuracy") else None
    ),
  }
  for key, stats in record["summary"].items():
    for metric, s in stats.items():
      for k in STATS:
        if k in s:
          row[f"{key}/{metric}/{k}"] = s[k]
  return row


def row_summary(row: dict, key: str) -> dict:
  """A sweep row's {weak, w2s, ceiling, pgr} stats for one key, as in a cell record."""
  out = {}
  for metric in ("weak", "w2s", "ceiling", "pgr"):
    out[metric] = {k: row[f"{key}/{metric}/{k}"] for k in STATS if f"{key}/{metric}/{k}" in row}
  return out


def environment() -> dict:
  import jax

  return {
    "versions": package_versions(),
    "devices": [str(d) for d in jax.devices()],
    "processes": jax.process_count(),
  }


def run_record(*, config, parts, sizes, cells: list[dict], seconds: float) -> dict:
  """results.json: config is the ExperimentConfig (single run) or the SweepConfig."""
  models = {}
  encodings = parts.views.encodings(sizes)
  for size in sizes:
    _, model_cfg, info = parts.models.get(size)
    models[size] = {
      **info,
      "size": size,
      "num_params": model_cfg.num_params,
      "encoding": encodings.get(size),
    }
  return {
    "schema": SCHEMA,
    "config": fingerprint(config),
    "environment": environment(),
    "task": {
      "name": parts.task.name,
      "eval_keys": list(parts.evaluator.eval_keys),
      "encoding": parts.task.encoding,
    },
    "models": models,
    "cells": cells,
    "seconds": seconds,
  }
