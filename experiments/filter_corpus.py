"""Curate a pretraining pool with the weak LM, then pretrain the strong model on it.

  python experiments/filter_corpus.py [--config configs/default.py:facts] [--keep 0.8]

The pool is the testbed corpus plus 20% planted bad documents (shuffled,
random, false facts). Prints how much bad data each criterion removes, then
pretrains the strong model on the unfiltered pool and on the pool filtered by
--criterion (the weak LM's likelihood by default; min_prob, likelihood_ratio,
random) and runs the W2S pipeline (naive KD) with each.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.keep_freed_memory()  # before JAX starts: see host_memory

from w2s_jax import configs, curation, interrupts  # noqa: E402


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default="configs/default.py:facts")  # docs/selection.md's world
  parser.add_argument("--keep", type=float, default=0.8, help="keep fraction for the strong corpus")
  parser.add_argument("--criterion", default="likelihood",
                      choices=(*curation.POOL_CRITERIA, *curation.ALIASES),
                      help="what filters the strong corpus (mean_logprob = likelihood)")
  parser.add_argument("--out", default="runs/filter_corpus")
  configs.add_run_args(parser)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  configs.start_run(args)
  cfg = configs.load(args.config)
  results = curation.run(cfg, keep=args.keep, out_dir=Path(args.out), cache_dir=args.cache,
                         progress=not args.no_progress, criterion=args.criterion)
  print(curation.format_report(results))


if __name__ == "__main__":
  with interrupts.handle_interrupts():  # Ctrl-C stops the run even if a callback swallows it
    main()
