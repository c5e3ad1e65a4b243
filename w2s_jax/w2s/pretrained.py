"""The pretrained-model provider: each size's params, pretrained once per process.

From-scratch sizes are pretrained on the task's corpus (or, after
`pretrain_on`, another one: a curated pool) through the pretrained cache
(training/pretrain.py); sizes named in ExperimentConfig.pretrained_dirs are
imported from their folders.
"""

import typing
from pathlib import Path

from w2s_jax.data import tokenize
from w2s_jax.data.dataset import Dataset
from w2s_jax.infra.checkpoints import PretrainedCache
from w2s_jax.models import sampling
from w2s_jax.models.model_config import ModelConfig
from w2s_jax.tasks.base import Task
from w2s_jax.training import pretrain
from w2s_jax.w2s.views import ModelViews


class Pretrained(typing.NamedTuple):
  params: typing.Any
  model_cfg: ModelConfig
  info: dict  # how it was made: pretrained here (steps, seconds, loss, probe), cached, imported


class PretrainedModels:
  """models.get(size) -> Pretrained, of one pretraining draw (`seed`)."""

  def __init__(
    self, cfg, task: Task, views: ModelViews, mesh, *, cache_dir, seed: int, progress=True
  ):
    self.cfg, self.task, self.views, self.mesh, self.progress = cfg, task, views, mesh, progress
    self.seed = seed
    self.cache = PretrainedCache(cache_dir)
    self._got, self._corpus_of = {}, {}

  def get(self, size: str) -> Pretrained:
    if size not in self._got:
      tag, corpus = self._corpus_of.get(size, ("clean", None))
      if corpus is None and self.cfg.use_pretraining and size not in dict(self.cfg.pretrained_dirs):
        corpus = self.task.corpus
      self._got[size] = Pretrained(
        *pretrain.pretrained_model(
          self.cfg,
          size,
          self.task,
          corpus,
          self.mesh,
          self.cache,
          self.progress,
          corpus_tag=tag,
          splits=self.views.splits_of(size),
          seed=self.seed,
        )
      )
    return self._got[size]

  def pretrained_here(self, size: str) -> bool:
    """Whether get(size) pretrains `size` into the cache (else it is imported,
    or used at its initialisation)."""
    return self.cfg.use_pretraining and size not in dict(self.cfg.pretrained_dirs)

  def entry_folder(self, size: str) -> Path | None:
    """The cache entry folder get(size) reads, or writes when it pretrains
    (None: `size` is not pretrained here)."""
    if not self.pretrained_here(size):
      return None
    tag, _ = self._corpus_of.get(size, ("clean", None))
    return self.cache.entry(
      size, pretrain.cache_key(self.cfg, size, self.task, seed=self.seed, corpus_tag=tag)
    )

  def is_cached(self, size: str) -> bool:
    """Whether get(size) would read the cache rather than pretrain: its entry
    is complete and valid (a corrupt one is reported and removed)."""
    if not self.pretrained_here(size):
      return True
    tag, _ = self._corpus_of.get(size, ("clean", None))
    return pretrain.is_cached(
      self.cfg, size, self.task, self.mesh, self.cache, seed=self.seed, corpus_tag=tag
    )

  def pretrain_on(self, size: str, corpus: Dataset, tag: str) -> None:
    """Pretrain `size` on another corpus (a curated pool) from now on."""
    self._corpus_of[size] = (tag, corpus)
    self._got.pop(size, None)

  def check(self, sizes, sampling_cfg: sampling.SamplingConfig | None = None) -> None:
    """Before any compute: an imported model's vocabulary holds every id of
    its tokenizer (its own tokenizer.json, else the task's), each model's
    splits encode, and (generation) each model's context holds the prompts
    plus max_new_tokens, with the EOS and pad ids in its vocabulary."""
    splits = self.task.splits
    width = max(d["prompt"].shape[1] for d in splits.values()) if self.task.generative else 0
    for size in sizes:
      model_cfg = self.cfg.model_config(size, self.task)
      if size in dict(self.cfg.pretrained_dirs):
        self.views.splits_of(size)  # an encoding the model can't read fails here, named
        own = self.views.tokenizer_file(size)
        folder = dict(self.cfg.pretrained_dirs)[size]
        tokenize.check_vocabulary(
          tokenizer_vocab_size=self.task.vocab_size
          if own is None
          else tokenize.HFTokenizer.from_file(own).vocab_size,
          model_vocab_size=model_cfg.vocab_size,
          model=f"{size} ({Path(folder) / 'config.json'})",
          tokenizer=own or getattr(self.cfg.text_task, "tokenizer", "the task's tokenizer"),
        )
      if sampling_cfg is not None:
        try:
          sampling_cfg.check(model_cfg, width)
        except ValueError as e:
          raise ValueError(f"model {size!r}: {e}") from None
