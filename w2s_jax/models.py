"""Decoder-only transformer family with an LM head and a classification head.

Sizes come from one table, decoded by name (`decode_size`). Params are plain
pytrees; `init_params` and the `Transformer.apply` methods are pure.
"""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

# width, depth, heads. Chosen so that, with a small vocabulary, the table spans
# about 1e4 to 1e9 parameters: the large rows exist for scaling studies on
# accelerators and are not trained on a laptop.
SIZES = {
    "pico": (24, 1, 2),
    "nano": (32, 1, 2),
    "micro": (48, 1, 4),
    "mini": (64, 2, 4),
    "tiny": (128, 4, 4),
    "small": (256, 4, 4),
    "medium": (384, 6, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "xl": (1536, 24, 16),
    "xxl": (2048, 20, 16),
}
HEAD_INPUTS = ("hidden", "lm_probs")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  width: int
  depth: int
  heads: int
  max_len: int = 64
  mlp_ratio: int = 4
  num_classes: int = 2
  # "lm_probs": the classifier is linear in the LM's next-token distribution at
  # the last real token, so fine-tuning reads what pretraining put in the LM
  # head (a linear head on the hidden state read it poorly: ceiling ~0.85 on the
  # testbed). "hidden": linear in the final hidden state, as in
  # GPT2ForSequenceClassification.
  head_input: str = "lm_probs"
  dtype: str = "float32"  # compute dtype; params stay float32

  def __post_init__(self):
    for name in ("vocab_size", "width", "depth", "heads", "max_len", "mlp_ratio"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig.{name}={value!r}: expected a positive int")
    if self.width % self.heads:
      raise ValueError(
          f"ModelConfig.width={self.width} must be divisible by heads={self.heads}")
    if self.num_classes < 2:
      raise ValueError(f"ModelConfig.num_classes={self.num_classes}: expected >= 2")
    if self.head_input not in HEAD_INPUTS:
      raise ValueError(
          f"ModelConfig.head_input={self.head_input!r}: expected one of {HEAD_INPUTS}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(
          f"ModelConfig.dtype={self.dtype!r}: expected 'float32' or 'bfloat16'")

  @property
  def num_params(self) -> int:
    d, v, m = self.width, self.vocab_size, self.mlp_ratio * self.width
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    feats = v if self.head_input == "lm_probs" else d
    return v * d + self.max_len * d + self.depth * block + 2 * d + feats * self.num_classes + self.num_classes


def decode_size(name: str, **overrides) -> ModelConfig:
  """A table name ("mini") or an explicit "WIDTHxDEPTH" ("64x2") -> ModelConfig."""
  if name in SIZES:
    width, depth, heads = SIZES[name]
  elif match := re.fullmatch(r"(\d+)x(\d+)", name):
    width, depth = int(match[1]), int(match[2])
    # Heads of about 16 dims that divide the width exactly.
    heads = max(h for h in range(1, max(1, width // 16) + 1) if width % h == 0)
  else:
    raise ValueError(
        f"model size {name!r}: expected one of {sorted(SIZES)} or 'WIDTHxDEPTH' like '64x2'")
  return ModelConfig(width=width, depth=depth, heads=heads, **overrides)


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Position ids that count real tokens only, so left and right padding agree."""
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


def last_real_index(mask: jax.Array) -> jax.Array:
  """Index of the last position whose mask is 1, for any padding side."""
  length = mask.shape[-1]
  return length - 1 - jnp.argmax(mask[..., ::-1] > 0, axis=-1)


class Block(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, attn_bias):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    b, t, d = x.shape
    head_dim = d // cfg.heads
    h = nn.LayerNorm(dtype=dtype, name="ln_attn")(x)
    qkv = nn.Dense(3 * d, dtype=dtype, name="qkv")(h)
    # (batch, heads, seq, head_dim) layout: measured faster on XLA CPU.
    qkv = qkv.reshape(b, t, 3, cfg.heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
    scores = scores / jnp.sqrt(head_dim).astype(jnp.float32) + attn_bias
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    attn = jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3).reshape(b, t, d)
    x = x + nn.Dense(d, dtype=dtype, name="attn_out")(attn)
    h = nn.LayerNorm(dtype=dtype, name="ln_mlp")(x)
    h = nn.Dense(cfg.mlp_ratio * d, dtype=dtype, name="mlp_in")(h)
    h = nn.Dense(d, dtype=dtype, name="mlp_out")(nn.gelu(h))
    return x + h


class Transformer(nn.Module):
  """GPT-2-style pre-LN decoder with tied embeddings."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.normal(0.02)
    self.embed = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=init, name="embed")
    self.pos_embed = self.param("pos_embed", init, (cfg.max_len, cfg.width))
    self.blocks = [Block(cfg, name=f"block_{i}") for i in range(cfg.depth)]
    self.ln_final = nn.LayerNorm(dtype=jnp.dtype(cfg.dtype), name="ln_final")
    self.cls_head = nn.Dense(cfg.num_classes, kernel_init=nn.initializers.zeros,
                             name="cls_head")

  def hidden(self, tokens, mask):
    cfg = self.cfg
    if tokens.shape[-1] > cfg.max_len:
      raise ValueError(
          f"sequence length {tokens.shape[-1]} exceeds ModelConfig.max_len={cfg.max_len}")
    mask = mask.astype(jnp.int32)
    positions = positions_from_mask(mask)
    x = self.embed(tokens) + self.pos_embed[positions]
    x = x.astype(jnp.dtype(cfg.dtype))
    t = tokens.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    allowed = causal[None, None] & (mask[:, None, None, :] > 0)
    # Finite, so fully masked (padding) query rows stay NaN-free.
    attn_bias = jnp.where(allowed, 0.0, -1e9).astype(jnp.float32)
    for block in self.blocks:
      x = block(x, attn_bias)
    return self.ln_final(x)

  def _unembed(self, h):
    return self.embed.attend(h.astype(jnp.float32))

  def lm_logits(self, tokens, mask):
    """Next-token logits at every position: [batch, seq, vocab] float32."""
    return self._unembed(self.hidden(tokens, mask))

  def _last_hidden(self, tokens, mask):
    h = self.hidden(tokens, mask)
    idx = last_real_index(mask)
    return jnp.take_along_axis(h, idx[:, None, None], axis=1)[:, 0]

  def last_token_lm_logits(self, tokens, mask):
    """Next-token logits at the last real token only: [batch, vocab]."""
    return self._unembed(self._last_hidden(tokens, mask))

  def class_logits(self, tokens, mask):
    """Class logits read at the last real token (found from the mask)."""
    h_last = self._last_hidden(tokens, mask)
    if self.cfg.head_input == "lm_probs":
      features = jax.nn.softmax(self._unembed(h_last), axis=-1)
    else:
      features = h_last.astype(jnp.float32)
    return self.cls_head(features)

  def __call__(self, tokens, mask):
    return self.lm_logits(tokens, mask), self.class_logits(tokens, mask)


def init_params(cfg: ModelConfig, rng: jax.Array, seq_len: int | None = None):
  """Pure init: a params pytree for `Transformer(cfg)`."""
  seq_len = seq_len or cfg.max_len
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return Transformer(cfg).init(rng, tokens, jnp.ones_like(tokens))["params"]


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
