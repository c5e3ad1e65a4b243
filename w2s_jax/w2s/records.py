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

from w2s_jax.infra import host_memory
from w2s_jax.infra.files import package_versions
from w2s_jax.infra.fingerprint import fingerprint
from w2s_jax.w2s import curves
from w2s_jax.w2s.grid import Cell

SCHEMA = "w2s-jax/results/3"  # 3: pretraining draws (runs), imitation, misfit
STATS = ("mean", "lo", "hi", "undefined_frac")
METRICS = ("weak", "w2s", "ceiling", "pgr")
# What the tables still read: results/2 has one pretraining draw and no imitation.
READABLE = ("w2s-jax/results/2", SCHEMA)


def cell_record(cell: Cell, *, runs, summary, models, keys) -> dict:
  """runs: runs.Runs (every pretraining draw's); models: {size: (params
  count, [pretraining info per draw])} for the cell's two sizes; summary:
  runs.summarize's."""
  n_weak, info_weak = models[cell.weak]
  n_strong, info_strong = models[cell.strong]

  def listed(values):
    return None if values is None else np.asarray(values).tolist()

  return {
    "cell": fingerprint(cell),
    "id": cell.id,
    "label": cell.label,
    "seeds": sorted(set(runs.seeds.tolist())),
    "pretrain_seeds": list(dict.fromkeys(runs.draws.tolist())),
    # Run r: fine-tuning seed runs[r][1] on pretraining draw runs[r][0]; the
    # per-run lists below follow this order.
    "runs": [[int(d), int(s)] for d, s in zip(runs.draws, runs.seeds)],
    "params": {"weak": n_weak, "strong": n_strong},
    # Parameters x pretraining tokens, the x-axis of Burns et al.'s charts.
    "strong_compute": float(n_strong) * info_strong[0].get("tokens", 0),
    "weak_compute": float(n_weak) * info_weak[0].get("tokens", 0),
    "pretraining": {"weak": info_weak, "strong": info_strong},
    "per_seed": {
      key: {
        "weak": runs.weak[key].mean(1).tolist(),
        "w2s": runs.w2s[key].mean(1).tolist(),
        "ceiling": runs.ceiling[key].mean(1).tolist(),
      }
      for key in keys
    },
    "weak_label_accuracy": listed(runs.weak_label_accuracy),
    "kept_label_accuracy": listed(runs.kept_label_accuracy),
    "misfit": listed(runs.misfit),
    "summary": summary,
    # Each stage's training curve, values [points][runs] (curves.py), and
    # the final point beside the best one (an oracle: picked on test data),
    # by the curve's accuracy (curves.headline).
    "curves": {
      stage: {k[len(curves.PREFIX) :]: np.asarray(v).tolist() for k, v in curve.items()}
      for stage, curve in runs.curves.items()
    },
    "oracle": {
      stage: curves.oracle(curve, curves.headline(keys[0], curve))
      for stage, curve in runs.curves.items()
    },
  }


def sweep_row(cell: Cell, record: dict) -> dict:
  """The flat row the sweep's tables and charts read."""
  combined = cell.loss.name == "combined"
  row = {
    "cell": cell.id,
    "weak": cell.weak,
    "strong": cell.strong,
    "loss": cell.loss.tag,
    "method": cell.method,
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
    "pretrain_seeds": record["pretrain_seeds"],
    "weak_label_accuracy": float(np.mean(record["weak_label_accuracy"])),
    "misfit": float(np.mean(record["misfit"])) if record.get("misfit") else None,
    "kept_label_accuracy": (
      float(np.mean(record["kept_label_accuracy"])) if record.get("kept_label_accuracy") else None
    ),
    # Where the cell was computed (records written before memory was measured: None).
    **{
      f"{k}_rss_bytes": (record.get("memory") or {}).get(f"{k}_rss_bytes")
      for k in ("peak", "steady")
    },
  }
  for key, stats in record["summary"].items():
    for metric in METRICS:
      for k in STATS:
        if k in stats[metric]:
          row[f"{key}/{metric}/{k}"] = stats[metric][k]
      for k, v in stats["fixed_pretraining"][metric].items():
        row[f"{key}/{metric}/fixed_{k}"] = v
    for k, v in stats["draws"].items():
      row[f"{key}/draws/{k}"] = v
    imitation = stats["imitation"]
    for student in ("w2s", "ceiling"):
      for k, v in imitation[student].items():
        row[f"{key}/{student}/{k}"] = v
    row[f"{key}/error_consistency"] = imitation["error_consistency"]
  return row


