"""Imported GPT-2 / GPT-NeoX checkpoints reproduce transformers' logits under
padding; broken layouts and malformed checkpoints are caught."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tiny models are built here, never fetched

import functools  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import safetensors.numpy  # noqa: E402
import torch  # noqa: E402  (the test extra installs it; a missing torch is a failure, not a skip)
import transformers  # noqa: E402

from w2s_jax.data.dataset import Dataset  # noqa: E402
from w2s_jax.infra import (
  checkpoints,  # noqa: E402
  sharding,
)
from w2s_jax.models import hf_files, hf_import, hf_weights, sampling, transformer

from fakes import built_once

VOCAB, PAD, SEQ = 50, 49, 8
LENGTHS = (8, 5, 3, 1)
TOL = 1e-4
# A broken layout must miss by far more than TOL, or the parity tests prove nothing.
BROKEN = 1e-2

GPT2 = dict(
  vocab_size=VOCAB,
  n_embd=32,
  n_layer=2,
  n_head=4,
  n_positions=16,
  pad_token_id=PAD,
  bos_token_id=0,
  eos_token_id=0,
)
NEOX = dict(
  vocab_size=VOCAB,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=64,
  max_position_embeddings=16,
  tie_word_embeddings=False,
  pad_token_id=PAD,
  bos_token_id=0,
  eos_token_id=0,
)
# name: (transformers class, config class, config kwargs, compared output)
CASES = {
  "gpt2_lm": ("GPT2LMHeadModel", "GPT2Config", GPT2, "lm"),
  "gpt2_lm_untied": ("GPT2LMHeadModel", "GPT2Config", {**GPT2, "tie_word_embeddings": False}, "lm"),
  "gpt2_cls": ("GPT2ForSequenceClassification", "GPT2Config", {**GPT2, "num_labels": 2}, "cls"),
  "neox_lm_parallel": (
    "GPTNeoXForCausalLM",
    "GPTNeoXConfig",
    {**NEOX, "rotary_pct": 0.25, "use_parallel_residual": True},
    "lm",
  ),
  "neox_lm_sequential": (
    "GPTNeoXForCausalLM",
    "GPTNeoXConfig",
    {**NEOX, "rotary_pct": 0.5, "use_parallel_residual": False},
    "lm",
  ),
  "neox_cls": (
    "GPTNeoXForSequenceClassification",
    "GPTNeoXConfig",
    {**NEOX, "rotary_pct": 0.5, "num_labels": 2},
    "cls",
  ),
}


def _randomise(model, seed, scale=0.1):
  """HF initialises biases to 0 and LayerNorm scales to 1, which would hide a
  misplaced bias or norm; every parameter gets noise instead."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen) * scale
      p.copy_(1.0 + noise if "norm" in name or ".ln_" in name else noise)


def _build(case, folder, seed=0, scale=0.1):
  model_cls, config_cls, kwargs, _ = CASES[case]
  torch.manual_seed(seed)
  config = getattr(transformers, config_cls)(**kwargs)
  model = getattr(transformers, model_cls)(config).eval()
  _randomise(model, seed, scale)
  model.save_pretrained(folder, safe_serialization=True)
  return model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """case -> (HF model, folder), each built once for the module."""
  return built_once(tmp_path_factory, _build)


def padded_batch(side, seed=0):
  rng = np.random.default_rng(seed)
  tokens = np.full((len(LENGTHS), SEQ), PAD, np.int32)
  mask = np.zeros((len(LENGTHS), SEQ), np.int32)
  for row, n in enumerate(LENGTHS):
    real = slice(SEQ - n, SEQ) if side == "left" else slice(0, n)
    # Never PAD, so HF's classifier finds the last real token from the ids.
    tokens[row, real] = rng.integers(0, PAD, n)
    mask[row, real] = 1
  return tokens, mask


def hf_logits(model, tokens, mask):
  ids, attention = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
  positions = (attention.cumsum(-1) - 1).clamp(min=0)  # as positions.positions_from_mask
  with torch.no_grad():
    return model(input_ids=ids, attention_mask=attention, position_ids=positions).logits.numpy()


