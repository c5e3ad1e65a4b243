"""Runs one W2S experiment: python experiments/w2s.py --config configs/default.py[:arg]"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.keep_freed_memory()  # before JAX starts: see host_memory

from w2s_jax import configs, distributed, interrupts, pipeline, sharding  # noqa: E402


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default="configs/default.py",
                      help="config file, optionally with ':arg' (e.g. configs/default.py:small)")
  parser.add_argument("--out", default=None, help="run directory (default runs/<config name>)")
  configs.add_run_args(parser)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  cfg = configs.load(args.config)
  distributed.initialize(cfg.distributed)  # before anything asks JAX for devices
  configs.start_run(args)
  out = Path(args.out or f"runs/{cfg.name}")
  results = pipeline.run(cfg, out_dir=out, cache_dir=args.cache, progress=not args.no_progress)
  if sharding.is_main_process():
    print(pipeline.format_results(results))
    print(f"\nwrote {out / 'results.json'}")


if __name__ == "__main__":
  with interrupts.handle_interrupts():  # Ctrl-C stops the run even if a callback swallows it
    main()
