"""Does filtering the weak-labelled set help? No filter vs each criterion at keep fractions.

  python experiments/sweep.py --config configs/filtering.py
  python tools/sweep_report.py runs/sweeps/filtering

Weak pico (knows ~33% of the facts) labels train_w2s; the strong mini model
trains with naive KD on the examples each criterion keeps: the weak
classifier's confidence, margin, negative entropy, the agreement of the 5
weak seeds, or the weak LM's log-likelihood of the example's text (frequent
entities, which the weak model is likelier to know, read as likelier). The
selection keeps the weak labels' class balance. Expected: about 3 minutes.

Args: `weak=SIZE`, `strong=SIZE`, `seeds=N`; `tiny` for a check of seconds (the 60-entity world, pico ->
micro, no filter and two criteria at keep 0.5).
"""

import dataclasses

from w2s_jax.curation.selection import FilterConfig
from w2s_jax.infra.configs import parse_arg
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import Cell, SweepConfig

import common  # configs/common.py, beside this file

CRITERIA = ("confidence", "margin", "neg_entropy", "agreement", "likelihood")
KEEP_FRACS = (0.75, 0.5, 0.25)  # and 1.0: the unfiltered cell


def get_config(arg=None) -> ExperimentConfig:
  arg = _args(arg)
  cfg = ExperimentConfig(name="filtering", seeds=tuple(range(arg.seeds or (2 if arg.tiny else 5))))
  if arg.tiny:
    cfg = dataclasses.replace(
      cfg,
      name="filtering-tiny",
      world=common.SMALL_WORLD,
      pretrain=common.SMALL_PRETRAIN,
      finetune=OptimConfig(steps=20, batch_size=8, lr=1e-3, head_lr=5e-2),
      eval_batch_size=8,
      bootstrap_resamples=200,
    )
  return cfg


def sweep(arg=None) -> SweepConfig:
  base, arg = get_config(arg), _args(arg)
  weak, strong = arg.weak or "pico", arg.strong or ("micro" if arg.tiny else "mini")
  if base.name == "filtering-tiny":
    return SweepConfig(
      base,
      tuple(
        Cell(weak, strong, Xent(), filter=f)
        for f in (None, FilterConfig("confidence", 0.5), FilterConfig("likelihood", 0.5))
      ),
    )
  cells = [Cell(weak, strong, Xent())]
  cells += [
    Cell(weak, strong, Xent(), filter=FilterConfig(c, keep))
    for c in CRITERIA
    for keep in KEEP_FRACS
  ]
  return SweepConfig(base, tuple(cells))


def _args(arg):
  # seeds 0: 5, or 2 with tiny; weak and strong: pico and mini, or pico and micro with tiny.
  return parse_arg(arg, weak="", strong="", seeds=0, tiny=False)
