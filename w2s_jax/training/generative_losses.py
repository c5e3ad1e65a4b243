"""The generation losses: sequence-level KD on the weak model's responses
(`sft`) and token-level KD against the frozen weak model itself.

batch: tokens, mask (real tokens) and loss_mask (the response tokens).
Token-level KD reads the teacher's next-token distributions at every
response position inside the train step; its loss_fn's fifth argument is
the teacher's params.
"""

import dataclasses
import functools
from typing import ClassVar

import jax.numpy as jnp

from w2s_jax.models import sampling
from w2s_jax.models.model_config import ModelConfig
from w2s_jax.models.transformer import Transformer
from w2s_jax.training import losses
from w2s_jax.training.objectives import (
  GENERATION,
  Loss,
  check_teacher,
  lm_logits,
  register,
  teacher_logits,
)


def token_accuracy(logits, batch):
  """How often the student's greedy token is the response's next token (the
  sampler's greedy_token: XLA:CPU's argmax is slow over a large vocabulary)."""
  greedy = sampling.greedy_token(logits[:, :-1])
  hit = (greedy == batch["tokens"][:, 1:]).astype(jnp.float32)
  weight = batch["loss_mask"][:, 1:].astype(jnp.float32)
  return jnp.sum(hit * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def sft_objective(model_cfg: ModelConfig):
  """LM loss on the response tokens (SFT on ground truth, sequence-level KD on
  the weak model's responses)."""
  model = Transformer(model_cfg)

  def loss_fn(params, batch, step_frac, rng):
    del step_frac
    logits = lm_logits(model, params, batch, rng)
    loss = losses.response_xent(logits=logits, tokens=batch["tokens"], loss_mask=batch["loss_mask"])
    return loss, {"token_agreement": token_accuracy(logits, batch)}

  return loss_fn


@register
@dataclasses.dataclass(frozen=True)
class Sft(Loss):
  """Sequence-level KD: the LM loss on the weak model's responses."""

  name: ClassVar[str] = "sft"
  kinds: ClassVar[tuple[str, ...]] = (GENERATION,)

  def objective(self, model_cfg, *, generative=True, teacher_cfg=None, sampling_cfg=None):
    self.check_kind(generative)
    return sft_objective(model_cfg)


class TokenKD(Loss):
  """Token-level KD: a divergence between the student's and the frozen
  teacher's next-token distributions at every response position."""

  kinds: ClassVar[tuple[str, ...]] = (GENERATION,)
  needs_teacher: ClassVar[bool] = True

  def divergence(self):
    """(logits=, teacher_logits=, loss_mask=) -> scalar."""
    raise NotImplementedError(f"{type(self).__name__}.divergence")

  def objective(self, model_cfg, *, generative=True, teacher_cfg=None, sampling_cfg=None):
    self.check_kind(generative)
    return token_kd_objective(model_cfg, teacher_cfg, self)


def token_kd_objective(model_cfg: ModelConfig, teacher_cfg: ModelConfig, loss: TokenKD):
  """The fifth argument of its loss_fn is the teacher's params; its logits are held constant."""
  check_teacher(loss, model_cfg, teacher_cfg)
  model, teacher_model = Transformer(model_cfg), Transformer(teacher_cfg)
  divergence = loss.divergence()

  def loss_fn(params, batch, step_frac, rng, teacher_params):
    del step_frac
    logits = lm_logits(model, params, batch, rng)
    target = teacher_logits(teacher_model, teacher_params, batch["tokens"], batch["mask"])
    value = divergence(logits=logits, teacher_logits=target, loss_mask=batch["loss_mask"])
    return value, {"token_agreement": token_accuracy(logits, batch)}

  return loss_fn


@register
@dataclasses.dataclass(frozen=True)
class ForwardKl(TokenKD):
  """KL(teacher || student) per token."""

  name: ClassVar[str] = "forward_kl"
  temperature: float = 1.0

  def __post_init__(self):
    self._check("temperature", self.temperature > 0, "> 0")

  def divergence(self):
    return functools.partial(losses.forward_kl, temperature=self.temperature)


@register
@dataclasses.dataclass(frozen=True)
class ReverseKl(TokenKD):
  """KL(student || teacher) per token."""

  name: ClassVar[str] = "reverse_kl"
  temperature: float = 1.0

  def __post_init__(self):
    self._check("temperature", self.temperature > 0, "> 0")

  def divergence(self):
    return functools.partial(losses.reverse_kl, temperature=self.temperature)


@register
@dataclasses.dataclass(frozen=True)
class Jsd(TokenKD):
  """Generalized JSD per token; jsd_beta is the teacher's weight in the mixture."""

  name: ClassVar[str] = "jsd"
  temperature: float = 1.0
  jsd_beta: float = 0.5

  def __post_init__(self):
    self._check("temperature", self.temperature > 0, "> 0")
    self._check("jsd_beta", 0 < self.jsd_beta < 1, "in (0, 1)")

  def divergence(self):
    return functools.partial(
      losses.generalized_jsd, beta=self.jsd_beta, temperature=self.temperature
    )


DIVERGENCES = {cls.name: cls for cls in (ForwardKl, ReverseKl, Jsd)}
