"""The Llama / Qwen2 family in the one model path: RMSNorm, SwiGLU, grouped-query
attention, full rotary embeddings with the checkpoint's rope_theta, Qwen2's
q/k/v biases; parity with transformers on tiny random models saved by the test."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from w2s_jax.data.dataset import Dataset
from w2s_jax.infra import sharding
from w2s_jax.models import hf_import, sampling, transformer
from w2s_jax.training import lora

from fakes import built_once

VOCAB, PAD = 64, 0
# (transformers classes, tie_word_embeddings): GQA with 2 key/value heads for 4 query heads.
CASES = {
  "llama_untied": (transformers.LlamaForCausalLM, transformers.LlamaConfig, False),
  "llama_tied": (transformers.LlamaForCausalLM, transformers.LlamaConfig, True),
  "qwen2_untied": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config, False),
  "qwen2_tied": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config, True),
}


def _build(case, folder, *, seed=0, scale=None):
  model_class, config_class, tie = CASES[case]
  torch.manual_seed(seed)
  config = config_class(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
    tie_word_embeddings=tie,
    rope_theta=500.0,
    pad_token_id=PAD,
  )
  model = model_class(config).eval()
  with torch.no_grad():
    for layer in model.model.layers:
      for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
        if proj.bias is not None:  # Qwen2: biases that matter, not zeros
          proj.bias.normal_(0, 0.1)
    if scale:  # larger weights: greedy paths that vary between tokens
      for p in model.parameters():
        if p.dim() == 2:
          p.mul_(scale / 0.02)
  model.save_pretrained(folder, safe_serialization=True)
  return model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return built_once(tmp_path_factory, _build)


def _padded(side, lengths=(10, 6, 3, 1), width=10, seed=0):
  rng = np.random.default_rng(seed)
  tokens = np.full((len(lengths), width), PAD, np.int32)
  mask = np.zeros_like(tokens)
  for row, n in enumerate(lengths):
    where = slice(0, n) if side == "right" else slice(width - n, width)
    tokens[row, where] = rng.integers(1, VOCAB, n)
    mask[row, where] = 1
  return tokens, mask


def _hf_logits(model, tokens, mask):
  # transformers' positions count from the first column; right padding makes
  # them count real tokens, as w2s_jax's do under either padding.
  right_tokens, right_mask = _padded("right")
  assert (mask.sum(1) == right_mask.sum(1)).all()
  with torch.no_grad():
    logits = model(
      input_ids=torch.tensor(right_tokens, dtype=torch.long),
      attention_mask=torch.tensor(right_mask, dtype=torch.long),
    ).logits.numpy()
  out = np.zeros_like(logits)
  for row in range(len(mask)):  # right-padded rows placed where ours sit
    out[row, mask[row] > 0] = logits[row, right_mask[row] > 0]
  return out


def _ours(cfg, params, tokens, mask):
  return np.asarray(
    transformer.Transformer(cfg).apply(
      {"params": params},
      jnp.asarray(tokens),
      jnp.asarray(mask),
      method=transformer.Transformer.lm_logits,
    )
  )


@pytest.mark.parametrize("attention", ["explicit", "fused"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(built, case, side, attention):
  hf_model, folder = built(case)
  cfg, params = hf_import.load_hf_folder(folder)
  cfg = dataclasses.replace(cfg, attention=attention)
  assert (cfg.kv_heads, cfg.norm, cfg.mlp, cfg.rotary_frac, cfg.rotary_base) == (
    2,
    "rmsnorm",
    "swiglu",
    1.0,
    500.0,
  )
  assert cfg.qkv_bias == case.startswith("qwen2") and not cfg.attn_out_bias
  assert transformer.count_params(params) == cfg.num_params
  tokens, mask = _padded(side)
  diff = np.abs(_ours(cfg, params, tokens, mask) - _hf_logits(hf_model, tokens, mask))
  assert diff[mask > 0].max() < 1e-4


def test_a_wrong_key_value_head_order_misses_badly(built):
  # Query head i reads key/value head i // 2 (transformers' repeat_kv); tiling
  # the heads instead (i % 2) is the classic GQA bug, and it shows.
  hf_model, folder = built("llama_untied")
  cfg, params = hf_import.load_hf_folder(folder)
  tokens, mask = _padded("right")
  ref = _hf_logits(hf_model, tokens, mask)
  d, hd = cfg.width, cfg.head_dim
  wrong = jax.tree.map(np.array, params)
  for i in range(cfg.depth):
    kernel = wrong[f"block_{i}"]["qkv"]["kernel"]
    q = kernel[:, :d].reshape(d, 2, 2, hd)  # (kv group, member) -> (member, kv group)
    kernel[:, :d] = q.transpose(0, 2, 1, 3).reshape(d, d)
  off = np.abs(_ours(cfg, wrong, tokens, mask) - ref)[mask > 0].max()
  right = np.abs(_ours(cfg, params, tokens, mask) - ref)[mask > 0].max()
  assert right < 1e-4 and off > 100 * right and off > 1e-3


def test_greedy_generation_with_a_grouped_kv_cache_matches_transformers(tmp_path):
  hf_model = _build("qwen2_untied", tmp_path, seed=1, scale=0.5)
  cfg, params = hf_import.load_hf_folder(tmp_path)
  assert transformer.init_cache(cfg, 2, 8)[0]["k"].shape == (2, 2, 8, cfg.head_dim)  # kv heads only
  prompt, prompt_mask = _padded("left", lengths=(7, 4, 2, 5), width=7, seed=3)
  with torch.no_grad():
    out = hf_model.generate(
      torch.tensor(prompt, dtype=torch.long),
      attention_mask=torch.tensor(prompt_mask, dtype=torch.long),
      do_sample=False,
      max_new_tokens=6,
      pad_token_id=PAD,
      eos_token_id=None,
    )
  expected = out[:, prompt.shape[1] :].numpy()
  ours, _, _ = sampling.generate(
    params,
    cfg,
    Dataset(prompt=prompt, prompt_mask=prompt_mask),
    cfg=sampling.SamplingConfig(max_new_tokens=6, eos_id=None, pad_id=PAD),
    mesh=sharding.make_mesh(1),
    batch_size=len(prompt),
  )
  np.testing.assert_array_equal(ours, expected)
  assert len({tuple(r) for r in ours}) > 1  # not vacuous: the rows differ


@pytest.mark.parametrize(
  "change,message",
  [
    (
      {"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 8.0}},
      r"rope_parameters.rope_type='yarn': expected one of \['default', 'llama3'\]",
    ),
    (
      {"rope_scaling": {"type": "linear", "factor": 2.0}},
      r"rope_scaling.rope_type='linear': expected one of \['default', 'llama3'\]",
    ),
    (
      {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
      r"rope_parameters \(rope_type 'llama3'\) has no \['low_freq_factor'",
    ),
    ({"num_key_value_heads": 3}, "num_attention_heads=4 is not divisible by num_key_value_heads=3"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu': expected 'silu'"),
    ({"use_sliding_window": True}, "use_sliding_window=True: expected False"),
    ({"head_dim": 16}, "head_dim=16: expected hidden_size / num_attention_heads = 8"),
  ],
)
def test_unsupported_llama_configs_are_named(built, tmp_path, change, message):
  _, folder = built("llama_untied")
  config = json.loads((folder / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
  with pytest.raises(ValueError, match=rf"{tmp_path}/config.json: HF config {message}"):
    hf_import.folder_config(tmp_path)


def test_llama3_rope_scaling_matches_transformers(tmp_path):
  torch.manual_seed(2)
  # An original context of 16 puts the head's 4 wavelengths (6, 30, 142, 664
  # positions at theta 500) in every band: kept, interpolated, slowed.
  config = transformers.LlamaConfig(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
    pad_token_id=PAD,
    rope_parameters={
      "rope_type": "llama3",
      "rope_theta": 500.0,
      "factor": 8.0,
      "low_freq_factor": 1.0,
      "high_freq_factor": 4.0,
      "original_max_position_embeddings": 16,
    },
  )
  hf_model = transformers.LlamaForCausalLM(config).eval()
  hf_model.save_pretrained(tmp_path, safe_serialization=True)
  cfg, params = hf_import.load_hf_folder(tmp_path)
  assert cfg.rope_scaling == ("llama3", 8.0, 1.0, 4.0, 16.0)
  tokens, mask = _padded("left")
  ref = _hf_logits(hf_model, tokens, mask)
  assert np.abs(_ours(cfg, params, tokens, mask) - ref)[mask > 0].max() < 1e-4
  unscaled = _ours(dataclasses.replace(cfg, rope_scaling=None), params, tokens, mask)
  assert np.abs(unscaled - ref)[mask > 0].max() > 1e-3  # the scaling is not vacuous


@pytest.mark.parametrize("side", ["left", "right"])
def test_fused_attention_equals_explicit_under_grouped_queries(built, side):
  _, folder = built("qwen2_untied")
  cfg, params = hf_import.load_hf_folder(folder)
  tokens, mask = _padded(side)
  explicit = _ours(dataclasses.replace(cfg, attention="explicit"), params, tokens, mask)
  fused = _ours(dataclasses.replace(cfg, attention="fused"), params, tokens, mask)
  assert np.abs(explicit - fused)[mask > 0].max() < 1e-5


def test_qwen_config_trains_the_strong_model_with_lora():
  from pathlib import Path

  from w2s_jax.infra import configs

  root = Path(__file__).resolve().parents[1]
  cfg = configs.load(
    f"{root}/configs/qwen_w2s.py:models=/m,weak=Qwen2.5-0.5B,lora=8,lora_targets=all"
  )
  assert (cfg.finetune.lora_rank, cfg.finetune.lora_targets) == (8, lora.TARGETS)
  assert cfg.weak_finetune.lora_rank == 0 and (cfg.dtype, cfg.remat) == ("bfloat16", True)
  assert dict(cfg.pretrained_dirs) == {
    "Qwen2.5-0.5B": "/m/Qwen2.5-0.5B",
    "Qwen2.5-7B": "/m/Qwen2.5-7B",
  }
  with pytest.raises(ValueError, match="lora_targets='qk': expected one of"):
    configs.load(f"{root}/configs/qwen_w2s.py:models=/m,lora_targets=qk")
