"""Batched autoregressive sampling with an explicit KV cache, for `transformer.Transformer`.

`sample` is pure: (params, prompts, prompt mask, example ids, key) -> tokens,
response mask and each generated token's log-probability. The prompts are
LEFT-padded, so every row's last prompt token sits in the same column: one
batched prefill writes the whole prompt into the cache, then one token per
step runs in `lax.while_loop` until every row has emitted EOS or
`max_new_tokens` tokens. Positions come from the mask (as in training), so a
row's output does not depend on its padding or its batch-mates; sampled
tokens draw on a key folded with the row's example id, not its batch slot,
so that holds for sampling too.

The loop carries a `SamplingState` (step, tokens, log-probs, done flags,
next-token logits, cache), after gemma's `_sampler_loop.py`. `compiled_sampler`
is the one place it is jitted: once per (model config, sampling config, mesh,
seed axis), reused for every batch of that shape. With a seed axis, one
params copy per seed runs under `vmap` as one program, as fine-tuning does.
`generate` runs it over a whole dataset in padded batches.
"""

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.data.dataset import Dataset
from w2s_jax.infra import sharding as shd
from w2s_jax.models import inference, transformer
from w2s_jax.models.model_config import ModelConfig
from w2s_jax.models.positions import positions_from_mask
from w2s_jax.models.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 16
  temperature: float = 0.0  # 0: greedy
  top_k: int | None = None  # keep the k most likely tokens
  top_p: float | None = None  # keep the smallest set with this much probability (nucleus)
  eos_id: int | None = None  # None: always generate max_new_tokens
  pad_id: int = 0  # what follows EOS in the returned tokens
  use_cache: bool = True  # False: a full forward pass per token (the reference path)

  def __post_init__(self):
    if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
      raise ValueError(
        f"SamplingConfig.max_new_tokens={self.max_new_tokens!r}: expected an int >= 1"
      )
    if not self.temperature >= 0:
      raise ValueError(
        f"SamplingConfig.temperature={self.temperature!r}: expected >= 0 (0: greedy)"
      )
    if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
      raise ValueError(f"SamplingConfig.top_k={self.top_k!r}: expected None or an int >= 1")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise ValueError(f"SamplingConfig.top_p={self.top_p!r}: expected None or in (0, 1]")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  def check(self, model_cfg: ModelConfig, prompt_len: int) -> None:
    """Errors a run must see before any compute: ids outside the vocabulary,
    prompts that leave no room in the context for max_new_tokens."""
    for name in ("eos_id", "pad_id"):
      value = getattr(self, name)
      if value is not None and not 0 <= value < model_cfg.vocab_size:
        raise ValueError(
          f"SamplingConfig.{name}={value}: expected an id in "
          f"[0, {model_cfg.vocab_size}) (the model's vocab_size)"
        )
    if prompt_len > model_cfg.max_len:
      raise ValueError(
        f"prompt length {prompt_len} exceeds the context: expected at most "
        f"ModelConfig.max_len={model_cfg.max_len}"
      )
    if prompt_len + self.max_new_tokens > model_cfg.max_len:
      raise ValueError(
        f"SamplingConfig.max_new_tokens={self.max_new_tokens}: prompts of length {prompt_len} "
        f"leave room for {model_cfg.max_len - prompt_len} new tokens in the context "
        f"(ModelConfig.max_len={model_cfg.max_len}); expected max_new_tokens <= "
        f"{model_cfg.max_len - prompt_len}"
      )


@flax.struct.dataclass
class SamplingState:
  step: jax.Array  # tokens generated so far (scalar)
  tokens: jax.Array  # [batch, max_new_tokens]
  logprobs: jax.Array  # [batch, max_new_tokens]
  done: jax.Array  # [batch] emitted EOS
  logits: jax.Array  # [batch, vocab] next-token logits
  cache: tuple  # transformer.init_cache pytree (empty when use_cache=False)
  key_mask: jax.Array  # [batch, prompt + max_new_tokens] slots holding real tokens


