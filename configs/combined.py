"""The combined objective: kd_weight * KD(weak labels) + (1 - kd_weight) * xent(ground truth).

  python experiments/sweep.py --config configs/combined.py
  python tools/sweep_report.py runs/sweeps/combined

Weak pico -> strong mini. kd_weight in {0, 0.25, 0.5, 0.75, 1} times a
ground-truth set (the first examples of train_gt) of 10, 30 or 100 examples;
naive KD on the weak labels alone is the baseline cell. kd_weight = 0 is
ground truth only, kd_weight = 1 weak labels only. Expected: about 3 minutes.

Args: `weak=SIZE`, `strong=SIZE`, `seeds=N`; `tiny` for a check of seconds (the 60-entity world, pico ->
micro, naive KD and two combined cells).
"""

import dataclasses

from w2s_jax.infra.configs import parse_arg
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.combined import Combined
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import Cell, SweepConfig

import common  # configs/common.py, beside this file

KD_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
GT_EXAMPLES = (10, 30, 100)


def get_config(arg=None) -> ExperimentConfig:
  arg = _args(arg)
  cfg = ExperimentConfig(name="combined", seeds=tuple(range(arg.seeds or (2 if arg.tiny else 5))))
  if arg.tiny:
    cfg = dataclasses.replace(
      cfg,
      name="combined-tiny",
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
  if base.name == "combined-tiny":
    return SweepConfig(
      base,
      (
        Cell(weak, strong, Xent()),
        Cell(weak, strong, Combined(kd_weight=0.5, gt_examples=10)),
      ),
    )
  cells = [Cell(weak, strong, Xent())]
  cells += [
    Cell(weak, strong, Combined(kd_weight=w, gt_examples=n))
    for n in GT_EXAMPLES
    for w in KD_WEIGHTS
  ]
  return SweepConfig(base, tuple(cells))


def _args(arg):
  # seeds 0: 5, or 2 with tiny; weak and strong: pico and mini, or pico and micro with tiny.
  return parse_arg(arg, weak="", strong="", seeds=0, tiny=False)
