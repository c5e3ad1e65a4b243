"""Where the train step's time goes: XLA's per-op profile of the benchmark model.

  python tools/profile_step.py [--part fwd+bwd|forward] [--shape gpt2-small] [--top 30]
                               [--layers 6 --width 384 --heads 6 --seq 128 --batch 32] [--quick]

Traces --steps calls of the jitted forward (the loss) or forward + backward of
tools/bench_torch.py's model (tools/bench_model.py) with jax.profiler, reads the trace back
(jax.profiler.ProfileData) and sums each HLO op's time per step, merging the
same op across layers (block_3/... and block_5/... count as one row). Rows:
ms per step, how many ops merged, GFLOP/s for matrix products, forward or
backward (autodiff's transpose), the op's source (its op_name) and what it
computes. Also the step's wall time, XLA's scratch size and the minor page
faults per step (memory mapped in afresh: see w2s_jax/host_memory.py).

XLA:CPU runs independent ops concurrently, so two rows can share the same
milliseconds (a matmul sharing the cores with another looks slower than it
is alone); the row sum can exceed the wall time. Read it for what dominates.
"""

import argparse
import collections
import math
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, bench_model

from w2s_jax.infra import host_memory  # noqa: E402
from w2s_jax.training.classifier_losses import Xent

if __name__ == "__main__":
  host_memory.keep_freed_memory()  # before JAX starts: see host_memory

from bench_model import SHAPES, add_shape_args, make_inputs, model_config  # noqa: E402

QUICK = dict(layers=2, width=64, heads=4, seq=32, batch=8, vocab=1000, steps=1, top=10)


def parse_args(argv):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  add_shape_args(parser)
  parser.add_argument("--steps", type=int, default=3, help="profiled calls")
  parser.add_argument("--top", type=int, default=30, help="rows printed")
  parser.add_argument("--part", choices=("fwd+bwd", "forward"), default="fwd+bwd")
  parser.add_argument(
    "--quick", action="store_true", help=f"seconds-long check of the whole tool: {QUICK}"
  )
  args = parser.parse_args(argv)
  if args.quick or args.shape:  # explicit flags still win over these defaults
    parser.set_defaults(**{**(QUICK if args.quick else {}), **SHAPES.get(args.shape, {})})
    args = parser.parse_args(argv)
  return args


def hlo_ops(hlo: str) -> dict:
  """Each HLO instruction: its result shape, op, operands, op_name and the
  computation it calls (a fusion's body)."""
  ops = {}
  for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+?)(?:\{[\d,]*\})? ([\w-]+)\((.*?)\)(.*)", line)
    if m:
      name, shape, op, args, rest = m.groups()
      op_name = re.search(r'op_name="([^"]*)"', rest)
      calls = re.search(r"calls=%([\w.-]+)", rest)
      ops[name] = dict(
        shape=shape,
        op=op,
        args=[a.strip().lstrip("%") for a in args.split(",")],
        rest=rest,
        op_name=op_name.group(1) if op_name else "",
        calls=calls.group(1) if calls else None,
      )
  return ops


def bodies(hlo: str) -> dict:
  return {
    m.group(1): m.group(2)
    for m in re.finditer(r"^%?([\w.-]+) \(.*?\) -> .*? \{\n(.*?)\n\}", hlo, re.M | re.S)
  }


def _dims(shape: str) -> list[int]:
  m = re.search(r"\[([\d,]*)\]", shape)
  return [int(x) for x in m.group(1).split(",") if x] if m else []


def dot_flops(name: str, ops: dict, computations: dict) -> int:
  """FLOPs of the dots an op computes (itself, or inside its fusion)."""
  names = [name]
  if ops[name]["calls"]:
    body = computations.get(ops[name]["calls"], "")
    names = re.findall(r"%([\w.-]+) = \S+ dot\(", body)
  flops = 0
  for n in names:
    op = ops.get(n)
    if not op or op["op"] != "dot":
      continue
    lhs = _dims(ops[op["args"][0]]["shape"]) if op["args"][0] in ops else []
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", op["rest"])
    k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",")) if lhs else 0
    flops += 2 * math.prod(_dims(op["shape"])) * k
  return flops


