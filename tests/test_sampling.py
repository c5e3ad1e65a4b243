"""The sampler: cached decoding equals full forward passes, padding and
batch-mates change nothing, sampling is reproducible, bad input is refused
before compute. (Parity with transformers' generate is in test_hf_import.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.data.dataset import Dataset
from w2s_jax.infra import sharding
from w2s_jax.models import model_config, sampling, transformer
from w2s_jax.models.sampling import SamplingConfig

VOCAB, EOS = 23, 3
FLAVOURS = {
  "gpt2": dict(positions="learned"),
  "neox": dict(positions="rotary", parallel_residual=True, tie_embeddings=False),
}


def noisy_params(cfg, seed=0):
  """Init scale (0.02) gives near-uniform logits whose argmax flips on rounding
  noise; larger random weights give decisive, varied greedy paths."""
  params = transformer.init_params(cfg, jax.random.key(seed))
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  noisy = [
    (1.0 if "scale" in jax.tree_util.keystr(path) else 0.0) + 0.5 * jax.random.normal(k, x.shape)
    for (path, x), k in zip(leaves, keys)
  ]
  return jax.tree.unflatten(jax.tree.structure(params), noisy)


def model(flavour, max_len=24):
  cfg = model_config.decode_size("mini", vocab_size=VOCAB, max_len=max_len, **FLAVOURS[flavour])
  return cfg, noisy_params(cfg, seed=1)


def left_padded(lengths, width, seed=0):
  rng = np.random.default_rng(seed)
  prompt = np.zeros((len(lengths), width), np.int32)
  mask = np.zeros_like(prompt)
  for i, n in enumerate(lengths):
    prompt[i, width - n :] = rng.integers(4, VOCAB, n)
    mask[i, width - n :] = 1
  return Dataset(prompt=prompt, prompt_mask=mask)


def run(params, cfg, data, mesh, batch_size=None, **sampling_kwargs):
  sampling_cfg = SamplingConfig(**{"max_new_tokens": 10, "eos_id": EOS, **sampling_kwargs})
  return sampling.generate(
    params, cfg, data, cfg=sampling_cfg, mesh=mesh, batch_size=batch_size or len(data)
  )


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_cached_greedy_equals_uncached(flavour, mesh1):
  cfg, params = model(flavour)
  data = left_padded([6, 3, 1, 5], 6)
  # An EOS the model does emit: row 0's third token, so row 0 stops early.
  eos = int(run(params, cfg, data, mesh1, eos_id=None)[0][0, 2])
  cached = run(params, cfg, data, mesh1, eos_id=eos)
  full = run(params, cfg, data, mesh1, use_cache=False, eos_id=eos)
  np.testing.assert_array_equal(cached[0], full[0])
  np.testing.assert_array_equal(cached[1], full[1])
  np.testing.assert_allclose(cached[2], full[2], atol=1e-4)
  # Not vacuous: the rows differ, and at least one stops early on EOS.
  assert len({tuple(r) for r in cached[0]}) > 1
  assert cached[1][0].sum() <= 3 and cached[1].sum() > 4


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_padding_and_batch_mates_do_not_change_a_row(flavour, mesh1):
  cfg, params = model(flavour)
  data = left_padded([6, 3, 1, 5], 6)
  batched = run(params, cfg, data, mesh1)
  for i, n in ((1, 3), (2, 1)):  # a padded row and a one-token prompt, each alone
    alone = run(
      params,
      cfg,
      Dataset(
        prompt=data["prompt"][i : i + 1, 6 - n :],
        prompt_mask=data["prompt_mask"][i : i + 1, 6 - n :],
      ),
      mesh1,
    )
    np.testing.assert_array_equal(alone[0][0], batched[0][i])
    np.testing.assert_allclose(alone[2][0], batched[2][i], atol=1e-5)


def test_response_mask_and_logprobs_hand_checked(mesh1):
  cfg, params = model("gpt2")
  data = left_padded([4, 2], 4)
  eos_id = int(run(params, cfg, data, mesh1, eos_id=None)[0][1, 3])
  tokens, mask, logp = run(params, cfg, data, mesh1, pad_id=0, eos_id=eos_id)
  assert mask[1].sum() <= 4
  for row, m, lp in zip(tokens, mask, logp):
    eos = np.flatnonzero(row == eos_id)
    end = eos[0] + 1 if len(eos) else len(row)
    np.testing.assert_array_equal(m, np.arange(len(row)) < end)
    assert (row[end:] == 0).all() and (lp[end:] == 0).all()
    assert (lp[:end] <= 0).all()
  # Each log-prob is the model's own: recompute the first one with a plain forward pass.
  logits = transformer.Transformer(cfg).apply(
    {"params": params},
    jnp.asarray(data["prompt"]),
    jnp.asarray(data["prompt_mask"]),
    method=transformer.Transformer.last_token_lm_logits,
  )
  first = jax.nn.log_softmax(logits)[np.arange(2), tokens[:, 0]]
  np.testing.assert_allclose(logp[:, 0], first, atol=1e-5)


def test_sampling_reproducible_and_top_k_1_is_greedy(mesh1):
  cfg, params = model("neox")
  data = left_padded([5, 2, 4, 1, 3, 5, 2, 4], 5)
  kw = dict(temperature=1.0, eos_id=None)
  a = sampling.generate(
    params,
    cfg,
    data,
    cfg=SamplingConfig(max_new_tokens=10, **kw),
    mesh=mesh1,
    batch_size=8,
    rng=jax.random.key(7),
  )
  b = sampling.generate(
    params,
    cfg,
    data,
    cfg=SamplingConfig(max_new_tokens=10, **kw),
    mesh=mesh1,
    batch_size=4,
    rng=jax.random.key(7),
  )  # other batches
  c = sampling.generate(
    params,
    cfg,
    data,
    cfg=SamplingConfig(max_new_tokens=10, **kw),
    mesh=mesh1,
    batch_size=8,
    rng=jax.random.key(8),
  )
  np.testing.assert_array_equal(a[0], b[0])
  assert (a[0] != c[0]).any()
  greedy = run(params, cfg, data, mesh1, eos_id=None)
  top1 = sampling.generate(
    params,
    cfg,
    data,
    cfg=SamplingConfig(max_new_tokens=10, top_k=1, **kw),
    mesh=mesh1,
    batch_size=8,
    rng=jax.random.key(7),
  )
  np.testing.assert_array_equal(top1[0], greedy[0])
  assert (a[0] != greedy[0]).any()  # sampling at temperature 1 is not greedy here


def test_n_samples_per_prompt_are_prompt_major(mesh1):
  cfg, params = model("gpt2")
  data = left_padded([3, 2], 3)
  cfg_s = SamplingConfig(max_new_tokens=6, temperature=1.0)
  tokens = sampling.generate(params, cfg, data, cfg=cfg_s, mesh=mesh1, batch_size=2, samples=3)[0]
  assert tokens.shape == (6, 6)
  first = sampling.generate(
    params, cfg, data.take([0]), cfg=cfg_s, mesh=mesh1, batch_size=1, samples=3
  )[0]
  np.testing.assert_array_equal(tokens[:3], first)
  assert len({tuple(r) for r in tokens}) > 2


def test_filter_logits_hand_computed():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keep = lambda **kw: np.isfinite(np.asarray(sampling.filter_logits(logits, temperature=1.0, **kw)))
  np.testing.assert_array_equal(keep(top_k=2), [[1, 1, 0, 0]])
  # Nucleus: 0.5 < 0.6, then 0.5 + 0.3 = 0.8 >= 0.6 -> keep the first two.
  np.testing.assert_array_equal(keep(top_p=0.6), [[1, 1, 0, 0]])
  np.testing.assert_array_equal(keep(top_p=0.5), [[1, 0, 0, 0]])  # mass before 2nd is 0.5
  np.testing.assert_array_equal(keep(top_p=0.81), [[1, 1, 1, 0]])
  np.testing.assert_array_equal(keep(top_p=1.0), [[1, 1, 1, 1]])
  halved = sampling.filter_logits(logits, temperature=2.0)
  np.testing.assert_allclose(halved, logits / 2, rtol=1e-6)


def test_sharded_and_seed_vmapped_equal_single(mesh1, mesh4):
  cfg, params = model("neox")
  data = left_padded([5, 2, 4, 1, 3, 5, 2, 4], 5)
  single = run(params, cfg, data, mesh1)
  sharded = run(params, cfg, data, mesh4)
  np.testing.assert_array_equal(single[0], sharded[0])
  np.testing.assert_allclose(single[2], sharded[2], atol=1e-5)
  # FSDP: the MLP kernels (64 x 256) are split over the fsdp axis.
  fsdp_mesh = sharding.make_mesh(4, fsdp=2)
  fsdp_params = jax.device_put(params, sharding.state_sharding(params, fsdp_mesh))
  assert fsdp_params["block_0"]["mlp_in"]["kernel"].sharding.spec != jax.sharding.PartitionSpec()
  fsdp = run(fsdp_params, cfg, data, fsdp_mesh)
  np.testing.assert_array_equal(single[0], fsdp[0])
  other = noisy_params(cfg, seed=2)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, other)
  keys = np.stack([jax.random.key_data(jax.random.key(0))] * 2)
  both = sampling.generate(
    stacked,
    cfg,
    data,
    cfg=SamplingConfig(max_new_tokens=10, eos_id=EOS),
    mesh=mesh4,
    batch_size=8,
    rng=keys,
    seed_axis=True,
  )
  np.testing.assert_array_equal(both[0][0], single[0])
  np.testing.assert_array_equal(both[0][1], run(other, cfg, data, mesh1)[0])


def test_compiled_once_per_shape(mesh1):
  cfg, params = model("gpt2")
  sampling_cfg = SamplingConfig(max_new_tokens=4, eos_id=EOS)
  for seed in range(3):
    sampling.generate(
      params,
      cfg,
      left_padded([3, 1, 2, 3, 2, 1], 3, seed=seed),
      cfg=sampling_cfg,
      mesh=mesh1,
      batch_size=4,
    )
  fn = sampling.compiled_sampler(cfg, sampling_cfg, mesh1, False)
  assert fn._cache_size() == 1


@pytest.mark.parametrize(
  "kwargs, data_len, match",
  [
    (dict(max_new_tokens=4), 25, "prompt length 25 exceeds the context"),
    (dict(max_new_tokens=10), 20, "leave room for 4 new tokens"),
    (dict(max_new_tokens=4, eos_id=VOCAB), 3, f"eos_id={VOCAB}: expected an id in"),
    (dict(max_new_tokens=4, pad_id=-1), 3, "pad_id=-1"),
  ],
)
def test_bad_input_refused_before_compute(kwargs, data_len, match, mesh1):
  cfg, params = model("gpt2")
  data = left_padded([data_len], data_len)
  with pytest.raises(ValueError, match=match):
    sampling.generate(params, cfg, data, cfg=SamplingConfig(**kwargs), mesh=mesh1, batch_size=1)


def test_bad_configs_and_right_padding_refused(mesh1):
  for kwargs, field in (
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"),
  ):
    with pytest.raises(ValueError, match=f"SamplingConfig.{field}"):
      SamplingConfig(**kwargs)
  cfg, params = model("gpt2")
  right = Dataset(prompt=np.array([[5, 6, 0]], np.int32), prompt_mask=np.array([[1, 1, 0]]))
  with pytest.raises(ValueError, match="row 0 ends in padding"):
    run(params, cfg, right, mesh1)
  with pytest.raises(ValueError, match="greedy decoding gives one response"):
    sampling.generate(
      params,
      cfg,
      left_padded([2], 2),
      cfg=SamplingConfig(max_new_tokens=2),
      mesh=mesh1,
      batch_size=1,
      samples=2,
    )


def test_greedy_token_is_argmax_including_ties():
  logits = jnp.array([[0.1, 0.5, 0.5, 0.2], [3.0, -1.0, 3.0, 3.0], [-2.0, -1.0, -3.0, -1.5]])
  np.testing.assert_array_equal(sampling.greedy_token(logits), [1, 0, 1])
  many = jax.random.normal(jax.random.key(0), (64, 1000))
  np.testing.assert_array_equal(sampling.greedy_token(many), jnp.argmax(many, -1))
