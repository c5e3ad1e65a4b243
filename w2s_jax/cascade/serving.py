"""Cascade serving: the weak model answers every query of a stream, the strong
one only the queries the weak model is unsure of.

Per batch (padded on host to the fixed batch_size; padding rows are invalid,
never deferred, never returned): (1) the weak step, jitted once, the batch
split over the mesh, gives the weak answers, a router score per query (higher
keeps the weak answer), the defer mask (not score >= threshold: a NaN score
defers), a permutation putting deferred rows first, and their count; (2) the
count comes to the host -- the one host sync per batch -- to pick the smallest
bucket holding the deferred rows; (3) the strong step, jitted once per bucket
(its one static argument), gathers the permutation's first `bucket` rows (the
deferred, then undeferred filler: real data, so no NaN), runs the strong model
on them and scatters the deferred rows' answers over the weak ones in the
original order. Over any stream at most 1 + len(buckets) programs compile.

Why a sync rather than `lax.switch` over the buckets in one program: it costs
one dispatch gap per batch (about a millisecond on CPU) beside a strong step,
each bucket stays its own cached program, and a batch that defers nothing
skips the strong model without a dispatch.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.cascade.routers import mean_logprob
from w2s_jax.curation import scores
from w2s_jax.data.dataset import Dataset
from w2s_jax.infra import sharding as shd
from w2s_jax.models import sampling
from w2s_jax.models.flops import model_flops
from w2s_jax.models.model_config import ModelConfig
from w2s_jax.models.sampling import SamplingConfig
from w2s_jax.models.transformer import Transformer

INPUTS = {"classification": ("tokens", "mask"), "generation": ("prompt", "prompt_mask")}


def default_buckets(batch_size: int, mesh) -> tuple[int, ...]:
  """Doubling from the first multiple of the mesh size >= 8, then batch_size:
  at most 2x wasted strong rows, few compiles."""
  first = mesh.size * -(-8 // mesh.size)
  buckets = [first * 2**k for k in range(64) if first * 2**k < batch_size]
  return tuple(buckets) + (batch_size,)


def _classify(params, batch, *, cfg):
  logits = Transformer(cfg).apply(
    {"params": params}, batch["tokens"], batch["mask"], method=Transformer.class_logits
  )
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return {"answer": sampling.greedy_token(probs), "probs": probs}


def _generate(params, batch, rng, *, cfg, sampling_cfg, new_tokens):
  """Responses padded to the cascade's common new_tokens (pad_id, mask 0)."""
  tokens, mask, logprobs = sampling.sample(
    params,
    batch["prompt"],
    batch["prompt_mask"],
    batch["ids"],
    rng,
    model_cfg=cfg,
    cfg=sampling_cfg,
  )
  pad = ((0, 0), (0, new_tokens - tokens.shape[1]))
  return {
    "tokens": jnp.pad(tokens, pad, constant_values=sampling_cfg.pad_id),
    "response_mask": jnp.pad(mask, pad),
    "logprobs": jnp.pad(logprobs, pad),
  }


def _route(router, answers, kind):
  if kind == "classification":
    return router(probs=answers["probs"])
  return router(logprobs=answers["logprobs"], mask=answers["response_mask"])


def _weak_step(params, batch, threshold, rng, *, answer_fn, router, kind):
  answers = answer_fn(params, batch, rng)
  score = _route(router, answers, kind).astype(jnp.float32)
  if score.shape != batch["valid"].shape:
    raise ValueError(
      f"router {router!r} returned scores of shape {score.shape}: expected "
      f"one per query, {batch['valid'].shape}"
    )
  defer = batch["valid"] & ~(score >= threshold)
  order = jnp.argsort(jnp.where(defer, 0, 1), stable=True).astype(jnp.int32)
  stats = {"confidence": score, "deferred": defer}
  if kind == "generation":  # for the FLOP count of deferred queries, whose weak answer is dropped
    stats["weak_new_tokens"] = jnp.sum(answers["response_mask"], -1)
  return answers, stats, order, jnp.sum(defer, dtype=jnp.int32)


