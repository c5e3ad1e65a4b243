"""Import pretrained GPT-2, GPT-NeoX (Pythia) and BERT checkpoints from a local
Hugging Face folder (config.json + safetensors) into w2s_jax params.

Reading (hf_files.py) needs neither torch nor transformers: config.json is a
plain dict and the weights come through `safetensors`. This module maps a
config.json to a ModelConfig and loads folders; the tensor layouts and their
conversion are in hf_weights.py.

GPT-NeoX checkpoints written by transformers 4.x name the rotary settings
`rotary_pct` / `rotary_emb_base` (later also `partial_rotary_factor` /
`rope_theta`); 5.x nests them in `rope_parameters`. All spellings are read.
Dropout rates are not imported: w2s_jax sets dropout per run.
"""

from pathlib import Path

from w2s_jax.infra import checkpoints
from w2s_jax.models.hf_files import read_config, read_hf_tensors, sentence_pooling
from w2s_jax.models.hf_weights import params_from_hf
from w2s_jax.models.model_config import ModelConfig

# HF activation name -> ModelConfig.gelu_approximate. gelu_new, gelu_fast and
# gelu_pytorch_tanh are all the tanh approximation; "gelu" is the exact erf form.
_GELU_APPROXIMATE = {"gelu": False, "gelu_new": True, "gelu_fast": True, "gelu_pytorch_tanh": True}

# Defaults of transformers' config classes, for config.json files that omit a field.
_GPT2_DEFAULTS = {
  "n_inner": None,
  "activation_function": "gelu_new",
  "layer_norm_epsilon": 1e-5,
  "scale_attn_weights": True,
  "scale_attn_by_inverse_layer_idx": False,
  "reorder_and_upcast_attn": False,
  "add_cross_attention": False,
  "tie_word_embeddings": True,
}
_NEOX_DEFAULTS = {
  "hidden_act": "gelu",
  "layer_norm_eps": 1e-5,
  "use_parallel_residual": True,
  "tie_word_embeddings": False,
  "attention_bias": True,
}
_NEOX_ROTARY_FRAC_DEFAULT = 0.25
_NEOX_ROTARY_BASE_DEFAULT = 10000.0

_BERT_DEFAULTS = {
  "hidden_act": "gelu",
  "layer_norm_eps": 1e-12,
  "type_vocab_size": 2,
  "position_embedding_type": "absolute",
  "is_decoder": False,
  "add_cross_attention": False,
}

_LLAMA_DEFAULTS = {  # Qwen2 shares them; its q/k/v always carry biases
  "hidden_act": "silu",
  "rms_norm_eps": 1e-6,
  "tie_word_embeddings": False,
  "attention_bias": False,
  "mlp_bias": False,
  "use_sliding_window": False,
}

MODEL_TYPES = ("gpt2", "gpt_neox", "bert", "llama", "qwen2")


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


_LLAMA3_FIELDS = (
  "factor",
  "low_freq_factor",
  "high_freq_factor",
  "original_max_position_embeddings",
)


def _rope_scaling(hf_config: dict, allowed: tuple[str, ...]):
  """ModelConfig.rope_scaling from rope_parameters / rope_scaling: None, or
  ("llama3", factor, low_freq_factor, high_freq_factor, original context)."""
  found = None
  for name in ("rope_parameters", "rope_scaling"):
    params = hf_config.get(name) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
      continue
    if rope_type not in allowed:
      raise ValueError(
        f"HF config {name}.rope_type={rope_type!r}: expected one of "
        f"{['default', *allowed]} (other scalings are not implemented)"
      )
    missing = [f for f in _LLAMA3_FIELDS if f not in params]
    if missing:
      raise ValueError(
        f"HF config {name} (rope_type 'llama3') has no {missing}: expected {list(_LLAMA3_FIELDS)}"
      )
    found = ("llama3", *(float(params[f]) for f in _LLAMA3_FIELDS))
  return found


def _rotary(hf_config: dict, *, frac_default: float, base_default: float) -> tuple[float, float]:
  rope = hf_config.get("rope_parameters") or {}
  _rope_scaling(hf_config, allowed=())  # NeoX: unscaled only
  frac = _one_spelling(
    [
      ("partial_rotary_factor", rope),
      ("partial_rotary_factor", hf_config),
      ("rotary_pct", hf_config),
    ],
    frac_default,
  )
  base = _one_spelling(
    [("rope_theta", rope), ("rope_theta", hf_config), ("rotary_emb_base", hf_config)], base_default
  )
  return float(frac), float(base)


