"""The stage engine: a sweep's cells over shared stages, computed once, resumable.

A single experiment is the sweep of its own pair over its losses
(grid.single_cell_sweep); both write the same folder:

  sweep.json                      the sweep's config (a different one is refused)
  shared/pretrain<p>/weak-<size>.npz      a weak model's supervision and scores, per seed,
                                          on pretraining draw p
  shared/pretrain<p>/weak-<size>-params/  a generative weak model's params (token-level KD's teacher)
  shared/pretrain<p>/ceiling-<size>.npz   a ceiling's scores, per seed
  cells/<cell id>/results.json    one cell's record (records.cell_record)
  cells/<cell id>/failed.json     --executor ray: why the cell failed (ray_executor.py)
  logs/<stage>.log                --executor ray: each task's output
  sweep.jsonl                     one row per finished cell, in grid order
  results.json                    the run record (records.run_record), when every cell is done
  curves/pretrain<p>/<stage>/seed<s>/   each fine-tune's training curve: curve.jsonl and
                                        TensorBoard events (curves.py), when every cell is done
  curves/<weak>_<strong>.png      test accuracy against step: W2S beside the ceiling

A cell runs its stages on every pretraining draw (ExperimentConfig.pretrain_seeds)
and pools the runs: its intervals resample the draws, the seeds within each,
and the examples (metrics.bootstrap_w2s).

Every stage and cell lives in one store (infra/store.py): checksummed,
written atomically, tied to its identity (what it was computed from), and
locked while computed, so two processes may share a folder and a kill at any
moment loses nothing but the work in flight. Pretrained models live in their
own cache (`cache_dir`, shared between runs).

The stages and cells are computed through stage_store.Engine. An executor
opens the folder (`open_sweep`: checks, claim, finished cells), computes the
unfinished cells and closes it (`OpenSweep.close`): `run_sweep` here, in this
process, or ray_executor.run_sweep, as Ray tasks.
"""

