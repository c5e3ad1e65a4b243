"""Sweeps over weak x strong sizes, losses and hyperparameters, resumable.

Layout of a sweep directory:
  shared/pretrained/...           orbax cache of pretrained models (or --cache)
  shared/weak-<size>.npz          weak labels (or responses) and weak scores, per seed
  shared/weak-<size>-params/      a generative weak model's params (token-level KD's teacher)
  shared/ceiling-<size>.npz       ceiling correctness, per seed
  cells/<cell id>/results.json    one cell: config, per-seed numbers, summary
  sweep.jsonl                     one row per finished cell, in grid order

Every file is written to a temporary name and renamed, so a kill at any
moment leaves each file either absent or complete. results.json is the
record of a finished cell; sweep.jsonl is rebuilt from the finished cells
after each one, so it always holds exactly one row per finished cell.

Every stored file carries a checksum (integrity.py). A stage or a cell whose
file is unreadable or fails it is recomputed, and sweep.jsonl rebuilt, with
a warning naming the file. Two processes may run one sweep: each cell and
each shared stage is locked while it is computed (locks.py); a process skips
a cell another holds, and at the end waits for it and reads its result.
"""

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from w2s_jax import checkpoints, hf_import, integrity, interrupts, locks, models, stages
from w2s_jax import weak_curation
from w2s_jax import sharding as shd
from w2s_jax.objectives import LossConfig
from w2s_jax.pipeline import ExperimentConfig
from w2s_jax.results import (atomic_write, package_versions, prepare_out_dir,
                             remove_stale_temp_files, write_json_atomic)
from w2s_jax.selection import FilterConfig
from w2s_jax.train import OptimConfig


@dataclasses.dataclass(frozen=True)
class Cell:
  """One point of the grid: a weak and a strong size, a loss, a fine-tune config."""
  weak: str
  strong: str
  loss: LossConfig = LossConfig()
  finetune: OptimConfig | None = None  # None: the sweep's base fine-tune config
  filter: FilterConfig | None = None   # None: train on every weak-labelled example

  @property
  def id(self) -> str:
    blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
    return f"{self.weak}_{self.strong}_{self.loss.name}_{digest}"


def size_order(size: str, pretrained_dirs=()) -> int:
  """Sizes compare by parameter count: of the table's rows without their
  vocabulary, of imported checkpoints (pretrained_dirs) as their config says."""
  if size in dict(pretrained_dirs):
    folder = dict(pretrained_dirs)[size]
    return hf_import.folder_config(folder).num_params
  return models.decode_size(size, vocab_size=1).num_params


def pairs(sizes, pretrained_dirs=(), weak_sizes=None) -> list[tuple[str, str]]:
  """Every (weak, strong) pair with weak smaller than strong; with weak_sizes,
  only the pairs whose weak model is one of them."""
  unknown = sorted(set(weak_sizes or ()) - set(sizes))
  if unknown:
    raise ValueError(f"weak_sizes {unknown}: expected a subset of sizes {list(sizes)}")
  ordered = sorted(sizes, key=lambda s: size_order(s, pretrained_dirs))
  return [(w, s) for i, w in enumerate(ordered) for s in ordered[i + 1:]
          if weak_sizes is None or w in weak_sizes]


def grid(sizes, losses, finetunes=(None,), filters=(None,), pretrained_dirs=(),
         weak_sizes=None) -> list[Cell]:
  """The product of pairs(sizes, weak_sizes=...), losses, fine-tune configs and filters."""
  return [Cell(w, s, loss, ft, flt) for w, s in pairs(sizes, pretrained_dirs, weak_sizes)
          for loss in losses for ft in finetunes for flt in filters]


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  base: ExperimentConfig
  cells: tuple[Cell, ...]

  def __post_init__(self):
    if not self.cells:
      raise ValueError("SweepConfig.cells is empty: the sweep has nothing to run")
    ids = [c.id for c in self.cells]
    if len(set(ids)) != len(ids):
      raise ValueError("SweepConfig.cells has duplicates")
    imported = self.base.pretrained_dirs
    for cell in self.cells:
      for field in ("weak", "strong"):
        if getattr(cell, field) in dict(imported):
          continue
        try:
          models.decode_size(getattr(cell, field), vocab_size=1)
        except ValueError as e:
          raise ValueError(f"Cell.{field} in {cell}: {e}") from None
      if size_order(cell.weak, imported) >= size_order(cell.strong, imported):
        raise ValueError(f"Cell weak={cell.weak!r} is not smaller than strong={cell.strong!r}")
      if cell.filter is not None:
        try:
          weak_curation.check_filter(cell.filter, generative=self.base.generative, weak_samples=(
              self.base.generation.weak_samples if self.base.generative else 1))
        except ValueError as e:
          raise ValueError(f"Cell.filter in {cell}: {e}") from None


