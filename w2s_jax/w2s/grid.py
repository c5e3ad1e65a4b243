"""A sweep's grid: cells of (weak size, strong size, loss, fine-tune, filter,
and the intermediate sizes a bootstrapping cell passes its labels through).

`SweepConfig(base, cells)` is checked whole before any compute: sizes that
exist and compare (imported checkpoints by their parameter count), no
duplicate cells, filters that apply to the task's kind. A single experiment
is the sweep of its own pair over its losses (`single_cell_sweep`).
"""

import dataclasses

from w2s_jax.curation import ensembles, weak_curation
from w2s_jax.curation.probes import ProbeConfig
from w2s_jax.curation.selection import FilterConfig
from w2s_jax.infra.fingerprint import WHEN_SET, digest
from w2s_jax.models import hf_import
from w2s_jax.models.model_config import decode_size
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.objectives import Loss
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class Cell:
  """One point of the grid: a weak and a strong size, a loss, a fine-tune config."""

  weak: str
  strong: str
  loss: Loss = Xent()
  finetune: OptimConfig | None = None  # None: the sweep's base fine-tune config
  filter: FilterConfig | None = None  # None: train on every weak-labelled example
  # Bootstrapping (Burns et al. 2023, section 4.3.1): each of these sizes in
  # turn learns train_w2s from the labels so far (with the cell's loss) and
  # relabels it for the next; the strong model learns the last labels. ()
  # is naive W2S; (strong,) the strong-to-strong iteration. Pweak stays the
  # weak model's own.
  via: tuple[str, ...] = dataclasses.field(default=(), metadata=WHEN_SET)
  # An ensemble of weak supervisors: these weak models beside `weak`, each
  # fine-tuned on ground truth, their class probabilities averaged
  # (stages.ensemble_stage). Pweak is then the ensemble's own accuracy.
  ensemble: tuple[str, ...] = dataclasses.field(default=(), metadata=WHEN_SET)
  # The ensemble's weights fitted on ground truth (curation/ensembles.py):
  # Stacked (learned on a held-out slice) or Boosted (SAMME over the members
  # in order, weak first); None: equal weights over the stored weak stages.
  weighting: ensembles.Weighting | None = dataclasses.field(default=None, metadata=WHEN_SET)
  # A probe on the strong model's frozen features relabels or drops the
  # weak labels it finds likeliest wrong before fine-tuning (curation/probes.py).
  probe: ProbeConfig | None = dataclasses.field(default=None, metadata=WHEN_SET)

  @property
  def weak_members(self) -> tuple[str, ...]:
    """The weak models whose supervision the strong model learns: weak, then the ensemble's."""
    return (self.weak, *self.ensemble)

  @property
  def sizes(self) -> tuple[str, ...]:
    """Every model the cell reads, each once."""
    return tuple(dict.fromkeys((*self.weak_members, *self.via, self.strong)))

  @property
  def id(self) -> str:
    """The cell's folder name: its sizes, its loss and a digest of all of it."""
    return f"{self.weak}_{self.strong}_{self.loss.name}_{digest(self, 8)}"

  @property
  def method(self) -> str:
    """How the strong model is supervised: its loss, and the weak ensemble,
    bootstrapping chain or probe where set (a leaderboard's row)."""
    parts = [self.loss.tag]
    if self.ensemble:
      what = "ensemble" if self.weighting is None else f"{self.weighting.tag} ensemble"
      parts.append(f"{what} " + "+".join(self.weak_members))
    if self.via:
      parts.append("via " + ">".join(self.via))
    if self.probe is not None:
      parts.append(self.probe.tag)
    return ", ".join(parts)

  @property
  def label(self) -> str:
    """The cell in a table: its method, and its filter or fine-tune where set."""
    parts = [self.method]
    if self.filter is not None:
      parts.append(self.filter.tag)
    if self.finetune is not None:
      parts.append(f"finetune={self.finetune}")
    return ", ".join(parts)


