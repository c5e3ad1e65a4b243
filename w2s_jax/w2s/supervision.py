"""What a model trains on, and the fine-tune that trains it.

`supervised` assembles, per seed, a model's training data for a split: its
ground truth, or the weak stage's targets (soft labels; generated responses
with their masks), restricted per seed to a filter's selection. `tune`
fine-tunes a pretrained size on it, every seed in one vmapped program
(training/finetune.py), adding the ground-truth set a loss asks for.
"""

import numpy as np

from w2s_jax.data.dataset import Dataset, one_hot
from w2s_jax.tasks import layout
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.finetune import finetune
from w2s_jax.training.generative_losses import Sft
from w2s_jax.training.objectives import Loss
from w2s_jax.w2s import curves
from w2s_jax.w2s.pretrained import PretrainedModels
from w2s_jax.w2s.views import ModelViews


class Trainer:
  def __init__(
    self,
    cfg,
    task,
    views: ModelViews,
    models: PretrainedModels,
    mesh,
    seeds,
    sampling_cfg=None,
    progress=True,
  ):
    self.cfg, self.task, self.views, self.models, self.mesh = cfg, task, views, models, mesh
    self.seeds, self.sampling, self.progress = tuple(seeds), sampling_cfg, progress

  def ground_truth_loss(self) -> Loss:
    return Sft() if self.task.generative else Xent()

  def supervised(self, split: str, targets=None, subsets=None, *, size: str) -> list[Dataset]:
    """Per seed, what model `size` trains on for `split`: its ground truth, or
    targets from the weak stage (soft labels, or generated responses with
    their masks), restricted per seed to subsets (a filter's selection)."""
    data = self.views.data(size, split)
    if self.task.generative:
      if targets is None:
        per_seed = [layout.sequences(data)] * len(self.seeds)
      else:
        prompts = data.take(np.repeat(np.arange(len(data)), self.cfg.generation.weak_samples))
        per_seed = [layout.sequences(prompts, r, m) for r, m in zip(*targets)]
    else:
      labels = (
        one_hot(data["labels"], self.task.num_classes)[None].repeat(len(self.seeds), 0)
        if targets is None
        else targets
      )
      per_seed = [data.with_fields(labels=labels[i]) for i in range(len(self.seeds))]
    if subsets is not None:
      if len(subsets) != len(self.seeds):
        raise ValueError(f"subsets: {len(subsets)} given for {len(self.seeds)} seeds")
      per_seed = [d.take(idx) for d, idx in zip(per_seed, subsets)]
    return per_seed

  def tune(
    self,
    size: str,
    per_seed: list[Dataset],
    loss: Loss,
    desc: str,
    finetune_cfg=None,
    teacher=None,
    measure=None,
  ):
    """(params stacked per seed, fine-tuned from `size`'s pretrained ones, and
    their training curve: `measure` at the config's curve_points, or [])."""
    optim_cfg = finetune_cfg or self.cfg.finetune
    params, model_cfg, _ = self.models.get(size)
    gt_data = None
    if loss.needs_gt_data:
      available = len(self.task.splits["train_gt"])
      if loss.gt_examples > available:
        raise ValueError(
          f"{type(loss).__name__}.gt_examples={loss.gt_examples}: train_gt has "
          f"only {available} examples"
        )
      gt_data = self.supervised("train_gt", size=size)[0].take(np.arange(loss.gt_examples))
    return finetune(
      params,
      model_cfg,
      per_seed,
      loss_cfg=loss,
      optim_cfg=optim_cfg,
      seeds=self.seeds,
      mesh=self.mesh,
      desc=desc,
      progress=self.progress,
      gt_data=gt_data,
      generative=self.task.generative,
      teacher=teacher,
      sampling_cfg=self.sampling,
      measure=measure,
      measure_every=curves.every(optim_cfg.steps, self.cfg.curve_points) if measure else 0,
    )
