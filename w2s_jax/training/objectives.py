"""What a loss is to the train step, and the objectives every loss builds on.

A loss is a frozen dataclass of its own hyperparameters, a subclass of
`Loss` named by its class attribute `name` and made known to configs and
the command line by `@register`. Its `objective(model_cfg, ...)` returns
the train step's

  loss_fn(params, batch, step_frac, rng[, teacher_params]) -> (loss, aux)

(rng drives dropout, when the model has any). Classification losses subclass
`ClassifierLoss` and only say how logits meet soft labels (`loss`); the
batch, the model call and the agreement metric are `classifier_objective`'s.
Losses that read the frozen weak model itself inside the train step
(token-level KD, the live supervisor) set `needs_teacher`: their loss_fn
takes a fifth argument, the teacher's params, which the train step passes in
undifferentiated and undonated (train.compile_train_step), so the teacher is
never part of the student's state or checkpoints.

The built-in losses: classifier_losses.py (xent, kl, product, logconf),
generative_losses.py (sft, forward_kl, reverse_kl, jsd), combined.py
(combined, both kinds) and live.py (live). docs/extending.md adds one.
"""

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from w2s_jax.models.model_config import ModelConfig
from w2s_jax.models.transformer import Transformer
from w2s_jax.training import losses

CLASSIFICATION, GENERATION = "classification", "generation"
_KNOWN: dict[str, type["Loss"]] = {}


def register(cls: type["Loss"]) -> type["Loss"]:
  """Makes a loss class known by its `name` (configs, --set, tables); a class decorator."""
  name = getattr(cls, "name", None)
  if not isinstance(name, str) or not name:
    raise TypeError(f"register({cls.__name__}): expected a class attribute name: ClassVar[str]")
  if name in _KNOWN and _KNOWN[name] is not cls:
    raise ValueError(
      f"register({cls.__name__}): the name {name!r} is taken by {_KNOWN[name].__name__}"
    )
  _KNOWN[name] = cls
  return cls


def known_losses(kind: str | None = None) -> tuple[str, ...]:
  """The registered losses' names (of one task kind)."""
  return tuple(n for n, c in _KNOWN.items() if kind is None or kind in c.kinds)


class Loss:
  """Base of every loss (see the module docstring). Subclasses are frozen
  dataclasses; their fields are the loss's own hyperparameters."""

  name: ClassVar[str]
  kinds: ClassVar[tuple[str, ...]]  # CLASSIFICATION and/or GENERATION
  needs_teacher: ClassVar[bool] = False

  @classmethod
  def from_string(cls, raw: str) -> "Loss":
    """A registered loss by name, with its default hyperparameters."""
    name = raw.strip()
    if name not in _KNOWN:
      raise ValueError(f"loss {name!r}: expected one of {sorted(_KNOWN)}")
    return _KNOWN[name]()

  @property
  def needs_gt_data(self) -> bool:
    """Whether batches also carry gt_* fields: a ground-truth set of gt_examples."""
    return False

  @property
  def tag(self) -> str:
    """A short name for tables and folders: the name and what differs from the defaults."""
    default = type(self)()
    changed = [
      f"{f.name}={getattr(self, f.name)}"
      for f in dataclasses.fields(self)
      if getattr(self, f.name) != getattr(default, f.name)
    ]
    return ",".join([self.name, *changed])

  def check_kind(self, generative: bool, field: str = "loss") -> None:
    kind = GENERATION if generative else CLASSIFICATION
    if kind not in self.kinds:
      described = "generative" if generative else "classification"
      raise ValueError(
        f"{field}={self.name!r} does not apply to a {described} task: expected one of "
        f"{known_losses(kind)}"
      )

  def objective(
    self, model_cfg: ModelConfig, *, generative: bool, teacher_cfg=None, sampling_cfg=None
  ):
    """The loss_fn of a fine-tune with this loss (see the module docstring)."""
    raise NotImplementedError(f"{type(self).__name__}.objective")

  def _check(self, field: str, ok: bool, expected: str) -> None:
    """A ValueError naming the class, the field, its value and what was expected."""
    if not ok:
      raise ValueError(
        f"{type(self).__name__}.{field}={getattr(self, field)!r}: expected {expected}"
      )


class ClassifierLoss(Loss):
  """A classification loss: subclasses define loss(logits=, labels=, step_frac=)."""

  kinds = (CLASSIFICATION,)

  def loss(self, *, logits, labels, step_frac):
    raise NotImplementedError(f"{type(self).__name__}.loss")

  def objective(
    self, model_cfg: ModelConfig, *, generative: bool = False, teacher_cfg=None, sampling_cfg=None
  ):
    self.check_kind(generative)
    return classifier_objective(model_cfg, self)


# --- What every objective shares --------------------------------------------------


def dropout_rngs(model_cfg: ModelConfig, rng) -> dict:
  return {"dropout": rng} if model_cfg.dropout > 0 else {}


def split_batch(batch: dict, prefix: str) -> dict:
  """The fields of a two-part batch (weak_*, gt_*) under one prefix, unprefixed."""
  return {k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)}


def lm_objective(model_cfg: ModelConfig):
  """Next-token cross-entropy on every real token: pretraining."""
  model = Transformer(model_cfg)

  def loss_fn(params, batch, step_frac, rng):
    del step_frac
    logits = model.apply(
      {"params": params},
      batch["tokens"],
      batch["mask"],
      method=Transformer.lm_logits,
      rngs=dropout_rngs(model_cfg, rng),
    )
    loss = losses.lm_xent(logits=logits, tokens=batch["tokens"], mask=batch["mask"])
    return loss, {}

  return loss_fn


def class_logits(model: Transformer, params, batch, rng):
  return model.apply(
    {"params": params},
    batch["tokens"],
    batch["mask"],
    method=Transformer.class_logits,
    rngs=dropout_rngs(model.cfg, rng),
  )


def label_agreement(logits, labels):
  """How often the student's class is the labels' most likely one."""
  return jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))


def classifier_objective(model_cfg: ModelConfig, loss: ClassifierLoss):
  """batch: tokens, mask, labels (soft, [batch, classes])."""
  model = Transformer(model_cfg)

  def loss_fn(params, batch, step_frac, rng):
    logits = class_logits(model, params, batch, rng)
    value = loss.loss(logits=logits, labels=batch["labels"], step_frac=step_frac)
    return value, {"label_agreement": label_agreement(logits, batch["labels"])}

  return loss_fn


def lm_logits(model: Transformer, params, batch, rng):
  return model.apply(
    {"params": params},
    batch["tokens"],
    batch["mask"],
    method=Transformer.lm_logits,
    rngs=dropout_rngs(model.cfg, rng),
  )


def check_teacher(loss: Loss, model_cfg: ModelConfig, teacher_cfg: ModelConfig | None) -> None:
  """A loss reading the weak model needs its config, over the student's vocabulary."""
  if teacher_cfg is None:
    raise ValueError(
      f"loss {loss.name!r} needs the teacher's model config (the weak model "
      "scores the student's tokens)"
    )
  if teacher_cfg.vocab_size != model_cfg.vocab_size:
    raise ValueError(
      f"loss {loss.name!r}: teacher vocab_size={teacher_cfg.vocab_size} != "
      f"student vocab_size={model_cfg.vocab_size}; expected one shared vocabulary"
    )


def teacher_logits(teacher_model: Transformer, teacher_params, tokens, mask):
  """The frozen teacher's next-token logits (the train step differentiates the
  student's params only)."""
  return teacher_model.apply({"params": teacher_params}, tokens, mask, method=Transformer.lm_logits)
