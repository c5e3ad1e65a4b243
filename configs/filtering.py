"""Does filtering the weak-labelled set help? No filter vs each criterion at keep fractions.

  python experiments/sweep.py --config configs/filtering.py
  python tools/sweep_report.py runs/sweeps/filtering

Weak pico (knows ~33% of the facts) labels train_w2s; the strong mini model
trains with naive KD on the examples each criterion keeps: the weak
classifier's confidence, margin, negative entropy, the agreement of the 5
weak seeds, or the weak LM's log-likelihood of the example's text (frequent
entities, which the weak model is likelier to know, read as likelier). The
selection keeps the weak labels' class balance. Expected: about 3 minutes.

Args: seeds=N; `tiny` for a check of seconds (the 60-entity world, pico ->
micro, no filter and two criteria at keep 0.5).
"""

import dataclasses

from w2s_jax.configs import parse_arg
from w2s_jax.objectives import LossConfig
from w2s_jax.pipeline import SMALL_PRETRAIN, SMALL_WORLD, ExperimentConfig
from w2s_jax.selection import FilterConfig
from w2s_jax.sweep import Cell, SweepConfig
from w2s_jax.train import OptimConfig

CRITERIA = ("confidence", "margin", "neg_entropy", "agreement", "likelihood")
KEEP_FRACS = (0.75, 0.5, 0.25)  # and 1.0: the unfiltered cell


def get_config(arg=None) -> ExperimentConfig:
  arg = parse_arg(arg, seeds=0, tiny=False)  # seeds 0: 5, or 2 with tiny
  cfg = ExperimentConfig(name="filtering", seeds=tuple(range(arg.seeds or (2 if arg.tiny else 5))))
  if arg.tiny:
    cfg = dataclasses.replace(
        cfg, name="filtering-tiny", world=SMALL_WORLD, pretrain=SMALL_PRETRAIN,
        finetune=OptimConfig(steps=20, batch_size=8, lr=1e-3, head_lr=5e-2),
        eval_batch_size=8, bootstrap_resamples=200)
  return cfg


def sweep(arg=None) -> SweepConfig:
  base = get_config(arg)
  if base.name == "filtering-tiny":
    return SweepConfig(base, tuple(
        Cell("pico", "micro", LossConfig("xent"), filter=f)
        for f in (None, FilterConfig("confidence", 0.5), FilterConfig("likelihood", 0.5))))
  cells = [Cell("pico", "mini", LossConfig("xent"))]
  cells += [Cell("pico", "mini", LossConfig("xent"), filter=FilterConfig(c, keep))
            for c in CRITERIA for keep in KEEP_FRACS]
  return SweepConfig(base, tuple(cells))
