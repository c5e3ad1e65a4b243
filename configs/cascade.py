"""Cascading inference on the testbed: the weak model answers, or defers to the strong one.

  python experiments/cascade.py --config configs/cascade.py          # runs/cascade
  python experiments/cascade.py --config configs/cascade.py:small    # seconds; what the test runs

Weak models pico and nano, strong model mini, the default experiments'
pretrained models (the same world and corpus: the runs/cache entries are
shared). Classification (configs/default.py's task and fine-tuning): each
weak model is fine-tuned on train_gt minus a calibration slice of 100
examples it never sees (its temperature is fitted there); the strong model
is fine-tuned on all of train_gt (the ceiling) and, apart, on the weak model's
soft labels of train_w2s with naive KD `xent` (the W2S student: what a team
without strong-model labels gets). Routers: max_prob, margin, neg_entropy and
temperature-scaled max_prob. Generation (configs/generative.py's task, city
and region of `<bos> a3 b17 lives`): the weak model on all of train_gt, the
student on the weak model's greedy responses (`sft`); routers: the greedy
response's mean token log-prob, Chow-Quantile (q=0, the least likely
token) and the agreement of 5 samples at temperature 1 (whose FLOPs it pays).
Every query of test and heldout, 5 seeds; costs are 2 * non-embedding params
* tokens (flops.model_flops). runs/cascade holds results.json,
per_query.csv and accuracy_vs_cost.png; docs/cascade.md has the tables.

Expected on a 2-core CPU, pretraining cached: about 4.5 minutes. Test,
ceiling strong: pico's max_prob beats random only a little (area +0.03, IBC
lift 0.16) and needs 84% deferral to reach 95% of the strong model's gain,
the oracle 37%; nano's max_prob: IBC lift 0.86, 64% (docs/cascade.md).

Args (comma-separated): `weak=A,B,...` (the weak sizes; default pico,nano),
`strong=SIZE` (default mini; other sizes go in the run's name), `small` (a
60-entity world, weak pico and nano, strong micro, 2 seeds: seconds),
`seeds=N`, `task=classification|generative|both`.
"""

import dataclasses

from w2s_jax.cascade.experiment import CascadeConfig
from w2s_jax.infra.configs import parse_arg
from w2s_jax.tasks.generation import GenerationConfig
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.generative_losses import Sft
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig

import common  # configs/common.py, beside this file


def get_config(arg=None) -> CascadeConfig:
  arg = parse_arg(arg, weak=(), strong="", small=False, seeds=0, task="both")
  if arg.task not in ("classification", "generative", "both"):
    raise ValueError(f"config arg task={arg.task!r}: expected classification, generative or both")
  seeds = tuple(range(arg.seeds or (2 if arg.small else 5)))
  strong = arg.strong or ("micro" if arg.small else "mini")
  weak = tuple(arg.weak) or ("pico", "nano")
  shared = dict(seeds=seeds, weak_size=weak[0], strong_size=strong)
  classification = ExperimentConfig(name="cascade-classification", losses=(Xent(),), **shared)
  generative = ExperimentConfig(
    name="cascade-generative",
    generation=GenerationConfig(),
    losses=(Sft(),),
    finetune=OptimConfig(steps=200, batch_size=32, lr=3e-4, warmup_frac=0.05),
    **shared,
  )
  if arg.small:
    small = dict(world=common.SMALL_WORLD, pretrain=common.SMALL_PRETRAIN, eval_batch_size=8)
    classification = dataclasses.replace(
      classification, finetune=OptimConfig(steps=20, batch_size=8, lr=1e-3, head_lr=5e-2), **small
    )
    generative = dataclasses.replace(
      generative, finetune=OptimConfig(steps=30, batch_size=8, lr=3e-3), **small
    )
  return CascadeConfig(
    name="cascade"
    + ("-small" if arg.small else "")
    + ("" if arg.task == "both" else f"-{arg.task}")
    + ("" if (weak, arg.strong) == (("pico", "nano"), "") else "-" + "-".join((*weak, strong))),
    classification=classification if arg.task != "generative" else None,
    generative=generative if arg.task != "classification" else None,
    weak_sizes=weak,
    strong_size=strong,
    calibration_examples=6 if arg.small else 100,
    ibc_resamples=200 if arg.small else 1000,
  )
