"""How likely a language model finds each example's scored tokens."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.data.dataset import Dataset
from w2s_jax.models import inference
from w2s_jax.models.model_config import ModelConfig
from w2s_jax.models.transformer import Transformer


@jax.jit
def mean_logprob(*, logprobs, mask):
  """Mean token log-probability where mask is 1, over the last axis (0 for an
  empty mask): the per-token log-likelihood."""
  weight = mask.astype(jnp.float32)
  # where, not a product: a padding position's log-prob may be -inf.
  return jnp.sum(jnp.where(mask > 0, logprobs, 0.0), -1) / jnp.maximum(jnp.sum(weight, -1), 1.0)


@jax.jit
def min_prob(*, logprobs, mask):
  """The lowest token probability where mask is 1, over the last axis (1 for an
  empty mask): high only when every token is likely."""
  return jnp.exp(jnp.min(jnp.where(mask > 0, logprobs, 0.0), -1))


@functools.lru_cache(maxsize=16)
def _token_scores_fn(model_cfg: ModelConfig, mesh):
  model = Transformer(model_cfg)

  def score(params, tokens, mask, loss_mask):
    # Left padding puts pads first; the mask, not the layout, decides what counts.
    logits = model.apply({"params": params}, tokens, mask, method=Transformer.lm_logits)
    target_logp, weight = next_token_log_probs(logits=logits, tokens=tokens, mask=mask)
    scored = weight * loss_mask[:, 1:]
    return (
      mean_logprob(logprobs=target_logp, mask=scored),
      min_prob(logprobs=target_logp, mask=scored),
    )

  return inference.jit_batched(score, mesh, num_inputs=3)


def token_scores(
  params, model_cfg: ModelConfig, data: Dataset, *, batch_size: int = 256, mesh
) -> dict:
  """{"mean_logprob", "min_prob"}: [N] each, over the tokens each example
  scores: its loss_mask (a response after its prompt), or without one every
  real token after the first (a whole document). A token counts when it and
  the position predicting it are real."""
  if "loss_mask" not in data:
    data = data.with_fields(loss_mask=data["mask"])
  mean, low = inference.map_batches(
    _token_scores_fn(model_cfg, mesh),
    params,
    data,
    batch_size=batch_size,
    mesh=mesh,
    field="likelihood batch_size",
    inputs=("tokens", "mask", "loss_mask"),
  )
  return {"mean_logprob": mean, "min_prob": low}


def sequence_log_likelihood(
  params, model_cfg: ModelConfig, data: Dataset, *, batch_size: int = 256, mesh
) -> np.ndarray:
  """Mean per-token log-likelihood of each example's text under an LM: [N]."""
  return token_scores(
    params,
    model_cfg,
    Dataset(tokens=data["tokens"], mask=data["mask"]),
    batch_size=batch_size,
    mesh=mesh,
  )["mean_logprob"]


def cross_entropy(
  params, model_cfg: ModelConfig, data: Dataset, *, batch_size: int = 256, mesh
) -> np.ndarray:
  """Mean per-token cross-entropy (nats): minus the log-likelihood. Lower is likelier."""
  return -sequence_log_likelihood(params, model_cfg, data, batch_size=batch_size, mesh=mesh)


def next_token_log_probs(*, logits, tokens, mask):
  """(log p of each real next token, its 0/1 weight), both [batch, seq - 1].

  logits[:, t] predicts tokens[:, t + 1]; a target counts only when both it
  and the position predicting it are real.
  """
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  target_logp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  weight = (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32)
  return target_logp, weight
