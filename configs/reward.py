"""Reward models learnt from a weak model's preferences (Burns et al.'s third setting).

  python experiments/w2s.py --config configs/reward.py
  python experiments/w2s.py --config configs/reward.py:pairwise
  python experiments/w2s.py --config configs/reward.py:files=../shared/data/vader_movie_pairs
  python experiments/sweep.py --config configs/reward.py
  python -m w2s_jax best-of-n --config configs/reward.py

Testbed (the cue world of configs/default.py, its pretrained models shared):
each pair asks where an entity lives ('<bos> aX bY lives') and offers the
true fact ('cK .') against a false one, another city (`rejected=`:
any, same_region, other_region). The weak reward model (pico) learns from
ground-truth pairs, the strong one (mini) from the weak one's soft
preferences, the ceiling from ground truth; all are scored by preference
accuracy on test pairs (and on heldout: where test's entities work).
Pointwise by default: r(prompt, response) with a scalar head on the LM's
log-likelihood of the sequence, P(A > B) = sigma(r_A - r_B), so naive KD
(xent) is Bradley-Terry KD against the soft target and on hard labels the
Bradley-Terry loss. `pairwise`: one sequence
shows both facts and a 2-way head says which is true. Losses: naive KD, the
confidence loss (logconf) and the combined objective (KD + 100 ground-truth
pairs); 3 pretraining draws x 5 seeds.

`files=DIR`: DIR/train_pairs.jsonl and DIR/test_pairs.jsonl, one {prompt,
chosen, rejected} per line (../shared/data/vader_movie_pairs: human-rated
movie-review snippets, the more positive one chosen). Weak: pico pretrained
from scratch on the pairs' text (a BPE of 4096 tokens learnt from it; a
head on its last hidden state), strong: all-MiniLM-L6-v2 (from
`models=DIR`, default runs/models) with a scalar head on its mean-pooled
features; configs/sst2_minilm.py's rates, 1000 pairs per training split, 48
tokens per sequence, 3 seeds, naive KD and logconf, no training curves
(under 30 minutes on 2 cores).

sweep(arg): reward models over scale, every weak < strong pair of pico,
micro and mini (the testbed or the small world), the config's losses.

best_of_n(arg): what the reward models buy at generation time
(w2s/best_of_n.py): the weak policy (pico on the generative testbed's `city`
format) writes its greedy response and 15 samples at temperature 1 per test
prompt; the weak, W2S (naive KD) and ceiling RMs each pick one, beside the
oracle and a random pick, for n in 1, 2, 4, 8, 16 (pointwise only).

Args (comma-separated): `pairwise`, `rejected=KIND`, `files=DIR`,
`models=DIR`, `weak=SIZE`, `strong=SIZE`, `losses=A,B,...`, `seeds=N`,
`pretrain_seeds=N` (default 3; 1 with small or files), `gt=N`, `w2s=N`
(files: pairs per training split, default 1000 each), `small` (a smoke run
of seconds on the 60-entity world, or on 64 pairs per split of the files).
"""

import dataclasses

from w2s_jax.data import testbed
from w2s_jax.infra.configs import parse_arg
from w2s_jax.tasks.preference import PreferenceConfig, PreferenceTextConfig
from w2s_jax.training.combined import Combined
from w2s_jax.w2s.best_of_n import BestOfNConfig
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import SweepConfig, grid

import common  # configs/common.py, beside this file

SWEEP_SIZES = ("pico", "micro", "mini")