def _llama_config(hf_config, model_type, *, num_classes, head_input, max_len):
  hf_config = {**_LLAMA_DEFAULTS, **hf_config}
  _expect(hf_config, "hidden_act", "silu", "w2s_jax's SwiGLU MLP uses silu")
  _expect(hf_config, "use_sliding_window", False, "w2s_jax attends over the whole context")
  heads = hf_config["num_attention_heads"]
  kv_heads = hf_config.get("num_key_value_heads") or heads
  if not isinstance(kv_heads, int) or kv_heads < 1 or heads % kv_heads:
    raise ValueError(
      f"HF config num_attention_heads={heads} is not divisible by "
      f"num_key_value_heads={kv_heads!r}: expected a divisor (grouped-query "
      "attention shares each key/value head among a whole group)"
    )
  width = hf_config["hidden_size"]
  head_dim = hf_config.get("head_dim") or width // heads
  if head_dim * heads != width:
    raise ValueError(
      f"HF config head_dim={head_dim}: expected hidden_size / num_attention_heads "
      f"= {width / heads:g} (w2s_jax's heads split the width)"
    )
  base = _one_spelling(
    [("rope_theta", hf_config.get("rope_parameters") or {}), ("rope_theta", hf_config)], 10000.0
  )
  rope_scaling = _rope_scaling(hf_config, allowed=("llama3",) if model_type == "llama" else ())
  attention_bias = bool(hf_config["attention_bias"])
  return ModelConfig(
    vocab_size=hf_config["vocab_size"],
    width=width,
    depth=hf_config["num_hidden_layers"],
    heads=heads,
    kv_heads=kv_heads if kv_heads != heads else None,
    max_len=hf_config["max_position_embeddings"] if max_len is None else max_len,
    mlp_dim=hf_config["intermediate_size"],
    num_classes=num_classes,
    head_input=head_input,
    positions="rotary",
    rotary_frac=1.0,
    rotary_base=float(base),
    rope_scaling=rope_scaling,
    tie_embeddings=bool(hf_config["tie_word_embeddings"]),
    ln_eps=float(hf_config["rms_norm_eps"]),
    norm="rmsnorm",
    mlp="swiglu",
    qkv_bias=model_type == "qwen2" or attention_bias,
    attn_out_bias=model_type != "qwen2" and attention_bias,
    mlp_bias=bool(hf_config["mlp_bias"]),
  )


def _learned_positions(max_len, positions, field):
  max_len = positions if max_len is None else max_len
  if max_len > positions:
    raise ValueError(
      f"max_len={max_len}: expected <= HF config {field}={positions} "
      "(the model has one learned embedding per position)"
    )
  return max_len


def config_from_hf(
  hf_config: dict,
  *,
  num_classes: int = 2,
  head_input: str = "hidden",
  max_len: int | None = None,
  pooling: str | None = None,
) -> ModelConfig:
  """A transformers config.json (as a dict) -> ModelConfig. max_len defaults to
  the checkpoint's context length; pooling (encoders only) to BERT's pooler,
  "cls"."""
  try:
    return _config_from_hf(
      hf_config, num_classes=num_classes, head_input=head_input, max_len=max_len, pooling=pooling
    )
  except KeyError as e:
    raise ValueError(
      f"HF config has no {e.args[0]!r}: expected it for model_type={hf_config.get('model_type')!r}"
    ) from None