def _strong_step(bucket, params, batch, order, count, weak, rng, *, answer_fn, data):
  rows = order[:bucket]
  sub = {k: jax.lax.with_sharding_constraint(v[rows], data) for k, v in batch.items()}
  strong = answer_fn(params, sub, rng)
  keep = jnp.arange(bucket) < count  # the rest of the bucket is filler: keep the weak answer

  def merge(w, s):
    k = keep.reshape((bucket,) + (1,) * (s.ndim - 1))
    return w.at[rows].set(jnp.where(k, s, w[rows]), unique_indices=True)

  return jax.tree.map(merge, weak, strong)


def _all_flops(cfg, tokens):
  """flops.model_flops counting every parameter, embeddings included (as the
  benchmark's FLOPs-run column does)."""
  return model_flops(config=cfg, tokens=tokens, include_embeddings=True)


@dataclasses.dataclass(frozen=True, eq=False)
class Cascade:
  """The jitted steps of one cascade, built once by `classification_cascade` or
  `generation_cascade` (cached on their arguments) and reused for every batch."""

  kind: str
  weak_cfg: ModelConfig
  strong_cfg: ModelConfig
  mesh: jax.sharding.Mesh
  batch_size: int
  buckets: tuple[int, ...]
  router: Callable
  weak_answer: Callable  # (params, batch, rng) -> answers pytree, per query
  strong_answer: Callable
  new_tokens: int = 0  # generation: common response width
  samplings: tuple = ()  # generation: the weak and strong SamplingConfig

  def __post_init__(self):
    shd.check_batch_size(self.batch_size, self.mesh, "Cascade batch_size")
    b = self.buckets
    if not b or any(not isinstance(x, int) or x < 1 for x in b) or list(b) != sorted(set(b)):
      raise ValueError(f"Cascade buckets={b!r}: expected increasing positive ints")
    if bad := [x for x in b if x % self.mesh.size]:
      raise ValueError(
        f"Cascade buckets={b}: {bad} not multiples of the {self.mesh.size} devices a batch is "
        f"split over (data x fsdp = {self.mesh.shape[shd.DATA]} x {self.mesh.shape[shd.FSDP]})"
      )
    if b[-1] != self.batch_size:
      raise ValueError(
        f"Cascade batch_size={self.batch_size} with buckets={b}: expected the largest bucket "
        f"to equal batch_size, so a batch whose every query defers fits one bucket"
      )

  @functools.cached_property
  def weak_step(self):
    data, rep = shd.batch_sharding(self.mesh), shd.replicated(self.mesh)
    fn = functools.partial(
      _weak_step, answer_fn=self.weak_answer, router=self.router, kind=self.kind
    )
    return jax.jit(fn, in_shardings=(None, data, rep, rep), out_shardings=(data, data, data, rep))

  @functools.cached_property
  def strong_step(self):
    data, rep = shd.batch_sharding(self.mesh), shd.replicated(self.mesh)
    fn = functools.partial(_strong_step, answer_fn=self.strong_answer, data=data)
    # The bucket is positional (static_argnums): jit refuses kwargs beside in_shardings.
    return jax.jit(
      fn, static_argnums=0, in_shardings=(None, data, data, rep, data, rep), out_shardings=data
    )

  @functools.cached_property
  def strong_only_step(self):
    data, rep = shd.batch_sharding(self.mesh), shd.replicated(self.mesh)
    return jax.jit(self.strong_answer, in_shardings=(None, data, rep), out_shardings=data)

  def bucket_for(self, count: int) -> int:
    """The smallest bucket holding count rows; 0 for none."""
    return 0 if count == 0 else next(b for b in self.buckets if b >= count)

  def flops(self, host: dict, prompt_tokens: np.ndarray, deferred: np.ndarray) -> np.ndarray:
    """Per query, 2 * params * tokens: the weak model on every query, the strong
    one on deferred queries (generation: prompt + each model's own response)."""
    weak_t = strong_t = prompt_tokens
    if self.kind == "generation":
      weak_t = prompt_tokens + host["weak_new_tokens"]
      strong_t = prompt_tokens + host["response_mask"].sum(-1)
    return _all_flops(self.weak_cfg, weak_t) + deferred * _all_flops(self.strong_cfg, strong_t)


def _buckets(batch_size, buckets, mesh):
  """A tuple, hashable for the builders' cache; Cascade checks the values."""
  return default_buckets(batch_size, mesh) if buckets is None else tuple(buckets)