# Jitted: one compile per case ran the file in 6 s, op-by-op dispatch in 9 s.
@functools.partial(jax.jit, static_argnums=(0, 4))
def _our_logits(cfg, params, tokens, mask, output):
  model = transformer.Transformer(cfg)
  method = model.lm_logits if output == "lm" else model.class_logits
  return model.apply({"params": params}, tokens, mask, method=method)


def our_logits(cfg, params, tokens, mask, output):
  return np.asarray(_our_logits(cfg, params, tokens, mask, output))


def max_diff(case, hf_model, cfg, params, side):
  """Largest |ours - transformers'| over real positions (LM) or rows (classifier)."""
  output = CASES[case][3]
  tokens, mask = padded_batch(side)
  diff = np.abs(our_logits(cfg, params, tokens, mask, output) - hf_logits(hf_model, tokens, mask))
  return float(diff[mask > 0].max() if output == "lm" else diff.max())


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers_under_padding(built, case, side):
  hf_model, folder = built(case)
  cfg, params = hf_import.load_hf_folder(folder)
  assert max_diff(case, hf_model, cfg, params, side) < TOL


GENERATE_LENGTHS, NEW_TOKENS = (7, 4, 2, 5), 8


def _hf_greedy(model, prompt, mask, eos):
  with torch.no_grad():
    out = model.generate(
      torch.tensor(prompt, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
      do_sample=False,
      max_new_tokens=NEW_TOKENS,
      eos_token_id=eos,
      pad_token_id=PAD,
      output_scores=True,
      return_dict_in_generate=True,
    )
  tokens = out.sequences[:, prompt.shape[1] :].numpy()
  logp = torch.log_softmax(torch.stack(out.scores, 1), -1).numpy()
  return tokens, logp


# Seeds and weight scale whose greedy paths vary: with the logit tests' small
# weights (and with GPT-2's tied embeddings) a tiny random model repeats one token.
@pytest.mark.parametrize(
  "case, seed", [("gpt2_lm_untied", 3), ("neox_lm_parallel", 1), ("neox_lm_sequential", 1)]
)
def test_greedy_generation_matches_transformers_generate(case, seed, tmp_path):
  """Token for token, left-padded prompts of different lengths, with EOS."""
  hf_model, folder = _build(case, tmp_path, seed=seed, scale=0.5), tmp_path
  cfg, params = hf_import.load_hf_folder(folder)
  width = max(GENERATE_LENGTHS)
  prompt = np.full((len(GENERATE_LENGTHS), width), PAD, np.int32)
  prompt_mask = np.zeros_like(prompt)
  rng = np.random.default_rng(3)
  for row, n in enumerate(GENERATE_LENGTHS):
    prompt[row, width - n :] = rng.integers(0, PAD, n)
    prompt_mask[row, width - n :] = 1
  # An EOS these random models do emit, but never first: rows then stop mid-way.
  free = _hf_greedy(hf_model, prompt, prompt_mask, eos=None)[0]
  later = [t for t in free[:, 1:].ravel() if t not in free[:, 0]]
  eos = int(np.bincount(later).argmax())
  hf_tokens, hf_logp = _hf_greedy(hf_model, prompt, prompt_mask, eos)
  ours, ours_mask, ours_logp = sampling.generate(
    params,
    cfg,
    Dataset(prompt=prompt, prompt_mask=prompt_mask),
    cfg=sampling.SamplingConfig(max_new_tokens=NEW_TOKENS, eos_id=eos, pad_id=PAD),
    mesh=sharding.make_mesh(1),
    batch_size=len(prompt),
  )
  steps = hf_tokens.shape[1]  # transformers stops once every row is done
  np.testing.assert_array_equal(ours[:, :steps], hf_tokens)
  assert (ours[:, steps:] == PAD).all()
  lengths = ours_mask.sum(1)  # not vacuous: some rows stop on EOS, the rows differ
  assert (lengths < NEW_TOKENS).any() and lengths.min() > 1 and len({tuple(r) for r in ours}) > 1
  for row in range(len(prompt)):
    real = ours_mask[row, :steps] > 0
    expected = hf_logp[row, np.arange(steps), hf_tokens[row]][real]
    np.testing.assert_allclose(ours_logp[row, :steps][real], expected, atol=1e-4)


def test_neox_qkv_left_interleaved_is_detected(built):
  hf_model, folder = built("neox_lm_parallel")
  cfg, params = hf_import.load_hf_folder(folder)
  tensors = hf_files.read_hf_tensors(folder)
  for i in range(cfg.depth):
    name = f"gpt_neox.layers.{i}.attention.query_key_value"
    # As if the fused output were three contiguous blocks, like GPT-2's.
    params[f"block_{i}"]["qkv"] = {
      "kernel": tensors[name + ".weight"].T,
      "bias": tensors[name + ".bias"],
    }
  assert max_diff("neox_lm_parallel", hf_model, cfg, params, "left") > BROKEN


def test_gpt2_score_head_not_transposed_is_detected(built):
  hf_model, folder = built("gpt2_cls")
  cfg, params = hf_import.load_hf_folder(folder)
  score = hf_files.read_hf_tensors(folder)["score.weight"]
  # Same shape as the right kernel, wrong layout: read as if stored (in, out).
  params["cls_head"]["kernel"] = score.reshape(cfg.width, cfg.num_classes)
  assert max_diff("gpt2_cls", hf_model, cfg, params, "right") > BROKEN


def test_prefix_free_and_sharded_checkpoints_give_the_same_params(built, tmp_path):
  hf_model, folder = built("gpt2_lm")
  cfg, params = hf_import.load_hf_folder(folder)
  tensors = hf_files.read_hf_tensors(folder)
  base_model = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  # Small shards force model.safetensors.index.json plus several files.
  hf_model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="40KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  _, sharded = hf_import.load_hf_folder(tmp_path)
  for other in (hf_weights.params_from_hf(base_model, cfg), sharded):
    assert all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(other))
    )