def _config_from_hf(hf_config, *, num_classes, head_input, max_len, pooling):
  model_type = hf_config.get("model_type")
  if pooling is not None and model_type != "bert":
    raise ValueError(
      f"pooling={pooling!r} for model_type={model_type!r}: expected None "
      "(decoders read their last real token)"
    )
  if model_type in ("llama", "qwen2"):
    return _llama_config(
      hf_config, model_type, num_classes=num_classes, head_input=head_input, max_len=max_len
    )
  if model_type == "bert":
    hf_config = {**_BERT_DEFAULTS, **hf_config}
    _expect(
      hf_config,
      "position_embedding_type",
      "absolute",
      "w2s_jax's encoders have learned absolute positions",
    )
    _expect(hf_config, "is_decoder", False, "a BERT decoder is not supported")
    _expect(hf_config, "add_cross_attention", False, "w2s_jax has no cross-attention")
    return ModelConfig(
      vocab_size=hf_config["vocab_size"],
      width=hf_config["hidden_size"],
      depth=hf_config["num_hidden_layers"],
      heads=hf_config["num_attention_heads"],
      max_len=_learned_positions(
        max_len, hf_config["max_position_embeddings"], "max_position_embeddings"
      ),
      mlp_dim=hf_config["intermediate_size"],
      num_classes=num_classes,
      head_input=head_input,
      positions="learned",
      tie_embeddings=True,
      ln_eps=float(hf_config["layer_norm_eps"]),
      gelu_approximate=_activation(hf_config, "hidden_act"),
      causal=False,
      post_ln=True,
      type_vocab_size=int(hf_config["type_vocab_size"]),
      pooling=pooling or "cls",
    )
  if model_type == "gpt2":
    hf_config = {**_GPT2_DEFAULTS, **hf_config}
    _expect(hf_config, "scale_attn_weights", True, "w2s_jax scales scores by 1/sqrt(head_dim)")
    _expect(
      hf_config,
      "scale_attn_by_inverse_layer_idx",
      False,
      "w2s_jax does not scale attention by layer index",
    )
    _expect(
      hf_config, "reorder_and_upcast_attn", False, "w2s_jax has no reordered/upcast attention path"
    )
    _expect(hf_config, "add_cross_attention", False, "w2s_jax is decoder-only")
    max_len = _learned_positions(max_len, hf_config["n_positions"], "n_positions")
    return ModelConfig(
      vocab_size=hf_config["vocab_size"],
      width=hf_config["n_embd"],
      depth=hf_config["n_layer"],
      heads=hf_config["n_head"],
      max_len=max_len,
      mlp_dim=hf_config["n_inner"] or 4 * hf_config["n_embd"],
      num_classes=num_classes,
      head_input=head_input,
      positions="learned",
      parallel_residual=False,
      tie_embeddings=bool(hf_config["tie_word_embeddings"]),
      ln_eps=float(hf_config["layer_norm_epsilon"]),
      gelu_approximate=_activation(hf_config, "activation_function"),
    )
  if model_type == "gpt_neox":
    hf_config = {**_NEOX_DEFAULTS, **hf_config}
    _expect(hf_config, "attention_bias", True, "w2s_jax's attention projections have biases")
    rotary_frac, rotary_base = _rotary(
      hf_config, frac_default=_NEOX_ROTARY_FRAC_DEFAULT, base_default=_NEOX_ROTARY_BASE_DEFAULT
    )
    return ModelConfig(
      vocab_size=hf_config["vocab_size"],
      width=hf_config["hidden_size"],
      depth=hf_config["num_hidden_layers"],
      heads=hf_config["num_attention_heads"],
      max_len=hf_config["max_position_embeddings"] if max_len is None else max_len,
      mlp_dim=hf_config["intermediate_size"],
      num_classes=num_classes,
      head_input=head_input,
      positions="rotary",
      rotary_frac=rotary_frac,
      rotary_base=rotary_base,
      parallel_residual=bool(hf_config["use_parallel_residual"]),
      tie_embeddings=bool(hf_config["tie_word_embeddings"]),
      ln_eps=float(hf_config["layer_norm_eps"]),
      gelu_approximate=_activation(hf_config, "hidden_act"),
    )
  raise ValueError(f"HF config model_type={model_type!r}: expected one of {list(MODEL_TYPES)}")


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


def load_hf_folder(
  path,
  *,
  num_classes: int = 2,
  head_input: str = "hidden",
  max_len: int | None = None,
  pooling: str | None = None,
):
  """A local Hugging Face model folder -> (ModelConfig, params). Errors name
  the file: config.json for the architecture, the folder's safetensors for a
  missing, extra or misshapen tensor."""
  cfg = folder_config(
    path, num_classes=num_classes, head_input=head_input, max_len=max_len, pooling=pooling
  )
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
