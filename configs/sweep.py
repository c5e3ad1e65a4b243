"""The default W2S scale sweep: every weak < strong pair of 4 sizes, 4 losses, 3 seeds.

  python experiments/sweep.py --config configs/sweep.py
  python tools/sweep_report.py runs/sweeps/default

Sizes pico < nano < micro < mini know about 33%, 70%, 90% and 100% of the
testbed's facts after pretraining. Expected on a 2-core CPU: about 4 minutes,
pretraining included; median PGR about 0.83 for xent, 0.78 logconf, 0.68
product, 1.00 combined. The README shows the measured table and charts.

Args (comma-separated): `tiny` for a seconds-long grid (tests), `seeds=N`.
"""

import dataclasses

from w2s_jax.configs import parse_arg
from w2s_jax.objectives import LossConfig
from w2s_jax.pipeline import SMALL_PRETRAIN, SMALL_WORLD, ExperimentConfig
from w2s_jax.sweep import SweepConfig, grid
from w2s_jax.train import OptimConfig

SIZES = ("pico", "nano", "micro", "mini")
LOSSES = (LossConfig("xent"), LossConfig("logconf"), LossConfig("product"),
          LossConfig("combined", kd_weight=0.5, gt_examples=100))


def get_config(arg=None) -> ExperimentConfig:
  """The base experiment every cell shares: world, pretraining, fine-tuning, seeds."""
  arg = parse_arg(arg, tiny=False, seeds=3)
  cfg = ExperimentConfig(name="sweep", seeds=tuple(range(arg.seeds)))
  if arg.tiny:
    # Seconds per cell, yet sizes that differ (pico, micro and mini learn about
    # 50%, 90% and 100% of a 60-entity world), so the cells' numbers vary and a
    # broken resume shows in them.
    cfg = dataclasses.replace(
        cfg, name="sweep-tiny",
        world=SMALL_WORLD,
        pretrain=SMALL_PRETRAIN,
        finetune=OptimConfig(steps=20, batch_size=8, lr=1e-3, head_lr=5e-2),
        eval_batch_size=8, bootstrap_resamples=200)
  return cfg


def sweep(arg=None) -> SweepConfig:
  """The grid: every pair of SIZES with weak < strong, times LOSSES."""
  base = get_config(arg)
  if base.name == "sweep-tiny":
    return SweepConfig(base, tuple(grid(("pico", "micro", "mini"),
                                        (LossConfig("xent"), LossConfig("logconf")))))
  return SweepConfig(base, tuple(grid(SIZES, LOSSES)))
