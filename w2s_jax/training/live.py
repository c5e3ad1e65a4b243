"""The weak model as a live supervisor: on-policy distillation (GKD, Agarwal et al. 2023).

In every train step a static share of the batch's rows (Live.live_fraction,
lambda) gets a response the student samples itself: `sampling.sample` on its
stop-gradient params with the step's rng, from the row's own left-padded
prompt, at Live.live_temperature (1: on-policy), with the task's
max_new_tokens, EOS and pad ids. The sample is written exactly where
layout.sequences put the weak model's response (prompt + response, the
same widths), so every shape is static and sampling, scoring and the update
stay one jitted program: no host round trip per token. The frozen weak model
(the loss_fn's fifth argument) scores those sequences, and the loss on them is
Live.live_divergence between the student's next-token distributions
(with gradient, on its own samples) and the teacher's. The other rows keep the
weak model's responses, under the same divergence:

  loss = w * D(sampled rows) + (1 - w) * D(weak-response rows)

each term a per-token mean over its rows' response tokens (as losses.*
compute it), w = k / B the sampled rows' share of the batch (k = round(lambda
* B)). So lambda = 0 is the token-level KD objective of that divergence (the
same function: no sampling is traced), and lambda = 1 pure on-policy
distillation. With Live.live_gt_weight = g > 0 the batch carries weak_*
and gt_* fields and the loss is (1 - g) * live + g * LM(ground truth).

Which rows: B / gcd(B, k) consecutive rows form a period whose first
k / gcd(B, k) are sampled (every other row at lambda = 0.5). The pattern is
static and strided, so each device's contiguous block of rows holds its
share whenever the period divides the block, and sampling stays split over
the mesh as the batch is. Under gradient accumulation it applies to each
micro-batch.
"""

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.models import sampling
from w2s_jax.models.model_config import ModelConfig
from w2s_jax.models.transformer import Transformer
from w2s_jax.training.generative_losses import DIVERGENCES, sft_objective, token_kd_objective
from w2s_jax.training.objectives import (
  GENERATION,
  Loss,
  check_teacher,
  dropout_rngs,
  register,
  split_batch,
  teacher_logits,
)

PROMPT_FIELDS = ("prompt", "prompt_mask", "example_id")


def live_layout(batch: int, fraction: float) -> tuple[int, int]:
  """(period, sampled rows per period) of a batch of `batch` rows: row i is
  sampled when i % period < the second number (0: no row is)."""
  k = int(math.floor(fraction * batch + 0.5))
  if k == 0:
    return 1, 0
  g = math.gcd(batch, k)
  return batch // g, k // g