def classification_cascade(
  weak_cfg: ModelConfig,
  strong_cfg: ModelConfig,
  *,
  mesh,
  batch_size: int,
  buckets=None,
  router: Callable = scores.confidence,
) -> Cascade:
  """router(probs=[batch, classes]) -> [batch] scores, higher keeps the weak answer.
  buckets: default `default_buckets`; the largest must equal batch_size."""
  return _classification_cascade(
    weak_cfg, strong_cfg, mesh, batch_size, _buckets(batch_size, buckets, mesh), router
  )


@functools.lru_cache(maxsize=16)
def _classification_cascade(weak_cfg, strong_cfg, mesh, batch_size, buckets, router):
  return Cascade(
    "classification",
    weak_cfg,
    strong_cfg,
    mesh,
    batch_size,
    buckets,
    router,
    lambda p, b, rng: _classify(p, b, cfg=weak_cfg),
    lambda p, b, rng: _classify(p, b, cfg=strong_cfg),
  )


def generation_cascade(
  weak_cfg: ModelConfig,
  strong_cfg: ModelConfig,
  *,
  mesh,
  batch_size: int,
  sampling_cfg: SamplingConfig,
  strong_sampling: SamplingConfig | None = None,
  buckets=None,
  router: Callable = mean_logprob,
) -> Cascade:
  """router(logprobs=, mask=[batch, new_tokens]) -> [batch] scores. strong_sampling
  (default: sampling_cfg) may differ in max_new_tokens: both pad to the larger."""
  return _generation_cascade(
    weak_cfg,
    strong_cfg,
    mesh,
    batch_size,
    sampling_cfg,
    strong_sampling or sampling_cfg,
    _buckets(batch_size, buckets, mesh),
    router,
  )


@functools.lru_cache(maxsize=16)
def _generation_cascade(
  weak_cfg, strong_cfg, mesh, batch_size, sampling_cfg, strong_sampling, buckets, router
):
  if strong_sampling.pad_id != sampling_cfg.pad_id:
    raise ValueError(
      f"strong_sampling.pad_id={strong_sampling.pad_id}: expected the weak "
      f"sampling_cfg.pad_id={sampling_cfg.pad_id}, so merged responses pad alike"
    )
  n = max(sampling_cfg.max_new_tokens, strong_sampling.max_new_tokens)
  answer = lambda cfg, s: functools.partial(_generate, cfg=cfg, sampling_cfg=s, new_tokens=n)
  return Cascade(
    "generation",
    weak_cfg,
    strong_cfg,
    mesh,
    batch_size,
    buckets,
    router,
    answer(weak_cfg, sampling_cfg),
    answer(strong_cfg, strong_sampling),
    n,
    (sampling_cfg, strong_sampling),
  )


def check_threshold(threshold) -> jax.Array:
  """A float32 scalar: a traced argument, so a new threshold never recompiles."""
  try:
    value = float(threshold)
  except (TypeError, ValueError):
    value = math.nan
  if math.isnan(value):
    raise ValueError(
      f"threshold={threshold!r}: expected a number (queries scoring below it "
      "defer; -inf defers none, inf defers all)"
    )
  return jnp.asarray(value, jnp.float32)


def _device_batch(cascade: Cascade, batch, ids):
  """batch's query rows padded to batch_size (repeating row 0, marked invalid),
  split over the mesh. Returns (device batch, number of queries)."""
  fields = INPUTS[cascade.kind]
  if missing := [f for f in fields if f not in batch]:
    raise ValueError(f"{cascade.kind} batch lacks fields {missing}: expected {fields}")
  n = len(batch[fields[0]])
  if not 1 <= n <= cascade.batch_size:
    raise ValueError(
      f"batch of {n} queries: expected 1..{cascade.batch_size} "
      f"(Cascade batch_size; the largest bucket is {cascade.buckets[-1]})"
    )
  if cascade.kind == "generation":
    sampling.check_prompts(Dataset(prompt=batch["prompt"], prompt_mask=batch["prompt_mask"]))
    for cfg, sampling_cfg in zip((cascade.weak_cfg, cascade.strong_cfg), cascade.samplings):
      sampling_cfg.check(cfg, np.shape(batch["prompt"])[1])
  pad = lambda x: np.concatenate([x, np.repeat(x[:1], cascade.batch_size - n, 0)])
  ids = np.arange(n) if ids is None else np.asarray(ids)
  host = {f: pad(np.asarray(batch[f])) for f in fields}
  host.update(ids=pad(ids.astype(np.int32)), valid=np.arange(cascade.batch_size) < n)
  rows = shd.process_rows(cascade.mesh, cascade.batch_size)
  return shd.put_batch({k: v[rows] for k, v in host.items()}, cascade.mesh), n


