"""Scores a weak model gives examples, for selecting what the strong model sees.

Every score is oriented so that higher means "keep": confidence, margin,
negative entropy, log-likelihood, and so on (the raw IFD is the exception:
`ifd_selection` orients it). The classifier scores are pure functions of
soft labels; the token scores (`mean_logprob`, `min_prob`) are pure
functions of token log-probs and a mask, which `token_scores` computes over
a whole dataset in padded batches, for a weak model's own responses
(weak_curation.py) and for pretraining documents (curation.py) alike.
"""

import jax
import jax.numpy as jnp


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


# --- Token scores: how likely an LM finds each scored token of a sequence -------


@jax.jit
def ifd(*, conditional_logprob, unconditional_logprob):
  """Instruction-following difficulty (Superfiltering, Li et al. 2024) from mean
  token log-probs of a response with and without its prompt:
  PPL(response | prompt) / PPL(response) = exp(NLL(r | p) - NLL(r)).
  Below 1 the prompt makes the response likelier; above 1, less likely."""
  return jnp.exp(unconditional_logprob - conditional_logprob)


@jax.jit
def ifd_selection(*, ifd):
  """Superfiltering's selection as a keep score: the highest IFD is kept, but an
  IFD > 1 (a response the prompt makes less likely: unrelated to it) is
  discarded, i.e. ranked below every IFD <= 1 (among them, nearest 1 first)."""
  return jnp.where(ifd <= 1, ifd, -ifd)


@jax.jit
def self_consistency(*, answers):
  """answers [..., samples, fields]: ints, -1 where a response gives no answer.
  Per sample: the fraction of the OTHER samples of its prompt that give the
  same answer, averaged over fields -> [..., samples]. A missing answer agrees
  with nothing."""
  n = answers.shape[-2]
  if n < 2:
    raise ValueError(f"self_consistency: {n} sample per prompt; expected >= 2 to compare")
  given = answers >= 0
  same = (answers[..., :, None, :] == answers[..., None, :, :]) & given[..., :, None, :]
  others = jnp.sum(same, axis=-2) - given  # a given answer always equals itself
  return jnp.mean(others / (n - 1), axis=-1)
