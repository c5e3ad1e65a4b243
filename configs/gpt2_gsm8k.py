"""Generative W2S on GSM8K with the GPT-2 family: the weak model writes worked
solutions, the strong model learns from them; scored by final-answer match.

Fetch weights and data once, on a machine with internet (nothing is fetched at run time):
  export W2S_MODELS=/data/models TFDS_DATA_DIR=/data/tfds
  for m in gpt2 gpt2-medium gpt2-large gpt2-xl; do
    huggingface-cli download openai-community/$m config.json model.safetensors tokenizer.json \
        --local-dir $W2S_MODELS/$m
  done
  python -c "from w2s_jax import gen_text as g; g.load_gen_task('gsm8k', split='train', download=True)"
or use the official JSONL files (fields question, answer) with files=DIR (DIR holds
train.jsonl and test.jsonl, as github.com/openai/grade-school-math ships them).

Then, on a GPU or TPU host:
  python experiments/w2s.py --config configs/gpt2_gsm8k.py:models=$W2S_MODELS,weak=gpt2,strong=gpt2-xl
  python experiments/sweep.py --config configs/gpt2_gsm8k.py:models=$W2S_MODELS   # every weak < strong pair
  python tools/sweep_report.py runs/sweeps/gpt2-gsm8k

Prompt "Question: ...\\nAnswer:", response " <worked solution> #### <number>",
truncated to 256 + 256 GPT-2 tokens. The weak model is fine-tuned on
train_gt's solutions and writes a greedy solution for every train_w2s question;
the strong model learns from them with sft (sequence-level KD), token-level
forward KL against the frozen weak model, and combined (0.5 * sft on weak
solutions + 0.5 * LM on 500 ground-truth ones). Add fsdp=N on many devices
(README: "Running on many devices").

Args: models=DIR (required), files=DIR, weak=NAME, strong=NAME, fsdp=N, seeds=N.
"""

from w2s_jax.infra.configs import parse_arg
from w2s_jax.infra.sharding import MeshConfig
from w2s_jax.tasks.generation import GenerationConfig, GenTextTaskConfig
from w2s_jax.training.combined import Combined
from w2s_jax.training.generative_losses import ForwardKl, Sft
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import SweepConfig, grid

FAMILY = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def get_config(arg=None) -> ExperimentConfig:
  arg = parse_arg(arg, models="", files="", weak="gpt2", strong="gpt2-large", fsdp=1, seeds=3)
  if not arg.models:
    raise ValueError(
      "configs/gpt2_gsm8k.py needs models=DIR, the folder holding "
      f"{', '.join(FAMILY)} (see this file's docstring)"
    )
  source = (
    dict(
      train_file=f"{arg.files}/train.jsonl",
      test_file=f"{arg.files}/test.jsonl",
      metric="gsm8k",
      prompt_field="question",
      response_field="answer",
      prompt_template="Question: {prompt}\nAnswer:",
      response_prefix=" ",
    )
    if arg.files
    else dict(tfds_name="gsm8k")
  )
  return ExperimentConfig(
    name="gpt2-gsm8k",
    text_task=GenTextTaskConfig(
      **source,
      tokenizer=f"{arg.models}/gpt2/tokenizer.json",
      max_prompt_len=256,
      max_response_len=256,
      gt_examples=2000,
      w2s_examples=5000,
      test_examples=None,
    ),
    generation=GenerationConfig(),
    pretrained_dirs=tuple((name, f"{arg.models}/{name}") for name in FAMILY),
    weak_size=arg.weak,
    strong_size=arg.strong,
    # Two epochs of the 5,000 weak solutions.
    finetune=OptimConfig(steps=625, batch_size=16, lr=1e-5, warmup_frac=0.05),
    losses=(Sft(), ForwardKl(), Combined(kd_weight=0.5, gt_examples=500)),
    seeds=tuple(range(arg.seeds)),
    eval_batch_size=64,
    mesh=MeshConfig(fsdp=arg.fsdp),
  )


def sweep(arg=None) -> SweepConfig:
  base = get_config(arg)
  return SweepConfig(base, tuple(grid(FAMILY, base.losses, pretrained_dirs=base.pretrained_dirs)))
