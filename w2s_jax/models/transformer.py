"""The transformer family: decoders with an LM head, encoders without, both
with a classification head.

One code path covers the testbed models and every pretrained family w2s_jax
imports: GPT-2 (learned positions, sequential residual, tied embeddings),
GPT-NeoX/Pythia (rotary positions, parallel residual, untied output),
Llama and Qwen2 (RMSNorm, SwiGLU, grouped-query attention, full rotary with
Llama-3.1's frequency scaling, Qwen2's q/k/v biases) and BERT encoders
(bidirectional, post-LN, token types, pooled). The config is data
(model_config.py). Params are plain pytrees; `init_params` and the
`Transformer.apply` methods are pure.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from w2s_jax.infra.sharding import batch_constrained
from w2s_jax.models.model_config import ModelConfig
from w2s_jax.models.positions import last_real_index, positions_from_mask, rotary

# The classifier head's name among the params: what a linear probe trains,
# and what LoRA trains beside its adapters.
HEAD = "cls_head"


def make_norm(cfg, name):
  """LayerNorm, or RMSNorm (Llama, Qwen2), of the config's epsilon."""
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=cfg.ln_eps, dtype=jnp.dtype(cfg.dtype), name=name)
  return nn.LayerNorm(epsilon=cfg.ln_eps, dtype=jnp.dtype(cfg.dtype), name=name)


def _dropout(module, rate):
  """Active only when the caller passes a "dropout" rng (training)."""
  return nn.Dropout(rate, deterministic=not module.has_rng("dropout"))


class QKV(nn.Module):
  """The fused query/key/value projection: nn.Dense(q + 2 * kv features), same
  params ([q | k | v] blocks; kv_features < q_features under grouped-query
  attention; no bias where the family has none).

  The key bias adds q.b to every score of a query, a shift softmax ignores,
  so its exact gradient is zero. It is held constant: in floating point that
  gradient is rounding noise, which Adam scales up to steps near the
  learning rate, making a run depend on the reduction order (device layout,
  process count). Held constant, training is the same function in exact
  arithmetic and reproducible across layouts.
  """

  q_features: int
  kv_features: int
  dtype: jnp.dtype
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    features = self.q_features + 2 * self.kv_features
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], features))
    if not self.use_bias:
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
      return x @ kernel
    bias = self.param("bias", nn.initializers.zeros_init(), (features,))
    q_bias, k_bias, v_bias = jnp.split(bias, [self.q_features, self.q_features + self.kv_features])
    bias = jnp.concatenate([q_bias, jax.lax.stop_gradient(k_bias), v_bias])
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return x @ kernel + bias


