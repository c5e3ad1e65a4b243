"""The GPT-2-shaped classifier that tools/bench_torch.py times and
tools/profile_step.py profiles: one definition of its shape, inputs and FLOPs."""

import argparse

import numpy as np

# Defaults: 6 x 384, 6 heads, 128 tokens, GPT-2's vocabulary.
DEFAULT = dict(layers=6, width=384, heads=6, seq=128, batch=32, infer_batch=128, vocab=50257)
SHAPES = {"gpt2-small": dict(layers=12, width=768, heads=12)}
QUICK = dict(layers=2, width=64, heads=4, seq=32, batch=8, infer_batch=32, vocab=1000)
FLOP_FORMULA = (
  "forward = 2*T*12*L*d^2 + 4*L*T*seq*d  (T = batch*seq tokens; "
  "embeddings, norms and the 2-class head not counted); train step = 3 * forward"
)


def add_shape_args(parser: argparse.ArgumentParser) -> None:
  for name, default in DEFAULT.items():
    parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
  parser.add_argument(
    "--bf16", action="store_true", help="bfloat16 compute, float32 weights (ModelConfig.dtype)"
  )
  parser.add_argument(
    "--shape",
    choices=sorted(SHAPES),
    help=f"a second model shape: {SHAPES} (explicit flags still win)",
  )


def forward_flops(args, batch: int) -> float:
  tokens = batch * args.seq
  return (
    2 * tokens * 12 * args.layers * args.width**2 + 4 * args.layers * tokens * args.seq * args.width
  )


def model_config(args, attention="explicit"):
  """w2s_jax's side of the benchmark model."""
  from w2s_jax.models.model_config import ModelConfig

  return ModelConfig(
    vocab_size=args.vocab,
    width=args.width,
    depth=args.layers,
    heads=args.heads,
    max_len=args.seq,
    head_input="hidden",
    ln_eps=1e-5,
    gelu_approximate=True,
    attention=attention,
    dtype="bfloat16" if args.bf16 else "float32",
  )


def make_inputs(args, batch: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {
    "tokens": rng.integers(1, args.vocab, (batch, args.seq), dtype=np.int32),
    "mask": np.ones((batch, args.seq), np.int32),
    "labels": rng.integers(0, 2, batch),
  }
