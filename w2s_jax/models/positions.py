"""Where a token is: position ids from padding masks, the last real token,
and rotary position embeddings (GPT-NeoX's, with Llama-3.1's frequency
scaling). Pure functions of arrays, shared by the model and the sampler."""

import jax
import jax.numpy as jnp


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Position ids that count real tokens only, so left and right padding agree."""
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


def last_real_index(mask: jax.Array) -> jax.Array:
  """Index of the last position whose mask is 1, for any padding side."""
  length = mask.shape[-1]
  return length - 1 - jnp.argmax(mask[..., ::-1] > 0, axis=-1)


def llama3_frequencies(inv_freq, *, factor, low_freq_factor, high_freq_factor, original):
  """Llama-3.1's rescaled rotary frequencies: long wavelengths slowed by
  factor, short ones kept, the band between interpolated."""
  wavelen = 2 * jnp.pi / inv_freq
  scaled = jnp.where(wavelen > original / low_freq_factor, inv_freq / factor, inv_freq)
  smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= original / high_freq_factor) & (wavelen <= original / low_freq_factor)
  return jnp.where(medium, smoothed, scaled)


def rotary(x, positions, *, frac, base, scaling=None):
  """GPT-NeoX rotary embedding of the first frac of x's last axis (rotate-half
  form). x: [batch, heads, seq, head_dim]; positions: [batch, seq]; scaling:
  ModelConfig.rope_scaling."""
  dims = int(x.shape[-1] * frac)
  inv_freq = 1.0 / (base ** (jnp.arange(0, dims, 2, dtype=jnp.float32) / dims))
  if scaling is not None:
    _, factor, low, high, original = scaling
    inv_freq = llama3_frequencies(
      inv_freq, factor=factor, low_freq_factor=low, high_freq_factor=high, original=original
    )
  angles = positions.astype(jnp.float32)[:, None, :, None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  rot, keep = x[..., :dims].astype(jnp.float32), x[..., dims:]
  half = dims // 2
  rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
  out = rot * jnp.cos(angles) + rotated * jnp.sin(angles)
  return jnp.concatenate([out.astype(x.dtype), keep], axis=-1)
