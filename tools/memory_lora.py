"""Per-device memory of a train step, LoRA beside full fine-tuning, from
ahead-of-time compilation by the TPU compiler: nothing is allocated, so a 7B
model's numbers come from a laptop.

  python tools/memory_lora.py                      # a Qwen2.5-7B-shaped model on a v5p-8 slice
  python tools/memory_lora.py --depth 4 --depth 8  # slices of it: does remat hold per layer?
  python tools/memory_lora.py --quick              # seconds: a check of the tool itself

Compiles for --topology (default v5p:2x2x2, 8 chips, FSDP over all of them)
with libtpu (the `tpu` extra), and without it, for 8 simulated CPU devices
(--topology cpu), whose temporaries are XLA:CPU's and no accelerator's
estimate. For each variant it prints, per device: LoRA's frozen base, the
trainable params (all of them, or adapters + head), their Adam moments, the
compiled step's temporaries and its argument total, at batch 8 x 512, with
bf16 compute and per-block rematerialisation. The whole run's programs, with
predicted time and MFU, are `python -m w2s_jax plan` (docs/pods.md).
"""

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from w2s_jax.infra import sharding
from w2s_jax.models import transformer
from w2s_jax.models.model_config import ATTENTIONS, DTYPES, ModelConfig
from w2s_jax.plans import chips
from w2s_jax.training import (
  lora,  # noqa: E402
  objectives,
  train,
)
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.train import OptimConfig  # noqa: E402

import harness  # noqa: E402

# Qwen2.5-7B's config.json: 28 layers, width 3584, 28 query / 4 key-value heads,
# SwiGLU 18944, vocabulary 151,936, untied embeddings, q/k/v biases.
SHAPES = {
  "qwen2.5-7b": dict(
    vocab_size=151936,
    width=3584,
    depth=28,
    heads=28,
    kv_heads=4,
    mlp_dim=18944,
    tie_embeddings=False,
  ),
  "tiny": dict(
    vocab_size=1000, width=64, depth=2, heads=4, kv_heads=2, mlp_dim=128, tie_embeddings=False
  ),
}


def model_config(shape: str, seq: int, dtype: str, remat: bool, depth=None) -> ModelConfig:
  layers = {} if depth is None else {"depth": depth}
  return ModelConfig(
    **{**SHAPES[shape], **layers},
    max_len=seq,
    positions="rotary",
    rotary_frac=1.0,
    rotary_base=1e6,
    norm="rmsnorm",
    mlp="swiglu",
    attn_out_bias=False,
    mlp_bias=False,
    head_input="hidden",
    dtype=dtype,
    remat=remat,
  )