import dataclasses
import json
import time
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from w2s_jax.curation import ensembles
from w2s_jax.infra import host_memory, integrity, interrupts, locks, memory
from w2s_jax.infra import sharding as shd
from w2s_jax.infra.files import (
  atomic_write,
  package_versions,
  prepare_out_dir,
  write_json_atomic,
)
from w2s_jax.infra.fingerprint import KEY_SCHEME, fingerprint
from w2s_jax.infra.store import claim_folder
from w2s_jax.w2s import curves, records, report
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s.experiment import ExperimentConfig, check_mesh
from w2s_jax.w2s.grid import Cell, SweepConfig, single_cell_sweep
from w2s_jax.w2s.stage_store import Engine


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What a run leaves: its rows (one per finished cell, in grid order) and
  records; records and results are None while any cell failed (an executor
  that records failures: `failed`, {cell id: its error})."""

  rows: list
  records: list | None
  results: dict | None
  failed: dict = dataclasses.field(default_factory=dict)


def failed_cells(out_dir) -> dict[str, dict]:
  """The cells an executor recorded as failed in a sweep folder
  (cells/<id>/failed.json: the error, the host, the log's path), by cell id."""
  found = {}
  for path in sorted(Path(out_dir).glob("cells/*/failed.json")):
    try:
      found[path.parent.name] = integrity.read_json(path, "failed cell record")
    except integrity.CorruptFileError as err:
      found[path.parent.name] = {"error": f"(its failed.json is unreadable: {err.problem})"}
  return found


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


def _claim_folder(out: Path, sweep: SweepConfig, overwrite: bool) -> None:
  """sweep.json names the sweep a folder holds; another sweep's folder is
  refused (unless overwrite). The key scheme is part of what is compared: a
  folder written by an older w2s_jax, keyed differently, is another config."""
  claim_folder(
    out,
    record="sweep.json",
    identity={"key_scheme": KEY_SCHEME, **json.loads(json.dumps(fingerprint(sweep.base)))},
    what="a sweep",
    overwrite=overwrite,
    extra={"cells": [fingerprint(c) for c in sweep.cells], "versions": package_versions()},
  )


@dataclasses.dataclass
class OpenSweep:
  """A sweep folder ready for its unfinished cells: checked, claimed, with
  the finished cells read. Executors (run_sweep's loop here, the Ray
  executor) compute the rest, `finish` each, then `close`."""

  sweep: SweepConfig
  engine: Engine
  done: dict  # cell id -> (row, record)
  started: float
  sizes: list
  meter: memory.Peak  # the run's memory, from open_sweep on

  @property
  def todo(self) -> list[Cell]:
    return [c for c in self.sweep.cells if c.id not in self.done]

  def rows(self) -> list[dict]:
    return [self.done[c.id][0] for c in self.sweep.cells if c.id in self.done]

  def write_rows(self) -> None:
    """sweep.jsonl: the finished cells' rows, in grid order (atomic)."""
    if shd.is_main_process():
      jsonl = self.engine.folder / "sweep.jsonl"
      with locks.exclusive(jsonl):
        _write_jsonl_atomic(jsonl, self.rows())

  def finish(self, cell: Cell, record: dict) -> None:
    self.done[cell.id] = (records.sweep_row(cell, record), record)
    self.write_rows()

  def close(self, *, config=None, failed=None) -> "Outcome":
    """The outcome; with every cell done, results.json and the curves too
    (results.json last: it says the sweep is complete)."""
    if failed:
      return Outcome(rows=self.rows(), records=None, results=None, failed=dict(failed))
    cells = [self.done[c.id][1] for c in self.sweep.cells]
    results = records.run_record(
      config=self.sweep if config is None else config,
      parts=self.engine.parts,
      sizes=self.sizes,
      cells=cells,
      seconds=time.perf_counter() - self.started,
      draws=self.engine.draws,
      memory=self.meter.report(),
    )
    if shd.is_main_process():
      out = self.engine.folder
      curves.write(out / "curves", curves.of_cells(cells))
      report.training_curves(cells, out / "curves")
      write_json_atomic(out / "results.json", results)
    return Outcome(rows=self.rows(), records=cells, results=results)


def open_sweep(
  sweep: SweepConfig, *, out_dir, cache_dir=None, progress: bool = True, overwrite: bool = False
) -> OpenSweep:
  """Checks a sweep whole (the mesh, the models' fit to the task, the data)
  before any compute, claims its folder and reads its finished cells (the
  arguments: run_sweep's)."""
  started, meter = time.perf_counter(), memory.Peak().start()
  check_mesh(sweep.base)  # a config error leaves no folder behind
  out = prepare_out_dir(out_dir)
  parts = parts_lib.build(
    sweep.base, cache_dir=cache_dir or out / "shared" / "pretrained", progress=progress
  )
  sizes = list(dict.fromkeys(size for cell in sweep.cells for size in cell.sizes))
  parts.check(sizes)
  for cell in sweep.cells:  # a stacked ensemble's held-out slice fits in train_gt
    if isinstance(cell.weighting, ensembles.Stacked):
      n = len(parts.task.splits["train_gt"])
      ensembles.holdout_split(n, cell.weighting.holdout_examples, seed=0)
  for warning in records.data_warnings(records.split_sanity(parts.task)):
    warnings.warn(f"the task's data: {warning}", stacklevel=3)  # before any compute
  _claim_folder(out, sweep, overwrite)
  engine = Engine(parts, out)
  opened = OpenSweep(sweep=sweep, engine=engine, done={}, started=started, sizes=sizes, meter=meter)
  for cell in sweep.cells:
    record = engine.stored_cell(cell)
    if record is not None:
      opened.done[cell.id] = (records.sweep_row(cell, record), record)
  jsonl = out / "sweep.jsonl"
  stored = _read_jsonl(jsonl)
  if stored is None:
    integrity.warn_rebuild(jsonl, "unreadable rows", "rebuilding it from the finished cells")
  if stored is None or json.dumps(stored) != json.dumps(opened.rows()):  # NaN-safe comparison
    opened.write_rows()
  return opened


def run_sweep(
  sweep: SweepConfig,
  *,
  out_dir,
  cache_dir=None,
  progress: bool = True,
  config=None,
  overwrite: bool = False,
) -> Outcome:
  """Runs every unfinished cell of a sweep in this process, resumably (the
  module docstring; several processes may share the folder on one host).

  Args:
    sweep: the grid; checked whole, with the mesh and the models' fit to the
      task, before any compute.
    out_dir: the sweep folder (created; a folder of another sweep is refused).
    cache_dir: the pretrained-model cache (default out_dir/shared/pretrained).
    progress: show progress bars.
    config: what results.json records as the config (default the sweep).
    overwrite: run in a folder that holds another sweep's results.

  Returns:
    An Outcome: the rows (sweep.jsonl's), the cell records and the run
    record (results.json's), each cell in grid order.
  """
  opened = open_sweep(
    sweep, out_dir=out_dir, cache_dir=cache_dir, progress=progress, overwrite=overwrite
  )
  bar = tqdm(
    total=len(sweep.cells),
    initial=len(opened.done),
    desc="cells",
    unit="cell",
    disable=not progress or not shd.is_main_process(),
    dynamic_ncols=True,
  )

  def finish(cell, *, wait: bool) -> bool:
    """Reads or computes the cell under its lock; False if another process holds it."""
    record = opened.engine.cell(cell, wait=wait)
    if record is None:
      return False
    opened.finish(cell, record)
    bar.update(1)
    return True

  held_elsewhere = []
  pair = None
  for cell in opened.todo:
    interrupts.raise_if_interrupted()
    if pair != (cell.weak, cell.strong):
      # A pair's cells share their models' programs; the next pair's (and
      # pretraining's before the first) are others, or come back from the
      # persistent compilation cache: the sweep holds one pair's compiled
      # programs, not every cell's.
      host_memory.release_compiled_programs()
    pair = (cell.weak, cell.strong)
    if not finish(cell, wait=False):
      print(f"cell {cell.id}: another process is computing it; skipping it for now")
      held_elsewhere.append(cell)
  for cell in held_elsewhere:  # wait for the other process, then read its result
    finish(cell, wait=True)
  bar.close()
  return opened.close(config=config)


def run_experiment(
  cfg: ExperimentConfig, *, out_dir, cache_dir, progress: bool = True, overwrite: bool = False
) -> dict:
  """One experiment: the sweep of its weak and strong pair over its losses.

  Args:
    cfg: the experiment.
    out_dir: its folder (the layout of a sweep's; results.json at the end).
    cache_dir: the pretrained-model cache, shared between runs.
    progress: show progress bars.
    overwrite: run in a folder that holds another config's results (refused otherwise).

  Returns:
    The run record written to out_dir/results.json (docs/outputs.md).
  """
  return run_sweep(
    single_cell_sweep(cfg),
    out_dir=out_dir,
    cache_dir=cache_dir,
    progress=progress,
    config=cfg,
    overwrite=overwrite,
  ).results
