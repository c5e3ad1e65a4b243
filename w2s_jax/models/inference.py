"""Weak inference: a model's soft labels (class probabilities) for any dataset."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.data.dataset import Dataset, padded_batches
from w2s_jax.infra import sharding as shd
from w2s_jax.models.model_config import ModelConfig
from w2s_jax.models.transformer import Transformer


@functools.lru_cache(maxsize=32)
def compiled_softmax(
  model_cfg: ModelConfig, fn_name: str, mesh, seed_axis: bool, softmax: bool = True
):
  """The jitted softmax of a Transformer method's logits (fn_name:
  "class_logits" or "last_token_lm_logits") for (params, tokens, mask);
  with seed_axis, over params stacked per seed. One program per setting.
  softmax=False: the method's output as it is ("head_features")."""
  model = Transformer(model_cfg)
  method = getattr(Transformer, fn_name)

  def apply(params, tokens, mask):
    out = model.apply({"params": params}, tokens, mask, method=method)
    return jax.nn.softmax(out, axis=-1) if softmax else out.astype(jnp.float32)

  if seed_axis:
    apply = one_seed_at_a_time(apply)
  return jit_batched(apply, mesh, seed_axis=seed_axis)


def one_seed_at_a_time(fn):
  """fn(params, *inputs) -> fn over params stacked per seed, the seeds one
  after another (lax.map), the inputs shared: [seeds, ...] outputs.

  Not vmap: inference keeps no activations for a backward, so batching the
  seeds buys little, while vmap holds every seed's activations at once
  (all-MiniLM-L6-v2, 3 seeds at batch 200 x 64 tokens: 1.06 GB of XLA
  scratch against a third of it one seed at a time; docs/performance.md)."""

  def mapped(params, *inputs):
    return jax.lax.map(lambda p: fn(p, *inputs), params)

  return mapped


def jit_batched(fn, mesh, *, seed_axis: bool = False, num_inputs: int = 2):
  """jit for fn(params, tokens, mask) (or num_inputs per-example arrays) ->
  per-example outputs: params keep their own (replicated or FSDP) sharding,
  examples split over the mesh."""
  data = shd.batch_sharding(mesh)
  return jax.jit(
    shd.under_mesh(fn, mesh),
    in_shardings=(None, *[data] * num_inputs),
    out_shardings=shd.batch_sharding(mesh, seed_axis=seed_axis),
  )


def map_batches(
  fn,
  params,
  data: Dataset,
  *,
  batch_size: int,
  mesh,
  field: str,
  seed_axis: bool = False,
  inputs=("tokens", "mask"),
):
  """fn (from jit_batched) over every example of data, in padded batches:
  fn(params, *the batch's `inputs` fields) -> per-example outputs (an array
  or a tuple of them, split like the batch).

  Each process feeds only its own rows of each batch; the outputs are
  gathered once, at the end, so the loop never waits on the device.
  """
  shd.check_batch_size(batch_size, mesh, field)
  rows = shd.process_rows(mesh, batch_size)
  outputs, reals = [], []
  for batch, real in padded_batches(data, batch_size=batch_size):
    b = shd.put_batch({k: batch[k][rows] for k in inputs}, mesh)
    outputs.append(fn(params, *(b[k] for k in inputs)))
    reals.append(real)
  outputs = shd.to_host(outputs)
  axis = 1 if seed_axis else 0
  trim = lambda o, r: np.take(o, np.arange(r), axis=axis)
  return jax.tree.map(
    lambda *parts: np.concatenate(parts, axis=axis),
    *[jax.tree.map(lambda o: trim(o, r), out) for out, r in zip(outputs, reals)],
  )


def _batched(
  params, model_cfg, data: Dataset, *, batch_size, mesh, fn_name, seed_axis, softmax=True
):
  return map_batches(
    compiled_softmax(model_cfg, fn_name, mesh, seed_axis, softmax),
    params,
    data,
    batch_size=batch_size,
    mesh=mesh,
    field="inference batch_size",
    seed_axis=seed_axis,
  )


def soft_labels(
  params,
  model_cfg: ModelConfig,
  data: Dataset,
  *,
  batch_size: int = 256,
  mesh,
  seed_axis: bool = False,
) -> np.ndarray:
  """Weak inference: the model's class probabilities for every example.

  Args:
    params: the model's params (stacked per seed with seed_axis).
    model_cfg: its config.
    data: tokens and mask (any padding side).
    batch_size: examples per batch, a multiple of the mesh's devices.
    mesh: the device mesh.
    seed_axis: params carry a leading seed axis.

  Returns:
    numpy [N, classes], or [seeds, N, classes], one row per example in order.
  """
  return _batched(
    params,
    model_cfg,
    data,
    batch_size=batch_size,
    mesh=mesh,
    fn_name="class_logits",
    seed_axis=seed_axis,
  )


def class_scores(
  params, model_cfg: ModelConfig, data: Dataset, *, batch_size: int = 256, mesh
) -> np.ndarray:
  """The class logits as they are, per example: [N, classes], or a scalar-head
  model's score of each choice, [N, choices] (a reward model's rewards)."""
  return _batched(
    params,
    model_cfg,
    data,
    batch_size=batch_size,
    mesh=mesh,
    fn_name="class_logits",
    seed_axis=False,
    softmax=False,
  )


def head_features(
  params, model_cfg: ModelConfig, data: Dataset, *, batch_size: int = 256, mesh
) -> np.ndarray:
  """What a model's classification head reads, per example [N, width]
  (Transformer.head_features): a probe's features of a frozen model."""
  return _batched(
    params,
    model_cfg,
    data,
    batch_size=batch_size,
    mesh=mesh,
    fn_name="head_features",
    seed_axis=False,
    softmax=False,
  )


def next_token_probs(
  params, model_cfg: ModelConfig, data: Dataset, *, batch_size: int = 256, mesh
) -> np.ndarray:
  """The LM's next-token distribution at each example's last real token: [N, vocab]."""
  return _batched(
    params,
    model_cfg,
    data,
    batch_size=batch_size,
    mesh=mesh,
    fn_name="last_token_lm_logits",
    seed_axis=False,
  )
