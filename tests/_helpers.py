"""Shared helpers for the tests (conftest.py has already set XLA_FLAGS)."""

import numpy as np

from w2s_jax import models


def tiny_model_cfg(head_input="lm_probs", vocab_size=11, max_len=8, size="pico"):
  return models.decode_size(size, vocab_size=vocab_size, max_len=max_len,
                            head_input=head_input)


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def built_once(tmp_path_factory, build):
  """case -> (model, folder): build(case, folder) saves a reference model
  into a fresh folder, once per case for the module's tests."""
  cache = {}

  def get(case):
    if case not in cache:
      folder = tmp_path_factory.mktemp(case)
      cache[case] = (build(case, folder), folder)
    return cache[case]

  return get
