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
import hashlib
import importlib
import importlib.util
import inspect
from pathlib import Path
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
    """A registered loss by name, with its default hyperparameters; or a pure
    function of your own, "path/to/file.py:function" or "package.module:function"
    (FunctionLoss, with the function's default hyperparameters)."""
    name = raw.strip()
    if ":" in name:
      return FunctionLoss(source=name)
    if name not in _KNOWN:
      raise ValueError(
        f"loss {name!r}: expected one of {sorted(_KNOWN)}, or FILE.py:FUNCTION / "
        "MODULE:FUNCTION for a loss function of your own"
      )
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


_FUNCTIONS: dict[tuple[str, str], object] = {}  # (source, digest) -> the loaded function


def loss_from(source: str, **params) -> "FunctionLoss":
  """A loss function of your own with its hyperparameters:
  loss_from("my_losses.py:symmetric_xent", alpha=0.1)."""
  return FunctionLoss(source=source, params=tuple(sorted(params.items())))


@dataclasses.dataclass(frozen=True)
class FunctionLoss(ClassifierLoss):
  """A classification loss that is a pure function, in a file of your own
  ("path/to/file.py:function") or a module ("package.module:function"):

    function(*, logits, labels[, step_frac], **params) -> scalar

  with logits [batch, classes], labels the soft targets [batch, classes]
  and step_frac the fraction of training done (taken only if the function
  names it), as the built-in losses in losses.py. Nothing in the library
  changes: a config or `--set losses=xent,my_losses.py:symmetric_xent`
  names it, tables show it by the function's name, and cache keys hold the
  defining file's contents (`digest`), so an edited loss is trained again.
  """

  source: str = ""
  params: tuple[tuple[str, object], ...] = ()  # the hyperparameters, (name, value) sorted
  digest: str = dataclasses.field(default="", init=False)

  def __post_init__(self):
    module, _, function = self.source.rpartition(":")
    if not module or not function.isidentifier():
      raise ValueError(
        f"FunctionLoss.source={self.source!r}: expected FILE.py:FUNCTION or MODULE:FUNCTION"
      )
    if not isinstance(self.params, tuple) or not all(
      isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in self.params
    ):
      raise ValueError(
        f"FunctionLoss.params={self.params!r}: expected (name, value) pairs (loss_from(source, **params))"
      )
    path = Path(module) if module.endswith(".py") else None
    if path is None:
      try:
        path = Path(inspect.getsourcefile(importlib.import_module(module)) or "")
      except ImportError as e:
        raise ValueError(
          f"FunctionLoss.source={self.source!r}: cannot import {module!r}: {e}"
        ) from None
    if not path.is_file():
      raise ValueError(f"FunctionLoss.source={self.source!r}: no such file {str(path)!r}")
    object.__setattr__(self, "digest", hashlib.sha256(path.read_bytes()).hexdigest())
    fn = self.function
    names = inspect.signature(fn).parameters
    missing = [n for n in ("logits", "labels", *dict(self.params)) if n not in names]
    if missing and not any(p.kind is p.VAR_KEYWORD for p in names.values()):
      raise ValueError(
        f"FunctionLoss.source={self.source!r}: {function}{inspect.signature(fn)} takes no "
        f"{missing}: expected keyword arguments logits, labels[, step_frac] and its hyperparameters"
      )

  @property
  def name(self) -> str:
    return self.source.rpartition(":")[2]

  @property
  def tag(self) -> str:
    return ",".join([self.name, *(f"{k}={v}" for k, v in self.params)])

  @property
  def function(self):
    key = (self.source, self.digest)
    if key not in _FUNCTIONS:
      module, _, function = self.source.rpartition(":")
      if module.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"w2s_loss_{self.digest[:16]}", module)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
      else:
        loaded = importlib.import_module(module)
      fn = getattr(loaded, function, None)
      if not callable(fn):
        raise ValueError(
          f"FunctionLoss.source={self.source!r}: {module} defines no function {function!r}"
        )
      _FUNCTIONS[key] = fn
    return _FUNCTIONS[key]

  def loss(self, *, logits, labels, step_frac):
    fn = self.function
    extra = {"step_frac": step_frac} if "step_frac" in inspect.signature(fn).parameters else {}
    return fn(logits=logits, labels=labels, **extra, **dict(self.params))


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
