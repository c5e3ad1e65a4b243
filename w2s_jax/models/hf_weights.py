"""Hugging Face state dicts -> w2s_jax params, for GPT-2, GPT-NeoX (Pythia)
and BERT. Layout facts the conversion rests on:

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
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.models.model_config import ModelConfig
from w2s_jax.models.transformer import init_params

_PREFIX = {"gpt2": "transformer.", "gpt_neox": "gpt_neox.", "bert": "bert.", "llama": "model."}

# Non-persistent buffers (causal masks, rotary frequencies) that older
# transformers versions wrote into checkpoints; they carry no learned weights.
_BUFFERS = re.compile(
  r"(h\.\d+\.attn\.(bias|masked_bias)"
  r"|layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)"
  r"|rotary_emb\.inv_freq"
  r"|layers\.\d+\.self_attn\.rotary_emb\.inv_freq"
  r"|embeddings\.position_ids)"
)


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
      raise ValueError(
        f"checkpoint is missing tensor {name!r}: expected shape {shape} "
        f"(it holds {len(tensors)} tensors, e.g. {sorted(tensors)[:3]})"
      )
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
  return {"kernel": take(f"{name}.weight", (d_out, d_in)).T, "bias": take(f"{name}.bias", (d_out,))}


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
  pos_embed = take("wpe.weight", (max(rows, cfg.max_len), d))[: cfg.max_len]
  params = {
    "embed": {"embedding": take("wte.weight", (cfg.vocab_size, d))},
    "pos_embed": pos_embed,
    "ln_final": _layer_norm(take, "ln_f", d),
  }
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
  params = {
    "embed": {"embedding": take("embed_in.weight", (cfg.vocab_size, d))},
    "ln_final": _layer_norm(take, "final_layer_norm", d),
  }
  for i in range(cfg.depth):
    p = f"layers.{i}."
    kernel, bias = neox_qkv_to_blocks(
      take(p + "attention.query_key_value.weight", (3 * d, d)),
      take(p + "attention.query_key_value.bias", (3 * d,)),
      cfg.heads,
    )
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
  params = {
    "embed": {"embedding": take(e + "word_embeddings.weight", (cfg.vocab_size, d))},
    "pos_embed": take(e + "position_embeddings.weight", (max(rows, cfg.max_len), d))[: cfg.max_len],
    "type_embed": take(e + "token_type_embeddings.weight", (cfg.type_vocab_size, d)),
    "ln_embed": _layer_norm(take, e + "LayerNorm", d),
  }
  for i in range(cfg.depth):
    p = f"encoder.layer.{i}."
    q, k, v = (
      _linear(take, f"{p}attention.self.{name}", d, d) for name in ("query", "key", "value")
    )
    params[f"block_{i}"] = {
      "qkv": {
        "kernel": np.concatenate([q["kernel"], k["kernel"], v["kernel"]], axis=1),
        "bias": np.concatenate([q["bias"], k["bias"], v["bias"]]),
      },
      "attn_out": _linear(take, p + "attention.output.dense", d, d),
      "ln_attn": _layer_norm(take, p + "attention.output.LayerNorm", d),
      "mlp_in": _linear(take, p + "intermediate.dense", d, m),
      "mlp_out": _linear(take, p + "output.dense", m, d),
      "ln_mlp": _layer_norm(take, p + "output.LayerNorm", d),
    }
  if cfg.pooling == "cls":
    params["pooler"] = _linear(take, "pooler.dense", d, d)
  elif "classifier.weight" in tensors:
    raise ValueError(
      f"checkpoint has a 'classifier' head, which reads BERT's pooler, but "
      f"ModelConfig.pooling={cfg.pooling!r}: expected 'cls'"
    )
  if "classifier.weight" in tensors:
    params["cls_head"] = _linear(take, "classifier", d, cfg.num_classes)
  else:
    params["cls_head"] = {
      "kernel": np.zeros((d, cfg.num_classes), np.float32),
      "bias": np.zeros((cfg.num_classes,), np.float32),
    }
  # Unused by a classifier: BERT's pretraining heads, and the pooler when
  # the model pools by mean.
  ignored = [
    name
    for name in tensors
    if name.startswith("cls.") or (cfg.pooling != "cls" and name.startswith("pooler."))
  ]
  return params, ignored


def _llama_body(take, tensors, cfg):
  """Llama and Qwen2. transformers stores q and k already permuted for its
  rotate-half rotary form, which is w2s_jax's, so they are copied as they are."""
  d, m = cfg.width, cfg.hidden_mlp
  q_dim, kv_dim = cfg.heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  rms = lambda name: {"scale": take(f"{name}.weight", (d,))}
  params = {
    "embed": {"embedding": take("embed_tokens.weight", (cfg.vocab_size, d))},
    "ln_final": rms("norm"),
  }

  def dense(name, d_in, d_out, bias):
    out = {"kernel": take(f"{name}.weight", (d_out, d_in)).T}
    if bias:
      out["bias"] = take(f"{name}.bias", (d_out,))
    return out

  for i in range(cfg.depth):
    p = f"layers.{i}."
    q, k, v = (
      dense(f"{p}self_attn.{n}_proj", d, size, cfg.qkv_bias)
      for n, size in (("q", q_dim), ("k", kv_dim), ("v", kv_dim))
    )
    qkv = {"kernel": np.concatenate([q["kernel"], k["kernel"], v["kernel"]], axis=1)}
    if cfg.qkv_bias:
      qkv["bias"] = np.concatenate([q["bias"], k["bias"], v["bias"]])
    gate, up = (dense(f"{p}mlp.{n}_proj", d, m, cfg.mlp_bias) for n in ("gate", "up"))
    mlp_in = {"kernel": np.concatenate([gate["kernel"], up["kernel"]], axis=1)}
    if cfg.mlp_bias:
      mlp_in["bias"] = np.concatenate([gate["bias"], up["bias"]])
    params[f"block_{i}"] = {
      "ln_attn": rms(p + "input_layernorm"),
      "qkv": qkv,
      "attn_out": dense(p + "self_attn.o_proj", q_dim, d, cfg.attn_out_bias),
      "ln_mlp": rms(p + "post_attention_layernorm"),
      "mlp_in": mlp_in,
      "mlp_out": dense(p + "mlp.down_proj", m, d, cfg.mlp_bias),
    }
  return params, ("lm_head.weight",), "embed_tokens.weight"


