"""Burns et al. (2023) style: the GPT-2 family on SST-2, from pretrained checkpoints.

Fetch weights and data once, on a machine with internet (nothing is fetched at run time):
  export W2S_MODELS=/data/models TFDS_DATA_DIR=/data/tfds
  for m in gpt2 gpt2-medium gpt2-large gpt2-xl; do
    huggingface-cli download openai-community/$m config.json model.safetensors tokenizer.json \
        --local-dir $W2S_MODELS/$m
  done
  python -c "from w2s_jax.data import text_tasks as t; t.load_task('glue/sst2', split='train', download=True)"

Then, on a GPU or TPU host:
  python experiments/w2s.py --config configs/gpt2_sst2.py:models=$W2S_MODELS,weak=gpt2,strong=gpt2-xl
  python experiments/sweep.py --config configs/gpt2_sst2.py:models=$W2S_MODELS   # every weak < strong pair
  python tools/sweep_report.py runs/sweeps/gpt2-sst2

On a multi-GPU host or a TPU pod, add `fsdp=N` (params and optimizer state
split N ways; gpt2-xl's 1.5B params and Adam moments need about 19 GB) and
run the same command on every host (README: "Running on many devices").
The weak model trains on train_gt, labels train_w2s; the strong model trains
on those labels (naive KD and logconf) and, for the ceiling, on train_gt.
Burns et al. report PGR around 0.4-0.6 for naive KD on their NLP tasks
(their Figure 3); the testbed and SST-2 rows in the README are ours.

Weak and strong may come from different families: any folder under
models=DIR works (e.g. `weak=pythia-160m` downloaded from EleutherAI/pythia-160m
as above), and each model reads the task through its own tokenizer.json;
labels pass between them by example index.

Args: models=DIR (required), weak=NAME, strong=NAME, fsdp=N, seeds=N, max_len=N, bf16;
`tiny` for a check of the whole path in seconds (with tiny checkpoints: the
tests write random ones): 16 examples per split, 4 steps, one seed, and a
sweep over weak and strong only.
"""

import dataclasses

from w2s_jax.infra.configs import parse_arg
from w2s_jax.infra.sharding import MeshConfig
from w2s_jax.tasks.classification import TextTaskConfig
from w2s_jax.training.classifier_losses import LogConf, Xent
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import SweepConfig, grid

FAMILY = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def _args(arg):
  # seeds, max_len 0: 3 and 128, or 1 and 32 with tiny
  return parse_arg(
    arg,
    models="",
    weak="gpt2",
    strong="gpt2-large",
    fsdp=1,
    seeds=0,
    max_len=0,
    bf16=False,
    tiny=False,
  )


def get_config(arg=None) -> ExperimentConfig:
  arg = _args(arg)
  if not arg.models:
    raise ValueError(
      "configs/gpt2_sst2.py needs models=DIR, the folder holding "
      f"{', '.join(FAMILY)} (see this file's docstring)"
    )
  cfg = ExperimentConfig(
    name="gpt2-sst2",
    text_task=TextTaskConfig(
      tfds_name="glue/sst2",
      tokenizer=f"{arg.models}/gpt2/tokenizer.json",
      max_len=arg.max_len or (32 if arg.tiny else 128),
      add_bos=False,
      gt_examples=10000,
      w2s_examples=10000,
    ),
    pretrained_dirs=tuple(
      (name, f"{arg.models}/{name}") for name in dict.fromkeys((*family(arg), arg.weak, arg.strong))
    ),
    head_input="hidden",
    weak_size=arg.weak,
    strong_size=arg.strong,
    # Two epochs of 10,000 examples, as in Burns et al.'s NLP runs.
    finetune=OptimConfig(steps=625, batch_size=32, lr=1e-5, head_lr=1e-3, warmup_frac=0.05),
    losses=(Xent(), LogConf()),
    seeds=tuple(range(arg.seeds or (1 if arg.tiny else 3))),
    eval_batch_size=64,
    mesh=MeshConfig(fsdp=arg.fsdp),
    dtype="bfloat16" if arg.bf16 else "float32",
  )
  if arg.tiny:
    cfg = dataclasses.replace(
      cfg,
      name="gpt2-sst2-tiny",
      text_task=dataclasses.replace(
        cfg.text_task, gt_examples=16, w2s_examples=16, test_examples=16
      ),
      finetune=dataclasses.replace(cfg.finetune, steps=4, batch_size=8),
      eval_batch_size=8,
      bootstrap_resamples=200,
    )
  return cfg


def family(arg) -> tuple[str, ...]:
  """The models a sweep pairs: the GPT-2 family, or with tiny weak and strong only."""
  return (arg.weak, arg.strong) if arg.tiny else FAMILY


def sweep(arg=None) -> SweepConfig:
  base = get_config(arg)
  names = family(_args(arg))
  return SweepConfig(base, tuple(grid(names, base.losses, pretrained_dirs=base.pretrained_dirs)))