def step_memory(cfg, optim: OptimConfig, mesh, batch: int) -> dict:
  """Bytes per device of one compiled train step (nothing allocated)."""
  optimizer = train.make_optimizer(optim)
  key = jax.random.key(0)
  base = jax.eval_shape(lambda: transformer.init_params(cfg, key))
  loss_fn = objectives.classifier_objective(cfg, Xent())
  frozen, base_sharding = (), None
  if optim.lora_rank:
    trainable = jax.eval_shape(
      lambda: lora.trainable_params(
        transformer.init_params(cfg, key),
        cfg,
        rank=optim.lora_rank,
        targets=optim.lora_targets,
        rng=key,
      )
    )
    base_sharding = sharding.state_sharding(base, mesh)
    frozen = (
      jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), base, base_sharding
      ),
    )
    loss_fn = lora.lora_loss(loss_fn, cfg, optim.lora_alpha)
  else:
    trainable = base
  abstract = jax.eval_shape(lambda: train.init_state(trainable, optimizer, key))
  state_sharding = sharding.state_sharding(abstract, mesh)
  step = train.compile_train_step(
    loss_fn=loss_fn,
    optimizer=optimizer,
    total_steps=optim.steps,
    mesh=mesh,
    state_sharding=state_sharding,
    base_sharding=base_sharding,
  )
  batch_sharding = sharding.batch_sharding(mesh)
  data = {
    k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
    for k, shape, dtype in (
      ("tokens", (batch, cfg.max_len), jnp.int32),
      ("mask", (batch, cfg.max_len), jnp.int32),
      ("labels", (batch, cfg.num_classes), jnp.float32),
    )
  }
  state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
  )
  started = time.perf_counter()
  memory = step.lower(state, data, *frozen).compile().memory_analysis()
  return {
    "frozen base": sharding.per_device_bytes(base, base_sharding) if optim.lora_rank else 0,
    "trainable": sharding.per_device_bytes(abstract.params, state_sharding.params),
    "Adam": sharding.per_device_bytes(abstract.opt_state, state_sharding.opt_state),
    "temporaries": memory.temp_size_in_bytes,
    "compiled arguments": memory.argument_size_in_bytes,
    "compile s": time.perf_counter() - started,
    "trainable params": sum(math.prod(x.shape) for x in jax.tree.leaves(trainable)),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--shape", default="qwen2.5-7b", choices=sorted(SHAPES))
  parser.add_argument("--fsdp", type=int, default=8)
  parser.add_argument(
    "--topology",
    default="v5p:2x2x2",
    help="a TPU topology (libtpu compiles for it), or cpu: the simulated CPU devices",
  )
  parser.add_argument(
    "--depth", type=int, action="append", help="layers instead of the shape's own (repeatable)"
  )
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
  parser.add_argument("--no-remat", dest="remat", action="store_false")
  parser.add_argument("--attention", default="explicit", choices=ATTENTIONS)
  parser.add_argument("--json", help="write the numbers here")
  parser.add_argument(
    "--quick",
    action="store_true",
    help="seconds: the tiny shape at 32 tokens (explicit flags still win)",
  )
  args = parser.parse_args(argv)
  if args.quick:
    parser.set_defaults(shape="tiny", seq=32, topology="v5e:2x2", fsdp=4)
    if not chips.libtpu_available():
      parser.set_defaults(topology="cpu")
    args = parser.parse_args(argv)
  if args.topology == "cpu":
    mesh = sharding.make_mesh(args.fsdp, fsdp=args.fsdp)
    compiler = f"XLA:CPU, {args.fsdp} simulated devices (not an accelerator's estimate)"
  else:
    devices = chips.topology_devices(args.topology)
    mesh = chips.topology_mesh(devices, fsdp=args.fsdp)
    compiler = f"TPU compiler, {args.topology} ({len(devices)} x {devices[0].device_kind})"
  rows = {}
  for depth in args.depth or [None]:
    cfg = dataclasses.replace(
      model_config(args.shape, args.seq, args.dtype, args.remat, depth), attention=args.attention
    )
    rows[cfg.depth] = _variants(args, cfg, mesh, compiler)
  if args.json:
    harness.write_record(
      args.json, {"config": vars(args), **harness.machine(), "bytes_per_device": rows}
    )


def _variants(args, cfg, mesh, compiler) -> dict:
  print(
    f"\n{args.shape}, {cfg.depth} layers: {cfg.num_params:,} params, FSDP over {args.fsdp} "
    f"devices, batch {args.batch} x {args.seq}, {args.dtype} compute, remat {args.remat}, "
    f"{args.attention} attention; {compiler}; bytes per device"
  )
  variants = {
    "full fine-tuning": OptimConfig(steps=10, batch_size=args.batch),
    f"LoRA r{args.rank} (q, v)": OptimConfig(steps=10, batch_size=args.batch, lora_rank=args.rank),
  }
  columns = ("frozen base", "trainable", "Adam", "temporaries", "compiled arguments")
  print(
    f"{'variant':24s} {'trainable params':>16s} "
    + " ".join(f"{c + ' GB':>14s}" for c in columns)
    + f" {'compile s':>10s}"
  )
  rows = {}
  for name, optim in variants.items():
    m = rows[name] = step_memory(cfg, optim, mesh, args.batch)
    print(
      f"{name:24s} {m['trainable params']:>16,} "
      + " ".join(f"{m[c] / 1e9:>14.3f}" for c in columns)
      + f" {m['compile s']:>10.1f}"
    )
  return rows


if __name__ == "__main__":
  main()