def _key(rng):
  rng = jax.random.key(0) if rng is None else rng
  if jax.dtypes.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return jnp.asarray(rng)


def serve_batch(
  cascade: Cascade, weak_params, strong_params, batch: dict, *, threshold, rng=None, ids=None
):
  """One batch of up to batch_size queries through the cascade.

  ids: each query's id for the sampler's per-row keys (default 0..n-1; the
  stream passes stream positions, as sampling.generate does). Returns (answers
  and stats as device arrays of batch_size rows, the first n real; n; the
  bucket the strong model ran, 0 if none).
  """
  threshold = check_threshold(threshold)
  dev, n = _device_batch(cascade, batch, ids)
  rng = _key(rng)
  answers, stats, order, count = cascade.weak_step(weak_params, dev, threshold, rng)
  # The one host sync per batch: the deferral count picks the strong step's static bucket.
  bucket = cascade.bucket_for(int(count))
  if bucket:
    answers = cascade.strong_step(bucket, strong_params, dev, order, count, answers, rng)
  return {**answers, **stats}, n, bucket


def _stream(cascade, data: Dataset, run):
  """run(batch, ids) on each batch of data in order; host numpy outputs,
  one row per query, plus the tokens each query's input holds."""
  fields = INPUTS[cascade.kind]
  if not len(data):
    raise ValueError(f"data of 0 queries: expected at least 1 (fields {fields})")
  outputs, ns, buckets = [], [], []
  for start in range(0, len(data), cascade.batch_size):
    stop = min(start + cascade.batch_size, len(data))
    out, n, bucket = run({f: data[f][start:stop] for f in fields}, np.arange(start, stop))
    outputs.append(out)
    ns.append(n)
    buckets.append(bucket)
  outputs = shd.to_host(outputs)  # after the loop, so dispatch never waits on results
  host = {k: np.concatenate([o[k][:n] for o, n in zip(outputs, ns)]) for k in outputs[0]}
  return host, np.asarray(data[fields[1]]).sum(-1), buckets


def serve(
  cascade: Cascade, weak_params, strong_params, data: Dataset, *, threshold, rng=None
) -> dict:
  """The cascade over a stream (data: tokens/mask, or left-padded prompt/
  prompt_mask) in batches of batch_size, in order, the last one partial.

  Returns numpy, one row per query: the answers (classification: answer,
  probs; generation: tokens, response_mask, logprobs), deferred, confidence
  (the weak router score), flops; and "buckets": the strong bucket per batch.
  """
  if cascade.kind == "generation":
    sampling.check_prompts(data)
  check_threshold(threshold)
  run = lambda b, ids: serve_batch(
    cascade, weak_params, strong_params, b, threshold=threshold, rng=rng, ids=ids
  )
  host, prompt_tokens, buckets = _stream(cascade, data, run)
  host["flops"] = cascade.flops(host, prompt_tokens, host["deferred"])
  host.pop("weak_new_tokens", None)
  return {**host, "buckets": buckets}


def serve_strong_only(cascade: Cascade, strong_params, data: Dataset, *, rng=None) -> dict:
  """The baseline: every query through the strong model, same batches and
  outputs as `serve` (deferred all True, no confidence)."""
  rng = _key(rng)

  def run(batch, ids):
    dev, n = _device_batch(cascade, batch, ids)
    out = cascade.strong_only_step(strong_params, dev, rng)
    return {**out, "deferred": dev["valid"]}, n, cascade.batch_size

  host, prompt_tokens, _ = _stream(cascade, data, run)
  t = prompt_tokens + (host["response_mask"].sum(-1) if cascade.kind == "generation" else 0)
  host["flops"] = _all_flops(cascade.strong_cfg, t)
  return host