def filter_logits(logits, *, temperature, top_k=None, top_p=None):
  """Logits rescaled by temperature, with tokens outside top-k / top-p set to -inf."""
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Mass strictly before each sorted token: a token is kept while that is < top_p,
    # so the most likely token always stays.
    before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def greedy_token(logits):
  """argmax over the last axis (the first index of the max): the same result
  as jnp.argmax, which XLA:CPU computes about 3x slower at a 50K vocabulary."""
  top = jnp.max(logits, axis=-1, keepdims=True)
  index = jnp.arange(logits.shape[-1], dtype=jnp.int32)
  first = jnp.min(jnp.where(logits == top, index, logits.shape[-1]), axis=-1)
  return jnp.minimum(first, logits.shape[-1] - 1)  # NaN logits match nothing: stay in range


def _next_token(logits, row_keys, step, cfg: SamplingConfig):
  if cfg.greedy:
    return greedy_token(logits)
  filtered = filter_logits(logits, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
  draw = lambda key, row: jax.random.categorical(jax.random.fold_in(key, step), row)
  return jax.vmap(draw)(row_keys, filtered).astype(jnp.int32)


def sample(
  params, prompt, prompt_mask, example_ids, rng, *, model_cfg: ModelConfig, cfg: SamplingConfig
):
  """Generates up to cfg.max_new_tokens after each left-padded prompt.

  prompt, prompt_mask: [batch, P] with every row's last column real.
  example_ids: [batch] ints naming each row, so a sampled row draws the same
  tokens whatever batch it is in. rng: a key (or raw key data).
  Returns tokens [batch, N] (pad_id after EOS), response_mask [batch, N]
  (1 up to and including EOS) and logprobs [batch, N]: each token's
  log-probability under the model itself (temperature 1, unfiltered), 0
  where the mask is 0.
  """
  model = Transformer(model_cfg)
  batch, prompt_len = prompt.shape
  n = cfg.max_new_tokens
  length = prompt_len + n
  if not jax.dtypes.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(example_ids)
  prompt_mask = prompt_mask.astype(jnp.int32)
  prompt_lengths = jnp.sum(prompt_mask, axis=-1)
  key_mask = jnp.concatenate([prompt_mask, jnp.zeros((batch, n), jnp.int32)], axis=1)
  buffer = jnp.concatenate([prompt, jnp.zeros((batch, n), prompt.dtype)], axis=1)

  def uncached_logits(key_mask, tokens, step):
    """The reference path: the whole sequence so far through the model again."""
    seq = jax.lax.dynamic_update_slice(buffer, tokens, (0, prompt_len))
    return model.apply(
      {"params": params}, seq, key_mask, prompt_len + step - 1, method=Transformer.lm_logits_at
    )

  if cfg.use_cache:
    cache = transformer.init_cache(model_cfg, batch, length)
    logits, cache = model.apply(
      {"params": params},
      prompt,
      positions_from_mask(prompt_mask),
      key_mask,
      cache,
      0,
      method=Transformer.decode,
    )
  else:
    cache = ()
    logits = uncached_logits(key_mask, jnp.zeros((batch, n), jnp.int32), 0)

  def emit(state: SamplingState) -> SamplingState:
    token = _next_token(state.logits, row_keys, state.step, cfg)
    logits = state.logits.astype(jnp.float32)
    logp = jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(
      logits, axis=-1
    )
    token = jnp.where(state.done, cfg.pad_id, token)
    logp = jnp.where(state.done, 0.0, logp)
    done = state.done | (token == cfg.eos_id) if cfg.eos_id is not None else state.done
    put = lambda a, x: jax.lax.dynamic_update_index_in_dim(a, x, state.step, axis=1)
    return state.replace(
      step=state.step + 1,
      tokens=put(state.tokens, token),
      logprobs=put(state.logprobs, logp),
      done=done,
    )

  def advance(state: SamplingState) -> SamplingState:
    """Feeds the last emitted token through the model, then emits the next."""
    last = state.step - 1
    token = jax.lax.dynamic_index_in_dim(state.tokens, last, axis=1)  # [batch, 1]
    slot = prompt_len + last
    key_mask = jax.lax.dynamic_update_index_in_dim(
      state.key_mask, jnp.ones((batch,), jnp.int32), slot, axis=1
    )
    if cfg.use_cache:
      positions = (prompt_lengths + last)[:, None]
      logits, cache = model.apply(
        {"params": params}, token, positions, key_mask, state.cache, slot, method=Transformer.decode
      )
    else:
      logits, cache = uncached_logits(key_mask, state.tokens, state.step), state.cache
    return emit(state.replace(logits=logits, cache=cache, key_mask=key_mask))

  state = emit(
    SamplingState(
      step=jnp.zeros((), jnp.int32),
      tokens=jnp.full((batch, n), cfg.pad_id, jnp.int32),
      logprobs=jnp.zeros((batch, n), jnp.float32),
      done=jnp.zeros((batch,), bool),
      logits=logits,
      cache=cache,
      key_mask=key_mask,
    )
  )
  state = jax.lax.while_loop(lambda s: (s.step < n) & ~jnp.all(s.done), advance, state)
  if cfg.eos_id is None:
    response_mask = jnp.ones((batch, n), jnp.int32)
  else:
    is_eos = (state.tokens == cfg.eos_id).astype(jnp.int32)
    response_mask = ((jnp.cumsum(is_eos, axis=1) - is_eos) == 0).astype(jnp.int32)
  # Steps the loop never ran (every row already done) hold pad_id and log-prob 0.
  return state.tokens, response_mask, state.logprobs * response_mask


@functools.lru_cache(maxsize=32)
def compiled_sampler(model_cfg: ModelConfig, cfg: SamplingConfig, mesh, seed_axis: bool = False):
  """The jitted sampler: examples split over the mesh, params keep their own
  (replicated or FSDP) sharding. With seed_axis, params and rng carry a
  leading seed axis and every seed samples the same prompts, in one program."""
  fn = functools.partial(sample, model_cfg=model_cfg, cfg=cfg)
  if seed_axis:
    fn = jax.vmap(fn, in_axes=(0, None, None, None, 0))
  data = shd.batch_sharding(mesh)
  return jax.jit(
    shd.under_mesh(fn, mesh),
    in_shardings=(None, data, data, data, shd.replicated(mesh)),
    out_shardings=shd.batch_sharding(mesh, seed_axis=seed_axis),
  )


def check_prompts(data: Dataset) -> None:
  """Prompts must be left-padded: every row's last column a real token."""
  mask = np.asarray(data["prompt_mask"])
  if len(mask) and not mask[:, -1].all():
    row = int(np.argmin(mask[:, -1]))
    raise ValueError(
      f"prompt_mask: row {row} ends in padding; expected left-padded prompts "
      "(every row's last column real)"
    )


def generate(
  params,
  model_cfg: ModelConfig,
  data: Dataset,
  *,
  cfg: SamplingConfig,
  mesh,
  batch_size: int,
  rng=None,
  seed_axis: bool = False,
  samples: int = 1,
):
  """cfg's sampler over every prompt of data (fields prompt, prompt_mask).

  rng: one key, or with seed_axis one row of key data per seed. samples: n
  responses per prompt (use a temperature), returned prompt-major: row
  i * samples + j is prompt i's j-th sample. Returns numpy (tokens,
  response_mask, logprobs), each [N * samples, max_new_tokens], or
  [seeds, N * samples, max_new_tokens] with seed_axis.
  """
  check_prompts(data)
  cfg.check(model_cfg, data["prompt"].shape[1])
  if samples > 1 and cfg.greedy:
    raise ValueError(
      f"generate samples={samples}: greedy decoding gives one response per "
      "prompt; expected samples=1 or SamplingConfig.temperature > 0"
    )
  if rng is None:
    rng = jax.random.key_data(jax.random.key(0))
  elif jax.dtypes.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  fn = compiled_sampler(model_cfg, cfg, mesh, seed_axis)
  ids = np.repeat(np.arange(len(data)), samples)
  repeated = Dataset(
    prompt=data["prompt"][ids],
    prompt_mask=data["prompt_mask"][ids],
    example_ids=ids * samples + np.tile(np.arange(samples), len(data)),
  )
  rng = jnp.asarray(rng)
  return inference.map_batches(
    lambda p, prompt, mask, example_ids: fn(p, prompt, mask, example_ids, rng),
    params,
    repeated,
    batch_size=batch_size,
    mesh=mesh,
    field="generation batch_size",
    seed_axis=seed_axis,
    inputs=("prompt", "prompt_mask", "example_ids"),
  )
