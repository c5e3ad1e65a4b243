"""Each model's view of the task: the same examples, through its own tokenizer.

A model imported with a tokenizer.json reads the task's texts through it (an
encoder as [CLS] text [SEP]); every other model reads the task's own
encoding. Models sharing a tokenizer share one encoding, made once. The
examples and their order are the same in every view, so soft labels and
selections pass between models by example index, never by token.
"""

import hashlib
from pathlib import Path

from w2s_jax.data.dataset import Dataset
from w2s_jax.tasks.base import Task


def file_digest(path) -> str:
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class ModelViews:
  """views.splits_of(size): the task's splits as model `size` reads them."""

  def __init__(self, cfg, task: Task):
    self.cfg, self.task = cfg, task
    self._view, self._encoded = {}, {}

  def tokenizer_file(self, size: str) -> str | None:
    """The tokenizer.json an imported model brings, or None: it reads the
    task's tokenizer, as every from-scratch size does."""
    folder = dict(self.cfg.pretrained_dirs).get(size)
    if folder is None or not (Path(folder) / "tokenizer.json").exists():
      return None
    return str(Path(folder) / "tokenizer.json")

  def splits_of(self, size: str) -> dict[str, Dataset]:
    if size not in self._view:
      self._view[size] = self._encode_for(size)
    return self._view[size][0]

  def data(self, size: str, split: str) -> Dataset:
    return self.splits_of(size)[split]

  def encodings(self, sizes) -> dict:
    """{size: {tokenizer, per-split counts}} for the models that read the task
    through their own tokenizer."""
    for size in sizes:
      self.splits_of(size)
    return {size: self._view[size][1] for size in sizes if self._view[size][1] is not None}

  def _encode_for(self, size: str) -> tuple[dict, dict | None]:
    """(splits, {tokenizer, per-split counts} or None when the task's own)."""
    own = self.tokenizer_file(size)
    encoder = not self.cfg.model_config(size, self.task).causal
    if own is None:
      if encoder:
        raise ValueError(
          f"model {size!r} is an encoder without a tokenizer.json in "
          f"{dict(self.cfg.pretrained_dirs).get(size)}: expected its own tokenizer "
          "(an encoder reads [CLS] text [SEP] in its own vocabulary)"
        )
      return self.task.splits, None
    key = (file_digest(own), encoder)
    task_file = self.task.tokenizer
    if not encoder and task_file and Path(task_file).is_file() and file_digest(task_file) == key[0]:
      return self.task.splits, None  # the task's tokenizer is this model's own
    if key not in self._encoded:
      try:
        self._encoded[key] = self.task.encode_with(own, encoder=encoder)
      except ValueError as e:
        if "encodes every model with one tokenizer" not in str(e):
          raise
        raise ValueError(
          f"model {size!r} brings its own tokenizer {own}, but {e}: expected "
          "models that share it (per-model tokenizers are supported for text "
          "classification tasks)"
        ) from None
    splits, report = self._encoded[key]
    return splits, {"tokenizer": own, **report}