class Block(nn.Module):
  """Pre-LN (or, for BERT, post-LN) transformer block over a flat [batch * seq, width] residual stream.

  The stream is kept 2-D so every projection is a plain matrix product: with
  3-D activations, XLA:CPU copied a transpose of each activation gradient
  before every weight-gradient product (measured 1.29x slower fwd+bwd).
  """

  cfg: ModelConfig

  def _attention(self, h, attn_bias, positions, batch, cache=None, cache_index=None):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    n, d = h.shape
    t = n // batch
    kv_heads, hd = cfg.num_kv_heads, cfg.head_dim
    qkv = batch_constrained(QKV(cfg.heads * hd, kv_heads * hd, dtype, cfg.qkv_bias, name="qkv")(h))
    if kv_heads == cfg.heads:
      # (batch, heads, seq, head_dim): measured faster on XLA:CPU than (b, s, h, d).
      qkv = qkv.reshape(batch, t, 3, cfg.heads, hd).transpose(2, 0, 3, 1, 4)
      q, k, v = qkv[0], qkv[1], qkv[2]
    else:
      heads_of = lambda x, n_heads: x.reshape(batch, t, n_heads, hd).transpose(0, 2, 1, 3)
      q_end, k_end = cfg.heads * hd, (cfg.heads + kv_heads) * hd
      q = heads_of(qkv[:, :q_end], cfg.heads)
      k, v = heads_of(qkv[:, q_end:k_end], kv_heads), heads_of(qkv[:, k_end:], kv_heads)
    if cfg.positions == "rotary":
      q = rotary(q, positions, frac=cfg.rotary_frac, base=cfg.rotary_base, scaling=cfg.rope_scaling)
      k = rotary(k, positions, frac=cfg.rotary_frac, base=cfg.rotary_base, scaling=cfg.rope_scaling)
    q, k, v = batch_constrained(q), batch_constrained(k), batch_constrained(v)
    if cache is not None:
      # Decoding: this call's keys and values go into their cache slots, and
      # the queries attend to every slot (attn_bias masks the empty ones).
      at = (0, 0, cache_index, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), at)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), at)
      cache = {"k": k, "v": v}
    dropping = cfg.dropout > 0 and self.has_rng("dropout")
    if cfg.attention == "fused" and not dropping:
      # [batch, seq, heads, head_dim] in and out (fewer key/value heads under
      # grouped-query attention); the same additive bias, so padding and fully
      # masked rows behave as on the explicit path.
      q, k, v = (x.transpose(0, 2, 1, 3).astype(dtype) for x in (q, k, v))
      attn = jax.nn.dot_product_attention(
        q, k, v, bias=attn_bias.astype(dtype), scale=1.0 / cfg.head_dim**0.5
      ).reshape(n, d)
    else:
      if kv_heads == cfg.heads:
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
      else:
        # Grouped-query attention without copying keys and values: query head
        # i = kv * group + r reads key/value head kv (transformers' repeat_kv).
        # A repeat measured worse: XLA's partitioner replicated the copies.
        q = q.reshape(q.shape[0], kv_heads, cfg.heads // kv_heads, t, hd)
        scores = jnp.einsum("bkgqd,bksd->bkgqs", q, k).astype(jnp.float32)
        scores = scores.reshape(q.shape[0], cfg.heads, t, k.shape[2])
      scores = scores / jnp.sqrt(cfg.head_dim).astype(jnp.float32) + attn_bias
      probs = _dropout(self, cfg.dropout)(jax.nn.softmax(scores, axis=-1)).astype(dtype)
      if kv_heads == cfg.heads:
        attn = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
      else:
        grouped = probs.reshape(q.shape[0], kv_heads, cfg.heads // kv_heads, t, k.shape[2])
        attn = jnp.einsum("bkgqs,bksd->bkgqd", grouped, v).reshape(q.shape[0], cfg.heads, t, hd)
      attn = attn.transpose(0, 2, 1, 3).reshape(n, d)
    attn = batch_constrained(attn)
    out = nn.Dense(d, dtype=dtype, use_bias=cfg.attn_out_bias, name="attn_out")(attn)
    return _dropout(self, cfg.dropout)(out), cache

  def _mlp(self, h):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    if cfg.mlp == "swiglu":  # one [gate | up] projection
      gate, up = jnp.split(
        nn.Dense(2 * cfg.hidden_mlp, dtype=dtype, use_bias=cfg.mlp_bias, name="mlp_in")(h),
        2,
        axis=-1,
      )
      h = nn.silu(gate) * up
    else:
      h = nn.Dense(cfg.hidden_mlp, dtype=dtype, use_bias=cfg.mlp_bias, name="mlp_in")(h)
      h = nn.gelu(h, approximate=cfg.gelu_approximate)
    out = nn.Dense(cfg.width, dtype=dtype, use_bias=cfg.mlp_bias, name="mlp_out")(
      batch_constrained(h)
    )
    return _dropout(self, cfg.dropout)(out)

  @nn.compact
  def __call__(self, x, attn_bias, positions, batch: int, cache=None, cache_index=None):
    """x -> x, or (x, updated cache) when decoding with a KV cache."""
    cfg = self.cfg
    norm = lambda name: make_norm(cfg, name)
    if cfg.post_ln:
      # BERT: normalize after each residual add (same param names as pre-LN).
      attn, _ = self._attention(x, attn_bias, positions, batch)
      x = norm("ln_attn")(x + attn)
      return norm("ln_mlp")(x + self._mlp(x))
    attn, new_cache = self._attention(
      norm("ln_attn")(x), attn_bias, positions, batch, cache, cache_index
    )
    if cfg.parallel_residual:
      x = x + attn + self._mlp(norm("ln_mlp")(x))
    else:
      x = x + attn
      x = x + self._mlp(norm("ln_mlp")(x))
    return x if cache is None else (x, new_cache)


class Transformer(nn.Module):
  """Pre-LN decoder (GPT-2 or GPT-NeoX flavoured) or post-LN encoder (BERT),
  by the config."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.normal(0.02)
    self.embed = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=init, name="embed")
    if cfg.positions == "learned":
      self.pos_embed = self.param("pos_embed", init, (cfg.max_len, cfg.width))
    # batch is a static argument (a Python int), so remat must not trace it.
    block = nn.remat(Block, static_argnums=(4,)) if cfg.remat else Block
    if cfg.type_vocab_size:
      self.type_embed = self.param("type_embed", init, (cfg.type_vocab_size, cfg.width))
    self.blocks = [block(cfg, name=f"block_{i}") for i in range(cfg.depth)]
    norm = lambda name: make_norm(cfg, name)
    if cfg.post_ln:
      self.ln_embed = norm("ln_embed")
    else:
      self.ln_final = norm("ln_final")
    if cfg.pooling == "cls":
      self.pooler = nn.Dense(cfg.width, kernel_init=init, name="pooler")
    if cfg.causal and not cfg.tie_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, kernel_init=init, name="lm_head")
    self.cls_head = nn.Dense(cfg.num_classes, kernel_init=nn.initializers.zeros, name=HEAD)
    self.embed_dropout = _dropout(self, cfg.dropout)

  def _embed(self, tokens, positions):
    """Token (+ learned position) embeddings as a flat [batch * seq, width] stream."""
    cfg = self.cfg
    b, t = tokens.shape
    x = self.embed(tokens)
    if cfg.positions == "learned":
      x = x + self.pos_embed[positions]
    if cfg.type_vocab_size:
      x = x + self.type_embed[0]  # single-sentence input: token type 0 throughout
    if cfg.post_ln:
      x = self.ln_embed(x)
    return self.embed_dropout(x).astype(jnp.dtype(cfg.dtype)).reshape(b * t, cfg.width)

  def hidden(self, tokens, mask):
    """Final hidden states [batch, seq, width]."""
    cfg = self.cfg
    if tokens.shape[-1] > cfg.max_len:
      raise ValueError(
        f"sequence length {tokens.shape[-1]} exceeds ModelConfig.max_len={cfg.max_len}"
      )
    b, t = tokens.shape
    mask = mask.astype(jnp.int32)
    positions = positions_from_mask(mask)
    x = self._embed(tokens, positions)
    allowed = mask[:, None, None, :] > 0
    if cfg.causal:
      allowed = allowed & jnp.tril(jnp.ones((t, t), dtype=bool))[None, None]
    else:
      allowed = jnp.broadcast_to(allowed, (b, 1, t, t))
    # Finite, so fully masked (padding) query rows stay NaN-free.
    attn_bias = jnp.where(allowed, 0.0, -1e9).astype(jnp.float32)
    for block in self.blocks:
      x = block(x, attn_bias, positions, b)
    if not cfg.post_ln:
      x = self.ln_final(x)
    return x.reshape(b, t, cfg.width)

  def _require_lm_head(self):
    if not self.cfg.causal:
      raise ValueError(
        "this model is an encoder (ModelConfig.causal=False): it has no LM head, "
        "so it is not used for generation, likelihood scores or LM logits"
      )

  def decode(self, tokens, positions, key_mask, cache, cache_index):
    """One decoding call with an explicit KV cache (see `init_cache`).

    tokens, positions: [batch, t], the tokens written to cache slots
    cache_index .. cache_index + t - 1 (t = the prompt's width for a batched
    prefill, 1 for each later step). key_mask: [batch, cache length], 1 where
    a slot holds a real token once this call has written. Returns the
    next-token logits after the last of the t tokens, [batch, vocab] float32,
    and the updated cache.
    """
    cfg = self.cfg
    self._require_lm_head()
    b, t = tokens.shape
    length = cache[0]["k"].shape[2]
    if length > cfg.max_len:
      raise ValueError(f"KV cache length {length} exceeds ModelConfig.max_len={cfg.max_len}")
    x = self._embed(tokens, positions)
    slot = jnp.arange(length)
    causal = slot[None, :] <= cache_index + jnp.arange(t)[:, None]  # [t, length]
    allowed = causal[None, None] & (key_mask[:, None, None, :] > 0)
    attn_bias = jnp.where(allowed, 0.0, -1e9).astype(jnp.float32)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache):
      x, layer_cache = block(x, attn_bias, positions, b, layer_cache, cache_index)
      new_cache.append(layer_cache)
    last = self.ln_final(x.reshape(b, t, cfg.width)[:, -1])
    return self._unembed(last), tuple(new_cache)

  def _unembed(self, h):
    self._require_lm_head()
    if self.cfg.tie_embeddings:
      return self.embed.attend(h.astype(jnp.float32))
    return self.lm_head(h.astype(jnp.float32))

  def lm_logits(self, tokens, mask):
    """Next-token logits at every position: [batch, seq, vocab] float32."""
    return self._unembed(self.hidden(tokens, mask))

  def lm_logits_at(self, tokens, mask, index):
    """Next-token logits at one position, the same for every row: [batch, vocab].
    Unembeds that position only (the vocabulary projection dominates at 50K)."""
    h = jax.lax.dynamic_index_in_dim(self.hidden(tokens, mask), index, axis=1, keepdims=False)
    return self._unembed(h)

  def _last_hidden(self, tokens, mask):
    h = self.hidden(tokens, mask)
    idx = last_real_index(mask)
    return jnp.take_along_axis(h, idx[:, None, None], axis=1)[:, 0]

  def last_token_lm_logits(self, tokens, mask):
    """Next-token logits at the last real token only: [batch, vocab]."""
    return self._unembed(self._last_hidden(tokens, mask))

  def pooled(self, tokens, mask):
    """One float32 vector per sequence, [batch, width]: the last real token's
    hidden state (decoders), the mean over real tokens, or BERT's pooler on
    the first real token ("cls"), any padding side."""
    cfg = self.cfg
    if cfg.pooling == "last":
      return self._last_hidden(tokens, mask).astype(jnp.float32)
    h = self.hidden(tokens, mask).astype(jnp.float32)
    weights = mask.astype(jnp.float32)
    if cfg.pooling == "mean":
      total = jnp.einsum("bt,btd->bd", weights, h)
      return total / jnp.maximum(weights.sum(-1, keepdims=True), 1.0)
    first = jnp.argmax(weights > 0, axis=-1)
    h_first = jnp.take_along_axis(h, first[:, None, None], axis=1)[:, 0]
    return jnp.tanh(self.pooler(h_first))

  def _sequence_features(self, tokens, mask):
    if self.cfg.head_input == "lm_probs":
      return jax.nn.softmax(self._unembed(self._last_hidden(tokens, mask)), axis=-1)
    if self.cfg.head_input == "lm_loglik":  # [batch, 1]: the sum of next-token log-probs
      logp = jax.nn.log_softmax(self.lm_logits(tokens, mask)[:, :-1].astype(jnp.float32), -1)
      target = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
      real = (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32)
      return (target * real).sum(-1, keepdims=True)
    return self.pooled(tokens, mask)

  def head_features(self, tokens, mask):
    """What the classification head reads: the pooled state, or with
    head_input "lm_probs" the next-token distribution at the last real token,
    or with "lm_loglik" the sequence's log-likelihood: [batch, features]. Tokens [batch, choices, seq] (one sequence per choice,
    a pointwise reward model's pair): each choice's features side by side,
    [batch, choices * features]."""
    if tokens.ndim == 3:
      b, c, t = tokens.shape
      flat = self._sequence_features(tokens.reshape(b * c, t), mask.reshape(b * c, t))
      return flat.reshape(b, c * flat.shape[-1])
    return self._sequence_features(tokens, mask)

  def class_logits(self, tokens, mask):
    """Class logits from the pooled state (decoders: at the last real token).

    Tokens [batch, choices, seq] with a scalar head (num_classes=1): each
    choice's score, [batch, choices], so that softmax over them is the
    Bradley-Terry preference sigma(r_A - r_B) for two choices."""
    if tokens.ndim == 3:
      if self.cfg.num_classes != 1:
        raise ValueError(
          f"tokens {tokens.shape}: one sequence per choice needs a scalar score head "
          f"(ModelConfig.num_classes=1), not {self.cfg.num_classes}"
        )
      b, c, t = tokens.shape
      flat = self._sequence_features(tokens.reshape(b * c, t), mask.reshape(b * c, t))
      return self.cls_head(flat).reshape(b, c)
    return self.cls_head(self._sequence_features(tokens, mask))

  def __call__(self, tokens, mask):
    if not self.cfg.causal:  # no LM head: init touches the encoder's params here
      return self.class_logits(tokens, mask)
    return self.lm_logits(tokens, mask), self.class_logits(tokens, mask)


def init_params(cfg: ModelConfig, rng: jax.Array, seq_len: int | None = None):
  """Pure init: a params pytree for `Transformer(cfg)`."""
  seq_len = seq_len or cfg.max_len
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return Transformer(cfg).init(rng, tokens, jnp.ones_like(tokens))["params"]


def init_cache(cfg: ModelConfig, batch: int, length: int):
  """An empty KV cache for `Transformer.decode`: per block, keys and values
  [batch, kv heads, length, head_dim] in the compute dtype."""
  shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
  zeros = lambda: jnp.zeros(shape, jnp.dtype(cfg.dtype))
  return tuple({"k": zeros(), "v": zeros()} for _ in range(cfg.depth))


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
