"""Qwen2.5 W2S: a small Qwen supervises a large one (LoRA on the strong model, FSDP).

Fetch weights and data once, on a machine with internet (nothing is fetched at run time):
  export W2S_MODELS=/data/models TFDS_DATA_DIR=/data/tfds
  for m in Qwen2.5-0.5B Qwen2.5-1.5B Qwen2.5-7B; do
    huggingface-cli download Qwen/$m config.json tokenizer.json tokenizer_config.json \
        'model*.safetensors' model.safetensors.index.json --local-dir $W2S_MODELS/$m
  done
  python -c "from w2s_jax.data import text_tasks as t; t.load_task('glue/sst2', split='train', download=True)"

Then, on a GPU host (8 GPUs) or a TPU slice, on every host:
  python experiments/w2s.py --config configs/qwen_w2s.py:models=$W2S_MODELS,fsdp=8
  python experiments/w2s.py --config configs/qwen_w2s.py:models=$W2S_MODELS,weak=Qwen2.5-0.5B,strong=Qwen2.5-1.5B,task=bool_q

The weak model (default Qwen2.5-0.5B) is fully fine-tuned on train_gt; the
strong model (default Qwen2.5-7B) and the ceiling train rank-16 LoRA
adapters on q and v plus the head (`lora=R`, `lora_targets=all` for every
projection; `lora=0` for full fine-tuning), with the base params frozen and
FSDP-sharded. bf16 compute and per-block rematerialisation are on. The
README ("Running on many devices") has the per-device memory of this model
with LoRA beside full fine-tuning (`python tools/memory_lora.py`). Any
folder under models=DIR can be the weak or the strong model (Llama, GPT-2,
Pythia): each reads the task through its own tokenizer.json.

Args: models=DIR (required), weak=NAME, strong=NAME, task=glue/sst2|bool_q|...,
lora=R, lora_targets=qv|all, fsdp=N, seeds=N, max_len=N.
"""

import dataclasses

from w2s_jax.infra.configs import parse_arg
from w2s_jax.infra.sharding import MeshConfig
from w2s_jax.tasks.classification import TextTaskConfig
from w2s_jax.training import lora
from w2s_jax.training.classifier_losses import LogConf, Xent
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig

TARGETS = {"qv": ("q", "v"), "all": lora.TARGETS}


def get_config(arg=None) -> ExperimentConfig:
  arg = parse_arg(
    arg,
    models="",
    weak="Qwen2.5-0.5B",
    strong="Qwen2.5-7B",
    task="glue/sst2",
    lora=16,
    lora_targets="qv",
    fsdp=8,
    seeds=3,
    max_len=256,
  )
  if not arg.models:
    raise ValueError(
      "configs/qwen_w2s.py needs models=DIR, the folder holding the Qwen2.5 "
      "checkpoints (see this file's docstring)"
    )
  if arg.lora_targets not in TARGETS:
    raise ValueError(
      f"configs/qwen_w2s.py lora_targets={arg.lora_targets!r}: expected one of {sorted(TARGETS)}"
    )
  weak_finetune = OptimConfig(steps=625, batch_size=32, lr=1e-5, head_lr=1e-3, warmup_frac=0.05)
  strong = dataclasses.replace(
    weak_finetune,
    lr=2e-4 if arg.lora else 1e-5,
    lora_rank=arg.lora,
    lora_alpha=2.0 * arg.lora,
    lora_targets=TARGETS[arg.lora_targets],
  )
  return ExperimentConfig(
    name=f"qwen-w2s-{arg.task.replace('/', '-')}",
    text_task=TextTaskConfig(
      tfds_name=arg.task,
      tokenizer=f"{arg.models}/{arg.weak}/tokenizer.json",
      max_len=arg.max_len,
      add_bos=False,
      gt_examples=10000,
      w2s_examples=10000,
    ),
    pretrained_dirs=tuple(
      (name, f"{arg.models}/{name}") for name in dict.fromkeys((arg.weak, arg.strong))
    ),
    head_input="hidden",
    weak_size=arg.weak,
    strong_size=arg.strong,
    # Two epochs of 10,000 examples, as in Burns et al.'s NLP runs.
    weak_finetune=weak_finetune,
    finetune=strong,
    losses=(Xent(), LogConf()),
    seeds=tuple(range(arg.seeds)),
    eval_batch_size=64,
    mesh=MeshConfig(fsdp=arg.fsdp),
    dtype="bfloat16",
    remat=True,
  )
