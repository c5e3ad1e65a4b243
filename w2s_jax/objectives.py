"""Loss factories: model + loss choice -> loss_fn(params, batch, step_frac, rng) -> (loss, aux).

rng drives dropout, when the model has any.

The teacher never appears here: weak supervision arrives as soft labels in the
batch, so the frozen weak model is outside the differentiated argument and
outside every checkpoint of the student.
"""

import dataclasses

import jax
import jax.numpy as jnp

from w2s_jax import losses
from w2s_jax.models import ModelConfig, Transformer

CLASSIFIER_LOSSES = ("xent", "kl", "product", "logconf", "combined")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Which loss trains the classifier, with its own hyperparameters only."""
  name: str = "xent"
  temperature: float = 1.0       # xent
  alpha: float = 1.0             # product: labels exponent
  beta: float = 1.0              # product: student exponent
  warmup_frac: float = 0.1       # logconf
  aux_coef: float = 0.5          # logconf
  kd_weight: float = 0.5         # combined: kd_weight * KD(weak) + (1 - kd_weight) * xent(gt)
  gt_examples: int = 100         # combined: size of the ground-truth set

  def __post_init__(self):
    if self.name not in CLASSIFIER_LOSSES:
      raise ValueError(f"LossConfig.name={self.name!r}: expected one of {CLASSIFIER_LOSSES}")
    if not self.temperature > 0:
      raise ValueError(f"LossConfig.temperature={self.temperature}: expected > 0")
    if not 0 < self.warmup_frac <= 1:
      raise ValueError(f"LossConfig.warmup_frac={self.warmup_frac}: expected in (0, 1]")
    if not 0 <= self.aux_coef <= 1:
      raise ValueError(f"LossConfig.aux_coef={self.aux_coef}: expected in [0, 1]")
    if not 0 <= self.kd_weight <= 1:
      raise ValueError(f"LossConfig.kd_weight={self.kd_weight}: expected in [0, 1]")
    if self.gt_examples < 1:
      raise ValueError(f"LossConfig.gt_examples={self.gt_examples}: expected >= 1")

  @property
  def tag(self) -> str:
    """A short name for tables and directories: the loss and what differs from its defaults."""
    default = LossConfig(self.name)
    changed = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
               if f.name != "name" and getattr(self, f.name) != getattr(default, f.name)]
    return ",".join([self.name, *changed])

  def target_loss(self):
    """(logits, labels, step_frac) -> scalar, closing over this config."""
    match self.name:
      case "combined":
        raise ValueError("LossConfig('combined') needs two batches: use objectives.objective")
      case "xent":
        return lambda logits, labels, _: losses.xent(
            logits=logits, labels=labels, temperature=self.temperature)
      case "kl":
        return lambda logits, labels, _: losses.kl(logits=logits, labels=labels)
      case "product":
        return lambda logits, labels, _: losses.product(
            logits=logits, labels=labels, alpha=self.alpha, beta=self.beta)
      case "logconf":
        return lambda logits, labels, step_frac: losses.logconf(
            logits=logits, labels=labels, step_frac=step_frac,
            warmup_frac=self.warmup_frac, aux_coef=self.aux_coef)


def _rngs(model_cfg: ModelConfig, rng) -> dict:
  return {"dropout": rng} if model_cfg.dropout > 0 else {}


def lm_objective(model_cfg: ModelConfig):
  model = Transformer(model_cfg)

  def loss_fn(params, batch, step_frac, rng):
    del step_frac
    logits = model.apply({"params": params}, batch["tokens"], batch["mask"],
                         method=Transformer.lm_logits, rngs=_rngs(model_cfg, rng))
    loss = losses.lm_xent(logits=logits, tokens=batch["tokens"], mask=batch["mask"])
    return loss, {}
  return loss_fn


def _class_logits(model, params, batch, rng):
  return model.apply({"params": params}, batch["tokens"], batch["mask"],
                     method=Transformer.class_logits, rngs=_rngs(model.cfg, rng))


def _accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))


def classifier_objective(model_cfg: ModelConfig, loss_cfg: LossConfig):
  """batch: tokens, mask, labels (soft, [batch, classes])."""
  model = Transformer(model_cfg)
  target_loss = loss_cfg.target_loss()

  def loss_fn(params, batch, step_frac, rng):
    logits = _class_logits(model, params, batch, rng)
    loss = target_loss(logits, batch["labels"], step_frac)
    return loss, {"label_agreement": _accuracy(logits, batch["labels"])}
  return loss_fn


def objective(model_cfg: ModelConfig, loss_cfg: LossConfig):
  """The loss_fn for a classifier fine-tune with this loss."""
  if loss_cfg.name == "combined":
    return combined_objective(model_cfg, alpha=loss_cfg.kd_weight)
  return classifier_objective(model_cfg, loss_cfg)


def combined_objective(model_cfg: ModelConfig, *, alpha: float):
  """batch: weak_* fields (weak-labelled) and gt_* fields (ground truth)."""
  if not 0 <= alpha <= 1:
    raise ValueError(f"combined alpha={alpha}: expected in [0, 1]")
  model = Transformer(model_cfg)
  split = lambda batch, prefix: {k[len(prefix):]: v for k, v in batch.items()
                                 if k.startswith(prefix)}

  def loss_fn(params, batch, step_frac, rng):
    del step_frac
    weak, gt = split(batch, "weak_"), split(batch, "gt_")
    weak_rng, gt_rng = jax.random.split(rng)
    weak_logits = _class_logits(model, params, weak, weak_rng)
    gt_logits = _class_logits(model, params, gt, gt_rng)
    loss = losses.combined(weak_logits=weak_logits, weak_labels=weak["labels"],
                           gt_logits=gt_logits, gt_labels=gt["labels"], alpha=alpha)
    return loss, {"label_agreement": _accuracy(weak_logits, weak["labels"])}
  return loss_fn