def row_summary(row: dict, key: str) -> dict:
  """A sweep row's {weak, w2s, ceiling, pgr} stats for one key, as in a cell record."""
  out = {}
  for metric in METRICS:
    out[metric] = {k: row[f"{key}/{metric}/{k}"] for k in STATS if f"{key}/{metric}/{k}" in row}
  return out


def environment() -> dict:
  import jax

  return {
    "versions": package_versions(),
    "devices": [str(d) for d in jax.devices()],
    "processes": jax.process_count(),
    "xla_cpu_scheduler": host_memory.scheduler_status(),
  }


def _row_keys(data) -> list[bytes]:
  """Each example's content (its real tokens: text, or prompt and response),
  as bytes, so equal examples compare equal whatever their padding."""
  fields = [("tokens", "mask"), ("prompt", "prompt_mask"), ("response", "response_mask")]
  parts = [np.asarray(data[f]) * np.asarray(data[m]) for f, m in fields if f in data and m in data]
  if not parts:
    return []
  rows = np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)
  return [np.ascontiguousarray(r).tobytes() for r in rows]


def split_sanity(task) -> dict:
  """Per split of a classification task: its examples, majority-class rate and
  chance level (what an accuracy has to beat); a generative task's: examples.
  Every split: how many of its examples repeat an earlier one of the split
  (`duplicates`); an evaluation split: how many also appear in a train split
  (`in_train`, a leak that flatters every stage)."""
  out, keys = {}, {name: _row_keys(data) for name, data in task.splits.items()}
  train = set().union(*[set(k) for name, k in keys.items() if name.startswith("train")])
  for name, data in task.splits.items():
    out[name] = {"examples": len(data), "duplicates": len(keys[name]) - len(set(keys[name]))}
    if not name.startswith("train"):
      out[name]["in_train"] = sum(k in train for k in keys[name])
    if not task.generative:
      counts = np.bincount(np.asarray(data["labels"]), minlength=task.num_classes)
      out[name].update(majority=float(counts.max() / counts.sum()), chance=1 / len(counts))
  return out


def data_warnings(sanity: dict) -> list[str]:
  """What makes a split's readings meaningless, degenerate or flattered
  (split_sanity's output): a split of one class, or of fewer than two
  examples; repeated examples; evaluation examples also in a train split."""
  out = []
  for name, s in sanity.items():
    if s["examples"] < 2:
      out.append(
        f"{name}: {s['examples']} example(s): accuracy over it is 0 or 1 and an "
        "interval over examples says nothing"
      )
    elif s.get("majority") == 1.0:
      out.append(
        f"{name}: every one of its {s['examples']} examples has the same label: a "
        "classifier trained or scored on it learns or shows nothing about the other class"
      )
    if s.get("duplicates"):
      out.append(
        f"{name}: {s['duplicates']} of its {s['examples']} examples repeat an earlier one: "
        "they count more than once in its readings (and intervals treat them as independent)"
      )
    if s.get("in_train"):
      out.append(
        f"{name}: {s['in_train']} of its {s['examples']} examples also appear in a train "
        "split: readings on them measure memory, not generalisation"
      )
  return out


def run_record(
  *, config, parts, sizes, cells: list[dict], seconds: float, draws=None, memory=None
) -> dict:
  """results.json: config is the ExperimentConfig (single run) or the SweepConfig;
  draws: {pretraining seed: Parts} (default: parts' own draw); memory: the
  run's memory.Peak report."""
  models = {}
  encodings = parts.views.encodings(sizes)
  draws = draws or {parts.draw: parts}
  for size in sizes:
    _, model_cfg, info = parts.models.get(size)
    models[size] = {
      **info,
      "size": size,
      "num_params": model_cfg.num_params,
      "encoding": encodings.get(size),
    }
    if len(draws) > 1:
      models[size]["draws"] = [p.models.get(size).info for p in draws.values()]
  sanity = split_sanity(parts.task)
  return {
    "schema": SCHEMA,
    "config": fingerprint(config),
    "environment": environment(),
    "task": {
      "name": parts.task.name,
      **({} if parts.task.generative else {"label_names": list(parts.task.label_names)}),
      "eval_keys": list(parts.evaluator.eval_keys),
      "encoding": parts.task.encoding,
      "splits": sanity,
      "warnings": data_warnings(sanity),
    },
    "models": models,
    "cells": cells,
    "seconds": seconds,
    "memory": memory,
  }