def test_bfloat16_checkpoint_reads_without_torch(built, tmp_path):
  hf_model, _ = built("neox_lm_parallel")
  hf_model.to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
  hf_model.to(torch.float32)
  tensors = hf_files.read_hf_tensors(tmp_path)
  name = "gpt_neox.layers.0.attention.query_key_value.weight"
  expected = hf_model.state_dict()[name].to(torch.bfloat16).float().numpy()
  np.testing.assert_array_equal(tensors[name].astype(np.float32), expected)


def test_orbax_round_trip_keeps_logits_identical(built, tmp_path):
  _, folder = built("neox_cls")
  cfg, params = hf_import.load_hf_folder(folder)
  hf_import.save_as_orbax(tmp_path / "params", params)
  restored = checkpoints.load_params(tmp_path / "params", params)
  tokens, mask = padded_batch("left")
  for output in ("lm", "cls"):
    np.testing.assert_array_equal(
      our_logits(cfg, params, tokens, mask, output), our_logits(cfg, restored, tokens, mask, output)
    )


def test_missing_tensor_is_named(built):
  _, folder = built("gpt2_lm")
  cfg, _ = hf_import.load_hf_folder(folder)
  tensors = hf_files.read_hf_tensors(folder)
  del tensors["transformer.h.1.mlp.c_fc.bias"]
  with pytest.raises(ValueError, match=r"missing tensor 'h\.1\.mlp\.c_fc\.bias'.*\(128,\)"):
    hf_weights.params_from_hf(tensors, cfg)


def test_folder_errors_name_the_file(built, tmp_path):
  # Through load_hf_folder, as a config's pretrained_dirs reaches it: the
  # error says which file of which folder, and what is wrong with it.
  _, folder = built("gpt2_lm")
  mistral = tmp_path / "mistral"
  mistral.mkdir()
  (mistral / "config.json").write_text(json.dumps({"model_type": "mistral", **GPT2}))
  with pytest.raises(
    ValueError,
    match=rf"{mistral}/config.json: HF config model_type='mistral': "
    r"expected one of \['gpt2', 'gpt_neox', 'bert', 'llama', 'qwen2'\]",
  ):
    hf_import.load_hf_folder(mistral)
  # A supported family with a field missing: named, not a KeyError.
  (mistral / "config.json").write_text(json.dumps({"model_type": "bert", **GPT2}))
  with pytest.raises(
    ValueError,
    match=rf"{mistral}/config.json: HF config has no 'hidden_size': "
    "expected it for model_type='bert'",
  ):
    hf_import.load_hf_folder(mistral)
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text((Path(folder) / "config.json").read_text())
  tensors = hf_files.read_hf_tensors(folder)
  del tensors["transformer.h.1.mlp.c_fc.bias"]
  safetensors.numpy.save_file(tensors, broken / "model.safetensors")
  with pytest.raises(
    ValueError,
    match=rf"{broken} \(safetensors\): checkpoint is missing tensor "
    r"'h\.1\.mlp\.c_fc\.bias'",
  ):
    hf_import.load_hf_folder(broken)


