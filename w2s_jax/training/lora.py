"""Low-rank adapters (LoRA, Hu et al. 2021) for the strong model's fine-tuning.

A target projection's kernel W [in, out] is used as W + (alpha / rank) * A @ B,
A [in, rank] random, B [rank, out] zero, so at init the model is the base
exactly. Only the adapters and the classification head train: the base
params are a frozen argument of the train step (neither differentiated nor
donated, no optimizer state, FSDP-sharded like any params), and a LoRA
run's trainable state is `{"lora": adapters, "cls_head": head}`.

Targets name projections of the one model path: "q", "k", "v" (column
blocks of the fused `qkv` kernel; under grouped-query attention k and v are
narrower), "attn_out", "mlp_in", "mlp_out". All functions but `save` and
`load` (a run's checkpoint: the adapters and the head, and the identity of
the base) are pure.
"""

from pathlib import Path

import jax
import jax.numpy as jnp

from w2s_jax.infra import checkpoints, integrity
from w2s_jax.models.transformer import HEAD

TARGETS = ("q", "k", "v", "attn_out", "mlp_in", "mlp_out")
QKV_PARTS = ("q", "k", "v")


def check_targets(targets, field: str = "OptimConfig.lora_targets") -> None:
  unknown = [t for t in targets if t not in TARGETS]
  if unknown:
    raise ValueError(
      f"{field}={tuple(targets)!r}: {unknown} names no layer; expected names among {TARGETS}"
    )
  if not targets or len(set(targets)) != len(targets):
    raise ValueError(f"{field}={tuple(targets)!r}: expected distinct names, at least one")


def qkv_columns(model_cfg, part: str) -> tuple[int, int]:
  q, kv = model_cfg.heads * model_cfg.head_dim, model_cfg.num_kv_heads * model_cfg.head_dim
  return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}[part]


def _target_shapes(model_cfg, targets) -> dict:
  """{block: {target: (in, out)}} of every adapted projection."""
  d, m = model_cfg.width, model_cfg.hidden_mlp
  mlp_in = 2 * m if model_cfg.mlp == "swiglu" else m
  sizes = {"attn_out": (d, d), "mlp_in": (d, mlp_in), "mlp_out": (m, d)}
  for part in QKV_PARTS:
    start, end = qkv_columns(model_cfg, part)
    sizes[part] = (d, end - start)
  return {f"block_{i}": {t: sizes[t] for t in targets} for i in range(model_cfg.depth)}


def init_adapters(model_cfg, *, rank: int, targets, rng: jax.Array) -> dict:
  """{block: {target: {"a": [in, rank], "b": [rank, out]}}}: A ~ N(0, 1/in), B = 0."""
  check_targets(targets)
  shapes = _target_shapes(model_cfg, targets)
  flat = [(b, t, s) for b, ts in shapes.items() for t, s in ts.items()]
  keys = jax.random.split(rng, len(flat))
  out = {b: {} for b in shapes}
  for key, (block, target, (d_in, d_out)) in zip(keys, flat):
    out[block][target] = {
      "a": jax.random.normal(key, (d_in, rank)) / jnp.sqrt(d_in),
      "b": jnp.zeros((rank, d_out)),
    }
  return out


def merge(base: dict, trainable: dict, *, model_cfg, alpha: float) -> dict:
  """The params the model runs with: base kernels plus (alpha / rank) * A @ B,
  and the trainable head in place of the base's."""
  params = {**base, HEAD: trainable[HEAD]}
  for block, adapters in trainable["lora"].items():
    layer = dict(base[block])
    for target, ab in adapters.items():
      rank = ab["a"].shape[-1]
      delta = (alpha / rank) * ab["a"] @ ab["b"]
      name = "qkv" if target in QKV_PARTS else target
      kernel = layer[name]["kernel"]
      if target in QKV_PARTS:
        start, _ = qkv_columns(model_cfg, target)
        delta = jax.lax.dynamic_update_slice(
          jnp.zeros_like(kernel), delta.astype(kernel.dtype), (0, start)
        )
      layer[name] = {**layer[name], "kernel": kernel + delta.astype(kernel.dtype)}
    params[block] = layer
  return params


def trainable_params(base: dict, model_cfg, *, rank: int, targets, rng: jax.Array) -> dict:
  """A LoRA run's trainable state: fresh adapters and the base's head."""
  return {"lora": init_adapters(model_cfg, rank=rank, targets=targets, rng=rng), HEAD: base[HEAD]}


def lora_loss(loss_fn, model_cfg, alpha: float):
  """loss_fn(params, batch, step_frac, rng[, teacher]) as a loss of the
  trainable state, the base its first frozen argument:
  (trainable, batch, step_frac, rng, base[, teacher])."""

  def wrapped(trainable, batch, step_frac, rng, base, *teacher):
    return loss_fn(
      merge(base, trainable, model_cfg=model_cfg, alpha=alpha), batch, step_frac, rng, *teacher
    )

  return wrapped


def save(
  path, trainable: dict, *, base: dict, base_name: str, rank: int, alpha: float, targets
) -> None:
  """A LoRA run's checkpoint: <path>/adapters, an orbax checkpoint of the
  adapters and the head only, and <path>/lora.json: rank, alpha, targets, and
  the identity of the base (its name and checksum), written last."""
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  adapters_sum = checkpoints.save_params(path / "adapters", trainable)
  integrity.write_json_checked(
    path / "lora.json",
    {
      "rank": rank,
      "alpha": alpha,
      "targets": list(targets),
      "base": base_name,
      "base_checksum": integrity.tree_checksum(base),
      "adapters_checksum": adapters_sum,
    },
  )


def load(path, *, base: dict, model_cfg) -> tuple[dict, dict]:
  """(trainable, record) of a checkpoint written by `save`, restored onto the
  shapes of fresh adapters for base. A base other than the one the adapters
  were trained on is an error naming both."""
  path = Path(path)
  record = integrity.read_json_checked(path / "lora.json", "LoRA record")
  if integrity.tree_checksum(base) != record["base_checksum"]:
    raise ValueError(
      f"{path}: adapters trained on base {record['base']!r} (checksum "
      f"{record['base_checksum']}), but the base given has checksum "
      f"{integrity.tree_checksum(base)}: expected the base they were trained on"
    )
  like = jax.eval_shape(
    lambda: trainable_params(
      base, model_cfg, rank=record["rank"], targets=tuple(record["targets"]), rng=jax.random.key(0)
    )
  )
  trainable = checkpoints.load_params(path / "adapters", like, record["adapters_checksum"])
  return trainable, record