def _load_stage(path: Path, fields) -> dict | None:
  """A stored stage's arrays, or None when it must be (re)computed: absent,
  unreadable, failing its checksum, or predating a field the stage now records."""
  if not path.exists():
    return None
  try:
    arrays = integrity.load_npz_checked(path)
  except integrity.CorruptFileError as err:
    integrity.warn_rebuild(path, err.problem, "recomputing the stage")
    return None
  return arrays if all(k in arrays for k in fields) else None


def _stored(path: Path, compute, fields=()) -> dict:
  """Loads a stage's arrays, or computes and stores them; one process at a time."""
  arrays = _load_stage(path, fields)
  if arrays is not None:
    return arrays
  with locks.exclusive(path):
    arrays = _load_stage(path, fields)  # another process may have stored it meanwhile
    if arrays is None:
      arrays = compute()
      integrity.save_npz_checked(path, arrays)
  return arrays


def _read_jsonl(path: Path) -> list[dict] | None:
  """The rows, or None if the file is unreadable (it is derived: rebuilt)."""
  if not path.exists():
    return []
  try:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  except (json.JSONDecodeError, UnicodeDecodeError):
    return None


def _write_jsonl_atomic(path: Path, rows: list[dict]):
  with atomic_write(path) as f:
    f.writelines(json.dumps(row, allow_nan=True) + "\n" for row in rows)


def jsonl_row(cell: Cell, results: dict) -> dict:
  """The flat row the sweep's tables and charts read."""
  row = {"cell": cell.id, "weak": cell.weak, "strong": cell.strong, "loss": cell.loss.tag,
         "filter": cell.filter.tag if cell.filter else "none",
         "criterion": cell.filter.criterion if cell.filter else "none",
         "keep_frac": cell.filter.keep_frac if cell.filter else 1.0,
         "kd_weight": cell.loss.kd_weight if cell.loss.name == "combined" else None,
         "gt_examples": cell.loss.gt_examples if cell.loss.name == "combined" else None,
         "weak_params": results["params"]["weak"], "strong_params": results["params"]["strong"],
         "strong_compute": results["strong_compute"], "weak_compute": results["weak_compute"],
         "seeds": results["seeds"],
         "weak_label_accuracy": float(np.mean(results["weak_label_accuracy"])),
         "kept_label_accuracy": (float(np.mean(results["kept_label_accuracy"]))
                                 if results.get("kept_label_accuracy") else None)}
  for split, stats in results["summary"].items():
    for metric, s in stats.items():
      for k in ("mean", "lo", "hi", "undefined_frac"):
        if k in s:
          row[f"{split}/{metric}/{k}"] = s[k]
  return row


def _weak_stage(ctx, shared: Path, size: str, *, with_params: bool) -> dict:
  """The stored weak stage of `size`, computed once per sweep. A generative
  weak stage also keeps the weak model's fine-tuned params (orbax, written
  before the .npz that marks the stage complete), which token-level KD
  reads as its teacher; they are loaded only when a cell needs them."""
  params_dir = shared / f"weak-{size}-params"
  npz = shared / f"weak-{size}.npz"
  if ctx.generative and not params_dir.exists():
    npz.unlink(missing_ok=True)  # a stage stored without its params is incomplete

  def compute():
    out = stages.weak_stage(ctx, size)
    params = out.pop("params", None)
    if params is not None:
      out["params_checksum"] = np.array(checkpoints.save_params(params_dir, params), np.int64)
    return out

  fields = stages.weak_stage_fields(ctx) + (("params_checksum",) if ctx.generative else ())
  weak = _stored(npz, compute, fields)
  if with_params:
    abstract = stages.seed_stacked_abstract(ctx.pretrained(size)[1], len(ctx.seeds))
    like = checkpoints.abstract_like(abstract,
                                     shd.state_sharding(abstract, ctx.mesh, seed_axis=True))
    try:
      weak["params"] = checkpoints.load_params(params_dir, like, weak["params_checksum"])
    except (integrity.CorruptFileError, FileNotFoundError) as err:
      integrity.warn_rebuild(params_dir, str(err), "recomputing the weak stage")
      npz.unlink(missing_ok=True)
      return _weak_stage(ctx, shared, size, with_params=with_params)
  return weak


def _cell_results(ctx, cell: Cell, weak: dict, ceiling: dict, cfg: ExperimentConfig) -> dict:
  w2s = stages.w2s_stage(ctx, cell.strong, weak, cell.loss, cell.finetune, cell.filter,
                         weak_size=cell.weak)
  summary = stages.summarize(weak, w2s, ceiling, splits=ctx.eval_keys,
                             num_resamples=cfg.bootstrap_resamples)
  info = {role: ctx.pretrained(size)[2] for role, size in (("weak", cell.weak),
                                                           ("strong", cell.strong))}
  params = {role: models.count_params(ctx.pretrained(size)[0])
            for role, size in (("weak", cell.weak), ("strong", cell.strong))}
  return {
      "cell": dataclasses.asdict(cell),
      "seeds": list(ctx.seeds),
      "params": params,
      # Parameters x pretraining tokens, the x-axis of Burns et al.'s charts.
      "strong_compute": float(params["strong"]) * info["strong"].get("tokens", 0),
      "weak_compute": float(params["weak"]) * info["weak"].get("tokens", 0),
      "pretraining": info,
      "per_seed": {split: {"weak": weak[split].mean(1).tolist(),
                           "w2s": w2s[split].mean(1).tolist(),
                           "ceiling": ceiling[split].mean(1).tolist()}
                   for split in ctx.eval_keys},
      "weak_label_accuracy": weak["label_accuracy"].tolist(),
      "kept_label_accuracy": (w2s["kept_label_accuracy"].tolist()
                              if "kept_label_accuracy" in w2s else None),
      "summary": summary,
  }


