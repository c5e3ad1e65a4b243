"""The fused attention path (jax.nn.dot_product_attention) equals the explicit one."""

import dataclasses

import jax
import numpy as np
import pytest

from w2s_jax.infra.fingerprint import digest
from w2s_jax.models import model_config, sampling, transformer

VOCAB, T = 17, 12
LENGTHS = [12, 7, 3, 1]


def _batch(side, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, size=(len(LENGTHS), T)).astype(np.int32)
  mask = np.zeros_like(tokens)
  for i, n in enumerate(LENGTHS):
    mask[i, slice(0, n) if side == "right" else slice(T - n, T)] = 1
  return tokens, mask


def _cfgs(**changes):
  explicit = model_config.decode_size(
    "48x2", vocab_size=VOCAB, max_len=T, head_input="hidden", **changes
  )
  return explicit, dataclasses.replace(explicit, attention="fused")


def _outputs(cfg, params, tokens, mask):
  model = transformer.Transformer(cfg)
  run = lambda method: jax.jit(lambda p, t, m: model.apply({"params": p}, t, m, method=method))(
    params, tokens, mask
  )
  return {
    "lm": run(transformer.Transformer.lm_logits),
    "cls": run(transformer.Transformer.class_logits),
  }


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_fused_equals_explicit_under_padding(side, positions):
  explicit, fused = _cfgs(
    positions=positions,
    **({"rotary_frac": 0.5, "tie_embeddings": False} if positions == "rotary" else {}),
  )
  params = transformer.init_params(explicit, jax.random.key(3))
  params["cls_head"]["kernel"] = jax.random.normal(
    jax.random.key(4), params["cls_head"]["kernel"].shape
  )
  tokens, mask = _batch(side)
  want, got = _outputs(explicit, params, tokens, mask), _outputs(fused, params, tokens, mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(got["lm"][real], want["lm"][real], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got["cls"], want["cls"], atol=1e-5, rtol=1e-5)
  # The comparison can fail: without the padding bias the answers move.
  assert (
    np.abs(
      np.asarray(want["cls"])
      - np.asarray(_outputs(explicit, params, tokens, np.ones_like(mask))["cls"])
    ).max()
    > 1e-3
  )


def test_fused_sampler_with_kv_cache_matches_explicit():
  explicit, fused = _cfgs()
  params = transformer.init_params(explicit, jax.random.key(5))
  tokens, mask = _batch("left", seed=1)
  cfg = sampling.SamplingConfig(max_new_tokens=T - 8, temperature=1.0)
  ids = np.arange(len(tokens))
  a = sampling.sample(
    params, tokens[:, :8], mask[:, :8], ids, jax.random.key(0), model_cfg=explicit, cfg=cfg
  )
  b = sampling.sample(
    params, tokens[:, :8], mask[:, :8], ids, jax.random.key(0), model_cfg=fused, cfg=cfg
  )
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_allclose(a[2], b[2], atol=1e-5)


def test_dropout_training_takes_the_explicit_path_and_keys_ignore_the_choice():
  explicit, fused = _cfgs(dropout=0.1)
  params = transformer.init_params(explicit, jax.random.key(6))
  tokens, mask = _batch("right")
  run = lambda cfg: transformer.Transformer(cfg).apply(
    {"params": params},
    tokens,
    mask,
    method=transformer.Transformer.lm_logits,
    rngs={"dropout": jax.random.key(7)},
  )
  np.testing.assert_array_equal(run(explicit), run(fused))
  # The implementation is not the model: the pretrained cache is shared.
  assert digest(explicit) == digest(fused)
  with pytest.raises(ValueError, match=r"ModelConfig.attention='flash': expected one of"):
    dataclasses.replace(explicit, attention="flash")