def row_key(name: str, ops: dict, computations: dict) -> tuple:
  op = ops[name]
  src = (
    op["op_name"]
    or (re.search(r'op_name="([^"]*)"', computations.get(op["calls"] or "", "")) or [None, ""])[1]
  )
  direction = "bwd" if "transpose(jvp(" in src else "fwd"
  src = re.sub(r"block_\d+", "block_*", src.split("/", 1)[-1]).replace(
    "block_*/block_*.", "block_*."
  )
  src = re.sub(r"^(transpose\()?jvp\([\w.]+\)\)?/|Transformer\.\w+/", "", src)
  body = computations.get(op["calls"] or "", "")
  what = sorted(set(re.findall(r"= \S+ ([\w-]+)\(", body)) - {"parameter", "bitcast", "constant"})
  return direction, src, op["shape"], " ".join(what) if what else op["op"]


def profile(args):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from w2s_jax.models import transformer
  from w2s_jax.training import objectives

  cfg = model_config(args)
  params = transformer.init_params(cfg, jax.random.key(0), args.seq)
  data = make_inputs(args, args.batch, 0)
  batch = {
    "tokens": jnp.asarray(data["tokens"]),
    "mask": jnp.asarray(data["mask"]),
    "labels": jnp.asarray(np.eye(2, dtype=np.float32)[data["labels"]]),
  }
  objective = objectives.classifier_objective(cfg, Xent())
  loss = lambda p, b: objective(p, b, 0.0, jax.random.key(0))[0]
  compiled = (
    jax.jit(jax.value_and_grad(loss) if args.part == "fwd+bwd" else loss)
    .lower(params, batch)
    .compile()
  )
  jax.block_until_ready(compiled(params, batch))
  jax.block_until_ready(compiled(params, batch))
  faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(args.steps):
        jax.block_until_ready(compiled(params, batch))
    wall = (time.perf_counter() - start) / args.steps
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
    trace = jax.profiler.ProfileData.from_file(str(next(Path(trace_dir).rglob("*.xplane.pb"))))
  hlo = compiled.as_text()
  return hlo, trace, wall, faults, compiled.memory_analysis().temp_size_in_bytes


def main(argv=None):
  args = parse_args(argv)
  host = host_memory.status()
  hlo, trace, wall, faults, temp = profile(args)
  ops, computations = hlo_ops(hlo), bodies(hlo)
  rows = collections.defaultdict(lambda: [0.0, 0, 0])
  for plane in trace.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in ops:
          row = rows[row_key(event.name, ops, computations)]
          row[0] += event.duration_ns / 1e6 / args.steps
          row[1] += 1
          row[2] += dot_flops(event.name, ops, computations) / args.steps
  total = sum(r[0] for r in rows.values())
  print(
    f"{args.part} of {args.layers} x {args.width} ({args.heads} heads), batch {args.batch} x "
    f"{args.seq}: {1e3 * wall:.0f} ms/step under the profiler; ops sum to {total:.0f} ms; "
    f"XLA scratch {temp / 2**20:.0f} MiB; {faults:.0f} minor page faults/step "
    f"(host memory: {host})"
  )
  dot_ms = sum(r[0] for r in rows.values() if r[2])
  dot_gflop = sum(r[2] for r in rows.values()) / 1e9
  print(
    f"matrix products: {dot_ms:.0f} ms, {dot_gflop:.1f} GFLOP ({dot_gflop / dot_ms * 1e3:.0f} "
    f"GFLOP/s while running); everything else: {total - dot_ms:.0f} ms\n"
  )
  print(f"{'ms/step':>8s} {'ops':>4s} {'GFLOP/s':>8s}  dir  source / result shape / computes")
  ranked = sorted(rows.items(), key=lambda kv: -kv[1][0])
  for (direction, src, shape, what), (ms, n, flops) in ranked[: args.top]:
    rate = f"{flops / ms / 1e6:8.0f}" if flops else " " * 8
    print(f"{ms:8.1f} {n // args.steps:4d} {rate}  {direction}  {src[-60:]}  {shape}  {what[:50]}")


if __name__ == "__main__":
  main()