def get_config(arg=None) -> ExperimentConfig:
  arg = parse_arg(
    arg,
    **common.BASIC_ARGS,
    pairwise=False,
    rejected="any",
    files="",
    models="runs/models",
    pretrain_seeds=0,
    gt=0,
    w2s=0,
    small=False,
  )
  preference = PreferenceConfig(
    format="pairwise" if arg.pairwise else "pointwise", rejected=arg.rejected
  )
  suffix = ("-pairwise" if arg.pairwise else "") + (
    f"-{arg.rejected}" if arg.rejected != "any" else ""
  )
  if arg.files:
    cfg = _files(arg, preference, suffix)
  else:
    cfg = ExperimentConfig(
      name="reward" + suffix,
      world=testbed.CUE_WORLD,
      finetune=common.CUE_FINETUNE,
      preference=preference,
      # Pointwise: the reward is linear in the LM's log-likelihood of prompt +
      # response (ModelConfig.head_input), where the world's facts live; a head
      # on the last hidden state or next-token distribution stayed near chance
      # (0.54-0.58 for the ceiling; docs/reward.md). Pairwise: the last hidden state.
      head_input="lm_loglik" if preference.per_choice else "hidden",
      seeds=tuple(range(5)),
      pretrain_seeds=tuple(range(arg.pretrain_seeds or (1 if arg.small else 3))),
      losses=(*common.losses_from(("xent", "logconf")), Combined(kd_weight=0.5, gt_examples=100)),
    )
    if arg.small:
      cfg = dataclasses.replace(
        cfg,
        name=cfg.name + "-small",
        world=common.SMALL_WORLD,
        strong_size="micro",
        pretrain=common.SMALL_PRETRAIN,
        finetune=common.SMALL_FINETUNE,
        losses=(*cfg.losses[:2], Combined(kd_weight=0.5, gt_examples=10)),
        eval_batch_size=8,
        bootstrap_resamples=200,
      )
  return common.with_basic_args(cfg, arg)


def _files(arg, preference, suffix) -> ExperimentConfig:
  """Pairs from JSONL files: pico from scratch supervising all-MiniLM-L6-v2.
  Sized to run in under 30 minutes on 2 cores: 1000 pairs per training
  split, 2 epochs of MiniLM (64 steps of 32 pairs, 64 sequences of 48
  tokens), 3 seeds, naive KD and logconf."""
  if arg.pretrain_seeds:
    raise ValueError(
      f"configs/reward.py: files={arg.files!r} with pretrain_seeds={arg.pretrain_seeds}: "
      "expected none (the strong model is imported: one draw)"
    )
  size = lambda given, default, small: given or (small if arg.small else default)
  text = PreferenceTextConfig(
    train_file=f"{arg.files}/train_pairs.jsonl",
    test_file=f"{arg.files}/test_pairs.jsonl",
    tokenizer="bpe:4096",
    max_len=size(0, 48, 32),
    gt_examples=size(arg.gt, 1000, 64),
    w2s_examples=size(arg.w2s, 1000, 64),
    test_examples=64 if arg.small else None,
  )
  cfg = common.minilm_text_experiment(
    "reward-files" + suffix,
    text,
    weak="pico",
    models_dir=arg.models,
    steps=size(0, 64, 4),
    seeds=1 if arg.small else 3,
    preference=preference,
  )
  # No training curves: each point scores every test pair (4000 sequences
  # for vader_movie_pairs) per seed, and 10 points per fine-tune took most
  # of a measured 50-minute run.
  cfg = dataclasses.replace(cfg, curve_points=0)
  if arg.small:
    cfg = dataclasses.replace(
      cfg,
      name=cfg.name + "-small",
      losses=cfg.losses[:1],
      pretrain=dataclasses.replace(cfg.pretrain, steps=30, batch_size=16),
      weak_finetune=dataclasses.replace(cfg.weak_finetune, steps=10, batch_size=16),
      finetune=dataclasses.replace(cfg.finetune, batch_size=16),
      eval_batch_size=32,
      bootstrap_resamples=200,
    )
  return cfg


def sweep(arg=None) -> SweepConfig:
  """Every weak < strong pair of SWEEP_SIZES, each of get_config(arg)'s losses."""
  base = get_config(arg)
  if base.text_task is not None:
    raise ValueError(
      "configs/reward.py sweep: files= imports the strong model; expected the testbed "
      "(sizes pretrained here)"
    )
  return SweepConfig(base, tuple(grid(SWEEP_SIZES, base.losses)))


def best_of_n(arg=None) -> BestOfNConfig:
  """Best-of-n with the three reward models of get_config(arg) (testbed, pointwise)."""
  return BestOfNConfig(get_config(arg))
