"""Cascade serving: every query gets exactly the answer of the model its router
chose, over streams whose batches do not fill the buckets; compiles stay
bounded by the buckets; bad input is refused with the field, value and what
was expected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.cascade import serving
from w2s_jax.data.dataset import Dataset
from w2s_jax.infra import sharding
from w2s_jax.models import inference, model_config, sampling, transformer
from w2s_jax.models.sampling import SamplingConfig

# EOS: a token both models emit early on some of the prompts here, so responses vary in length.
VOCAB, EOS = 23, 7


def noisy_params(cfg, seed):
  """Random weights of scale 0.5 (norm scales 1 + that): init scale (and the zero
  class head) gives near-uniform outputs, so routers would see no spread and
  argmaxes near-ties. Drawn in numpy from the params' shapes alone: eager jax
  compiles a program per leaf shape, which took most of this file's time."""
  shapes = jax.eval_shape(lambda: transformer.init_params(cfg, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  draw = lambda path, x: (
    (1.0 if "scale" in jax.tree_util.keystr(path) else 0.0)
    + 0.5 * rng.standard_normal(x.shape, np.float32)
  )
  return jax.tree_util.tree_map_with_path(draw, shapes)


def pair(max_len, head_input="hidden"):
  """A weak (pico) and a strong (nano) model, different sizes and weights. A
  class head on the hidden state: on lm_probs (which sum to 1) its bias rules."""
  cfgs = [
    model_config.decode_size(s, vocab_size=VOCAB, max_len=max_len, head_input=head_input)
    for s in ("pico", "nano")
  ]
  return cfgs, [noisy_params(c, seed=i) for i, c in enumerate(cfgs)]


def queries(n, width, seed=0, left=False):
  rng = np.random.default_rng(seed)
  tokens = np.zeros((n, width), np.int32)
  mask = np.zeros_like(tokens)
  for i, length in enumerate(rng.integers(1, width + 1, n)):
    cols = slice(width - length, width) if left else slice(0, length)
    tokens[i, cols] = rng.integers(4, VOCAB, length)
    mask[i, cols] = 1
  return tokens, mask


def thresholds(conf):
  """-inf (defer none), midpoints between sorted scores at 25/50/75% (no ties
  at the boundary), inf (defer all)."""
  s = np.sort(conf)
  mids = [(s[i] + s[i + 1]) / 2 for i in (len(s) // 4, len(s) // 2, 3 * len(s) // 4)]
  return [-np.inf, *mids, np.inf]


def test_classification_answers_are_the_routed_models(mesh4):
  (weak_cfg, strong_cfg), (wp, sp) = pair(max_len=8)
  tokens, mask = queries(29, 8)
  data = Dataset(tokens=tokens, mask=mask)
  # The references: each model alone over every query, through inference.
  weak = inference.soft_labels(wp, weak_cfg, data, batch_size=12, mesh=mesh4)
  strong = inference.soft_labels(sp, strong_cfg, data, batch_size=12, mesh=mesh4)
  conf = weak.max(-1)
  assert np.ptp(conf) > 0.05 and (weak.argmax(-1) != strong.argmax(-1)).any()  # not vacuous
  # batch 12 over 29 queries: batches of 12, 12, 5; none fills bucket 8 exactly.
  cascade = serving.classification_cascade(
    weak_cfg, strong_cfg, mesh=mesh4, batch_size=12, buckets=(4, 8, 12)
  )
  used = set()
  for t in thresholds(conf):
    out = serving.serve(cascade, wp, sp, data, threshold=t)
    defer = conf < t
    np.testing.assert_array_equal(out["deferred"], defer)
    np.testing.assert_array_equal(
      out["answer"], np.where(defer, strong.argmax(-1), weak.argmax(-1))
    )
    np.testing.assert_allclose(out["probs"], np.where(defer[:, None], strong, weak), atol=1e-5)
    np.testing.assert_allclose(out["confidence"], conf, atol=1e-6)
    tokens_in = mask.sum(-1)
    np.testing.assert_allclose(
      out["flops"], 2 * tokens_in * (weak_cfg.num_params + defer * strong_cfg.num_params)
    )
    used.update(out["buckets"])
  assert len(used - {0}) >= 2  # the deferral counts varied over the stream
  # One weak program; one strong program per bucket used, never more than the buckets.
  assert cascade.weak_step._cache_size() == 1
  assert cascade.strong_step._cache_size() == len(used - {0}) <= len(cascade.buckets)
  # The extremes: defer none -> weak answers and no strong step; defer all -> strong.
  none = serving.serve(cascade, wp, sp, data, threshold=-np.inf)
  assert not none["deferred"].any() and none["buckets"] == [0, 0, 0]
  np.testing.assert_array_equal(none["answer"], weak.argmax(-1))
  every = serving.serve(cascade, wp, sp, data, threshold=np.inf)
  assert every["deferred"].all() and every["buckets"] == [12, 12, 8]
  np.testing.assert_array_equal(every["answer"], strong.argmax(-1))
  # The baseline over the same stream.
  base = serving.serve_strong_only(cascade, sp, data)
  np.testing.assert_array_equal(base["answer"], strong.argmax(-1))
  np.testing.assert_allclose(base["flops"], 2 * tokens_in * strong_cfg.num_params)
  # The builder is cached: the same config reuses the compiled steps.
  assert (
    serving.classification_cascade(
      weak_cfg, strong_cfg, mesh=mesh4, batch_size=12, buckets=[4, 8, 12]
    )
    is cascade
  )


def test_generation_answers_are_the_routed_models(mesh4):
  (weak_cfg, strong_cfg), (wp, sp) = pair(max_len=16)
  prompt, prompt_mask = queries(11, 5, seed=1, left=True)
  data = Dataset(prompt=prompt, prompt_mask=prompt_mask)
  weak_s = SamplingConfig(max_new_tokens=4, eos_id=EOS)
  strong_s = SamplingConfig(max_new_tokens=6, eos_id=EOS)
  ref = lambda p, c, s: sampling.generate(p, c, data, cfg=s, mesh=mesh4, batch_size=8)
  weak, strong = ref(wp, weak_cfg, weak_s), ref(sp, strong_cfg, strong_s)
  score = (weak[2] * weak[1]).sum(-1) / weak[1].sum(-1)
  # Not vacuous: EOS stops some rows of each model, scores spread, the models differ.
  assert (weak[1] == 0).any() and (strong[1] == 0).any() and np.ptp(score) > 0.1
  assert (weak[0] != strong[0][:, :4]).any()
  pad = lambda x: np.pad(x, ((0, 0), (0, 2)))  # weak responses padded to the strong's 6
  weak = [pad(x) for x in weak]
  # batch 8 over 11 prompts: batches of 8 and 3.
  cascade = serving.generation_cascade(
    weak_cfg,
    strong_cfg,
    mesh=mesh4,
    batch_size=8,
    sampling_cfg=weak_s,
    strong_sampling=strong_s,
    buckets=(4, 8),
  )
  used = set()
  for t in thresholds(score)[::2]:  # -inf, the median, inf
    out = serving.serve(cascade, wp, sp, data, threshold=t)
    defer = score < t
    np.testing.assert_array_equal(out["deferred"], defer)
    for i, name in enumerate(("tokens", "response_mask", "logprobs")):
      expected = np.where(defer[:, None], strong[i], weak[i])
      np.testing.assert_allclose(out[name], expected, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(out["confidence"], score, atol=1e-5)
    new = np.where(defer, strong[1].sum(-1), 0)
    np.testing.assert_allclose(
      out["flops"],
      2
      * (
        weak_cfg.num_params * (prompt_mask.sum(-1) + weak[1].sum(-1))
        + defer * strong_cfg.num_params * (prompt_mask.sum(-1) + new)
      ),
    )
    used.update(out["buckets"])
  assert used == {0, 4, 8}
  assert cascade.weak_step._cache_size() == 1 and cascade.strong_step._cache_size() == 2


def test_fsdp_strong_params(mesh4):
  """A strong model whose params are split over an fsdp axis, on a (2, 2) mesh:
  the same answers as the replicated reference."""
  weak_cfg = model_config.decode_size("pico", vocab_size=VOCAB, max_len=8, head_input="hidden")
  strong_cfg = model_config.decode_size("mini", vocab_size=VOCAB, max_len=8, head_input="hidden")
  wp, sp = noisy_params(weak_cfg, 0), noisy_params(strong_cfg, 1)
  mesh = sharding.make_mesh(4, fsdp=2)
  sp_fsdp = jax.device_put(sp, sharding.state_sharding(sp, mesh))
  assert sp_fsdp["block_0"]["mlp_in"]["kernel"].sharding.spec != jax.sharding.PartitionSpec()
  tokens, mask = queries(10, 8, seed=2)
  data = Dataset(tokens=tokens, mask=mask)
  weak = inference.soft_labels(wp, weak_cfg, data, batch_size=8, mesh=mesh4)
  strong = inference.soft_labels(sp, strong_cfg, data, batch_size=8, mesh=mesh4)
  cascade = serving.classification_cascade(
    weak_cfg, strong_cfg, mesh=mesh, batch_size=8, buckets=(4, 8)
  )
  t = np.median(weak.max(-1))
  out = serving.serve(cascade, wp, sp_fsdp, data, threshold=t)
  defer = weak.max(-1) < t
  assert 0 < defer.sum() < len(defer)
  np.testing.assert_array_equal(out["deferred"], defer)
  np.testing.assert_allclose(out["probs"], np.where(defer[:, None], strong, weak), atol=1e-5)


def test_bad_input_names_the_field(mesh4):
  (weak_cfg, strong_cfg), (wp, sp) = pair(max_len=8)
  build = lambda **kw: serving.classification_cascade(
    weak_cfg, strong_cfg, mesh=mesh4, **{"batch_size": 12, **kw}
  )
  with pytest.raises(ValueError, match=r"buckets=\(4, 6, 12\): \[6\] not multiples of the 4"):
    build(buckets=(4, 6, 12))
  with pytest.raises(
    ValueError,
    match=r"batch_size=16 with buckets=\(4, 8\): expected the "
    "largest bucket to equal batch_size",
  ):
    build(batch_size=16, buckets=(4, 8))
  with pytest.raises(ValueError, match=r"batch_size=24 with buckets=\(8, 32\)"):
    build(batch_size=24, buckets=(8, 32))
  with pytest.raises(ValueError, match=r"buckets=\(8, 4, 12\): expected increasing"):
    build(buckets=(8, 4, 12))
  with pytest.raises(ValueError, match="Cascade batch_size=10: expected a multiple of the 4"):
    build(batch_size=10, buckets=(4, 8))
  cascade = build()
  assert cascade.buckets == (8, 12)  # the default: doubling from 8, then batch_size
  tokens, mask = queries(13, 8)
  batch = {"tokens": tokens[:4], "mask": mask[:4]}
  for bad in (float("nan"), None, "high"):
    with pytest.raises(ValueError, match=f"threshold={bad!r}: expected a number"):
      serving.serve_batch(cascade, wp, sp, batch, threshold=bad)
  with pytest.raises(ValueError, match="batch of 13 queries: expected 1..12"):
    serving.serve_batch(cascade, wp, sp, {"tokens": tokens, "mask": mask}, threshold=0.5)
  with pytest.raises(ValueError, match="data of 0 queries"):
    serving.serve(cascade, wp, sp, Dataset(tokens=tokens[:0], mask=mask[:0]), threshold=0.5)
  with pytest.raises(ValueError, match=r"lacks fields \['mask'\]"):
    serving.serve_batch(cascade, wp, sp, {"tokens": tokens}, threshold=0.5)
  # A router that cannot judge (NaN) defers: not(score >= threshold), not score < threshold.
  unsure = build(router=lambda *, probs: jnp.full(probs.shape[:1], jnp.nan))
  out, n, bucket = serving.serve_batch(unsure, wp, sp, batch, threshold=0.5)
  assert (n, bucket) == (4, 8) and np.asarray(out["deferred"])[:n].all()
  assert not np.asarray(out["deferred"])[n:].any()  # padding rows never defer
  flat = build(router=lambda *, probs: probs)  # one score per class, not per query
  with pytest.raises(ValueError, match=r"returned scores of shape \(12, 2\): expected one per"):
    serving.serve_batch(flat, wp, sp, batch, threshold=0.5)
  gen = serving.generation_cascade(
    weak_cfg, strong_cfg, mesh=mesh4, batch_size=4, sampling_cfg=SamplingConfig(max_new_tokens=4)
  )
  right = {"prompt": tokens[:2], "prompt_mask": np.array([[1] * 7 + [0]] * 2)}
  with pytest.raises(ValueError, match="row 0 ends in padding"):
    serving.serve_batch(gen, wp, sp, right, threshold=0.0)
  with pytest.raises(ValueError, match="max_new_tokens=4: prompts of length 8 leave room for 0"):
    serving.serve_batch(
      gen, wp, sp, {"prompt": tokens[:2], "prompt_mask": np.ones((2, 8))}, threshold=0.0
    )
