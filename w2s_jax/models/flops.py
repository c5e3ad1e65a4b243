"""Forward-pass FLOP accounting, the cost axis of cascades (cascade.py, serving.py)."""

import numpy as np


def forward_flops(*, num_params, tokens):
  """2 * params * tokens per query (Kaplan et al. 2020): a multiply-add per
  parameter per token, leaving out attention's context term (small here)."""
  tokens = np.asarray(tokens, np.float64)
  if not num_params > 0 or not np.isfinite(tokens).all() or (tokens < 0).any():
    raise ValueError(
      f"forward_flops num_params={num_params}, tokens={tokens}: expected "
      "num_params > 0 and finite token counts >= 0"
    )
  return 2.0 * num_params * tokens


def model_flops(*, config, tokens, include_embeddings: bool = False):
  """Per-query forward FLOPs of a ModelConfig for its real input tokens
  (classification) or prompt + generated tokens (generation). As in Kaplan et
  al., the embedding parameters that ModelConfig.num_params counts (token,
  learned position and untied unembedding matrices) are left out by default:
  lookups cost nothing, though this also drops the unembedding matmul, which
  matters for small models with large vocabularies; include_embeddings=True
  counts every parameter."""
  d, v = config.width, config.vocab_size
  embedding = (
    v * d
    + (config.max_len * d if config.positions == "learned" else 0)
    + (0 if config.tie_embeddings else v * d)
  )
  return forward_flops(
    num_params=config.num_params - (0 if include_embeddings else embedding), tokens=tokens
  )


def train_flops(*, config, rows, seq_len, lm_head: bool, backward: bool = True):
  """Model FLOPs of a forward (and backward) pass over `rows` sequences of
  seq_len tokens, by PaLM's MFU accounting (Chowdhery et al. 2022, app. B):
  per token 2 N (forward) or 6 N (with backward) for the non-embedding
  params N, plus 2 (or 6) x 2 x depth x seq_len x width for attention's
  scores and values. lm_head: the unembedding matmul runs too (generation,
  or a classifier on LM probabilities); a classifier on the hidden state
  skips it. Rematerialised forward passes are not counted (as in MFU)."""
  d, v = config.width, config.vocab_size
  embedding = (
    v * d
    + (config.max_len * d if config.positions == "learned" else 0)
    + (0 if config.tie_embeddings else v * d)
  )
  per_token = config.num_params - embedding + (v * d if lm_head else 0)
  per_token += 2 * config.depth * seq_len * d  # attention: q.k and p.v
  multiplier = 6.0 if backward else 2.0
  return multiplier * per_token * rows * seq_len