def size_order(size: str, pretrained_dirs=()) -> int:
  """Sizes compare by parameter count: of the table's rows without their
  vocabulary, of imported checkpoints (pretrained_dirs) as their config says."""
  if size in dict(pretrained_dirs):
    folder = dict(pretrained_dirs)[size]
    return hf_import.folder_config(folder).num_params
  return decode_size(size, vocab_size=1).num_params


def pairs(sizes, pretrained_dirs=(), weak_sizes=None) -> list[tuple[str, str]]:
  """Every (weak, strong) pair with weak smaller than strong; with weak_sizes,
  only the pairs whose weak model is one of them."""
  unknown = sorted(set(weak_sizes or ()) - set(sizes))
  if unknown:
    raise ValueError(f"weak_sizes {unknown}: expected a subset of sizes {list(sizes)}")
  ordered = sorted(sizes, key=lambda s: size_order(s, pretrained_dirs))
  return [
    (w, s)
    for i, w in enumerate(ordered)
    for s in ordered[i + 1 :]
    if weak_sizes is None or w in weak_sizes
  ]


def grid(
  sizes,
  losses,
  finetunes=(None,),
  filters=(None,),
  pretrained_dirs=(),
  weak_sizes=None,
  bootstrap=False,
) -> list[Cell]:
  """The product of pairs(sizes, weak_sizes=...), losses, fine-tune configs
  and filters; with bootstrap, also each such cell passed through every size
  between its weak and strong ones (bootstrap_chain), where there is one."""
  cells = []
  for w, s in pairs(sizes, pretrained_dirs, weak_sizes):
    chain = bootstrap_chain(sizes, w, s, pretrained_dirs) if bootstrap else ()
    for via in ((), chain) if chain else ((),):
      cells += [
        Cell(w, s, loss, ft, flt, via) for loss in losses for ft in finetunes for flt in filters
      ]
  return cells


def bootstrap_chain(sizes, weak: str, strong: str, pretrained_dirs=()) -> tuple[str, ...]:
  """The sizes strictly between weak and strong, smallest first: Burns et
  al.'s bootstrapping path through the sweep's own sizes."""
  lo, hi = size_order(weak, pretrained_dirs), size_order(strong, pretrained_dirs)
  between = [x for x in sizes if lo < size_order(x, pretrained_dirs) < hi]
  return tuple(sorted(between, key=lambda x: size_order(x, pretrained_dirs)))


