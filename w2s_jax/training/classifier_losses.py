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


@register
@dataclasses.dataclass(frozen=True)
class Window(ClassifierLoss):
  """EleutherAI/w2s's confidence window: naive KD on the examples the student
  is unsure of (top probability below 1/k + radius) only."""

  name: ClassVar[str] = "window"
  radius: float = 0.15

  def __post_init__(self):
    self._check("radius", 0 < self.radius <= 1, "in (0, 1]")

  def loss(self, *, logits, labels, step_frac):
    del step_frac
    return losses.window(logits=logits, labels=labels, radius=self.radius)


@register
@dataclasses.dataclass(frozen=True)
class Entropy(ClassifierLoss):
  """EleutherAI/w2s's log-entropy loss: naive KD plus the student's own
  entropy, weighted up to aux_coef over the first warmup_frac of training."""

  name: ClassVar[str] = "entropy"
  warmup_frac: float = 0.1
  aux_coef: float = 0.75

  def __post_init__(self):
    self._check("warmup_frac", 0 < self.warmup_frac <= 1, "in (0, 1]")
    self._check("aux_coef", 0 <= self.aux_coef <= 1, "in [0, 1]")

  def loss(self, *, logits, labels, step_frac):
    return losses.entropy(
      logits=logits,
      labels=labels,
      step_frac=step_frac,
      warmup_frac=self.warmup_frac,
      aux_coef=self.aux_coef,
    )


@register
@dataclasses.dataclass(frozen=True)
class AdaptConf(ClassifierLoss):
  """AdaptConf (arXiv 2402.03749): per example, the weak label mixed with the
  student's own hard prediction by beta(x), the two's relative confidence
  (losses.adaptconf_weights); a fixed beta in [0, 1] instead when set."""

  name: ClassVar[str] = "adaptconf"
  beta: float | None = None

  def __post_init__(self):
    if self.beta is not None:
      self._check("beta", 0 <= self.beta <= 1, "None (adaptive) or in [0, 1]")

  def loss(self, *, logits, labels, step_frac):
    del step_frac
    return losses.adaptconf(logits=logits, labels=labels, beta=self.beta)
