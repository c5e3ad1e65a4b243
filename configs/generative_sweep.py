"""Generative W2S over model scale: every weak < strong pair of 4 sizes, 5 objectives, 3 seeds.

  python experiments/sweep.py --config configs/generative_sweep.py
  python tools/sweep_report.py runs/sweeps/generative-sweep

The generative testbed task of configs/generative.py (prompt `<bos> a3 b17
lives`, response `c4 is in r1 .`), with the pretrained sizes of the
classification sweep, pico < nano < micro < mini. Objectives: `sft`
(sequence-level KD on the weak responses), token-level forward KL and
reverse KL against the frozen weak model, the live supervisor (`live`:
half of each batch sampled by the student and judged by the weak model,
forward KL: with reverse KL or JSD it never learns the response format,
as off-policy reverse KL does not; docs/generative.md), and `combined`
(0.5 * sft + 0.5 * LM on 30 ground-truth responses). Every cell is scored by the per-field accuracy of greedy
generations; weak and ceiling stages are shared between cells.

Expected on a 2-core CPU with pretraining cached: about 7 minutes; median
PGR over the 6 pairs combined 0.62, sft 0.57, forward_kl and live 0.42,
reverse_kl -0.49 (README, "Generative sweeps"; the table in docs/generative.md).

Args (comma-separated): `sizes=A,B,...` (default SIZES below), `weak=A,B,...`
(the weak sizes; default every pair), `losses=A,B,...` (generative losses:
sft, forward_kl, reverse_kl, jsd, live, combined, or FILE.py:FUNCTION),
`seeds=N`, `tiny` for a seconds-long grid (the kill test).
"""

import dataclasses

from w2s_jax.infra.configs import parse_arg
from w2s_jax.tasks.generation import GenerationConfig
from w2s_jax.training.combined import Combined
from w2s_jax.training.generative_losses import ForwardKl, ReverseKl, Sft
from w2s_jax.training.live import Live
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import SweepConfig, grid

import common  # configs/common.py, beside this file

SIZES = ("pico", "nano", "micro", "mini")
LOSSES = (
  Sft(),
  ForwardKl(),
  ReverseKl(),
  Live(live_fraction=0.5, live_divergence="forward_kl"),
  Combined(kd_weight=0.5, gt_examples=30),
)


def get_config(arg=None) -> ExperimentConfig:
  """The base experiment every cell shares (configs/generative.py's, 3 seeds)."""
  arg = _args(arg)
  cfg = ExperimentConfig(
    name="generative-sweep",
    generation=GenerationConfig(),
    seeds=tuple(range(arg.seeds or (2 if arg.tiny else 3))),
    finetune=OptimConfig(steps=200, batch_size=32, lr=3e-4, warmup_frac=0.05),
    losses=(Sft(),),
  )
  if arg.tiny:
    # Seconds per cell, yet sizes that differ, so the cells' numbers vary and a
    # broken resume shows in them.
    cfg = dataclasses.replace(
      cfg,
      name="generative-sweep-tiny",
      world=common.SMALL_WORLD,
      pretrain=common.SMALL_PRETRAIN,
      finetune=OptimConfig(steps=20, batch_size=8, lr=3e-3),
      eval_batch_size=8,
      bootstrap_resamples=200,
    )
  return cfg


def sweep(arg=None) -> SweepConfig:
  """The grid: every pair of SIZES with weak < strong, times LOSSES."""
  base, arg = get_config(arg), _args(arg)
  sizes, losses = (("pico", "micro"), (Sft(), LOSSES[3])) if arg.tiny else (SIZES, LOSSES)
  sizes, weak = common.sweep_pairs(arg, sizes)
  losses = common.losses_from(arg.losses) if arg.losses else losses
  return SweepConfig(base, tuple(grid(sizes, losses, weak_sizes=weak)))


def _args(arg):
  return parse_arg(arg, **common.SWEEP_ARGS, tiny=False)  # seeds 0: 3, or 2 with tiny