@dataclasses.dataclass(frozen=True)
class RayOptions:
  """What each Ray task of a sweep asks for (`sweep --executor ray`; the
  local executor ignores it). Every stage and cell is one task."""

  cpus: float = 1.0
  gpus: float = 0.0  # per task; > 0: each task runs in a fresh worker process
  tpus: float = 0.0  # chips per task, Ray's "TPU" resource; > 0: as gpus
  # Retries of a task whose worker or node died; a stage that raises is not
  # retried (it would raise again): its cells are recorded as failed.
  max_retries: int = 3

  def __post_init__(self):
    for field in ("cpus", "gpus", "tpus"):
      value = getattr(self, field)
      if not value >= 0:
        raise ValueError(f"RayOptions.{field}={value!r}: expected a number >= 0")
    if self.cpus == self.gpus == self.tpus == 0:
      raise ValueError(
        "RayOptions: cpus, gpus and tpus are all 0: a task would ask for nothing, and Ray "
        "would start every stage at once; expected at least one > 0"
      )
    if not (isinstance(self.max_retries, int) and self.max_retries >= 0):
      raise ValueError(f"RayOptions.max_retries={self.max_retries!r}: expected an int >= 0")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  base: ExperimentConfig
  cells: tuple[Cell, ...]
  # Each cell's weak model smaller than its strong one (a sweep over scale); a
  # single experiment may pair any two models (strong-to-strong, same size).
  ordered: bool = True
  # Where the sweep runs, not what it computes: not part of the sweep
  # folder's identity (sweep.json), so a folder resumes under either executor.
  ray: RayOptions = RayOptions()

  def __post_init__(self):
    if not self.cells:
      raise ValueError("SweepConfig.cells is empty: the sweep has nothing to run")
    ids = [c.id for c in self.cells]
    if len(set(ids)) != len(ids):
      raise ValueError("SweepConfig.cells has duplicates")
    imported = self.base.pretrained_dirs
    for cell in self.cells:
      for field, size in (
        ("weak", cell.weak),
        ("strong", cell.strong),
        *(("via", v) for v in cell.via),
        *(("ensemble", v) for v in cell.ensemble),
      ):
        if size in dict(imported):
          continue
        try:
          decode_size(size, vocab_size=1)
        except ValueError as e:
          raise ValueError(f"Cell.{field} in {cell}: {e}") from None
      if cell.via:
        _check_chain(cell, self.base, imported)
      if cell.ensemble or cell.weighting is not None:
        _check_ensemble(cell, self.base, imported, self.ordered)
      if cell.probe is not None and (self.base.generative or cell.filter is not None):
        raise ValueError(
          f"Cell.probe={cell.probe.tag!r} in {cell}: expected a classification task and "
          "no other filter (a probe reads class labels, and selects rows itself)"
        )
      cell.loss.check_kind(self.base.generative, f"Cell.loss in {cell}")
      if self.ordered and size_order(cell.weak, imported) >= size_order(cell.strong, imported):
        raise ValueError(f"Cell weak={cell.weak!r} is not smaller than strong={cell.strong!r}")
      if cell.filter is not None:
        try:
          weak_curation.check_filter(
            cell.filter,
            generative=self.base.generative,
            weak_samples=(self.base.generation.weak_samples if self.base.generative else 1),
          )
        except ValueError as e:
          raise ValueError(f"Cell.filter in {cell}: {e}") from None


def _check_chain(cell: Cell, base: ExperimentConfig, imported) -> None:
  """A bootstrapping chain: classification, each model at least as large as
  the one before it, the first larger than the weak model."""
  if base.generative:
    raise ValueError(
      f"Cell.via={cell.via!r}: bootstrapping relabels train_w2s with class "
      "probabilities: expected a classification task (the task is generative)"
    )
  order = [size_order(x, imported) for x in (cell.weak, *cell.via, cell.strong)]
  if not (order[0] < order[1] and all(a <= b for a, b in zip(order[1:], order[2:]))):
    raise ValueError(
      f"Cell.via={cell.via!r} between weak={cell.weak!r} and strong={cell.strong!r}: "
      "expected sizes larger than the weak model, none smaller than the one before "
      "it, none larger than the strong model"
    )


def _check_ensemble(cell: Cell, base: ExperimentConfig, imported, ordered: bool) -> None:
  """An ensemble: classification, and in a sweep over scale every member
  smaller than the strong model."""
  if base.generative:
    raise ValueError(
      f"Cell.ensemble={cell.ensemble!r}: an ensemble averages class probabilities: "
      "expected a classification task (the task is generative)"
    )
  if cell.weighting is not None and not cell.ensemble:
    raise ValueError(
      f"Cell.weighting={cell.weighting!r} with no Cell.ensemble: expected weak models "
      "to weight beside the weak one"
    )
  if cell.weighting is not None and not isinstance(
    cell.weighting, (ensembles.Stacked, ensembles.Boosted)
  ):
    raise ValueError(f"Cell.weighting={cell.weighting!r}: expected Stacked(...) or Boosted(...)")
  strong = size_order(cell.strong, imported)
  if ordered and any(size_order(m, imported) >= strong for m in cell.ensemble):
    raise ValueError(
      f"Cell.ensemble={cell.ensemble!r}: expected weak models smaller than strong={cell.strong!r}"
    )


def single_cell_sweep(cfg: ExperimentConfig) -> SweepConfig:
  """One experiment as a sweep: its weak and strong sizes, once per loss."""
  return SweepConfig(
    cfg, tuple(Cell(cfg.weak_size, cfg.strong_size, loss) for loss in cfg.losses), ordered=False
  )
