"""The stored stages of one sweep folder, each computed once: `Engine`.

A weak model's supervision and scores, and a ceiling, per size and
pretraining draw (shared/pretrain<p>/...), and each cell's record
(cells/<id>/results.json), computed through stages.py and kept in the
folder's store (infra/store.py) with their identity: what they were
computed from. The local executor (engine.run_sweep) and a Ray worker
(stage_graph.compute) both compute through it; engine.py describes the
folder.
"""

import dataclasses
import time
from pathlib import Path

import numpy as np

from w2s_jax.infra import checkpoints, integrity, memory
from w2s_jax.infra import sharding as shd
from w2s_jax.infra.fingerprint import KEY_SCHEME, digest, fingerprint
from w2s_jax.infra.store import Store
from w2s_jax.models.transformer import count_params
from w2s_jax.training.finetune import seed_stacked_abstract
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s import records, stages, supervisors
from w2s_jax.w2s import runs as runs_lib
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import Cell

# What a stage's result does not depend on: left out of its identity.
NOT_IN_STAGES = ("name", "losses", "bootstrap_resamples", "distributed", "checkpoint_every")


def stage_identity(cfg: ExperimentConfig, stage: str, size: str, draw: int | None = None) -> dict:
  """What a shared stage is the result of: the experiment minus what stages
  ignore, on one pretraining draw (None: the experiment as a whole)."""
  if draw is not None:
    cfg = dataclasses.replace(cfg, pretrain_seeds=(draw,))
  experiment = {k: v for k, v in fingerprint(cfg).items() if k not in NOT_IN_STAGES}
  return {"stage": stage, "size": size, "experiment": digest(experiment), "key_scheme": KEY_SCHEME}


