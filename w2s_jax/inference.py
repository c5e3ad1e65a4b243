"""Weak inference: a model's soft labels (class probabilities) for any dataset."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax import sharding as shd
from w2s_jax.data import Dataset, padded_batches
from w2s_jax.models import ModelConfig, Transformer


@functools.lru_cache(maxsize=32)
def _compiled(model_cfg: ModelConfig, fn_name: str, mesh, seed_axis: bool):
  model = Transformer(model_cfg)
  method = getattr(Transformer, fn_name)

  def apply(params, tokens, mask):
    out = model.apply({"params": params}, tokens, mask, method=method)
    return jax.nn.softmax(out, axis=-1)

  if seed_axis:
    apply = jax.vmap(apply, in_axes=(0, None, None))
  data = shd.batch_sharding(mesh)
  out = shd.NamedSharding(mesh, shd.P(None, shd.DATA) if seed_axis else shd.P(shd.DATA))
  return jax.jit(apply, in_shardings=(shd.replicated(mesh), data, data), out_shardings=out)


def _batched(params, model_cfg, data: Dataset, *, batch_size, mesh, fn_name, seed_axis):
  shd.check_batch_size(batch_size, mesh, "inference batch_size")
  fn = _compiled(model_cfg, fn_name, mesh, seed_axis)
  outputs, reals = [], []
  for batch, real in padded_batches(data, batch_size=batch_size):
    b = shd.put_batch({"tokens": batch["tokens"], "mask": batch["mask"]}, mesh)
    outputs.append(fn(params, b["tokens"], b["mask"]))
    reals.append(real)
  # One transfer at the end: no host sync inside the loop.
  outputs = jax.device_get(outputs)
  axis = 1 if seed_axis else 0
  trimmed = [np.take(o, np.arange(r), axis=axis) for o, r in zip(outputs, reals)]
  return np.concatenate(trimmed, axis=axis)


def soft_labels(params, model_cfg: ModelConfig, data: Dataset, *, batch_size: int = 256,
                mesh, seed_axis: bool = False) -> np.ndarray:
  """Class probabilities [N, classes] (or [seeds, N, classes]), one row per example."""
  return _batched(params, model_cfg, data, batch_size=batch_size, mesh=mesh,
                  fn_name="class_logits", seed_axis=seed_axis)


def next_token_probs(params, model_cfg: ModelConfig, data: Dataset, *, batch_size: int = 256,
                     mesh) -> np.ndarray:
  """The LM's next-token distribution at each example's last real token: [N, vocab]."""
  return _batched(params, model_cfg, data, batch_size=batch_size, mesh=mesh,
                  fn_name="last_token_lm_logits", seed_axis=False)
