"""The W2S methods of the literature side by side on the testbed: one leaderboard.

  python experiments/sweep.py --config configs/methods.py
  python experiments/sweep.py --config configs/methods.py:shift
  python experiments/sweep.py --config configs/methods.py:sst2=DIR   # DIR/sst2_{train,dev}.tsv
  python tools/sweep_report.py runs/sweeps/methods runs/sweeps/methods-shifted runs/sweeps/methods-sst2

Three (weak, strong) pairs of different gaps on the cue world (pico > micro,
pico > mini, micro > 96x2; sweep.py's sizes), every method on each, with the
intervals over three pretraining draws of every model, 5 fine-tuning seeds
on each, and the test examples. `shift` draws the same pairs' splits from different
parts of the world: test asks of the entities the corpus mentions least,
the training splits of those it mentions most (WorldConfig.split_by; the
same world and pretrained models). The tool's leaderboard ranks the methods
in each column and marks an interval that lies above or below naive KD's.

Methods: naive KD (xent); losses: logconf and its balanced variant,
product, window, entropy, adaptconf; bootstrapping through every size
between weak and strong (Burns et al. 4.3.1); an ensemble of the weak
model with a smaller one (pico with nano, micro with pico), its probabilities
averaged or weighted by weights learnt on 100 held-out ground-truth
examples (stacked, RAVEN's idea); a boosted ensemble (SAMME over 4 rounds of
the weak model on resampled ground truth, EnsemW2S's idea);
probes on the strong model's frozen features that relabel (kNN) or drop
(logistic) the 10% of weak labels they find likeliest wrong; and combined
(KD + 100 ground-truth labels) as the reference that sees ground truth.

`sst2=DIR` is the real-text setting: configs/sst2_minilm.py's pair (pico
from scratch on SST-2's text, supervising all-MiniLM-L6-v2 from `models=DIR`,
default runs/models; 5 seeds, one pretraining draw of pico), every method
that applies to one pair without intermediate sizes: the losses, the probes
(on MiniLM's frozen mean-pooled features), the ensembles (nano from scratch
beside pico) and the boosted pico. About an hour on 2 cores (docs/methods.md).

Args (comma-separated): `shift`, `sst2=DIR`, `models=DIR`, `seeds=N` (default
5), `pretrain_seeds=N` (default 3; sst2: 1), `tiny` (a seconds-long grid on
the 60-entity world, one draw; with sst2, sst2_minilm's `small` preset).
"""

import dataclasses

from w2s_jax.curation.ensembles import Boosted, Stacked
from w2s_jax.curation.probes import ProbeConfig
from w2s_jax.data import testbed
from w2s_jax.infra.configs import parse_arg
from w2s_jax.training.classifier_losses import (
  AdaptConf,
  Entropy,
  LogConf,
  Product,
  Window,
  Xent,
)
from w2s_jax.training.combined import Combined
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import Cell, SweepConfig, bootstrap_chain

import common  # configs/common.py, beside this file
import sst2_minilm  # configs/sst2_minilm.py: the real-text pair

SIZES = ("pico", "micro", "48x2", "mini", "96x2")
PAIRS = (("pico", "micro"), ("pico", "mini"), ("micro", "96x2"))
# nano: as weak as pico on the cue world (docs/sweeps.md); pico: weaker than micro.
ENSEMBLE_WITH = {"pico": ("nano",), "micro": ("pico",)}
BOOST_ROUNDS = 4  # the weak model, then 3 more rounds of it on resampled ground truth
STACK_HOLDOUT = 100  # of train_gt's 800: the members train on 700
LOSSES = (
  Xent(),
  LogConf(),
  LogConf(balance_batch=True),
  Product(),
  Window(),
  Entropy(),
  AdaptConf(),
  Combined(kd_weight=0.5, gt_examples=100),
)
PROBES = (ProbeConfig("knn", "relabel", 0.1), ProbeConfig("logistic", "filter", 0.1))


def get_config(arg=None) -> ExperimentConfig:
  arg = _args(arg)
  if arg.sst2:
    minilm = f"files={arg.sst2},models={arg.models},seeds={arg.seeds or (1 if arg.tiny else 5)}"
    cfg = sst2_minilm.get_config(minilm + (",small" if arg.tiny else ""))
    return dataclasses.replace(cfg, name="methods-sst2" + ("-tiny" if arg.tiny else ""))
  cfg = ExperimentConfig(
    name="methods",
    world=testbed.CUE_WORLD,
    finetune=common.CUE_FINETUNE,
    seeds=tuple(range(arg.seeds or 5)),
    # Three pretraining draws of every model: the intervals cover them too.
    pretrain_seeds=tuple(range(arg.pretrain_seeds or 3)),
  )
  if arg.tiny:
    cfg = dataclasses.replace(
      cfg,
      name="methods-tiny",
      world=common.SMALL_WORLD,
      seeds=tuple(range(arg.seeds or 2)),
      pretrain_seeds=tuple(range(arg.pretrain_seeds or 1)),
      pretrain=common.SMALL_PRETRAIN,
      finetune=OptimConfig(steps=20, batch_size=8, lr=1e-3, head_lr=5e-2),
      eval_batch_size=8,
      bootstrap_resamples=200,
    )
  if arg.shift:
    cfg = dataclasses.replace(
      cfg, name=cfg.name + "-shifted", world=dataclasses.replace(cfg.world, split_by="frequency")
    )
  return cfg


def sweep(arg=None) -> SweepConfig:
  """Every method on every pair."""
  base, arg = get_config(arg), _args(arg)
  pairs, sizes = (
    (PAIRS, SIZES) if not arg.tiny else ((("pico", "mini"),), ("pico", "micro", "mini"))
  )
  if arg.sst2:  # one pair; no size between a from-scratch pico and MiniLM to bootstrap through
    pairs, sizes = ((base.weak_size, base.strong_size),), ()
  losses = LOSSES if not arg.tiny else (Xent(), LogConf())
  cells = []
  for weak, strong in pairs:
    cells += [Cell(weak, strong, loss) for loss in losses]
    chain = bootstrap_chain(sizes, weak, strong, base.pretrained_dirs)
    if chain:
      cells.append(Cell(weak, strong, Xent(), via=chain))
    if weak in ENSEMBLE_WITH:
      cells.append(Cell(weak, strong, Xent(), ensemble=ENSEMBLE_WITH[weak]))
      if not arg.tiny:
        cells.append(
          Cell(weak, strong, Xent(), ensemble=ENSEMBLE_WITH[weak], weighting=Stacked(STACK_HOLDOUT))
        )
    rounds = BOOST_ROUNDS if not arg.tiny else 2
    cells.append(Cell(weak, strong, Xent(), ensemble=(weak,) * (rounds - 1), weighting=Boosted()))
    cells += [Cell(weak, strong, Xent(), probe=p) for p in (PROBES if not arg.tiny else PROBES[:1])]
  return SweepConfig(base, tuple(cells))


def _args(arg):
  arg = parse_arg(
    arg, shift=False, sst2="", models="runs/models", seeds=0, pretrain_seeds=0, tiny=False
  )
  if arg.sst2 and (arg.shift or arg.pretrain_seeds):
    raise ValueError(
      f"configs/methods.py: sst2={arg.sst2!r} with shift or pretrain_seeds: expected "
      "neither (the real-text setting has its own splits, and one draw of pico)"
    )
  return arg
