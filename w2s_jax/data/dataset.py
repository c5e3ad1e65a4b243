"""Datasets as dicts of equal-length numpy arrays, and batch streams over them."""

from collections.abc import Iterator

import numpy as np


class Dataset(dict):
  """Named numpy arrays sharing their first dimension (tokens, mask, labels, ...)."""

  def __init__(self, **arrays):
    super().__init__({k: np.asarray(v) for k, v in arrays.items()})
    sizes = {k: len(v) for k, v in self.items()}
    if len(set(sizes.values())) > 1:
      raise ValueError(f"Dataset fields differ in length: {sizes}")
    if "mask" in self and "tokens" in self and self["mask"].shape != self["tokens"].shape:
      raise ValueError(
        f"Dataset.mask shape {self['mask'].shape} != tokens shape {self['tokens'].shape}"
      )
    if "mask" in self and len(self) and not (self["mask"].sum(axis=-1) > 0).all():
      empty = int(np.argmin(self["mask"].sum(axis=-1) > 0))
      raise ValueError(f"Dataset.mask: row {empty} has no real token")

  def __len__(self):  # number of examples, not of fields
    return len(next(iter(self.values()))) if self.keys() else 0

  def take(self, index) -> "Dataset":
    return Dataset(**{k: v[index] for k, v in self.items()})

  def with_fields(self, **arrays) -> "Dataset":
    return Dataset(**{**self, **arrays})

  @staticmethod
  def concatenate(parts) -> "Dataset":
    return Dataset(**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def one_hot(labels, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
      f"labels span [{labels.min()}, {labels.max()}]: expected ints in [0, {num_classes})"
    )
  return np.eye(num_classes, dtype=np.float32)[labels]


def batch_indices(n: int, *, batch_size: int, seed: int, step: int) -> np.ndarray:
  """The examples of batch `step`: epochs are seeded permutations of range(n)."""
  first = step * batch_size
  idx = np.empty(batch_size, np.int64)
  for j in range(batch_size):
    epoch, pos = divmod(first + j, n)
    idx[j] = _epoch_order(n, seed, epoch)[pos]
  return idx


def shuffled_batches(
  data: Dataset, *, batch_size: int, seed: int, start_step: int = 0, rows: slice | None = None
) -> Iterator[Dataset]:
  """An endless stream of batches, reshuffled each epoch; a deterministic
  function of (seed, step) so a resumed run sees the same batches.

  rows: the rows of each global batch this process holds (sharding.process_rows);
  only those examples are read, so each host loads its own shard of the data.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: expected >= 1")
  step = start_step
  while True:
    idx = batch_indices(len(data), batch_size=batch_size, seed=seed, step=step)
    yield data.take(idx if rows is None else idx[rows])
    step += 1


_ORDER_CACHE: dict = {}


def _epoch_order(n, seed, epoch):
  key = (n, seed, epoch)
  if key not in _ORDER_CACHE:
    if len(_ORDER_CACHE) > 64:
      _ORDER_CACHE.clear()
    _ORDER_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(n)
  return _ORDER_CACHE[key]


def padded_batches(data: Dataset, *, batch_size: int) -> Iterator[tuple[Dataset, int]]:
  """Every example exactly once, in order; the last batch is padded by
  repeating its first row. Yields (batch, number of real rows)."""
  for start in range(0, len(data), batch_size):
    idx = np.arange(start, min(start + batch_size, len(data)))
    real = len(idx)
    if real < batch_size:
      idx = np.concatenate([idx, np.full(batch_size - real, idx[0])])
    yield data.take(idx), real
