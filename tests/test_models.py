"""The classifier reads the last real token found from the mask, for any padding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.models import model_config, positions, transformer

from fakes import tiny_model_cfg

VOCAB, T = 11, 8
# Real token sequences of different lengths; two contain token id 0 as a real token.
SEQS = [[3, 7, 2], [5, 9, 1, 4, 6], [2, 2, 8, 3, 10, 7, 1, 5], [4], [3, 0, 4], [6, 4, 0]]


def _random_head(params, rng):
  """cls_head is zero-initialised: give it random weights so the test can fail."""
  params = jax.tree.map(lambda x: x, params)  # shallow copy of the dicts
  head = params["cls_head"]
  params["cls_head"] = {
    "kernel": jnp.asarray(rng.normal(size=head["kernel"].shape).astype(np.float32)),
    "bias": jnp.asarray(rng.normal(size=head["bias"].shape).astype(np.float32)),
  }
  return params


@functools.cache
def _model(head_input):
  cfg = tiny_model_cfg(head_input=head_input, vocab_size=VOCAB, max_len=T)
  params = transformer.init_params(cfg, jax.random.key(1))
  params = _random_head(params, np.random.default_rng(2))
  model = transformer.Transformer(cfg)
  cls = jax.jit(
    lambda p, t, m: model.apply({"params": p}, t, m, method=transformer.Transformer.class_logits)
  )
  last_lm = jax.jit(
    lambda p, t, m: model.apply(
      {"params": p}, t, m, method=transformer.Transformer.last_token_lm_logits
    )
  )
  return cfg, params, cls, last_lm


def pad(seqs, side, fill):
  """fill: an int pad id, or an rng for garbage ids."""
  tokens = np.zeros((len(seqs), T), np.int32)
  mask = np.zeros((len(seqs), T), np.int32)
  for i, s in enumerate(seqs):
    if isinstance(fill, np.random.Generator):
      tokens[i] = fill.integers(0, VOCAB, size=T)
    else:
      tokens[i] = fill
    sl = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
    tokens[i, sl] = s
    mask[i, sl] = 1
  return tokens, mask


def test_last_real_index_hand_made_masks():
  masks = np.array(
    [
      [1, 1, 1, 0, 0],
      [0, 0, 1, 1, 1],
      [1, 1, 1, 1, 1],
      [0, 1, 1, 0, 0],
      [1, 0, 0, 0, 0],
      [0, 0, 0, 0, 1],
    ],
    np.int32,
  )
  np.testing.assert_array_equal(
    np.asarray(positions.last_real_index(jnp.asarray(masks))), [2, 4, 4, 2, 0, 4]
  )


def test_positions_from_mask_counts_real_tokens():
  masks = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]], np.int32)
  np.testing.assert_array_equal(
    np.asarray(positions.positions_from_mask(jnp.asarray(masks))),
    [[0, 1, 2, 2, 2], [0, 0, 0, 1, 2]],
  )


@pytest.mark.parametrize("head_input", ["lm_probs", "hidden"])
def test_class_logits_same_under_left_and_right_padding(head_input):
  _, params, cls, last_lm = _model(head_input)
  rng = np.random.default_rng(3)
  reference = np.asarray(cls(params, *pad(SEQS, "right", 0)))
  assert np.abs(reference).max() > 1e-3  # random head: nonzero logits
  # Different sequences give different logits (the model is not constant).
  assert np.abs(reference[0] - reference[1]).max() > 1e-4
  ref_lm = np.asarray(last_lm(params, *pad(SEQS, "right", 0)))
  for side in ("right", "left"):
    for fill in (0, 5, rng):
      tokens, mask = pad(SEQS, side, fill)
      got = np.asarray(cls(params, tokens, mask))
      np.testing.assert_allclose(
        got, reference, atol=1e-5, err_msg=f"padding side={side} fill={fill}"
      )
      np.testing.assert_allclose(np.asarray(last_lm(params, tokens, mask)), ref_lm, atol=1e-5)


@pytest.mark.parametrize("head_input", ["lm_probs", "hidden"])
def test_padded_equals_unpadded(head_input):
  cfg, params, cls, _ = _model(head_input)
  model = transformer.Transformer(cfg)
  for s in (SEQS[0], SEQS[4]):
    tokens = np.array([s], np.int32)
    alone = np.asarray(
      model.apply(
        {"params": params},
        tokens,
        np.ones_like(tokens),
        method=transformer.Transformer.class_logits,
      )
    )
    for side in ("right", "left"):
      padded = np.asarray(cls(params, *pad([s], side, 9)))
      np.testing.assert_allclose(padded, alone, atol=1e-5)


def test_tokens_at_padded_positions_do_not_matter():
  _, params, cls, _ = _model("hidden")
  rng = np.random.default_rng(4)
  for side in ("right", "left"):
    tokens, mask = pad(SEQS, side, 0)
    base = np.asarray(cls(params, tokens, mask))
    for _ in range(2):
      noisy = np.where(mask > 0, tokens, rng.integers(0, VOCAB, size=tokens.shape))
      np.testing.assert_allclose(
        np.asarray(cls(params, noisy.astype(np.int32), mask)), base, atol=1e-5
      )
    # Changing a real token does change the output (the check can fail).
    changed = tokens.copy()
    last = np.asarray(positions.last_real_index(mask))
    changed[0, last[0]] = (changed[0, last[0]] + 1) % VOCAB
    assert np.abs(np.asarray(cls(params, changed, mask))[0] - base[0]).max() > 1e-5


def test_real_token_zero_is_not_padding():
  """The mask, not the token id, decides what is real."""
  _, params, cls, _ = _model("hidden")
  with_zero_mid = [3, 0, 4]
  without = [3, 4]
  with_zero_end = [6, 4, 0]
  for side in ("right", "left"):
    tokens, mask = pad([with_zero_mid, without, with_zero_end, [6, 4]], side, 0)
    idx = np.asarray(positions.last_real_index(mask))
    if side == "right":
      np.testing.assert_array_equal(idx, [2, 1, 2, 1])
    else:
      np.testing.assert_array_equal(idx, [T - 1] * 4)
    out = np.asarray(cls(params, tokens, mask))
    assert np.abs(out[0] - out[1]).max() > 1e-5  # the real 0 is seen
    assert np.abs(out[2] - out[3]).max() > 1e-5  # a trailing real 0 is read as last token
  # and the padding side still does not matter for these sequences
  r = np.asarray(cls(params, *pad([with_zero_mid, with_zero_end], "right", 0)))
  l = np.asarray(cls(params, *pad([with_zero_mid, with_zero_end], "left", 0)))
  np.testing.assert_allclose(r, l, atol=1e-5)


@pytest.mark.parametrize("head_input", ["lm_probs", "hidden"])
def test_num_params_formula_matches_init(head_input):
  cfg = model_config.decode_size("mini", vocab_size=37, max_len=12, head_input=head_input)
  params = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
  assert transformer.count_params(params) == cfg.num_params


def test_decode_size_explicit_and_table():
  cfg = model_config.decode_size("16x1", vocab_size=5)
  assert (cfg.width, cfg.depth, cfg.heads) == (16, 1, 1)
  cfg = model_config.decode_size("64x3", vocab_size=5)
  assert (cfg.width, cfg.depth, cfg.heads) == (64, 3, 4)
  assert (
    model_config.decode_size("pico", vocab_size=5).width,
    model_config.decode_size("pico", vocab_size=5).depth,
  ) == model_config.SIZES["pico"][:2]


def test_sequence_longer_than_max_len_raises():
  cfg = tiny_model_cfg(vocab_size=VOCAB, max_len=4)
  params = transformer.init_params(cfg, jax.random.key(0))
  tokens = np.ones((1, 5), np.int32)
  with pytest.raises(ValueError, match="max_len=4"):
    transformer.Transformer(cfg).apply(
      {"params": params}, tokens, np.ones_like(tokens), method=transformer.Transformer.class_logits
    )


@pytest.mark.parametrize("width", [24, 40, 48, 50, 100])
def test_decode_size_any_width_gives_valid_heads(width):
  """decode_size documents "WIDTHxDEPTH" -> ModelConfig with no restriction on WIDTH,
  and picks the head count itself: it must pick one that divides the width."""
  cfg = model_config.decode_size(f"{width}x2", vocab_size=5)
  assert cfg.width == width and cfg.depth == 2
  assert cfg.width % cfg.heads == 0
