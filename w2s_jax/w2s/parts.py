"""The parts one experiment's stages share, built once per run.

Each part does one job: the task (tasks/), each model's view of it
(views.py), the pretrained models (pretrained.py), training data and
fine-tuning (supervision.py), and evaluation (evaluation.py). `Parts` only
holds them; the stages (stages.py) call the ones they need.
"""

import dataclasses

from w2s_jax.tasks import factory
from w2s_jax.tasks.base import Task
from w2s_jax.w2s.evaluation import Evaluator
from w2s_jax.w2s.experiment import ExperimentConfig, check_mesh
from w2s_jax.w2s.pretrained import PretrainedModels
from w2s_jax.w2s.supervision import Trainer
from w2s_jax.w2s.views import ModelViews


@dataclasses.dataclass(frozen=True)
class Parts:
  cfg: ExperimentConfig
  mesh: object
  task: Task
  seeds: tuple[int, ...]
  views: ModelViews
  models: PretrainedModels
  trainer: Trainer
  evaluator: Evaluator
  cache_dir: object = None
  progress: bool = True

  @property
  def draw(self) -> int:
    """The pretraining seed of these parts' models."""
    return self.models.seed

  def for_draw(self, seed: int) -> "Parts":
    """The same task and views, with the models of pretraining draw `seed`."""
    if seed == self.draw:
      return self
    return _with_models(self, seed)

  @property
  def generative(self) -> bool:
    return self.task.generative

  def check(self, sizes) -> None:
    """Every model can read the task (and, for generation, hold its prompts
    and responses), before any compute."""
    self.models.check(sizes, self.evaluator.sampling)


def _draw_parts(cfg, task, views, mesh, seeds, *, cache_dir, progress, seed):
  """The pretrained models of draw `seed`, and the evaluator and trainer reading them."""
  models = PretrainedModels(
    cfg, task, views, mesh, cache_dir=cache_dir, seed=seed, progress=progress
  )
  evaluator = Evaluator(cfg, task, views, models, mesh, seeds)
  trainer = Trainer(
    cfg, task, views, models, mesh, seeds, sampling_cfg=evaluator.sampling, progress=progress
  )
  return {"models": models, "evaluator": evaluator, "trainer": trainer}


def _with_models(parts: Parts, seed: int) -> Parts:
  return dataclasses.replace(
    parts,
    **_draw_parts(
      parts.cfg,
      parts.task,
      parts.views,
      parts.mesh,
      parts.seeds,
      cache_dir=parts.cache_dir,
      progress=parts.progress,
      seed=seed,
    ),
  )


def build(cfg: ExperimentConfig, *, cache_dir, progress: bool = True) -> Parts:
  """The parts of one experiment; the task is read and tokenized here.

  Args:
    cfg: the experiment (its mesh's batch sizes are checked first).
    cache_dir: the pretrained-model cache; nothing is pretrained until a stage asks.
    progress: show progress bars.

  Returns:
    Parts: the task, each model's view of it, the pretrained models (of the
    first pretraining draw; `for_draw` gives another's), the trainer and the
    evaluator, sharing one mesh and the experiment's seeds.
  """
  mesh = check_mesh(cfg)
  task = factory.make_task(
    world=cfg.world, text=cfg.text_task, gen_cfg=cfg.generation, preference_cfg=cfg.preference
  )
  seeds = tuple(cfg.seeds)
  views = ModelViews(cfg, task)
  return Parts(
    cfg=cfg,
    mesh=mesh,
    task=task,
    seeds=seeds,
    views=views,
    cache_dir=cache_dir,
    progress=progress,
    **_draw_parts(
      cfg,
      task,
      views,
      mesh,
      seeds,
      cache_dir=cache_dir,
      progress=progress,
      seed=cfg.pretrain_seeds[0],
    ),
  )
