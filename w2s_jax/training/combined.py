"""The combined objective: kd_weight * KD on the weak supervision + (1 - kd_weight)
* the ground-truth loss on a small labelled set, for either task kind.

Each batch carries both parts: weak_* fields (weak labels or responses) and
gt_* fields (the first gt_examples examples of train_gt). kd_weight = 1 is
naive KD (xent) or sft exactly; kd_weight = 0 ground truth alone.
"""

import dataclasses
from typing import ClassVar

import jax

from w2s_jax.models.model_config import ModelConfig
from w2s_jax.models.transformer import Transformer
from w2s_jax.training import losses
from w2s_jax.training.generative_losses import sft_objective
from w2s_jax.training.objectives import (
  CLASSIFICATION,
  GENERATION,
  Loss,
  class_logits,
  label_agreement,
  register,
  split_batch,
)


@register
@dataclasses.dataclass(frozen=True)
class Combined(Loss):
  name: ClassVar[str] = "combined"
  kinds: ClassVar[tuple[str, ...]] = (CLASSIFICATION, GENERATION)
  kd_weight: float = 0.5
  gt_examples: int = 100

  def __post_init__(self):
    self._check("kd_weight", 0 <= self.kd_weight <= 1, "in [0, 1]")
    self._check("gt_examples", self.gt_examples >= 1, ">= 1")

  @property
  def needs_gt_data(self) -> bool:
    return True

  def objective(self, model_cfg, *, generative, teacher_cfg=None, sampling_cfg=None):
    self.check_kind(generative)
    if generative:
      return combined_generative_objective(model_cfg, alpha=self.kd_weight)
    return combined_classifier_objective(model_cfg, alpha=self.kd_weight)


def combined_classifier_objective(model_cfg: ModelConfig, *, alpha: float):
  """alpha * xent(weak labels) + (1 - alpha) * xent(ground truth)."""
  if not 0 <= alpha <= 1:
    raise ValueError(f"combined alpha={alpha}: expected in [0, 1]")
  model = Transformer(model_cfg)

  def loss_fn(params, batch, step_frac, rng):
    del step_frac
    weak, gt = split_batch(batch, "weak_"), split_batch(batch, "gt_")
    weak_rng, gt_rng = jax.random.split(rng)
    weak_logits = class_logits(model, params, weak, weak_rng)
    gt_logits = class_logits(model, params, gt, gt_rng)
    loss = losses.combined(
      weak_logits=weak_logits,
      weak_labels=weak["labels"],
      gt_logits=gt_logits,
      gt_labels=gt["labels"],
      alpha=alpha,
    )
    return loss, {"label_agreement": label_agreement(weak_logits, weak["labels"])}

  return loss_fn


def combined_generative_objective(model_cfg: ModelConfig, *, alpha: float):
  """alpha * sft(weak responses) + (1 - alpha) * LM(ground-truth responses)."""
  sft = sft_objective(model_cfg)

  def loss_fn(params, batch, step_frac, rng):
    weak_rng, gt_rng = jax.random.split(rng)
    weak_loss, aux = sft(params, split_batch(batch, "weak_"), step_frac, weak_rng)
    gt_loss, _ = sft(params, split_batch(batch, "gt_"), step_frac, gt_rng)
    return alpha * weak_loss + (1.0 - alpha) * gt_loss, aux

  return loss_fn
