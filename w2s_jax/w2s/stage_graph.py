"""A sweep's work as a graph of stages, each computable away from the sweep folder.

The stages: a pretrained model (`Pretrain`), a weak model's supervision and
scores (`Weak`), a ceiling (`Ceiling`) and a cell (`CellStage`). Each names
the stages it reads (`inputs`), the files it leaves (`outputs`, in write
order: the last one marks it complete) and how it is computed: through the
same Engine a local sweep runs (engine.py).

Stages travel as data, never as paths. `compute` runs on a worker in a
private scratch folder laid out with its inputs' files, and returns the
files the stage wrote, as bytes (`Files`). Only the driver writes the sweep
folder and the pretrained cache (`place`): each file or folder atomically,
the marker last; then it reads the stage back through its own store, which
checks every checksum and the stage's identity (what it was computed from).
So the driver and its workers need no file system in common, and a worker
whose code or data differ from the driver's is caught, not stored.
"""

import dataclasses
import shutil
import tempfile
import typing
from pathlib import Path

from w2s_jax.infra import locks
from w2s_jax.infra.files import atomic_write, read_tree, staging_dir, write_tree_atomic
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s.grid import Cell, SweepConfig
from w2s_jax.w2s.stage_store import Engine

OUT, CACHE = "out", "cache"  # the two folders a stage writes to: the sweep's, the pretrained cache


class Output(typing.NamedTuple):
  root: str  # OUT or CACHE
  path: str  # relative to it
  folder: bool = False


# What a stage wrote: (root, path, contents), in its outputs' order; contents
# are a file's bytes, or a folder's {relative path: bytes}.
Files = list[tuple[str, str, bytes | dict[str, bytes]]]


class StageMismatchError(RuntimeError):
  """A worker's stage is not the one the driver asked for: their code or data differ."""


@dataclasses.dataclass(frozen=True)
class Pretrain:
  """A pretrained model of `size` on pretraining draw `draw` (a cache entry)."""

  size: str
  draw: int

  @property
  def name(self) -> str:
    return f"pretrain{self.draw}-{self.size}"

  def inputs(self, engine: Engine) -> tuple:
    return ()

  def outputs(self, engine: Engine) -> list[Output]:
    entry = engine.draws[self.draw].models.entry_folder(self.size)
    if entry is None:  # imported, or used at its initialisation: nothing is cached
      return []
    rel = entry.relative_to(engine.draws[self.draw].models.cache.root).as_posix()
    # train/ (a resumable pretraining's checkpoints) is removed once the entry is complete.
    return [Output(CACHE, f"{rel}/params", folder=True), Output(CACHE, f"{rel}/info.json")]

  def is_stored(self, engine: Engine) -> bool:
    return engine.draws[self.draw].models.is_cached(self.size)

  def compute(self, engine: Engine) -> None:
    engine.draws[self.draw].models.get(self.size)


@dataclasses.dataclass(frozen=True)
class Weak:
  """A weak model's fine-tune on ground truth, its supervision and scores."""

  size: str
  draw: int

  @property
  def name(self) -> str:
    return f"pretrain{self.draw}-weak-{self.size}"

  def inputs(self, engine: Engine) -> tuple:
    return (Pretrain(self.size, self.draw),)

  def outputs(self, engine: Engine) -> list[Output]:
    params = [Output(OUT, engine.weak_params_folder(self.size, self.draw), folder=True)]
    return [
      *(params if engine.parts.generative else []),
      Output(OUT, engine.weak_file(self.size, self.draw)),
    ]

  def is_stored(self, engine: Engine) -> bool:
    return engine.has_weak(self.size, self.draw)

  def compute(self, engine: Engine) -> None:
    engine.weak(self.size, self.draw, with_params=False)


@dataclasses.dataclass(frozen=True)
class Ceiling:
  """A strong model's fine-tune on ground truth."""

  size: str
  draw: int

  @property
  def name(self) -> str:
    return f"pretrain{self.draw}-ceiling-{self.size}"

  def inputs(self, engine: Engine) -> tuple:
    return (Pretrain(self.size, self.draw),)

  def outputs(self, engine: Engine) -> list[Output]:
    return [Output(OUT, engine.ceiling_file(self.size, self.draw))]

  def is_stored(self, engine: Engine) -> bool:
    return engine.has_ceiling(self.size, self.draw)

  def compute(self, engine: Engine) -> None:
    engine.ceiling(self.size, self.draw)


