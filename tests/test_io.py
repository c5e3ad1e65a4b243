"""Orbax checkpoints, the pretrained cache, and atomic result files."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from w2s_jax.infra import checkpoints, files
from w2s_jax.infra.fingerprint import digest, fingerprint
from w2s_jax.models import transformer
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import tables

from fakes import tiny_model_cfg


@pytest.fixture(scope="module")
def params():
  return transformer.init_params(tiny_model_cfg(vocab_size=9, max_len=5), jax.random.key(0))


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_load_params_round_trip(tmp_path, params):
  checkpoints.save_params(tmp_path / "ckpt", params)
  restored = checkpoints.load_params(tmp_path / "ckpt", params)
  _assert_same(restored, params)
  # restoring onto abstract shapes works too
  abstract = jax.eval_shape(lambda: params)
  _assert_same(checkpoints.load_params(tmp_path / "ckpt", abstract), params)
  # saving again overwrites (force=True)
  doubled = jax.tree.map(lambda x: 2 * x, params)
  checkpoints.save_params(tmp_path / "ckpt", doubled)
  _assert_same(checkpoints.load_params(tmp_path / "ckpt", params), doubled)


def test_pretrained_cache(tmp_path, params):
  cache = checkpoints.PretrainedCache(tmp_path / "cache")
  assert cache.load("pico", "abc", params) == (None, None)
  info = {"steps": 3, "lives": 0.5}
  cache.save("pico", "abc", params, info)
  got, got_info = cache.load("pico", "abc", params)
  _assert_same(got, params)
  assert got_info == info
  assert cache.load("pico", "other", params) == (None, None)
  # an entry without info.json is incomplete: not read
  (tmp_path / "cache" / "pico-abc" / "info.json").unlink()
  assert cache.load("pico", "abc", params) == (None, None)


def test_cache_key_stable_and_sensitive():
  cfg = tiny_model_cfg(vocab_size=9)
  k = digest({"model": cfg, "seed": 0})
  assert k == digest({"seed": 0, "model": tiny_model_cfg(vocab_size=9)})
  assert k != digest({"model": cfg, "seed": 1})
  assert k != digest({"model": tiny_model_cfg(vocab_size=10), "seed": 0})
  assert len(k) == 16 and int(k, 16) >= 0


def test_fingerprint_is_explicit_field_by_field():
  """Every field by name (never repr); WHEN_SET fields only once set; IGNORED never."""
  cfg = tiny_model_cfg(vocab_size=9)
  print_ = fingerprint(cfg)
  assert print_["type"] == "ModelConfig" and print_["vocab_size"] == 9
  assert "attention" not in print_ and "kv_heads" not in print_
  assert fingerprint(dataclasses.replace(cfg, kv_heads=1))["kv_heads"] == 1
  assert digest(dataclasses.replace(cfg, attention="fused")) == digest(cfg)
  assert fingerprint(OptimConfig()).keys().isdisjoint({"lora_rank", "lora_alpha"})
  assert fingerprint(OptimConfig(lora_rank=4))["lora_rank"] == 4
  assert fingerprint(Xent(temperature=2.0)) == {"type": "Xent", "temperature": 2.0, "name": "xent"}
  with pytest.raises(TypeError, match="not config data"):
    fingerprint(object())


def _temp_files(directory):
  return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_write_json_atomic_no_temp_files_and_overwrite(tmp_path):
  path = tmp_path / "sub" / "results.json"
  files.write_json_atomic(path, {"a": 1, "b": [1.5, math.nan]})
  first = json.loads(path.read_text())
  assert first["a"] == 1 and math.isnan(first["b"][1])
  assert _temp_files(path.parent) == []

  # A reader that opened the old file keeps seeing the whole old file: the new one
  # replaces it by rename, never by rewriting it in place.
  with open(path) as reader:
    files.write_json_atomic(path, {"a": 2})
    assert json.loads(reader.read())["a"] == 1
  assert json.loads(path.read_text()) == {"a": 2}
  assert _temp_files(path.parent) == []
  assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_write_json_atomic_failure_keeps_old_file(tmp_path):
  path = tmp_path / "results.json"
  files.write_json_atomic(path, {"a": 1})
  with pytest.raises(TypeError):
    files.write_json_atomic(path, {"a": object()})
  assert json.loads(path.read_text()) == {"a": 1}
  assert _temp_files(tmp_path) == []


def test_summary_table_and_versions():
  stat = {"mean": 0.5, "lo": 0.25, "hi": 0.75}
  table = tables.summary_table(
    [
      {
        "method": "xent",
        "weak": stat,
        "w2s": stat,
        "ceiling": stat,
        "pgr": {"mean": 0.5, "lo": -0.125, "hi": 1.0},
      }
    ]
  )
  lines = table.splitlines()
  assert lines[0].split() == ["method", "Pweak", "Pweak->strong", "Pceiling", "PGR"]
  assert "0.500 [0.250, 0.750]" in lines[2]
  assert "0.50 [-0.12, 1.00]" in lines[2] or "0.50 [-0.13, 1.00]" in lines[2]
  versions = files.package_versions()
  assert versions["jax"] == jax.__version__