def _lm_head(take, tensors, cfg, head_names, embed_name):
  present = [name for name in head_names if name in tensors]
  if len(present) > 1:
    raise ValueError(f"checkpoint has LM heads {present}: expected at most one")
  shape = (cfg.vocab_size, cfg.width)
  if cfg.tie_embeddings:
    # Some writers keep the tied copy; accept it only if it really is tied.
    if present and not np.array_equal(take(present[0], shape), tensors[embed_name]):
      raise ValueError(
        f"tensor {present[0]!r} differs from {embed_name!r}, but HF config "
        "tie_word_embeddings=True: expected them equal"
      )
    return {}
  if present:
    return {"lm_head": {"kernel": take(present[0], shape).T}}  # nn.Linear: (out, in)
  if "score.weight" not in tensors:
    take(head_names[0], shape)  # raises the missing-tensor error
  if cfg.head_input in ("lm_probs", "lm_loglik"):
    raise ValueError(
      f"checkpoint has no LM head ({' or '.join(head_names)}): "
      f"expected one for ModelConfig.head_input={cfg.head_input!r}"
    )
  # A sequence-classification checkpoint dropped its LM head: start it at zero,
  # as a fresh classifier head starts.
  return {"lm_head": {"kernel": np.zeros((cfg.width, cfg.vocab_size), np.float32)}}


def _cls_head(take, tensors, cfg):
  features = {"lm_probs": cfg.vocab_size, "lm_loglik": 1}.get(cfg.head_input, cfg.width)
  bias = np.zeros((cfg.num_classes,), np.float32)  # HF's score has no bias
  if "score.weight" not in tensors:
    return {"kernel": np.zeros((features, cfg.num_classes), np.float32), "bias": bias}
  if cfg.head_input != "hidden":
    raise ValueError(
      f"checkpoint has a 'score' head, which reads the hidden state, but "
      f"ModelConfig.head_input={cfg.head_input!r}: expected 'hidden'"
    )
  return {"kernel": take("score.weight", (cfg.num_classes, cfg.width)).T, "bias": bias}


def params_from_hf(tensors: dict[str, np.ndarray], cfg: ModelConfig):
  """A GPT-2 (cfg.positions="learned"), GPT-NeoX (cfg.positions="rotary"),
  Llama/Qwen2 (cfg.norm="rmsnorm") or BERT (cfg.causal=False) state dict ->
  a params pytree for `Transformer(cfg)`, float32."""
  if not cfg.causal:
    family = "bert"
  elif cfg.norm == "rmsnorm":
    family = "llama"
  else:
    family = "gpt2" if cfg.positions == "learned" else "gpt_neox"
  tensors = _strip_prefix(tensors, _PREFIX[family])
  take, used = _reader(tensors)
  if family == "bert":
    params, ignored = _bert_body(take, tensors, cfg)
    used.update(ignored)
  else:
    body = {"gpt2": _gpt2_body, "gpt_neox": _neox_body, "llama": _llama_body}[family]
    params, head_names, embed_name = body(take, tensors, cfg)
    params.update(_lm_head(take, tensors, cfg, head_names, embed_name))
    params["cls_head"] = _cls_head(take, tensors, cfg)
  unexpected = sorted(name for name in set(tensors) - used if not _BUFFERS.fullmatch(name))
  if unexpected:
    raise ValueError(
      f"checkpoint has unexpected tensors {unexpected[:5]} "
      f"({len(unexpected)} in all): expected none beyond a {family} model's"
    )
  params = jax.tree.map(jnp.asarray, params)
  # The model, not this file, defines the pytree: a mismatch is a bug here.
  expected = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  if jax.tree.structure(params) != jax.tree.structure(expected) or any(
    a.shape != b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected))
  ):
    raise AssertionError(
      f"converted params do not match Transformer({cfg}): got {jax.tree.map(jnp.shape, params)}"
    )
  return params
