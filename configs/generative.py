"""Generative W2S on the offline testbed: the weak model writes the answers.

  python experiments/w2s.py --config configs/generative.py
  python experiments/sweep.py --config configs/generative.py && \
      python tools/sweep_report.py runs/sweeps/generative      # the combined-objective grid

The weak (pico) and strong (mini) models are the classification default's
pretrained ones (the same world and corpus, so the same cache entries).
Prompt `<bos> a3 b17 lives`, response `c4 is in r1 .`: the home city (a fact
from pretraining) and its region. The weak model is fine-tuned on train_gt's
responses, writes a greedy response for every train_w2s prompt, and the
strong model learns from those: `sft` (sequence-level KD), token-level
forward KL, reverse KL and JSD(0.5) against the frozen weak model,
`combined` (0.5 * sft on weak responses + 0.5 * LM on 30 ground-truth
responses), and `live` (the weak model as a live supervisor: half of each
batch is sampled by the student in the train step and scored by the weak
model, forward KL; the other half is forward KL on the weak responses).
Scored by per-field accuracy (city, region) of greedy generations, and
exact match, over 5 seeds.

Expected on a 2-core CPU: under 2 minutes with pretraining (about 1 minute
of it), under 1 minute cached; test field accuracy Pweak 0.44, sft 0.74,
ceiling 0.99, sft's PGR 0.54 [0.47, 0.60] (docs/generative.md has every table).

Args (comma-separated): `weak=SIZE`, `strong=SIZE` (default pico, mini;
other sizes go in the run's name), `losses=A,B,...` (`losses=sft` for the
format ablation), `seeds=N`, `small` for a seconds-long smoke run, `scratch`
for the no-pretraining ablation, `format=NAME` (tasks/testbed_formats.FORMATS:
city_region, city, two_facts, new_token), `lr=X` (the fine-tuning rate of
every stage). sweep():
kd_weight in {0, .25, .5, .75, 1} x gt_examples in {10, 30}, plus sft.
"""

import dataclasses

from w2s_jax.infra.configs import parse_arg
from w2s_jax.tasks.generation import GenerationConfig
from w2s_jax.training.combined import Combined
from w2s_jax.training.generative_losses import ForwardKl, Jsd, ReverseKl, Sft
from w2s_jax.training.live import Live
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import SweepConfig, grid

import common  # configs/common.py, beside this file

LOSSES = (
  Sft(),
  ForwardKl(),
  ReverseKl(),
  Jsd(),
  Combined(kd_weight=0.5, gt_examples=30),
  Live(live_fraction=0.5, live_divergence="forward_kl"),
)


def get_config(arg=None) -> ExperimentConfig:
  arg = parse_arg(
    arg, **common.BASIC_ARGS, small=False, scratch=False, format="city_region", lr=0.0
  )  # seeds 0: 5, or 2 with small; losses (): LOSSES, or three with small;
  # lr 0: 3e-4, 3e-3 with small, 1e-3 with scratch
  if arg.small and arg.scratch:
    raise ValueError(
      "configs/generative.py: config args small and scratch each set the fine-tuning "
      "schedule (30 steps at 3e-3, 800 steps at 1e-3): expected one of them"
    )
  cfg = ExperimentConfig(
    name="generative"
    + ("" if arg.format == "city_region" else f"-{arg.format}")
    + (f"-lr{arg.lr:g}" if arg.lr else ""),
    generation=GenerationConfig(format=arg.format),
    seeds=tuple(range(arg.seeds or (2 if arg.small else 5))),
    finetune=OptimConfig(steps=200, batch_size=32, lr=arg.lr or 3e-4, warmup_frac=0.05),
    losses=LOSSES,
    use_pretraining=not arg.scratch,
  )
  if arg.scratch:
    # A fair from-scratch run: a rate that trains a fresh model, and 4x the steps.
    cfg = dataclasses.replace(
      cfg,
      name=cfg.name + "-scratch",
      finetune=dataclasses.replace(cfg.finetune, steps=800, lr=arg.lr or 1e-3),
    )
  if arg.small:
    cfg = dataclasses.replace(
      cfg,
      name=cfg.name + "-small",
      world=common.SMALL_WORLD,
      weak_size="pico",
      strong_size="micro",
      pretrain=common.SMALL_PRETRAIN,
      finetune=OptimConfig(steps=30, batch_size=8, lr=arg.lr or 3e-3),  # an explicit lr wins
      losses=(Sft(), ForwardKl(), Combined(kd_weight=0.5, gt_examples=8)),
      eval_batch_size=8,
      bootstrap_resamples=200,
    )
  return common.with_basic_args(cfg, arg)  # explicit args win over `small`


def sweep(arg=None) -> SweepConfig:
  """The combined objective's grid: kd_weight x ground-truth set size, and sft."""
  base = get_config(arg)
  losses = [Sft()] + [
    Combined(kd_weight=w, gt_examples=n) for n in (10, 30) for w in (0.0, 0.25, 0.5, 0.75, 1.0)
  ]
  if base.name.endswith("-small"):
    losses = [Combined(kd_weight=w, gt_examples=8) for w in (0.0, 1.0)]
  return SweepConfig(base, tuple(grid((base.weak_size, base.strong_size), losses)))
