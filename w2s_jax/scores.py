"""Scores a weak model gives examples, for selecting what the strong model sees.

Every score is oriented so that higher means "keep": confidence, margin,
negative entropy, log-likelihood, and so on. The classifier scores are pure
functions of soft labels; the LM scores run the model over a whole dataset in
padded batches (`sequence_log_likelihood`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax import inference, losses
from w2s_jax.data import Dataset
from w2s_jax.models import ModelConfig, Transformer


@jax.jit
def confidence(*, probs):
  """Max class probability."""
  return jnp.max(probs, axis=-1)


@jax.jit
def margin(*, probs):
  """Top-1 minus top-2 class probability."""
  top2 = jax.lax.top_k(probs, 2)[0]
  return top2[..., 0] - top2[..., 1]


@jax.jit
def neg_entropy(*, probs):
  """-H(probs), with 0 log 0 = 0: high for confident predictions."""
  safe = jnp.where(probs > 0, probs, 1.0)
  return jnp.sum(probs * jnp.log(safe), axis=-1)


@jax.jit
def agreement(*, probs):
  """probs [models, examples, classes] -> the fraction of models whose argmax
  is the ensemble's (mean-probability) argmax, per example."""
  votes = jnp.argmax(probs, axis=-1)
  ensemble = jnp.argmax(jnp.mean(probs, axis=0), axis=-1)
  return jnp.mean(votes == ensemble[None], axis=0)


@jax.jit
def log_likelihood_ratio(*, log_likelihood, reference_log_likelihood):
  """log(ppl_reference / ppl_model) for mean per-token log-likelihoods: high
  where the model finds the text likelier than the reference does."""
  return log_likelihood - reference_log_likelihood


@functools.lru_cache(maxsize=16)
def _likelihood_fn(model_cfg: ModelConfig, mesh):
  model = Transformer(model_cfg)

  def score(params, tokens, mask):
    # Left padding puts pads first; the mask, not the layout, decides what counts.
    logits = model.apply({"params": params}, tokens, mask, method=Transformer.lm_logits)
    target_logp, weight = losses.next_token_log_probs(logits=logits, tokens=tokens, mask=mask)
    return jnp.sum(target_logp * weight, -1) / jnp.maximum(jnp.sum(weight, -1), 1.0)

  return inference.jit_batched(score, mesh)


def sequence_log_likelihood(params, model_cfg: ModelConfig, data: Dataset, *,
                            batch_size: int = 256, mesh) -> np.ndarray:
  """Mean per-token log-likelihood of each example's text under an LM: [N]."""
  return inference.map_batches(_likelihood_fn(model_cfg, mesh), params, data,
                               batch_size=batch_size, mesh=mesh, field="likelihood batch_size")


def cross_entropy(params, model_cfg: ModelConfig, data: Dataset, *, batch_size: int = 256,
                  mesh) -> np.ndarray:
  """Mean per-token cross-entropy (nats): minus the log-likelihood. Lower is likelier."""
  return -sequence_log_likelihood(params, model_cfg, data, batch_size=batch_size, mesh=mesh)
