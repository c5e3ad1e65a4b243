"""Runs a sweep, resumably: python experiments/sweep.py --config configs/sweep.py[:arg]

Finished cells are skipped on a rerun; kill it at any moment and run it again.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.keep_freed_memory()  # before JAX starts: see host_memory

from w2s_jax import configs, distributed, interrupts, report, sharding, sweep  # noqa: E402


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default="configs/sweep.py", help="config file[:arg] with sweep()")
  parser.add_argument("--out", default=None, help="sweep directory (default runs/sweeps/<name>)")
  configs.add_run_args(parser)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  grid = configs.load_sweep(args.config)
  distributed.initialize(grid.base.distributed)  # before anything asks JAX for devices
  configs.start_run(args)
  out = Path(args.out or f"runs/sweeps/{grid.base.name}")
  rows = sweep.run_sweep(grid, out_dir=out, cache_dir=args.cache, progress=not args.no_progress)
  if sharding.is_main_process():
    print(report.summary_table(rows))
    print(f"\n{len(rows)} cells in {out / 'sweep.jsonl'}; charts: python tools/sweep_report.py {out}")


if __name__ == "__main__":
  with interrupts.handle_interrupts():  # Ctrl-C stops the run even if a callback swallows it
    main()
