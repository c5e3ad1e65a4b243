"""The model table and ModelConfig: what a w2s_jax transformer is, as data.

Decoders (GPT-2, GPT-NeoX/Pythia, Llama and Qwen2 flavoured) and encoders
(BERT: post-LN, bidirectional, pooled) are one config and one code path
(transformer.py). Sizes come from one table, decoded by name (`decode_size`).
"""

import dataclasses
import re

from w2s_jax.infra.fingerprint import IGNORED, WHEN_SET

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
HEAD_INPUTS = ("hidden", "lm_probs", "lm_loglik")
ATTENTIONS = ("explicit", "fused")
POSITIONS = ("learned", "rotary")
DTYPES = ("float32", "bfloat16")
# How an encoder reads one vector per sequence for the classifier: "mean" over
# the real tokens (sentence-transformers), "cls" (BERT's pooler: tanh(dense)
# of the first token). Decoders read the last real token ("last").
POOLINGS = ("last", "mean", "cls")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
# Fields added after pretrained caches existed: shown in repr, hence in cache
# keys, only when set away from their default, so older entries stay valid.


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  width: int
  depth: int
  heads: int
  max_len: int = 64
  mlp_ratio: int = 4
  mlp_dim: int | None = None  # None: mlp_ratio * width
  # The head's width: classes; 1: a scalar score per sequence (a pointwise
  # reward model: an example holds one sequence per choice, and its class
  # logits are the choices' scores, Transformer.class_logits).
  num_classes: int = 2
  # "lm_probs": the classifier is linear in the LM's next-token distribution at
  # the last real token, so fine-tuning reads what pretraining put in the LM
  # head (a linear head on the hidden state read it poorly: ceiling ~0.85 on the
  # testbed). "hidden": linear in the final hidden state, as in
  # GPT2ForSequenceClassification. "lm_loglik": linear in the LM's own
  # log-likelihood of the whole sequence (one feature): a reward model that
  # reads what the LM knows of a response (responses to one prompt share its
  # likelihood, so their rewards differ by the responses' log-likelihoods, as
  # DPO's implicit reward does).
  head_input: str = "lm_probs"
  positions: str = "learned"  # "rotary": GPT-NeoX rotary embeddings
  rotary_frac: float = 0.25  # share of each head's dims that rotate
  rotary_base: float = 10000.0
  parallel_residual: bool = False  # x + attn(ln1 x) + mlp(ln2 x), as GPT-NeoX
  tie_embeddings: bool = True
  ln_eps: float = 1e-6  # GPT-2 and GPT-NeoX use 1e-5
  gelu_approximate: bool = True  # tanh GELU (GPT-2's gelu_new); False: exact (NeoX)
  dropout: float = 0.0  # embedding, attention and residual dropout
  dtype: str = "float32"  # compute dtype; params stay float32
  remat: bool = False  # recompute each block in the backward pass
  # "fused": jax.nn.dot_product_attention (cuDNN flash attention on GPU where
  # it applies); "explicit": einsums and a softmax, which attention dropout
  # needs (a dropout-training call takes it either way). How attention is
  # computed, not what: never part of a cache key.
  attention: str = dataclasses.field(default="explicit", metadata=IGNORED)
  # The encoder family (BERT): causal=False attends both ways and has no LM
  # head (no generation, no likelihood scores); post_ln normalizes after each
  # residual add and the embeddings (no final norm); type_vocab_size > 0 adds
  # token-type embeddings (row 0: single-sentence input); pooling as POOLINGS.
  causal: bool = dataclasses.field(default=True, metadata=WHEN_SET)
  post_ln: bool = dataclasses.field(default=False, metadata=WHEN_SET)
  type_vocab_size: int = dataclasses.field(default=0, metadata=WHEN_SET)
  pooling: str = dataclasses.field(default="last", metadata=WHEN_SET)
  # The Llama/Qwen2 family: kv_heads < heads shares each key/value head among
  # heads // kv_heads query heads (grouped-query attention; None: heads);
  # RMSNorm; a SwiGLU MLP (down(silu(gate x) * up x), hidden_mlp wide); and
  # which projections carry biases (Llama: none; Qwen2: q, k, v only).
  kv_heads: int | None = dataclasses.field(default=None, metadata=WHEN_SET)
  norm: str = dataclasses.field(default="layernorm", metadata=WHEN_SET)
  mlp: str = dataclasses.field(default="gelu", metadata=WHEN_SET)
  qkv_bias: bool = dataclasses.field(default=True, metadata=WHEN_SET)
  attn_out_bias: bool = dataclasses.field(default=True, metadata=WHEN_SET)
  mlp_bias: bool = dataclasses.field(default=True, metadata=WHEN_SET)
  # Llama-3.1's long-context rotary frequencies: ("llama3", factor,
  # low_freq_factor, high_freq_factor, original context length); None: unscaled.
  rope_scaling: tuple | None = dataclasses.field(default=None, metadata=WHEN_SET)

  def __post_init__(self):
    for name in ("vocab_size", "width", "depth", "heads", "max_len", "mlp_ratio"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig.{name}={value!r}: expected a positive int")
    if self.mlp_dim is not None and (not isinstance(self.mlp_dim, int) or self.mlp_dim < 1):
      raise ValueError(f"ModelConfig.mlp_dim={self.mlp_dim!r}: expected a positive int or None")
    if self.width % self.heads:
      raise ValueError(f"ModelConfig.width={self.width} must be divisible by heads={self.heads}")
    if not (isinstance(self.num_classes, int) and self.num_classes >= 1):
      raise ValueError(
        f"ModelConfig.num_classes={self.num_classes!r}: expected an int >= 1 (1: a scalar score head)"
      )
    for name, allowed in (
      ("head_input", HEAD_INPUTS),
      ("positions", POSITIONS),
      ("dtype", DTYPES),
      ("attention", ATTENTIONS),
    ):
      if getattr(self, name) not in allowed:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: expected one of {allowed}")
    if self.positions == "rotary" and int(self.head_dim * self.rotary_frac) % 2:
      raise ValueError(
        f"ModelConfig.rotary_frac={self.rotary_frac}: rotary dims "
        f"{self.head_dim} * {self.rotary_frac} must be an even integer"
      )
    if not 0 <= self.dropout < 1:
      raise ValueError(f"ModelConfig.dropout={self.dropout}: expected in [0, 1)")
    if self.pooling not in POOLINGS:
      raise ValueError(f"ModelConfig.pooling={self.pooling!r}: expected one of {POOLINGS}")
    if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
      raise ValueError(
        f"ModelConfig.type_vocab_size={self.type_vocab_size!r}: expected an int >= 0"
      )
    if self.causal and self.pooling != "last":
      raise ValueError(
        f"ModelConfig.pooling={self.pooling!r} with causal=True: expected 'last' "
        "(a decoder's last real token is the only one that has seen the whole text)"
      )
    if not self.causal and self.pooling == "last":
      raise ValueError(
        "ModelConfig.pooling='last' with causal=False: expected 'mean' or 'cls' "
        "(an encoder pools its tokens)"
      )
    if self.rope_scaling is not None and (
      len(self.rope_scaling) != 5 or self.rope_scaling[0] != "llama3"
    ):
      raise ValueError(
        f"ModelConfig.rope_scaling={self.rope_scaling!r}: expected None or "
        "('llama3', factor, low_freq_factor, high_freq_factor, original length)"
      )
    for name, allowed in (("norm", NORMS), ("mlp", MLPS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: expected one of {allowed}")
    if self.kv_heads is not None and (
      not isinstance(self.kv_heads, int) or self.kv_heads < 1 or self.heads % self.kv_heads
    ):
      raise ValueError(
        f"ModelConfig.kv_heads={self.kv_heads!r}: expected a positive int that "
        f"divides heads={self.heads} (or None)"
      )
    if not self.causal and self.head_input != "hidden":
      raise ValueError(
        f"ModelConfig.head_input={self.head_input!r} with causal=False: expected "
        "'hidden' (an encoder has no LM head)"
      )

  @property
  def head_dim(self) -> int:
    return self.width // self.heads

  @property
  def num_kv_heads(self) -> int:
    return self.kv_heads or self.heads

  @property
  def qkv_features(self) -> int:
    """The fused projection's width: queries, then keys, then values."""
    return (self.heads + 2 * self.num_kv_heads) * self.head_dim

  @property
  def hidden_mlp(self) -> int:
    return self.mlp_dim or self.mlp_ratio * self.width

  @property
  def num_params(self) -> int:
    d, v, m = self.width, self.vocab_size, self.hidden_mlp
    norm = 2 * d if self.norm == "layernorm" else d
    qkv = d * self.qkv_features + self.qkv_features * self.qkv_bias
    attn_out = d * d + d * self.attn_out_bias
    if self.mlp == "swiglu":
      mlp = d * 2 * m + m * d + (2 * m + d) * self.mlp_bias
    else:
      mlp = d * m + m * d + (m + d) * self.mlp_bias
    block = 2 * norm + qkv + attn_out + mlp
    feats = {"lm_probs": v, "lm_loglik": 1}.get(self.head_input, d)
    positions = self.max_len * d if self.positions == "learned" else 0
    unembed = 0 if self.tie_embeddings or not self.causal else v * d
    pooler = d * d + d if self.pooling == "cls" else 0
    return (
      v * d
      + positions
      + self.type_vocab_size * d
      + self.depth * block
      + norm
      + unembed
      + pooler
      + feats * self.num_classes
      + self.num_classes
    )


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
      f"model size {name!r}: expected one of {sorted(SIZES)} or 'WIDTHxDEPTH' like '64x2'"
    )
  return ModelConfig(width=width, depth=depth, heads=heads, **overrides)
