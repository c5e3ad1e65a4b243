"""The default W2S scale sweep: 5 sizes, 2 weak ones, 4 losses, 10 seeds, on the cue world.

  python experiments/sweep.py --config configs/sweep.py
  python tools/sweep_report.py runs/sweeps/sweep

The testbed is testbed.CUE_WORLD: 70% of entities live where their name's
first syllable suggests, so a model that does not know a fact guesses by the
cue, and its errors (the cue's exceptions) are systematic and imitable.
Sizes pico < micro < 48x2 < mini < 96x2 know more and more of the facts
(accuracy on ground truth 0.675, 0.816, 0.941, 0.962, 0.988); the weak
models are the two smallest, the strong models every larger size: 7 pairs,
each with a gap of at least 12.5 points.
The student's body is fine-tuned (lr 3e-4, 300 steps), so it can imitate
the weak model's errors. Measured: 8 min 3 s on a 2-core CPU, pretraining
included; naive KD's PGR 0.36 to 0.75, median PGR xent 0.62, logconf 0.54,
product 0.57, combined 0.68 (the table and charts: docs/sweeps.md).

Args (comma-separated): `sizes=A,B,...` (default SIZES below),
`weak=A,B,...` (the weak sizes: default the two smallest, or every pair when
`sizes=` leaves out both), `losses=A,B,...` (built-in names, or
FILE.py:FUNCTION: docs/extending.md), `seeds=N`, `facts` for the sweep of
the world from before the cue (4 sizes, every pair, 3 seeds, as
docs/sweeps.md's second table), `tiny` for a seconds-long grid (tests),
`bootstrap` to add, beside each cell, the same cell bootstrapped through
every size between its weak and strong ones (Burns et al. section 4.3.1).
Pretrained models are cached in runs/cache (every entry point's `--cache`),
so a sweep reuses what `configs/default.py` pretrained, and a rerun or a
resumed sweep pretrains nothing.
"""

import dataclasses

from w2s_jax.data import testbed
from w2s_jax.infra.configs import parse_arg
from w2s_jax.training.classifier_losses import LogConf, Product, Xent
from w2s_jax.training.combined import Combined
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import SweepConfig, grid

import common  # configs/common.py, beside this file

SIZES = ("pico", "micro", "48x2", "mini", "96x2")
# nano is left out: on the cue world it is no better than pico (0.649 and
# 0.650 on ground truth, 5 seeds, splits of 400).
WEAK_SIZES = ("pico", "micro")
FACTS_SIZES = ("pico", "nano", "micro", "mini")
LOSSES = (Xent(), LogConf(), Product(), Combined(kd_weight=0.5, gt_examples=100))


def get_config(arg=None) -> ExperimentConfig:
  """The base experiment every cell shares: world, pretraining, fine-tuning, seeds."""
  arg = _args(arg)
  if arg.facts:
    cfg = ExperimentConfig(name="sweep-facts", seeds=tuple(range(arg.seeds or 3)))
  else:
    cfg = ExperimentConfig(
      name="sweep",
      world=testbed.CUE_WORLD,
      finetune=common.CUE_FINETUNE,
      seeds=tuple(range(arg.seeds or 10)),
    )
  if arg.tiny:
    # Seconds per cell, yet sizes that differ (pico, micro and mini learn about
    # 50%, 90% and 100% of a 60-entity world), so the cells' numbers vary and a
    # broken resume shows in them.
    cfg = dataclasses.replace(
      cfg,
      name="sweep-tiny",
      world=common.SMALL_WORLD,
      seeds=tuple(range(arg.seeds or 3)),
      pretrain=common.SMALL_PRETRAIN,
      finetune=OptimConfig(steps=20, batch_size=8, lr=1e-3, head_lr=5e-2),
      eval_batch_size=8,
      bootstrap_resamples=200,
    )
  return cfg


def sweep(arg=None) -> SweepConfig:
  """The grid: weak < strong pairs of the sizes, times the losses."""
  base, arg = get_config(arg), _args(arg)
  if arg.tiny:
    sizes, weak, losses = ("pico", "micro", "mini"), None, (Xent(), LogConf())
  elif arg.facts:
    sizes, weak, losses = FACTS_SIZES, None, LOSSES
  else:
    sizes, weak, losses = SIZES, WEAK_SIZES, LOSSES
  sizes, weak = common.sweep_pairs(arg, sizes, weak)
  losses = common.losses_from(arg.losses) if arg.losses else losses
  return SweepConfig(base, tuple(grid(sizes, losses, weak_sizes=weak, bootstrap=arg.bootstrap)))


def _args(arg):
  # seeds 0: the default count
  return parse_arg(arg, **common.SWEEP_ARGS, tiny=False, facts=False, bootstrap=False)
