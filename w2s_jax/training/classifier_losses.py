"""The classification losses: how the student's logits meet the weak soft labels."""

import dataclasses
from typing import ClassVar

from w2s_jax.infra.fingerprint import WHEN_SET
from w2s_jax.training import losses
from w2s_jax.training.objectives import ClassifierLoss, register


@register
@dataclasses.dataclass(frozen=True)
class Xent(ClassifierLoss):
  """Naive KD: cross-entropy against the soft labels, at a temperature."""

  name: ClassVar[str] = "xent"
  temperature: float = 1.0

  def __post_init__(self):
    self._check("temperature", self.temperature > 0, "> 0")

  def loss(self, *, logits, labels, step_frac):
    del step_frac
    return losses.xent(logits=logits, labels=labels, temperature=self.temperature)


@register
@dataclasses.dataclass(frozen=True)
class Kl(ClassifierLoss):
  """KL(labels || student)."""

  name: ClassVar[str] = "kl"

  def loss(self, *, logits, labels, step_frac):
    del step_frac
    return losses.kl(logits=logits, labels=labels)


@register
@dataclasses.dataclass(frozen=True)
class Product(ClassifierLoss):
  """Cross-entropy against student^beta * labels^alpha, normalised."""

  name: ClassVar[str] = "product"
  alpha: float = 1.0
  beta: float = 1.0

  def loss(self, *, logits, labels, step_frac):
    del step_frac
    return losses.product(logits=logits, labels=labels, alpha=self.alpha, beta=self.beta)


@register
@dataclasses.dataclass(frozen=True)
class LogConf(ClassifierLoss):
  """Burns et al.'s auxiliary confidence loss: the labels mixed with the
  student's own hardened predictions, the mix ramping up to aux_coef over
  the first warmup_frac of training. balance_batch: EleutherAI/w2s's
  balanced variant (losses.logconf)."""

  name: ClassVar[str] = "logconf"
  warmup_frac: float = 0.1
  aux_coef: float = 0.5
  # Keys of runs without it stay as they were.
  balance_batch: bool = dataclasses.field(default=False, metadata=WHEN_SET)

  def __post_init__(self):
    self._check("warmup_frac", 0 < self.warmup_frac <= 1, "in (0, 1]")
    self._check("aux_coef", 0 <= self.aux_coef <= 1, "in [0, 1]")

  def loss(self, *, logits, labels, step_frac):
    return losses.logconf(
      logits=logits,
      labels=labels,
      step_frac=step_frac,
      warmup_frac=self.warmup_frac,
      aux_coef=self.aux_coef,
      balance_batch=self.balance_batch,
    )
