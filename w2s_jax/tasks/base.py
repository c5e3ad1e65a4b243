"""What every task gives the pipeline (`Task`), and what text tasks share.

A task holds its splits (train_gt, train_w2s, test, ...; Datasets of token
ids), the splits models are scored on, the vocabulary and context sizes,
the unlabelled corpus from-scratch models are pretrained on, a fingerprint
of what determines that pretraining (part of cache keys), and a probe of
what pretraining taught a model. Two kinds implement it:
`classification.ClassificationTask` (labels; scored by accuracy) and
`generation.GenerationTask` (prompt -> response; scored on generations).
"""

from typing import Protocol

import numpy as np

from w2s_jax.data import tokenize
from w2s_jax.data.dataset import Dataset

BYTES = "bytes"


class Task(Protocol):
  name: str
  splits: dict[str, Dataset]
  eval_splits: tuple[str, ...]
  vocab_size: int
  max_len: int
  fingerprint: dict  # what determines pretraining; part of cache keys
  encoding: dict  # per split: examples truncated or dropped
  tokenizer: str | None  # the spec the splits were encoded with
  metrics: tuple[str, ...]  # the first is the headline one

  @property
  def generative(self) -> bool: ...

  @property
  def corpus(self) -> Dataset:
    """The unlabelled pretraining corpus (built on first use)."""

  def probe(self, params, model_cfg, mesh, *, test: Dataset | None = None) -> dict:
    """What pretraining taught a model: {name: value}. test: the test split
    as a model with its own tokenizer reads it."""

  def encode_with(self, tokenizer_file: str, *, encoder: bool) -> tuple[dict, dict]:
    """(splits, per-split counts): the same examples in the same order through
    another model's tokenizer.json; a ValueError where the task cannot."""


def make_tokenizer(spec: str, texts=()):
  """spec: "bytes", "bpe:N" (learnt from texts) or a tokenizer.json path."""
  if spec == BYTES:
    return tokenize.ByteTokenizer()
  if spec.startswith("bpe:"):
    try:
      vocab_size = int(spec[4:])
    except ValueError:
      raise ValueError(f"TextTaskConfig.tokenizer={spec!r}: expected 'bpe:<vocab size>'") from None
    return tokenize.train_bpe(texts, vocab_size=vocab_size)
  return tokenize.HFTokenizer.from_file(spec)


def split_train(train, test, cfg) -> dict:
  """train_gt and train_w2s, disjoint, from a seeded shuffle of the train
  examples (TextExamples or PromptResponses), and test as it is. cfg: a text
  task config with gt_examples, w2s_examples (None: see split_sizes) and seed."""
  gt, w2s = split_sizes(cfg, len(train))
  order = np.random.default_rng([cfg.seed, 0]).permutation(len(train))
  return {
    "train_gt": train.take(order[:gt]),
    "train_w2s": train.take(order[gt : gt + w2s]),
    "test": test,
  }


def split_sizes(cfg, num_train: int) -> tuple[int, int]:
  """(train_gt, train_w2s) sizes: as set, or, where None, half of the train
  examples each, or what the other one leaves."""
  gt, w2s = cfg.gt_examples, cfg.w2s_examples
  if gt is None:
    gt = num_train // 2 if w2s is None else num_train - w2s
  if w2s is None:
    w2s = num_train - gt
  name = type(cfg).__name__
  if gt < 1 or w2s < 1 or gt + w2s > num_train:
    raise ValueError(
      f"{name}: gt_examples={cfg.gt_examples}, w2s_examples={cfg.w2s_examples} "
      f"need {max(gt, 1) + max(w2s, 1)} examples (at least one each), but the "
      f"train split has {num_train}"
    )
  return gt, w2s


def probe_batch(mesh) -> int:
  """The batch a probe scores text in: 64 rows, a multiple of the mesh's devices."""
  return max(mesh.size, 64 // mesh.size * mesh.size)
