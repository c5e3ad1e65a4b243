"""W2S on real text: SST-2 with models pretrained from scratch on its unlabelled train text.

  python experiments/w2s.py --config configs/sst2.py:files=DIR   # DIR/sst2_train.tsv, DIR/sst2_dev.tsv
  python experiments/w2s.py --config configs/sst2.py             # TFDS glue/sst2, prepared beforehand

The files are GLUE's SST-2 TSVs (header `text<TAB>label`). For TFDS, prepare
the data once on a machine with internet:
  python -c "from w2s_jax import text_tasks; text_tasks.load_task('glue/sst2', split='train', download=True)"

The train split (67,349 phrases) is the pretraining corpus (labels unused)
and is divided, after a seeded shuffle, into train_gt (the weak model's and
the ceiling's labels) and train_w2s (what the weak model labels); test is
the dev split (872 sentences). Weak `pico` (24x1), strong `small` (256x4),
a byte-level BPE of 4096 tokens learnt from the train text (byte tokens
were measured to leave both models near chance: the last byte's hidden
state carries little of a sentence's sentiment), 64 tokens (99% of the dev
sentences whole), linear head on the last real token's hidden state.

Expected on a 2-core CPU: about 30 minutes from scratch (pretraining most of
it, cached afterwards): Pweak 0.665, Pceiling 0.718, naive KD's PGR 0.29
[-0.34, 0.94]; see the README for the table.

Args (comma-separated): `files=DIR`, `seeds=N`, `weak=SIZE`, `strong=SIZE`,
`pretrain_steps=N`, `finetune_steps=N`, `gt=N` (train_gt size), `tokenizer=bytes|bpe:N|PATH`,
`losses=A,B,...` (default xent,logconf; or FILE.py:FUNCTION), `small`
(a minutes-long smoke run).
"""

import dataclasses

from w2s_jax.infra.configs import parse_arg
from w2s_jax.tasks.classification import TextTaskConfig

import common  # configs/common.py, beside this file


def get_config(arg=None):
  arg = parse_arg(
    arg,
    files="",
    # 0 or empty: the default, or the `small` preset's; an explicit arg wins over the preset.
    seeds=0,  # 3, or 2 with small
    weak="pico",
    strong="",  # small, or nano with small
    pretrain_steps=0,  # 4000, or 50 with small
    tokenizer="bpe:4096",
    finetune_steps=0,  # 400, or 20 with small
    gt=0,  # 4000, or 256 with small
    losses=(),  # (): xent,logconf
    small=False,
  )
  preset = lambda given, default, small: given or (small if arg.small else default)
  source = (
    dict(train_file=f"{arg.files}/sst2_train.tsv", test_file=f"{arg.files}/sst2_dev.tsv")
    if arg.files
    else dict(tfds_name="glue/sst2")
  )
  cfg = common.scratch_text_experiment(
    "sst2",
    TextTaskConfig(
      **source,
      tokenizer=arg.tokenizer,
      max_len=64,
      gt_examples=preset(arg.gt, 4000, 256),
      w2s_examples=8000,
    ),
    weak=arg.weak,
    strong=preset(arg.strong, "small", "nano"),
    pretrain_steps=preset(arg.pretrain_steps, 4000, 50),
    finetune_steps=preset(arg.finetune_steps, 400, 20),
    seeds=arg.seeds or (2 if arg.small else 3),
  )
  if arg.small:
    cfg = dataclasses.replace(
      cfg,
      name="sst2-small",
      text_task=dataclasses.replace(cfg.text_task, max_len=32, w2s_examples=256, test_examples=128),
      pretrain=dataclasses.replace(cfg.pretrain, batch_size=16),
      finetune=dataclasses.replace(cfg.finetune, batch_size=16),
      eval_batch_size=32,
      bootstrap_resamples=200,
    )
  return common.with_losses(cfg, arg.losses)