def test_bad_shape_is_named(built):
  _, folder = built("neox_lm_sequential")
  cfg, _ = hf_import.load_hf_folder(folder)
  tensors = hf_files.read_hf_tensors(folder)
  tensors["gpt_neox.layers.0.attention.dense.weight"] = np.zeros((32, 31), np.float32)
  with pytest.raises(
    ValueError,
    match=r"'layers\.0\.attention\.dense\.weight' has shape "
    r"\(32, 31\): expected \(32, 32\)",
  ):
    hf_weights.params_from_hf(tensors, cfg)


def test_unexpected_tensor_is_named(built):
  _, folder = built("neox_cls")
  cfg, _ = hf_import.load_hf_folder(folder)
  tensors = hf_files.read_hf_tensors(folder)
  tensors["score.bias"] = np.zeros((2,), np.float32)
  with pytest.raises(ValueError, match=r"unexpected tensors \['score\.bias'\]"):
    hf_weights.params_from_hf(tensors, cfg)


def test_score_head_needs_hidden_head_input(built):
  _, folder = built("gpt2_cls")
  with pytest.raises(ValueError, match="head_input='lm_probs': expected 'hidden'"):
    hf_import.load_hf_folder(folder, head_input="lm_probs")


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_import.load_hf_folder(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", **GPT2}))
  with pytest.raises(FileNotFoundError, match="expected model.safetensors"):
    hf_import.load_hf_folder(tmp_path)


@pytest.mark.parametrize(
  "field, value, match",
  [
    (
      "scale_attn_by_inverse_layer_idx",
      True,
      "scale_attn_by_inverse_layer_idx=True: expected False",
    ),
    ("reorder_and_upcast_attn", True, "reorder_and_upcast_attn=True: expected False"),
    ("activation_function", "relu", "activation_function='relu': expected one of"),
    ("model_type", "mistral", "model_type='mistral': expected one of"),
  ],
)
def test_unrepresentable_gpt2_configs_are_rejected(field, value, match):
  with pytest.raises(ValueError, match=match):
    hf_import.config_from_hf({"model_type": "gpt2", **GPT2, field: value})


def test_neox_rotary_settings_are_read_in_every_spelling():
  # As transformers 4.x wrote Pythia's config.json.
  old = {
    "model_type": "gpt_neox",
    **NEOX,
    "rotary_pct": 0.5,
    "rotary_emb_base": 500.0,
    "use_parallel_residual": False,
    "rope_scaling": None,
  }
  mid = {**old, "partial_rotary_factor": 0.5, "rope_theta": 500.0}
  new = {key: value for key, value in old.items() if key not in ("rotary_pct", "rotary_emb_base")}
  new["rope_parameters"] = {
    "rope_type": "default",
    "partial_rotary_factor": 0.5,
    "rope_theta": 500.0,
  }
  for hf_config in (old, mid, new):
    cfg = hf_import.config_from_hf(hf_config)
    assert (
      cfg.rotary_frac,
      cfg.rotary_base,
      cfg.parallel_residual,
      cfg.mlp_dim,
      cfg.gelu_approximate,
      cfg.tie_embeddings,
    ) == (0.5, 500.0, False, 64, False, False)
  with pytest.raises(ValueError, match="conflicting"):
    hf_import.config_from_hf({**old, "partial_rotary_factor": 0.25})
  with pytest.raises(ValueError, match=r"rope_parameters\.rope_type='linear'"):
    hf_import.config_from_hf({**new, "rope_parameters": {"rope_type": "linear", "factor": 2.0}})


def _tiny_safetensors(path):
  from safetensors.numpy import save_file

  save_file(
    {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float16)}, str(path)
  )
  return path.read_bytes()


def test_a_whole_tiny_safetensors_file_reads(tmp_path):
  _tiny_safetensors(tmp_path / "model.safetensors")
  tensors = hf_files.read_hf_tensors(tmp_path)
  np.testing.assert_array_equal(tensors["a"], np.arange(12).reshape(3, 4))
  assert tensors["b"].dtype == np.float16 and tensors["b"].shape == (5,)


