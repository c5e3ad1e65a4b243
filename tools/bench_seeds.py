"""Seeds trained together (one vmapped program) vs one at a time: speed ratio.

  python tools/bench_seeds.py [--config configs/sweep.py:facts] [--size mini] [--reps 5]

Times the fine-tune of one sweep cell (the config's seeds, steps and batch),
after a compile warm-up of each variant, alternating the two over several
repetitions, and prints the medians and their ratio.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.keep_freed_memory()  # before JAX starts: see host_memory

import jax  # noqa: E402
import numpy as np  # noqa: E402

from w2s_jax import configs, stages  # noqa: E402
from w2s_jax.objectives import LossConfig  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--config", default="configs/sweep.py:facts")
  parser.add_argument("--size", default="mini", help="model size to fine-tune")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--cache", default="runs/cache")
  args = parser.parse_args(argv)
  cfg = configs.load(args.config)
  ctx = stages.Context(cfg, cache_dir=args.cache, progress=False)
  params, model_cfg, _ = ctx.pretrained(args.size)
  data, seeds = ctx.splits["train_w2s"], ctx.seeds
  labels = ctx.ground_truth("train_w2s")
  run = lambda s, lab: jax.block_until_ready(stages.finetune(
      params, model_cfg, [data.with_fields(labels=l) for l in lab], seeds=s, loss_cfg=LossConfig("xent"), optim_cfg=cfg.finetune,
      mesh=ctx.mesh, desc="bench", progress=False))
  together = lambda: run(seeds, labels)
  one_at_a_time = lambda: [run((s,), labels[i:i + 1]) for i, s in enumerate(seeds)]
  together(), one_at_a_time()  # compile both
  times = {"together": [], "one_at_a_time": []}
  for _ in range(args.reps):
    for name, fn in (("together", together), ("one_at_a_time", one_at_a_time)):
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  med = {k: float(np.median(v)) for k, v in times.items()}
  print(f"{args.size}, {len(seeds)} seeds, {cfg.finetune.steps} steps of batch "
        f"{cfg.finetune.batch_size}, {args.reps} reps, {len(jax.devices())} device(s)")
  for name, v in times.items():
    print(f"  {name:14s} median {med[name]:.3f}s  (min {min(v):.3f}, max {max(v):.3f})")
  print(f"  speed-up of vmapped seeds: {med['one_at_a_time'] / med['together']:.2f}x")


if __name__ == "__main__":
  main()
