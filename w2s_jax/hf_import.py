"""Import pretrained GPT-2, GPT-NeoX (Pythia) and BERT checkpoints from a local
Hugging Face folder (config.json + safetensors) into w2s_jax params.

Reading (hf_files.py) needs neither torch nor transformers: config.json is a
plain dict and the weights come through `safetensors`. Layout facts the
conversion rests on:

* GPT-2's projections are `Conv1D` modules whose weights are already stored
  (in, out), as flax's Dense kernel is, so they are copied as they are. The
  sequence-classification `score` head is an `nn.Linear`, stored (out, in),
  so it is transposed.
* GPT-2's fused `c_attn` output is three contiguous blocks [q | k | v], each
  (heads, head_dim): the same layout as w2s_jax's `qkv` (see
  `Block._attention`, which reshapes to (batch, seq, 3, heads, head_dim)).
* Every GPT-NeoX projection is an `nn.Linear`, stored (out, in), so each is
  transposed. Its fused `query_key_value` output is interleaved per head,
  (heads, 3, head_dim), so its rows are permuted into [q | k | v].
* BERT's projections are `nn.Linear` too; its separate query, key and value
  outputs are each (heads, head_dim), so their transposes are concatenated
  into [q | k | v]. Its blocks are post-LN: `attention.output.LayerNorm`
  follows the attention residual (w2s_jax's `ln_attn`), `output.LayerNorm`
  the MLP residual (`ln_mlp`), and `embeddings.LayerNorm` the embeddings.
  Pretraining heads (`cls.*`) are dropped; `classifier` (Linear, with bias)
  becomes the classification head, which reads BERT's pooler.
* LM-head, base and sequence-classification models differ only in a key prefix
  (`transformer.` / `gpt_neox.`) and in which head they carry (GPT-2
  `lm_head`, NeoX `embed_out` or `lm_head`, both families `score`). A missing
  head starts at zero, as w2s_jax starts a fresh classifier head; HF's `score`
  has no bias, so the classifier bias is zero.

GPT-NeoX checkpoints written by transformers 4.x name the rotary settings
`rotary_pct` / `rotary_emb_base` (later also `partial_rotary_factor` /
`rope_theta`); 5.x nests them in `rope_parameters`. All spellings are read.
Dropout rates are not imported: w2s_jax sets dropout per run.
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax import checkpoints
from w2s_jax.hf_files import (  # noqa: F401 -- read_* re-exported
    read_config, read_hf_tensors, sentence_pooling)
from w2s_jax.models import ModelConfig, init_params

# HF activation name -> ModelConfig.gelu_approximate. gelu_new, gelu_fast and
# gelu_pytorch_tanh are all the tanh approximation; "gelu" is the exact erf form.
_GELU_APPROXIMATE = {"gelu": False, "gelu_new": True, "gelu_fast": True,
                     "gelu_pytorch_tanh": True}

# Defaults of transformers' config classes, for config.json files that omit a field.
_GPT2_DEFAULTS = {
    "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False, "add_cross_attention": False,
    "tie_word_embeddings": True,
}
_NEOX_DEFAULTS = {
    "hidden_act": "gelu", "layer_norm_eps": 1e-5, "use_parallel_residual": True,
    "tie_word_embeddings": False, "attention_bias": True,
}
_NEOX_ROTARY_FRAC_DEFAULT = 0.25
_NEOX_ROTARY_BASE_DEFAULT = 10000.0

_BERT_DEFAULTS = {
    "hidden_act": "gelu", "layer_norm_eps": 1e-12, "type_vocab_size": 2,
    "position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False,
}

_PREFIX = {"gpt2": "transformer.", "gpt_neox": "gpt_neox.", "bert": "bert."}
MODEL_TYPES = tuple(_PREFIX)

# Non-persistent buffers (causal masks, rotary frequencies) that older
# transformers versions wrote into checkpoints; they carry no learned weights.
_BUFFERS = re.compile(
    r"(h\.\d+\.attn\.(bias|masked_bias)"
    r"|layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)"
    r"|rotary_emb\.inv_freq"
    r"|embeddings\.position_ids)")

def _expect(hf_config: dict, field: str, expected, why: str) -> None:
  value = hf_config.get(field, expected)
  if value != expected:
    raise ValueError(f"HF config {field}={value!r}: expected {expected!r} ({why})")


def _activation(hf_config: dict, field: str) -> bool:
  name = hf_config[field]
  if name not in _GELU_APPROXIMATE:
    raise ValueError(f"HF config {field}={name!r}: expected one of {sorted(_GELU_APPROXIMATE)}")
  return _GELU_APPROXIMATE[name]


def _one_spelling(places: list[tuple[str, dict]], default):
  """The value of a setting that transformers versions store under different
  names; two spellings that disagree are an error, not a silent choice."""
  found = {name: where[name] for name, where in places if name in where}
  if len(set(found.values())) > 1:
    raise ValueError(f"HF config gives conflicting values {found}: expected one value")
  return next(iter(found.values()), default)


def _neox_rotary(hf_config: dict) -> tuple[float, float]:
  rope = hf_config.get("rope_parameters") or {}
  scaling = hf_config.get("rope_scaling") or {}
  for name, params in (("rope_parameters", rope), ("rope_scaling", scaling)):
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
      raise ValueError(f"HF config {name}.rope_type={rope_type!r}: expected 'default' "
                       "(w2s_jax implements unscaled rotary embeddings only)")
  frac = _one_spelling([("partial_rotary_factor", rope), ("partial_rotary_factor", hf_config),
                        ("rotary_pct", hf_config)], _NEOX_ROTARY_FRAC_DEFAULT)
  base = _one_spelling([("rope_theta", rope), ("rope_theta", hf_config),
                        ("rotary_emb_base", hf_config)], _NEOX_ROTARY_BASE_DEFAULT)
  return float(frac), float(base)


def _learned_positions(max_len, positions, field):
  max_len = positions if max_len is None else max_len
  if max_len > positions:
    raise ValueError(f"max_len={max_len}: expected <= HF config {field}={positions} "
                     "(the model has one learned embedding per position)")
  return max_len


def config_from_hf(hf_config: dict, *, num_classes: int = 2, head_input: str = "hidden",
                   max_len: int | None = None, pooling: str | None = None) -> ModelConfig:
  """A transformers config.json (as a dict) -> ModelConfig. max_len defaults to
  the checkpoint's context length; pooling (encoders only) to BERT's pooler,
  "cls"."""
  try:
    return _config_from_hf(hf_config, num_classes=num_classes, head_input=head_input,
                           max_len=max_len, pooling=pooling)
  except KeyError as e:
    raise ValueError(f"HF config has no {e.args[0]!r}: expected it for "
                     f"model_type={hf_config.get('model_type')!r}") from None


def _config_from_hf(hf_config, *, num_classes, head_input, max_len, pooling):
  model_type = hf_config.get("model_type")
  if pooling is not None and model_type != "bert":
    raise ValueError(f"pooling={pooling!r} for model_type={model_type!r}: expected None "
                     "(decoders read their last real token)")
  if model_type == "bert":
    hf_config = {**_BERT_DEFAULTS, **hf_config}
    _expect(hf_config, "position_embedding_type", "absolute",
            "w2s_jax's encoders have learned absolute positions")
    _expect(hf_config, "is_decoder", False, "a BERT decoder is not supported")
    _expect(hf_config, "add_cross_attention", False, "w2s_jax has no cross-attention")
    return ModelConfig(
        vocab_size=hf_config["vocab_size"], width=hf_config["hidden_size"],
        depth=hf_config["num_hidden_layers"], heads=hf_config["num_attention_heads"],
        max_len=_learned_positions(max_len, hf_config["max_position_embeddings"],
                                   "max_position_embeddings"),
        mlp_dim=hf_config["intermediate_size"], num_classes=num_classes,
        head_input=head_input, positions="learned", tie_embeddings=True,
        ln_eps=float(hf_config["layer_norm_eps"]),
        gelu_approximate=_activation(hf_config, "hidden_act"), causal=False, post_ln=True,
        type_vocab_size=int(hf_config["type_vocab_size"]), pooling=pooling or "cls")
  if model_type == "gpt2":
    hf_config = {**_GPT2_DEFAULTS, **hf_config}
    _expect(hf_config, "scale_attn_weights", True, "w2s_jax scales scores by 1/sqrt(head_dim)")
    _expect(hf_config, "scale_attn_by_inverse_layer_idx", False,
            "w2s_jax does not scale attention by layer index")
    _expect(hf_config, "reorder_and_upcast_attn", False,
            "w2s_jax has no reordered/upcast attention path")
    _expect(hf_config, "add_cross_attention", False, "w2s_jax is decoder-only")
    max_len = _learned_positions(max_len, hf_config["n_positions"], "n_positions")
    return ModelConfig(
        vocab_size=hf_config["vocab_size"], width=hf_config["n_embd"],
        depth=hf_config["n_layer"], heads=hf_config["n_head"], max_len=max_len,
        mlp_dim=hf_config["n_inner"] or 4 * hf_config["n_embd"],
        num_classes=num_classes, head_input=head_input, positions="learned",
        parallel_residual=False, tie_embeddings=bool(hf_config["tie_word_embeddings"]),
        ln_eps=float(hf_config["layer_norm_epsilon"]),
        gelu_approximate=_activation(hf_config, "activation_function"))
  if model_type == "gpt_neox":
    hf_config = {**_NEOX_DEFAULTS, **hf_config}
    _expect(hf_config, "attention_bias", True, "w2s_jax's attention projections have biases")
    rotary_frac, rotary_base = _neox_rotary(hf_config)
    return ModelConfig(
        vocab_size=hf_config["vocab_size"], width=hf_config["hidden_size"],
        depth=hf_config["num_hidden_layers"], heads=hf_config["num_attention_heads"],
        max_len=hf_config["max_position_embeddings"] if max_len is None else max_len,
        mlp_dim=hf_config["intermediate_size"], num_classes=num_classes,
        head_input=head_input, positions="rotary", rotary_frac=rotary_frac,
        rotary_base=rotary_base,
        parallel_residual=bool(hf_config["use_parallel_residual"]),
        tie_embeddings=bool(hf_config["tie_word_embeddings"]),
        ln_eps=float(hf_config["layer_norm_eps"]),
        gelu_approximate=_activation(hf_config, "hidden_act"))
  raise ValueError(f"HF config model_type={model_type!r}: expected one of {list(MODEL_TYPES)}")


def _strip_prefix(tensors: dict, prefix: str) -> dict:
  """LM-head and classification models prefix the body's keys; base models don't."""
  stripped = {}
  for name, array in tensors.items():
    short = name.removeprefix(prefix)
    if short in stripped:
      raise ValueError(f"checkpoint has both {short!r} and {prefix + short!r}: expected one")
    stripped[short] = array
  return stripped


def _reader(tensors: dict):
  """take(name, shape): the float32 tensor, checked; used: names taken so far."""
  used = set()

  def take(name, shape):
    if name not in tensors:
      raise ValueError(f"checkpoint is missing tensor {name!r}: expected shape {shape} "
                       f"(it holds {len(tensors)} tensors, e.g. {sorted(tensors)[:3]})")
    array = tensors[name]
    if tuple(array.shape) != tuple(shape):
      raise ValueError(f"tensor {name!r} has shape {tuple(array.shape)}: expected {tuple(shape)}")
    used.add(name)
    return np.asarray(array, dtype=np.float32)

  return take, used


def _layer_norm(take, name, width):
  return {"scale": take(f"{name}.weight", (width,)), "bias": take(f"{name}.bias", (width,))}


def _conv1d(take, name, d_in, d_out):
  return {"kernel": take(f"{name}.weight", (d_in, d_out)), "bias": take(f"{name}.bias", (d_out,))}


def _linear(take, name, d_in, d_out):
  return {"kernel": take(f"{name}.weight", (d_out, d_in)).T,
          "bias": take(f"{name}.bias", (d_out,))}


def neox_qkv_to_blocks(weight: np.ndarray, bias: np.ndarray, heads: int):
  """NeoX query_key_value (out=(heads, 3, head_dim), in) -> kernel (in, [q|k|v])
  and bias [q|k|v], each block (heads, head_dim)."""
  three_d, d = weight.shape
  head_dim = three_d // (3 * heads)
  kernel = weight.reshape(heads, 3, head_dim, d).transpose(1, 0, 2, 3).reshape(three_d, d).T
  bias = bias.reshape(heads, 3, head_dim).transpose(1, 0, 2).reshape(three_d)
  return kernel, bias


def _gpt2_body(take, tensors, cfg):
  d, m = cfg.width, cfg.hidden_mlp
  # A max_len shorter than the checkpoint's context keeps the first rows of wpe.
  rows = getattr(tensors.get("wpe.weight"), "shape", (cfg.max_len,))[0]
  pos_embed = take("wpe.weight", (max(rows, cfg.max_len), d))[:cfg.max_len]
  params = {"embed": {"embedding": take("wte.weight", (cfg.vocab_size, d))},
            "pos_embed": pos_embed, "ln_final": _layer_norm(take, "ln_f", d)}
  for i in range(cfg.depth):
    p = f"h.{i}."
    params[f"block_{i}"] = {
        "ln_attn": _layer_norm(take, p + "ln_1", d),
        "qkv": _conv1d(take, p + "attn.c_attn", d, 3 * d),
        "attn_out": _conv1d(take, p + "attn.c_proj", d, d),
        "ln_mlp": _layer_norm(take, p + "ln_2", d),
        "mlp_in": _conv1d(take, p + "mlp.c_fc", d, m),
        "mlp_out": _conv1d(take, p + "mlp.c_proj", m, d),
    }
  return params, ("lm_head.weight",), "wte.weight"


def _neox_body(take, tensors, cfg):
  d, m = cfg.width, cfg.hidden_mlp
  params = {"embed": {"embedding": take("embed_in.weight", (cfg.vocab_size, d))},
            "ln_final": _layer_norm(take, "final_layer_norm", d)}
  for i in range(cfg.depth):
    p = f"layers.{i}."
    kernel, bias = neox_qkv_to_blocks(
        take(p + "attention.query_key_value.weight", (3 * d, d)),
        take(p + "attention.query_key_value.bias", (3 * d,)), cfg.heads)
    params[f"block_{i}"] = {
        "ln_attn": _layer_norm(take, p + "input_layernorm", d),
        "qkv": {"kernel": kernel, "bias": bias},
        "attn_out": _linear(take, p + "attention.dense", d, d),
        "ln_mlp": _layer_norm(take, p + "post_attention_layernorm", d),
        "mlp_in": _linear(take, p + "mlp.dense_h_to_4h", d, m),
        "mlp_out": _linear(take, p + "mlp.dense_4h_to_h", m, d),
    }
  # transformers 4.x and 5.x both write `embed_out`; 5.x's module is `lm_head`.
  return params, ("embed_out.weight", "lm_head.weight"), "embed_in.weight"


def _bert_body(take, tensors, cfg):
  d, m = cfg.width, cfg.hidden_mlp
  rows = getattr(tensors.get("embeddings.position_embeddings.weight"), "shape", (cfg.max_len,))[0]
  e = "embeddings."
  params = {"embed": {"embedding": take(e + "word_embeddings.weight", (cfg.vocab_size, d))},
            "pos_embed": take(e + "position_embeddings.weight", (max(rows, cfg.max_len), d))[
                :cfg.max_len],
            "type_embed": take(e + "token_type_embeddings.weight", (cfg.type_vocab_size, d)),
            "ln_embed": _layer_norm(take, e + "LayerNorm", d)}
  for i in range(cfg.depth):
    p = f"encoder.layer.{i}."
    q, k, v = (_linear(take, f"{p}attention.self.{name}", d, d) for name in ("query", "key", "value"))
    params[f"block_{i}"] = {
        "qkv": {"kernel": np.concatenate([q["kernel"], k["kernel"], v["kernel"]], axis=1),
                "bias": np.concatenate([q["bias"], k["bias"], v["bias"]])},
        "attn_out": _linear(take, p + "attention.output.dense", d, d),
        "ln_attn": _layer_norm(take, p + "attention.output.LayerNorm", d),
        "mlp_in": _linear(take, p + "intermediate.dense", d, m),
        "mlp_out": _linear(take, p + "output.dense", m, d),
        "ln_mlp": _layer_norm(take, p + "output.LayerNorm", d),
    }
  if cfg.pooling == "cls":
    params["pooler"] = _linear(take, "pooler.dense", d, d)
  elif "classifier.weight" in tensors:
    raise ValueError(f"checkpoint has a 'classifier' head, which reads BERT's pooler, but "
                     f"ModelConfig.pooling={cfg.pooling!r}: expected 'cls'")
  if "classifier.weight" in tensors:
    params["cls_head"] = _linear(take, "classifier", d, cfg.num_classes)
  else:
    params["cls_head"] = {"kernel": np.zeros((d, cfg.num_classes), np.float32),
                          "bias": np.zeros((cfg.num_classes,), np.float32)}
  # Unused by a classifier: BERT's pretraining heads, and the pooler when
  # the model pools by mean.
  ignored = [name for name in tensors if name.startswith("cls.")
             or (cfg.pooling != "cls" and name.startswith("pooler."))]
  return params, ignored


def _lm_head(take, tensors, cfg, head_names, embed_name):
  present = [name for name in head_names if name in tensors]
  if len(present) > 1:
    raise ValueError(f"checkpoint has LM heads {present}: expected at most one")
  shape = (cfg.vocab_size, cfg.width)
  if cfg.tie_embeddings:
    # Some writers keep the tied copy; accept it only if it really is tied.
    if present and not np.array_equal(take(present[0], shape), tensors[embed_name]):
      raise ValueError(f"tensor {present[0]!r} differs from {embed_name!r}, but HF config "
                       "tie_word_embeddings=True: expected them equal")
    return {}
  if present:
    return {"lm_head": {"kernel": take(present[0], shape).T}}   # nn.Linear: (out, in)
  if "score.weight" not in tensors:
    take(head_names[0], shape)   # raises the missing-tensor error
  if cfg.head_input == "lm_probs":
    raise ValueError(f"checkpoint has no LM head ({' or '.join(head_names)}): "
                     "expected one for ModelConfig.head_input='lm_probs'")
  # A sequence-classification checkpoint dropped its LM head: start it at zero,
  # as a fresh classifier head starts.
  return {"lm_head": {"kernel": np.zeros((cfg.width, cfg.vocab_size), np.float32)}}


def _cls_head(take, tensors, cfg):
  features = cfg.vocab_size if cfg.head_input == "lm_probs" else cfg.width
  bias = np.zeros((cfg.num_classes,), np.float32)   # HF's score has no bias
  if "score.weight" not in tensors:
    return {"kernel": np.zeros((features, cfg.num_classes), np.float32), "bias": bias}
  if cfg.head_input != "hidden":
    raise ValueError(f"checkpoint has a 'score' head, which reads the hidden state, but "
                     f"ModelConfig.head_input={cfg.head_input!r}: expected 'hidden'")
  return {"kernel": take("score.weight", (cfg.num_classes, cfg.width)).T, "bias": bias}


def params_from_hf(tensors: dict[str, np.ndarray], cfg: ModelConfig):
  """A GPT-2 (cfg.positions="learned"), GPT-NeoX (cfg.positions="rotary") or
  BERT (cfg.causal=False) state dict -> a params pytree for `Transformer(cfg)`,
  float32."""
  if not cfg.causal:
    family = "bert"
  else:
    family = "gpt2" if cfg.positions == "learned" else "gpt_neox"
  tensors = _strip_prefix(tensors, _PREFIX[family])
  take, used = _reader(tensors)
  if family == "bert":
    params, ignored = _bert_body(take, tensors, cfg)
    used.update(ignored)
  else:
    body = _gpt2_body if family == "gpt2" else _neox_body
    params, head_names, embed_name = body(take, tensors, cfg)
    params.update(_lm_head(take, tensors, cfg, head_names, embed_name))
    params["cls_head"] = _cls_head(take, tensors, cfg)
  unexpected = sorted(name for name in set(tensors) - used if not _BUFFERS.fullmatch(name))
  if unexpected:
    raise ValueError(f"checkpoint has unexpected tensors {unexpected[:5]} "
                     f"({len(unexpected)} in all): expected none beyond a {family} model's")
  params = jax.tree.map(jnp.asarray, params)
  # The model, not this file, defines the pytree: a mismatch is a bug here.
  expected = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  if jax.tree.structure(params) != jax.tree.structure(expected) or any(
      a.shape != b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected))):
    raise AssertionError(f"converted params do not match Transformer({cfg}): "
                         f"got {jax.tree.map(jnp.shape, params)}")
  return params


def folder_config(path, *, pooling: str | None = None, **kwargs) -> ModelConfig:
  """config_from_hf of a local folder's config.json; its errors name the file.
  An encoder's pooling defaults to the one a sentence-transformers folder
  declares (1_Pooling/config.json), else BERT's pooler."""
  config_file = Path(path) / "config.json"
  hf_config = read_config(path)
  if pooling is None and hf_config.get("model_type") == "bert":
    pooling = sentence_pooling(path)
  try:
    return config_from_hf(hf_config, pooling=pooling, **kwargs)
  except ValueError as e:
    raise ValueError(f"{config_file}: {e}") from None


def load_hf_folder(path, *, num_classes: int = 2, head_input: str = "hidden",
                   max_len: int | None = None, pooling: str | None = None):
  """A local Hugging Face model folder -> (ModelConfig, params). Errors name
  the file: config.json for the architecture, the folder's safetensors for a
  missing, extra or misshapen tensor."""
  cfg = folder_config(path, num_classes=num_classes, head_input=head_input, max_len=max_len,
                      pooling=pooling)
  return cfg, load_params(path, cfg)


def load_params(path, cfg: ModelConfig):
  """A local folder's safetensors as params for `Transformer(cfg)`; errors name the folder."""
  tensors = read_hf_tensors(path)
  try:
    return params_from_hf(tensors, cfg)
  except ValueError as e:
    raise ValueError(f"{Path(path)} (safetensors): {e}") from None


def save_as_orbax(path, params) -> None:
  """Converted params as an orbax checkpoint, restorable with checkpoints.load_params."""
  checkpoints.save_params(path, params)