def _grouped(x, period):
  return x.reshape(x.shape[0] // period, period, *x.shape[1:])


def _flat(x):
  return x.reshape(-1, *x.shape[2:])


def sample_rows(params, batch, rng, *, model_cfg: ModelConfig, sampling_cfg, fraction: float):
  """The batch (tokens, mask, loss_mask) with the live rows' responses replaced
  by the student's samples; also is_live [B] (0/1 floats) and the sampled
  response lengths [k]. A pure function of (params, batch, rng): the same
  rows draw the same tokens. batch: gen_tasks.sequences rows (with prompt,
  prompt_mask and example_id); rng: a key or raw key data."""
  missing = [f for f in PROMPT_FIELDS if f not in batch]
  if missing:
    raise ValueError(
      f"loss 'live': the batch has no {missing} field(s); expected "
      "gen_tasks.sequences rows, which keep each row's prompt, prompt_mask and "
      "example_id"
    )
  rows, width = batch["tokens"].shape
  prompt_len = batch["prompt"].shape[1]
  room = width - prompt_len
  if sampling_cfg.max_new_tokens > room:
    raise ValueError(
      f"loss 'live': SamplingConfig.max_new_tokens="
      f"{sampling_cfg.max_new_tokens} exceeds the batch's response width {room} "
      f"(tokens {width} - prompt {prompt_len}); expected at most {room}"
    )
  sampling_cfg.check(model_cfg, prompt_len)
  period, per = live_layout(rows, fraction)
  take = lambda x: _flat(_grouped(x, period)[:, :per])
  prompt, prompt_mask = take(batch["prompt"]), take(batch["prompt_mask"]).astype(jnp.int32)
  tokens, response_mask, _ = sampling.sample(
    jax.lax.stop_gradient(params),
    prompt,
    prompt_mask,
    take(batch["example_id"]),
    rng,
    model_cfg=model_cfg,
    cfg=sampling_cfg,
  )
  pad = ((0, 0), (0, room - sampling_cfg.max_new_tokens))
  tokens = jnp.pad(tokens, pad, constant_values=sampling_cfg.pad_id)
  response_mask = jnp.pad(response_mask, pad)
  live = {
    "tokens": jnp.concatenate([prompt.astype(jnp.int32), tokens], axis=1),
    "mask": jnp.concatenate([prompt_mask, response_mask], axis=1),
    "loss_mask": jnp.concatenate([jnp.zeros_like(prompt_mask), response_mask], axis=1),
  }

  def put(name):
    grouped = _grouped(batch[name], period)
    sampled = _grouped(live[name].astype(grouped.dtype), per)
    return _flat(jnp.concatenate([sampled, grouped[:, per:]], axis=1))

  is_live = np.tile(np.arange(period) < per, rows // period).astype(np.float32)
  return ({name: put(name) for name in live}, jnp.asarray(is_live), jnp.sum(response_mask, axis=1))


def _row_weights(loss_mask, is_live, share):
  """Per-position weights summing to 1: share spread evenly over the sampled
  rows' counted positions, 1 - share over the other rows' (losses.* then
  return share * mean(sampled) + (1 - share) * mean(others))."""
  counted = loss_mask.astype(jnp.float32)
  live, other = counted * is_live[:, None], counted * (1.0 - is_live[:, None])
  norm = lambda w: w / jnp.maximum(jnp.sum(w[:, 1:]), 1.0)
  return share * norm(live) + (1.0 - share) * norm(other)


@register
@dataclasses.dataclass(frozen=True)
class Live(Loss):
  """The weak model as a live supervisor (this module's docstring).

  live_fraction: lambda, the share of each batch's rows the student samples;
  live_divergence: forward_kl, reverse_kl or jsd (with temperature, jsd_beta);
  live_temperature: the student's sampling temperature (1: on-policy, 0: greedy);
  live_gt_weight: (1 - w) * live + w * LM on gt_examples ground truths.
  """

  name: ClassVar[str] = "live"
  kinds: ClassVar[tuple[str, ...]] = (GENERATION,)
  needs_teacher: ClassVar[bool] = True
  temperature: float = 1.0
  gt_examples: int = 100
  jsd_beta: float = 0.5
  live_fraction: float = 0.5
  live_divergence: str = "reverse_kl"
  live_temperature: float = 1.0
  live_gt_weight: float = 0.0

  def __post_init__(self):
    self._check("temperature", self.temperature > 0, "> 0")
    self._check("gt_examples", self.gt_examples >= 1, ">= 1")
    self._check("jsd_beta", 0 < self.jsd_beta < 1, "in (0, 1)")
    self._check("live_fraction", 0 <= self.live_fraction <= 1, "in [0, 1]")
    self._check(
      "live_divergence", self.live_divergence in DIVERGENCES, f"one of {tuple(DIVERGENCES)}"
    )
    self._check("live_temperature", self.live_temperature >= 0, ">= 0 (0: greedy)")
    self._check("live_gt_weight", 0 <= self.live_gt_weight <= 1, "in [0, 1]")

  @property
  def needs_gt_data(self) -> bool:
    return self.live_gt_weight > 0

  def token_kd(self):
    """The token-level KD loss this live loss scores every row with."""
    divergence = DIVERGENCES[self.live_divergence]
    fields = {f.name for f in dataclasses.fields(divergence)}
    return divergence(**{k: getattr(self, k) for k in fields})

  def objective(self, model_cfg, *, generative=True, teacher_cfg=None, sampling_cfg=None):
    self.check_kind(generative)
    return live_objective(model_cfg, teacher_cfg, self, sampling_cfg)


def live_objective(
  model_cfg: ModelConfig,
  teacher_cfg: ModelConfig | None,
  loss_cfg: Live,
  sampling_cfg: sampling.SamplingConfig | None,
):
  """loss_fn(params, batch, step_frac, rng, teacher_params) for a Live loss."""
  check_teacher(loss_cfg, model_cfg, teacher_cfg)
  if sampling_cfg is None:
    raise ValueError(
      "loss 'live' needs the task's SamplingConfig (max_new_tokens, EOS and pad "
      "ids of the student's samples)"
    )
  kd = loss_cfg.token_kd()
  offpolicy = token_kd_objective(model_cfg, teacher_cfg, kd)
  divergence = kd.divergence()
  sampling_cfg = dataclasses.replace(sampling_cfg, temperature=loss_cfg.live_temperature)
  model, teacher_model = Transformer(model_cfg), Transformer(teacher_cfg)

  def live_loss(params, batch, step_frac, rng, teacher_params):
    rows = batch["tokens"].shape[0]
    period, per = live_layout(rows, loss_cfg.live_fraction)
    if per == 0:  # exactly the token-level KD objective
      loss, aux = offpolicy(params, batch, step_frac, rng, teacher_params)
      return loss, {**aux, "live_response_len": jnp.zeros((), jnp.float32)}
    sample_key, rng = jax.random.split(rng)
    seqs, is_live, lengths = sample_rows(
      params,
      batch,
      sample_key,
      model_cfg=model_cfg,
      sampling_cfg=sampling_cfg,
      fraction=loss_cfg.live_fraction,
    )
    logits = model.apply(
      {"params": params},
      seqs["tokens"],
      seqs["mask"],
      method=Transformer.lm_logits,
      rngs=dropout_rngs(model_cfg, rng),
    )
    target = teacher_logits(teacher_model, teacher_params, seqs["tokens"], seqs["mask"])
    weights = _row_weights(seqs["loss_mask"], is_live, per / period)
    loss = divergence(logits=logits, teacher_logits=target, loss_mask=weights)
    # How often the student's greedy token is the teacher's, at every response position.
    agree = (sampling.greedy_token(logits[:, :-1]) == sampling.greedy_token(target[:, :-1])).astype(
      jnp.float32
    )
    counted = seqs["loss_mask"][:, 1:].astype(jnp.float32)
    return loss, {
      "token_agreement": jnp.sum(agree * counted) / jnp.maximum(jnp.sum(counted), 1.0),
      "live_response_len": jnp.mean(lengths.astype(jnp.float32)),
    }

  gt_weight = loss_cfg.live_gt_weight
  if gt_weight == 0:
    return live_loss
  sft = sft_objective(model_cfg)

  def with_ground_truth(params, batch, step_frac, rng, teacher_params):
    weak_rng, gt_rng = jax.random.split(rng)
    loss, aux = live_loss(params, split_batch(batch, "weak_"), step_frac, weak_rng, teacher_params)
    gt_loss, _ = sft(params, split_batch(batch, "gt_"), step_frac, gt_rng)
    return (1.0 - gt_weight) * loss + gt_weight * gt_loss, aux

  return with_ground_truth