@dataclasses.dataclass(frozen=True)
class CellStage:
  """A cell: the strong model fine-tuned on the weak supervision, on every
  pretraining draw, pooled into its record."""

  cell: Cell

  @property
  def name(self) -> str:
    return f"cell-{self.cell.id}"

  def inputs(self, engine: Engine) -> tuple:
    cell = self.cell
    return tuple(
      stage
      for draw in engine.draws
      for stage in (
        Pretrain(cell.weak, draw),
        Pretrain(cell.strong, draw),
        *(
          Pretrain(size, draw)
          for size in dict.fromkeys((*cell.ensemble, *cell.via))
          if size not in (cell.weak, cell.strong)
        ),
        # A weighted ensemble trains its own members (on other rows).
        *(
          Weak(size, draw)
          for size in dict.fromkeys(cell.weak_members if cell.weighting is None else ())
        ),
        Ceiling(cell.strong, draw),
      )
    )

  def outputs(self, engine: Engine) -> list[Output]:
    return [Output(OUT, engine.cell_file(self.cell))]

  def is_stored(self, engine: Engine) -> bool:
    return engine.stored_cell(self.cell) is not None

  def compute(self, engine: Engine) -> None:
    engine.cell(self.cell)


Stage = Pretrain | Weak | Ceiling | CellStage


def needed(engine: Engine, cells) -> list:
  """Every stage the cells read, and the cells' own, each once, every
  stage after its inputs."""
  order, seen = [], set()

  def visit(stage):
    if stage in seen:
      return
    seen.add(stage)
    for dependency in stage.inputs(engine):
      visit(dependency)
    order.append(stage)

  for cell in cells:
    visit(CellStage(cell))
  return order


def _roots(engine: Engine) -> dict[str, Path]:
  return {OUT: engine.folder, CACHE: Path(engine.draws[next(iter(engine.draws))].models.cache.root)}


def read(engine: Engine, stage) -> Files:
  """The files of a stored stage, as a worker receives its inputs."""
  roots = _roots(engine)
  return [
    (
      o.root,
      o.path,
      read_tree(roots[o.root] / o.path) if o.folder else (roots[o.root] / o.path).read_bytes(),
    )
    for o in stage.outputs(engine)
  ]


def _write(roots: dict[str, Path], files: Files) -> None:
  """Each file or folder atomically, in order (the stage's marker last)."""
  for root, path, contents in files:
    target = roots[root] / path
    if isinstance(contents, dict):
      write_tree_atomic(target, contents)
    else:
      with atomic_write(target, "wb") as f:
        f.write(contents)


def compute(sweep: SweepConfig, stage, inputs) -> Files:
  """On a worker: lays out the inputs' files (each a `Files`) in a private
  scratch folder, computes the stage there and returns the files it wrote.
  The scratch folder is removed at the end (a killed worker's is removed by
  the next stage computed on that host)."""
  scratch = staging_dir(Path(tempfile.gettempdir()) / "w2s-jax-stage")
  try:
    roots = {OUT: scratch / OUT, CACHE: scratch / CACHE}
    for files in inputs:
      _write(roots, files)
    parts = parts_lib.build(sweep.base, cache_dir=roots[CACHE], progress=False)
    engine = Engine(parts, roots[OUT])
    stage.compute(engine)
    return read(engine, stage)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def place(engine: Engine, stage, files: Files, *, where: str = "a worker") -> None:
  """On the driver: writes a stage a worker computed into the sweep folder
  and the cache (atomically, its marker last, under the marker's lock), then
  reads it back through the driver's own store.

  Raises:
    StageMismatchError: the files are not those of this driver's stage (other
      paths: the cache's keys hash the data, so other data; or another
      identity or a bad checksum on reading back).
  """
  roots = _roots(engine)
  expected = [(o.root, o.path) for o in stage.outputs(engine)]
  got = [(root, path) for root, path, _ in files]
  if got != expected:
    raise StageMismatchError(
      f"{stage.name}: {where} wrote {got}; this driver expects {expected}. A worker "
      "needs the driver's code and data (the pretrained cache's keys hash the data's contents)"
    )
  if not files:
    return
  with locks.exclusive(roots[files[-1][0]] / files[-1][1]):
    _write(roots, files)
  if not stage.is_stored(engine):
    raise StageMismatchError(
      f"{stage.name}: what {where} computed does not read back as this driver's stage "
      "(the warning above says why). A worker needs the driver's code and data"
    )