@pytest.mark.parametrize(
  "damage, detail",
  [
    # The header reads, the data is short: the sizes are named.
    (lambda raw: raw[:-3], "file has 175 bytes, its header expects 178"),
    (lambda raw: raw + b"\0\0", "file has 180 bytes, its header expects 178"),
    # Cut inside the header, or a header byte flipped: safetensors' own reason.
    (lambda raw: raw[:40], "invalid header length"),
    (lambda raw: raw[:5], "header too small"),
    (lambda raw: raw[:8] + b"X" + raw[9:], "invalid JSON in header"),
    (lambda raw: raw[:9] + bytes([raw[9] ^ 0xFF]) + raw[10:], "invalid UTF-8 in header"),
  ],
)
def test_a_truncated_or_corrupt_safetensors_file_is_named(tmp_path, damage, detail):
  file = tmp_path / "model.safetensors"
  raw = _tiny_safetensors(file)
  assert len(raw) == 178  # the sizes above are this file's
  file.write_bytes(damage(raw))
  with pytest.raises(ValueError) as caught:
    hf_files.read_hf_tensors(tmp_path)
  message = str(caught.value)
  assert message.startswith(f"{file}: not a readable safetensors file, truncated or corrupt ("), (
    message
  )
  assert detail in message and "re-download it" in message, message


def test_a_corrupt_shard_of_a_sharded_checkpoint_is_named(tmp_path):
  shard = tmp_path / "model-00002-of-00002.safetensors"
  raw = _tiny_safetensors(shard)
  _tiny_safetensors(tmp_path / "model-00001-of-00002.safetensors")
  shard.write_bytes(raw[:150])
  (tmp_path / "model.safetensors.index.json").write_text(
    json.dumps(
      {
        "weight_map": {
          "a": "model-00001-of-00002.safetensors",
          "b": "model-00002-of-00002.safetensors",
        }
      }
    )
  )
  expected = r"not a readable safetensors file.*file has 150 bytes, its header expects 178"
  with pytest.raises(ValueError, match=f"^{re.escape(str(shard))}: {expected}"):
    hf_files.read_hf_tensors(tmp_path)


def test_short_tensor_data_is_named_even_if_safetensors_lets_it_through(tmp_path, monkeypatch):
  file = tmp_path / "model.safetensors"
  _tiny_safetensors(file)
  real = hf_files.safetensors.deserialize
  monkeypatch.setattr(
    hf_files.safetensors,
    "deserialize",
    lambda raw: [
      (name, {**view, "data": view["data"][:-2]} if name == "a" else view)
      for name, view in real(raw)
    ],
  )
  expected = (
    r"tensor 'a' has 46 bytes of data: expected 48 for shape \[3, 4\] F32 "
    r"\(truncated or corrupt\): re-download it"
  )
  with pytest.raises(ValueError, match=f"^{re.escape(str(file))}: {expected}"):
    hf_files.read_hf_tensors(tmp_path)


@pytest.mark.parametrize(
  "content, match",
  [
    (
      '{"weight_map": {"a": "model-00001',
      r"not valid JSON \(.*\): expected a safetensors index; "
      r"the file is truncated or corrupt: re-download it",
    ),
    ("[1, 2]", r"a JSON list: expected a safetensors index \(a JSON object\)"),
    ('{"metadata": {}}', r"weight_map=None: expected an object mapping each tensor name"),
    ('{"weight_map": {"a": 3}}', r"weight_map=\{'a': 3\}: expected an object mapping"),
  ],
)
def test_a_bad_safetensors_index_is_named(tmp_path, content, match):
  index = tmp_path / "model.safetensors.index.json"
  index.write_text(content)
  with pytest.raises(ValueError, match=rf"^{re.escape(str(index))}: {match}"):
    hf_files.read_hf_tensors(tmp_path)


def test_a_config_json_that_is_not_json_is_named(tmp_path):
  config = tmp_path / "config.json"
  config.write_text('{"model_type": "gpt2", "n_embd"')
  expected = r"not valid JSON .*: expected a transformers config\.json; the file is truncated"
  with pytest.raises(ValueError, match=f"^{re.escape(str(config))}: {expected}"):
    hf_files.read_config(tmp_path)
