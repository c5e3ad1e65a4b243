"""Seeds trained together (one vmapped program) vs one at a time: speed ratio.

  python tools/bench_seeds.py [--config configs/sweep.py:facts] [--size mini] [--reps 5]
                              [--json PATH] [--quick]

Times the fine-tune of one sweep cell (the config's seeds, steps and batch),
after a compile warm-up of each variant, alternating the two over several
repetitions, and prints the medians and their ratio.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness

from w2s_jax.infra import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.keep_freed_memory(by_default=False)  # before JAX starts: see host_memory

import jax  # noqa: E402

from w2s_jax.infra import configs  # noqa: E402
from w2s_jax.training import finetune
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.w2s import parts as parts_lib

import harness  # noqa: E402

QUICK = dict(config=f"{harness.CONFIGS / 'sweep.py'}:tiny", size="micro", reps=2)


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--config", default=f"{harness.CONFIGS / 'sweep.py'}:facts")
  parser.add_argument("--size", default="mini", help="model size to fine-tune")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--cache", default="runs/cache")
  parser.add_argument("--json", help="write the numbers here")
  parser.add_argument("--quick", action="store_true", help=f"seconds: {QUICK}")
  args = parser.parse_args(argv)
  if args.quick:  # explicit flags still win
    parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
  load_before, wall = os.getloadavg(), time.perf_counter()
  env = harness.machine()
  cfg = configs.load(args.config)
  parts = parts_lib.build(cfg, cache_dir=args.cache, progress=False)
  params, model_cfg, _ = parts.models.get(args.size)
  per_seed = parts.trainer.supervised("train_w2s", size=args.size)  # ground-truth labels, per seed
  seeds = parts.seeds
  run = lambda s, data: jax.block_until_ready(
    finetune.finetune(
      params,
      model_cfg,
      data,
      seeds=s,
      loss_cfg=Xent(),
      optim_cfg=cfg.finetune,
      mesh=parts.mesh,
      desc="bench",
      progress=False,
    )[0]
  )
  contenders = {
    "together": lambda n: [run(seeds, per_seed) for _ in range(n)],
    "one_at_a_time": lambda n: [
      run((s,), per_seed[i : i + 1]) for _ in range(n) for i, s in enumerate(seeds)
    ],
  }
  harness.print_machine(env, load_before)
  print(
    f"{args.size}, {len(seeds)} seeds, {cfg.finetune.steps} steps of batch "
    f"{cfg.finetune.batch_size}, {args.reps} interleaved rounds, {len(jax.devices())} "
    "device(s)"
  )
  first, errors = harness.warm_up(contenders, 0)  # compiles both
  timings = harness.interleaved(contenders, args.reps, 1)
  for name in timings.keys():
    t = timings.seconds[name]
    print(
      f"  {name:14s} median {timings.median(name):.3f}s  (min {min(t):.3f}, max {max(t):.3f})"
      f"  peak RSS {timings.peak_rss_mb[name]:.0f} MB"
    )
  speedup = timings.speedup("together", over="one_at_a_time")
  print(
    f"  speed-up of vmapped seeds: {speedup['of_medians']:.2f}x from medians, "
    f"{speedup['median_of_round_ratios']:.2f}x median of per-round ratios"
  )
  load_after = harness.print_footer(load_before, wall)
  if args.json:
    harness.write_record(
      args.json,
      {
        "config": vars(args),
        **env,
        "load_before": load_before,
        "load_after": load_after,
        "first_s": first,
        "errors": errors,
        "seconds": timings.seconds,
        "speedup": speedup,
        "peak_rss_mb": timings.peak_rss_mb,
        "peak_rss_covers": timings.peak_rss_covers,
      },
    )


if __name__ == "__main__":
  main()
