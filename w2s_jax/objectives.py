"""Loss factories: model + loss choice -> loss_fn(params, batch, step_frac, rng) -> (loss, aux).

rng drives dropout, when the model has any.

Classification: weak supervision arrives as soft labels in the batch.
Generation: as the weak model's responses in the batch (sequence-level KD,
`sft`), or, for token-level KD, as the frozen weak model itself: those
loss_fns take a fifth argument, the teacher's params, which the train step
passes in undifferentiated and undonated (train.compile_train_step), so the
teacher is never part of the student's state or checkpoints. `live` (live.py)
also reads the frozen weak model, on responses the student samples itself
inside the train step (on-policy distillation).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from w2s_jax import losses, sampling
from w2s_jax.models import ModelConfig, Transformer

CLASSIFIER_LOSSES = ("xent", "kl", "product", "logconf", "combined")
TOKEN_KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
GENERATIVE_LOSSES = ("sft", *TOKEN_KD_LOSSES, "combined", "live")
LIVE_FIELDS = ("live_fraction", "live_divergence", "live_temperature", "live_gt_weight")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Which loss trains the student, with its own hyperparameters only.

  Classification: xent (naive KD), kl, product, logconf, combined.
  Generation: sft (LM loss on the weak responses: sequence-level KD),
  forward_kl / reverse_kl / jsd (token-level KD against the weak model's
  next-token distributions on those responses), combined, live (the weak
  model as a live supervisor of responses the student samples: live.py).
  """
  name: str = "xent"
  temperature: float = 1.0       # xent; token-level KD (both distributions)
  alpha: float = 1.0             # product: labels exponent
  beta: float = 1.0              # product: student exponent
  warmup_frac: float = 0.1       # logconf
  aux_coef: float = 0.5          # logconf
  kd_weight: float = 0.5         # combined: kd_weight * KD(weak) + (1 - kd_weight) * xent(gt)
  gt_examples: int = 100         # combined: size of the ground-truth set
  jsd_beta: float = 0.5          # jsd: the teacher's weight in the mixture (losses.generalized_jsd)
  # live: this share of each batch's rows is sampled by the student and scored by
  # the weak model with live_divergence; the rest uses the weak responses (live.py).
  live_fraction: float = 0.5
  live_divergence: str = "reverse_kl"  # reverse_kl, jsd (with jsd_beta) or forward_kl
  live_temperature: float = 1.0  # the student's sampling temperature (1: on-policy; 0: greedy)
  live_gt_weight: float = 0.0    # live: (1 - w) * live + w * LM on gt_examples ground truths

  def __post_init__(self):
    names = tuple(dict.fromkeys(CLASSIFIER_LOSSES + GENERATIVE_LOSSES))
    if self.name not in names:
      raise ValueError(f"LossConfig.name={self.name!r}: expected one of {names}")
    if not 0 < self.jsd_beta < 1:
      raise ValueError(f"LossConfig.jsd_beta={self.jsd_beta}: expected in (0, 1)")
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
    if not 0 <= self.live_fraction <= 1:
      raise ValueError(f"LossConfig.live_fraction={self.live_fraction}: expected in [0, 1]")
    if self.live_divergence not in TOKEN_KD_LOSSES:
      raise ValueError(f"LossConfig.live_divergence={self.live_divergence!r}: expected one of "
                       f"{TOKEN_KD_LOSSES}")
    if not self.live_temperature >= 0:
      raise ValueError(f"LossConfig.live_temperature={self.live_temperature}: expected >= 0 "
                       "(0: greedy)")
    if not 0 <= self.live_gt_weight <= 1:
      raise ValueError(f"LossConfig.live_gt_weight={self.live_gt_weight}: expected in [0, 1]")
    if self.name != "live":
      default = LossConfig.__dataclass_fields__
      changed = [f for f in LIVE_FIELDS if getattr(self, f) != default[f].default]
      if changed:
        raise ValueError(f"LossConfig.{changed[0]}={getattr(self, changed[0])!r} applies to the "
                         f"live loss only: expected its default with name={self.name!r}")

  @property
  def needs_teacher(self) -> bool:
    """Token-level KD and live read the frozen weak model inside the train step."""
    return self.name in (*TOKEN_KD_LOSSES, "live")

  @property
  def needs_gt_data(self) -> bool:
    """combined, and live with live_gt_weight > 0, also train on ground truth (gt_* fields)."""
    return self.name == "combined" or (self.name == "live" and self.live_gt_weight > 0)

  def check_kind(self, generative: bool, field: str = "LossConfig.name") -> None:
    allowed = GENERATIVE_LOSSES if generative else CLASSIFIER_LOSSES
    if self.name not in allowed:
      kind = "generative" if generative else "classification"
      raise ValueError(f"{field}={self.name!r} does not apply to a {kind} task: expected one "
                       f"of {allowed}")

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


def objective(model_cfg: ModelConfig, loss_cfg: LossConfig, *, generative: bool = False,
              teacher_cfg: ModelConfig | None = None,
              sampling_cfg: sampling.SamplingConfig | None = None):
  """The loss_fn for a fine-tune with this loss (a classifier's, or a
  generator's when generative). Token-level KD and live need teacher_cfg;
  live also the task's sampling_cfg (its max_new_tokens, EOS and pad ids)."""
  loss_cfg.check_kind(generative)
  if generative:
    return generative_objective(model_cfg, loss_cfg, teacher_cfg=teacher_cfg,
                                sampling_cfg=sampling_cfg)
  if loss_cfg.name == "combined":
    return combined_objective(model_cfg, alpha=loss_cfg.kd_weight)
  return classifier_objective(model_cfg, loss_cfg)


