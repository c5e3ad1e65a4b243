"""Weak inference returns one row per example; batch streams cover data exactly once."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.data.dataset import Dataset, padded_batches, shuffled_batches
from w2s_jax.models import inference, transformer

from fakes import np_softmax, tiny_model_cfg

VOCAB, T, N = 13, 6, 13


@functools.cache
def _setup():
  cfg = tiny_model_cfg(vocab_size=VOCAB, max_len=T)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, VOCAB, size=(N, T)).astype(np.int32)
  lengths = rng.integers(1, T + 1, size=N)
  mask = np.zeros((N, T), np.int32)
  for i, length in enumerate(lengths):
    if i % 2:
      mask[i, :length] = 1  # right padded
    else:
      mask[i, T - length :] = 1  # left padded
  data = Dataset(tokens=tokens, mask=mask, labels=rng.integers(0, 2, size=N))
  seed_params = []
  for s in range(3):
    p = transformer.init_params(cfg, jax.random.key(s))
    head = p["cls_head"]
    r = np.random.default_rng(10 + s)
    p = {
      **p,
      "cls_head": {
        "kernel": jnp.asarray(r.normal(size=head["kernel"].shape) * 20, jnp.float32),
        "bias": jnp.asarray(r.normal(size=head["bias"].shape), jnp.float32),
      },
    }
    seed_params.append(p)
  model = transformer.Transformer(cfg)
  one = jax.jit(
    lambda p, t, m: model.apply({"params": p}, t, m, method=transformer.Transformer.class_logits)
  )
  return cfg, data, seed_params, one


def _one_at_a_time(params, data, one):
  rows = [
    np.asarray(one(params, data["tokens"][i : i + 1], data["mask"][i : i + 1]))[0]
    for i in range(len(data))
  ]
  return np_softmax(np.stack(rows))


def test_soft_labels_one_row_per_example_uneven_batches(mesh4):
  cfg, data, seed_params, one = _setup()
  probs = inference.soft_labels(seed_params[0], cfg, data, batch_size=4, mesh=mesh4)
  assert probs.shape == (N, 2)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  expected = _one_at_a_time(seed_params[0], data, one)
  np.testing.assert_allclose(probs, expected, atol=1e-5)
  # The head is big enough that the rows really differ (order errors would show).
  assert np.ptp(expected[:, 0]) > 0.05


def test_soft_labels_seed_axis(mesh4):
  cfg, data, seed_params, one = _setup()
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *seed_params)
  probs = inference.soft_labels(stacked, cfg, data, batch_size=4, mesh=mesh4, seed_axis=True)
  assert probs.shape == (3, N, 2)
  for s in range(3):
    np.testing.assert_allclose(probs[s], _one_at_a_time(seed_params[s], data, one), atol=1e-5)
  assert np.abs(probs[0] - probs[1]).max() > 1e-3


def test_soft_labels_rejects_batch_not_multiple_of_devices(mesh4):
  cfg, data, seed_params, _ = _setup()
  with pytest.raises(ValueError, match="inference batch_size=6"):
    inference.soft_labels(seed_params[0], cfg, data, batch_size=6, mesh=mesh4)


def test_next_token_probs_one_row_per_example(mesh4):
  cfg, data, seed_params, _ = _setup()
  probs = inference.next_token_probs(seed_params[0], cfg, data, batch_size=8, mesh=mesh4)
  assert probs.shape == (N, VOCAB)
  model = transformer.Transformer(cfg)
  logits = model.apply(
    {"params": seed_params[0]},
    data["tokens"],
    data["mask"],
    method=transformer.Transformer.last_token_lm_logits,
  )
  np.testing.assert_allclose(probs, np_softmax(np.asarray(logits)), atol=1e-5)


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("n,batch_size", [(13, 4), (12, 4), (3, 8), (1, 1), (10, 3)])
def test_padded_batches_cover_every_example_exactly_once(n, batch_size):
  data = Dataset(idx=np.arange(n), x=np.arange(n) * 10)
  seen = []
  batches = list(padded_batches(data, batch_size=batch_size))
  assert len(batches) == -(-n // batch_size)
  for batch, real in batches:
    assert len(batch) == batch_size
    assert 1 <= real <= batch_size
    seen.extend(batch["idx"][:real].tolist())
    np.testing.assert_array_equal(batch["x"], batch["idx"] * 10)  # fields stay aligned
    # padding repeats the batch's first row
    np.testing.assert_array_equal(batch["idx"][real:], batch["idx"][0])
  assert seen == list(range(n))  # in order, none dropped, none duplicated
  assert sum(real for _, real in batches) == n


def test_shuffled_batches_epochs_are_permutations_and_resumable():
  n, bs = 10, 4
  data = Dataset(idx=np.arange(n))
  stream = shuffled_batches(data, batch_size=bs, seed=3)
  flat = np.concatenate([next(stream)["idx"] for _ in range(5)])  # 20 = 2 epochs
  assert sorted(flat[:10].tolist()) == list(range(n))
  assert sorted(flat[10:].tolist()) == list(range(n))
  # Deterministic in (seed, step), so a resumed stream sees the same batches.
  resumed = shuffled_batches(data, batch_size=bs, seed=3, start_step=3)
  np.testing.assert_array_equal(next(resumed)["idx"], flat[12:16])
  other = np.concatenate(
    [b["idx"] for b in itertools.islice(shuffled_batches(data, batch_size=bs, seed=4), 5)]
  )
  assert not np.array_equal(other, flat)


def test_dataset_validation():
  with pytest.raises(ValueError, match="differ in length"):
    Dataset(a=np.zeros(3), b=np.zeros(4))
  with pytest.raises(ValueError, match="row 1 has no real token"):
    Dataset(tokens=np.ones((2, 3)), mask=np.array([[1, 0, 0], [0, 0, 0]]))
