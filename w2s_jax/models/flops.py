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
  return forward_flops(
    num_params=config.num_params - (0 if include_embeddings else embedding_params(config)),
    tokens=tokens,
  )


def embedding_params(config) -> int:
  """The params ModelConfig.num_params counts that no matmul per token uses
  as a weight: token and learned position embeddings, and an untied
  unembedding matrix."""
  d, v = config.width, config.vocab_size
  return (
    v * d
    + (config.max_len * d if config.positions == "learned" else 0)
    + (0 if config.tie_embeddings else v * d)
  )


def train_flops(*, config, rows, seq_len, lm_head: bool, passes: int = 3):
  """Model FLOPs over `rows` sequences of seq_len tokens, by PaLM's MFU
  accounting (Chowdhery et al. 2022, app. B): a forward pass costs 2 N per
  token for the non-embedding params N, plus 2 x 2 x depth x seq_len x width
  for attention's scores and values. passes: forward-pass multiples run: 3
  for training (forward, activation and weight gradients: 6 N), 2 for a
  frozen base (LoRA: no weight gradients of the base), 1 for inference.
  lm_head: the unembedding matmul runs too (generation, or a classifier on
  LM probabilities); a classifier on the hidden state skips it.
  Rematerialised forward passes are not counted (as in MFU)."""
  if passes not in (1, 2, 3):
    raise ValueError(f"train_flops passes={passes!r}: expected 1, 2 or 3")
  d = config.width
  per_token = config.num_params - embedding_params(config)
  per_token += config.vocab_size * d if lm_head else 0
  per_token += 2 * config.depth * seq_len * d  # attention: q.k and p.v
  return 2.0 * passes * per_token * rows * seq_len