def _split(batch, prefix):
  return {k[len(prefix):]: v for k, v in batch.items() if k.startswith(prefix)}


def combined_objective(model_cfg: ModelConfig, *, alpha: float):
  """batch: weak_* fields (weak-labelled) and gt_* fields (ground truth)."""
  if not 0 <= alpha <= 1:
    raise ValueError(f"combined alpha={alpha}: expected in [0, 1]")
  model = Transformer(model_cfg)

  def loss_fn(params, batch, step_frac, rng):
    del step_frac
    weak, gt = _split(batch, "weak_"), _split(batch, "gt_")
    weak_rng, gt_rng = jax.random.split(rng)
    weak_logits = _class_logits(model, params, weak, weak_rng)
    gt_logits = _class_logits(model, params, gt, gt_rng)
    loss = losses.combined(weak_logits=weak_logits, weak_labels=weak["labels"],
                           gt_logits=gt_logits, gt_labels=gt["labels"], alpha=alpha)
    return loss, {"label_agreement": _accuracy(weak_logits, weak["labels"])}
  return loss_fn


# --- Generation: batches of prompt + response sequences -----------------------
# batch: tokens, mask (real tokens) and loss_mask (the response tokens).

def _lm_logits(model, params, batch, rng):
  return model.apply({"params": params}, batch["tokens"], batch["mask"],
                     method=Transformer.lm_logits, rngs=_rngs(model.cfg, rng))


def _token_accuracy(logits, batch):
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
    logits = _lm_logits(model, params, batch, rng)
    loss = losses.response_xent(logits=logits, tokens=batch["tokens"],
                                loss_mask=batch["loss_mask"])
    return loss, {"token_agreement": _token_accuracy(logits, batch)}
  return loss_fn


def token_divergence(name: str, loss_cfg: LossConfig):
  """(logits, teacher_logits, loss_mask) -> scalar: the token-level divergence `name`."""
  return {
      "forward_kl": functools.partial(losses.forward_kl, temperature=loss_cfg.temperature),
      "reverse_kl": functools.partial(losses.reverse_kl, temperature=loss_cfg.temperature),
      "jsd": functools.partial(losses.generalized_jsd, beta=loss_cfg.jsd_beta,
                               temperature=loss_cfg.temperature),
  }[name]


def token_kd_objective(model_cfg: ModelConfig, teacher_cfg: ModelConfig, loss_cfg: LossConfig):
  """Token-level KD: a divergence between the student's and the frozen
  teacher's next-token distributions at every response position. The fifth
  argument is the teacher's params; its logits are held constant."""
  if teacher_cfg is None:
    raise ValueError(f"LossConfig.name={loss_cfg.name!r} needs the teacher's model config")
  if teacher_cfg.vocab_size != model_cfg.vocab_size:
    raise ValueError(f"token-level KD ({loss_cfg.name}): teacher vocab_size="
                     f"{teacher_cfg.vocab_size} != student vocab_size={model_cfg.vocab_size}; "
                     "expected one shared vocabulary")
  model, teacher_model = Transformer(model_cfg), Transformer(teacher_cfg)
  divergence = token_divergence(loss_cfg.name, loss_cfg)

  def loss_fn(params, batch, step_frac, rng, teacher_params):
    del step_frac
    logits = _lm_logits(model, params, batch, rng)
    teacher_logits = teacher_model.apply({"params": teacher_params}, batch["tokens"],
                                         batch["mask"], method=Transformer.lm_logits)
    loss = divergence(logits=logits, teacher_logits=teacher_logits, loss_mask=batch["loss_mask"])
    return loss, {"token_agreement": _token_accuracy(logits, batch)}
  return loss_fn


def generative_objective(model_cfg: ModelConfig, loss_cfg: LossConfig, *,
                         teacher_cfg: ModelConfig | None = None,
                         sampling_cfg: sampling.SamplingConfig | None = None):
  if loss_cfg.name == "sft":
    return sft_objective(model_cfg)
  if loss_cfg.name == "live":
    from w2s_jax import live  # live builds on this module's token-level KD
    return live.live_objective(model_cfg, teacher_cfg, loss_cfg, sampling_cfg)
  if loss_cfg.needs_teacher:
    return token_kd_objective(model_cfg, teacher_cfg, loss_cfg)
  # combined: alpha * sft on the weak responses + (1 - alpha) * LM on ground truth.
  alpha = loss_cfg.kd_weight
  sft = sft_objective(model_cfg)

  def loss_fn(params, batch, step_frac, rng):
    weak_rng, gt_rng = jax.random.split(rng)
    weak_loss, aux = sft(params, _split(batch, "weak_"), step_frac, weak_rng)
    gt_loss, _ = sft(params, _split(batch, "gt_"), step_frac, gt_rng)
    return alpha * weak_loss + (1.0 - alpha) * gt_loss, aux
  return loss_fn