class Engine:
  """The shared stages of one sweep folder, each computed once."""

  def __init__(self, parts: parts_lib.Parts, out: Path):
    self.parts, self.store = parts, Store(out)
    self.draws = {seed: parts.for_draw(seed) for seed in parts.cfg.pretrain_seeds}

  @property
  def folder(self) -> Path:
    return self.store.folder

  @staticmethod
  def weak_file(size: str, draw: int) -> str:
    return f"shared/pretrain{draw}/weak-{size}.npz"

  @staticmethod
  def weak_params_folder(size: str, draw: int) -> str:
    return f"shared/pretrain{draw}/weak-{size}-params"

  @staticmethod
  def ceiling_file(size: str, draw: int) -> str:
    return f"shared/pretrain{draw}/ceiling-{size}.npz"

  @staticmethod
  def cell_file(cell: Cell) -> str:
    return f"cells/{cell.id}/results.json"

  def _weak_fields(self, draw: int) -> tuple:
    parts = self.draws[draw]
    return stages.WeakStage.fields(parts) + (("params_checksum",) if parts.generative else ())

  def has_weak(self, size: str, draw: int) -> bool:
    """Whether the weak stage is stored, complete and valid (else weak() computes it)."""
    if self.parts.generative and not self.store.path(self.weak_params_folder(size, draw)).exists():
      return False
    return (
      self.store.load_arrays(
        self.weak_file(size, draw),
        identity=stage_identity(self.draws[draw].cfg, "weak", size, draw),
        fields=self._weak_fields(draw),
      )
      is not None
    )

  def has_ceiling(self, size: str, draw: int) -> bool:
    """Whether the ceiling stage is stored, complete and valid."""
    parts = self.draws[draw]
    return (
      self.store.load_arrays(
        self.ceiling_file(size, draw),
        identity=stage_identity(parts.cfg, "ceiling", size, draw),
        fields=stages.Evaluated.fields(parts),
      )
      is not None
    )

  def weak(self, size: str, draw: int, *, with_params: bool) -> stages.WeakStage:
    """The stored weak stage of `size` on pretraining draw `draw`. A
    generative weak stage also keeps the weak model's fine-tuned params
    (orbax, written before the .npz that marks the stage complete), read
    only when a cell needs them as its teacher."""
    parts, name = self.draws[draw], self.weak_file(size, draw)
    params_dir = self.store.path(self.weak_params_folder(size, draw))
    identity = stage_identity(parts.cfg, "weak", size, draw)

    def compute():
      weak = stages.weak_stage(parts, size)
      arrays = weak.arrays()
      if weak.params is not None:
        arrays["params_checksum"] = np.array(
          checkpoints.save_params(params_dir, weak.params), np.int64
        )
      return arrays

    fields = self._weak_fields(draw)
    if parts.generative and not params_dir.exists():  # stored without its params: incomplete
      self.store.path(name).unlink(missing_ok=True)
    arrays = self.store.arrays(name, compute, identity=identity, fields=fields)
    params = None
    if with_params:
      abstract = seed_stacked_abstract(parts.models.get(size).model_cfg, len(parts.seeds))
      like = checkpoints.abstract_like(
        abstract, shd.state_sharding(abstract, parts.mesh, seed_axis=True)
      )
      try:
        params = checkpoints.load_params(params_dir, like, arrays["params_checksum"])
      except (integrity.CorruptFileError, FileNotFoundError) as err:
        integrity.warn_rebuild(params_dir, str(err), "computing the weak stage again")
        self.store.path(name).unlink(missing_ok=True)
        return self.weak(size, draw, with_params=with_params)
    arrays = {k: v for k, v in arrays.items() if k != "params_checksum"}
    return stages.WeakStage.from_arrays(arrays, params=params)

  def ceiling(self, size: str, draw: int) -> stages.Evaluated:
    parts = self.draws[draw]
    arrays = self.store.arrays(
      self.ceiling_file(size, draw),
      lambda: stages.ceiling_stage(parts, size).arrays(),
      identity=stage_identity(parts.cfg, "ceiling", size, draw),
      fields=stages.Evaluated.fields(parts),
    )
    return stages.Evaluated.from_arrays(arrays)

  def cell_identity(self, cell: Cell) -> dict:
    return {
      "cell": fingerprint(cell),
      "experiment": stage_identity(self.parts.cfg, "cell", "")["experiment"],
      "bootstrap_resamples": self.parts.cfg.bootstrap_resamples,
      "key_scheme": KEY_SCHEME,
    }

  def stored_cell(self, cell: Cell) -> dict | None:
    """The cell's stored record, or None (absent, or invalid: a warning says why)."""
    return self.store.load_record(self.cell_file(cell), identity=self.cell_identity(cell))

  def cell(self, cell: Cell, *, wait: bool = True) -> dict | None:
    """The cell's record, computed and stored first under its lock when
    absent; with wait=False, None at once when another process holds it."""
    return self.store.record(
      self.cell_file(cell),
      lambda: self.compute_cell(cell),
      identity=self.cell_identity(cell),
      wait=wait,
    )

  def compute_cell(self, cell: Cell) -> dict:
    parts, cfg = self.parts, self.parts.cfg
    started, meter = time.perf_counter(), memory.Peak().start()
    runs = []
    for draw, draw_parts in self.draws.items():
      if cell.weighting is not None:  # members trained here, weights fitted on ground truth
        weak, _ = supervisors.weighted_ensemble_stage(draw_parts, cell.weak_members, cell.weighting)
      else:
        weak = self.weak(cell.weak, draw, with_params=cell.loss.needs_teacher)
      if cell.ensemble and cell.weighting is None:  # the stored weak stages, averaged
        members = [weak] + [self.weak(m, draw, with_params=False) for m in cell.ensemble]
        weak = supervisors.ensemble_stage(draw_parts, members)
      for size in cell.via:  # bootstrapping: each model relabels train_w2s for the next
        weak = supervisors.relabel_stage(draw_parts, size, weak, cell.loss, cell.finetune)
      subsets = None
      if cell.probe is not None:  # labels mended (or rows dropped) by a probe on the strong model
        weak, subsets = supervisors.probe_stage(draw_parts, cell.strong, weak, cell.probe)
      ceiling = self.ceiling(cell.strong, draw)
      w2s = stages.w2s_stage(
        draw_parts,
        cell.strong,
        weak,
        cell.loss,
        cell.finetune,
        cell.filter,
        weak_size=cell.weak,
        subsets=subsets,
      )
      runs.append(runs_lib.Runs.of(weak, w2s, ceiling, draw=draw, seeds=parts.seeds))
    runs = runs_lib.Runs.pooled(runs)
    keys = parts.evaluator.eval_keys
    summary = runs_lib.summarize(
      runs,
      keys=keys,
      num_resamples=cfg.bootstrap_resamples,
      truth=parts.evaluator.truth_answers() if parts.generative else None,
      answer_names=parts.evaluator.answer_names,
    )
    models = {
      size: (
        count_params(parts.models.get(size).params),
        [p.models.get(size).info for p in self.draws.values()],
      )
      for size in (cell.weak, cell.strong)
    }
    record = records.cell_record(cell, runs=runs, summary=summary, models=models, keys=keys)
    record["seconds"] = time.perf_counter() - started
    record["memory"] = meter.report()  # steady: this cell's loops; peak: its process's so far
    meter.stop()
    return record
