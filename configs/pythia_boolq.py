"""The Pythia family (GPT-NeoX) on BoolQ, from pretrained checkpoints, optionally at a pretraining step.

Fetch weights and data once, on a machine with internet (nothing is fetched at run time):
  export W2S_MODELS=/data/models TFDS_DATA_DIR=/data/tfds
  for m in pythia-70m pythia-160m pythia-410m pythia-1b pythia-1.4b pythia-2.8b; do
    huggingface-cli download EleutherAI/$m config.json model.safetensors tokenizer.json \
        --local-dir $W2S_MODELS/$m            # add --revision step71000 for a pretraining checkpoint
  done
  python -c "from w2s_jax.data import text_tasks as t; t.load_task('bool_q', split='train', download=True)"

Then, on a GPU or TPU host:
  python experiments/w2s.py --config configs/pythia_boolq.py:models=$W2S_MODELS,weak=pythia-160m,strong=pythia-1.4b
  python experiments/sweep.py --config configs/pythia_boolq.py:models=$W2S_MODELS
  python tools/sweep_report.py runs/sweeps/pythia-boolq

W2S across pretraining: download the same model at several `--revision stepN`
into folders named e.g. pythia-1b@step36000 and list them with names=...
On a multi-GPU host or a TPU pod add `fsdp=N` and run the same command on
every host (README: "Running on many devices"). Passages are long: the
default 512 tokens keeps the end of each prompt (the question).

Weak and strong may come from different families: any folder under
models=DIR (e.g. `weak=gpt2`, a Hugging Face download like the above) works,
and each model reads the task through its own tokenizer.json; labels pass
between them by example index.

Args: models=DIR (required), weak=NAME, strong=NAME, names=A+B+C (the family
to sweep), fsdp=N, seeds=N, max_len=N; `tiny` for a check of the whole path
in seconds (with tiny checkpoints: the tests write random ones): 16 examples
per split, 4 steps, one seed, and a sweep over weak and strong only.
"""

import dataclasses

from w2s_jax.infra.configs import parse_arg
from w2s_jax.infra.sharding import MeshConfig
from w2s_jax.tasks.classification import TextTaskConfig
from w2s_jax.training.classifier_losses import LogConf, Xent
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import SweepConfig, grid

FAMILY = "pythia-70m+pythia-160m+pythia-410m+pythia-1b+pythia-1.4b+pythia-2.8b"


def _args(arg):
  # seeds, max_len 0: 3 and 512, or 1 and 32 with tiny
  return parse_arg(
    arg,
    models="",
    weak="pythia-160m",
    strong="pythia-1.4b",
    names=FAMILY,
    fsdp=1,
    seeds=0,
    max_len=0,
    tiny=False,
  )


def get_config(arg=None) -> ExperimentConfig:
  arg = _args(arg)
  if not arg.models:
    raise ValueError(
      "configs/pythia_boolq.py needs models=DIR, the folder holding the "
      "checkpoints (see this file's docstring)"
    )
  names = family(arg)
  cfg = ExperimentConfig(
    name="pythia-boolq",
    text_task=TextTaskConfig(
      tfds_name="bool_q",
      tokenizer=f"{arg.models}/{names[0]}/tokenizer.json",
      max_len=arg.max_len or (32 if arg.tiny else 512),
      add_bos=False,
      gt_examples=4000,
      w2s_examples=5000,
    ),
    pretrained_dirs=tuple(
      (name, f"{arg.models}/{name}") for name in dict.fromkeys((*names, arg.weak, arg.strong))
    ),
    head_input="hidden",
    weak_size=arg.weak,
    strong_size=arg.strong,
    finetune=OptimConfig(
      steps=600, batch_size=32, lr=1e-5, head_lr=1e-3, warmup_frac=0.05, grad_accum_steps=4
    ),
    losses=(Xent(), LogConf()),
    seeds=tuple(range(arg.seeds or (1 if arg.tiny else 3))),
    eval_batch_size=32,
    mesh=MeshConfig(fsdp=arg.fsdp),
  )
  if arg.tiny:
    cfg = dataclasses.replace(
      cfg,
      name="pythia-boolq-tiny",
      text_task=dataclasses.replace(
        cfg.text_task, gt_examples=16, w2s_examples=16, test_examples=16
      ),
      finetune=dataclasses.replace(cfg.finetune, steps=4, batch_size=8, grad_accum_steps=2),
      eval_batch_size=8,
      bootstrap_resamples=200,
    )
  return cfg


def family(arg) -> tuple[str, ...]:
  """The models a sweep pairs: names=, or with tiny weak and strong only."""
  if arg.tiny and arg.names == FAMILY:
    return (arg.weak, arg.strong)
  return tuple(arg.names.split("+"))


def sweep(arg=None) -> SweepConfig:
  base = get_config(arg)
  names = family(_args(arg))  # the family; weak/strong from elsewhere are not swept
  return SweepConfig(base, tuple(grid(names, base.losses, pretrained_dirs=base.pretrained_dirs)))