def _finished(path: Path, cell: Cell) -> dict | None:
  """A cell's results, or None if it must be (re)computed."""
  if not path.exists():
    return None
  try:
    return integrity.read_json_checked(path, "cell results")
  except integrity.CorruptFileError as err:
    integrity.warn_rebuild(path, err.problem, f"recomputing cell {cell.id}")
    path.unlink(missing_ok=True)
    return None


def run_sweep(sweep: SweepConfig, *, out_dir, cache_dir=None, progress=True) -> list[dict]:
  """Runs every unfinished cell; returns the sweep's rows (one per cell)."""
  stages.check_mesh(sweep.base)  # a config error leaves no folder behind
  out = prepare_out_dir(out_dir)
  cells_dir, shared = out / "cells", out / "shared"
  cfg = sweep.base
  ctx = stages.Context(cfg, cache_dir=cache_dir or shared / "pretrained", progress=progress)
  ctx.check_models(sorted({size for cell in sweep.cells for size in (cell.weak, cell.strong)}))
  base = json.loads(json.dumps(dataclasses.asdict(cfg)))
  with locks.exclusive(out / "sweep.json"):
    if (out / "sweep.json").exists():
      previous = integrity.read_json(out / "sweep.json", "sweep config").get("base")
      if previous != base:
        changed = sorted(k for k in base if base[k] != (previous or {}).get(k))
        raise ValueError(f"sweep directory {str(out)!r} holds a sweep with another base config "
                         f"(fields {changed} differ): its finished work does not apply; "
                         f"use another --out")
    write_json_atomic(out / "sweep.json", {"base": base,
                                           "cells": [dataclasses.asdict(c) for c in sweep.cells],
                                           "versions": package_versions()})
  jsonl = out / "sweep.jsonl"
  remove_stale_temp_files(out)  # left by writers killed before their rename

  def write_rows(done):
    rows = [done[c.id] for c in sweep.cells if c.id in done]
    with locks.exclusive(jsonl):
      _write_jsonl_atomic(jsonl, rows)

  done = {}
  for cell in sweep.cells:
    results = _finished(cells_dir / cell.id / "results.json", cell)
    if results is not None:
      done[cell.id] = jsonl_row(cell, results)
  rows = [done[c.id] for c in sweep.cells if c.id in done]
  stored = _read_jsonl(jsonl)
  if stored is None:
    integrity.warn_rebuild(jsonl, "unreadable rows", "rebuilding it from the finished cells")
  if stored is None or json.dumps(stored) != json.dumps(rows):  # NaN-safe comparison
    write_rows(done)
  bar = tqdm(total=len(sweep.cells), initial=len(done), desc="sweep cells", unit="cell",
             disable=not progress, dynamic_ncols=True)

  def finish(cell, *, wait: bool) -> bool:
    """Reads or computes the cell under its lock; False if another process holds it."""
    path = cells_dir / cell.id / "results.json"
    with locks.exclusive(path, wait=wait) as mine:
      if not mine:
        return False
      results = _finished(path, cell)  # perhaps finished by another process meanwhile
      if results is None:
        results = _run_cell(ctx, cell, shared, cfg)
        integrity.write_json_checked(path, results)
    done[cell.id] = jsonl_row(cell, results)
    write_rows(done)
    bar.update(1)
    return True

  held_elsewhere = []
  for cell in [c for c in sweep.cells if c.id not in done]:
    interrupts.raise_if_interrupted()
    if not finish(cell, wait=False):
      print(f"cell {cell.id}: another process is computing it; skipping it for now")
      held_elsewhere.append(cell)
  for cell in held_elsewhere:  # wait for the other process, then read its result
    finish(cell, wait=True)
  bar.close()
  return [done[c.id] for c in sweep.cells]


def _run_cell(ctx, cell: Cell, shared: Path, cfg: ExperimentConfig) -> dict:
  started = time.perf_counter()
  weak = _weak_stage(ctx, shared, cell.weak, with_params=cell.loss.needs_teacher)
  ceiling = _stored(shared / f"ceiling-{cell.strong}.npz",
                    lambda: stages.ceiling_stage(ctx, cell.strong))
  results = _cell_results(ctx, cell, weak, ceiling, cfg)
  results["seconds"] = time.perf_counter() - started
  return results
