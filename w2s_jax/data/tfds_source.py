"""Reading TensorFlow Datasets offline: splits by random access, seeds, values.

`open_tfds_split` reads through `tfds.data_source` (random access over
ArrayRecord files, needs the `array_record` package but not TensorFlow), so a
`take` reads only the examples it keeps; data prepared as TFRecord is read
with `tfds.load` when TensorFlow is installed, and is an error saying what to
do otherwise. Nothing is downloaded unless `download=True` is passed.
Examples come as numpy values from mock data and tfds.load, but as bytes and
Python lists from real ArrayRecord files: `text` and `texts` accept both.
"""

import importlib
import importlib.util
import zlib
from collections.abc import Sequence

import numpy as np


def text(value) -> str:
  value = value.item() if isinstance(value, np.ndarray) else value
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def texts(values) -> list[str]:
  return [text(v) for v in values]


def check_source(source: Sequence, take: int | None, where: str) -> int:
  """The size of a source that can give `take` examples (None: all)."""
  check_take(take)
  size = len(source)
  if size == 0:
    raise ValueError(f"{where} has no examples")
  if take is not None and take > size:
    raise ValueError(f"take={take}: {where} has only {size} examples")
  return size


def read_rows(source, index: list[int], chunk: int = 4096):
  """(i, source[i]) for each i, read in batches where the source can (ArrayRecord
  reads a batch about 4x faster than one record at a time)."""
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, len(index), chunk):
    keys = index[start : start + chunk]
    yield from zip(keys, getitems(keys) if getitems is not None else [source[i] for i in keys])


def check_take(take):
  if take is not None and not (isinstance(take, int) and not isinstance(take, bool) and take >= 1):
    raise ValueError(f"take={take!r}: expected a positive int or None (all)")


def split_seed(seed: int, split: str) -> list[int]:
  # Each split gets its own stream, stable across runs (unlike hash()).
  return [seed, zlib.crc32(split.encode())]


class MissingTfdsData(FileNotFoundError):
  pass


def open_tfds_split(
  name: str, *, split: str, data_dir: str | None, download: bool, builder_module: str | None = None
) -> Sequence:
  """A random-access sequence of the split's examples (dicts of numpy/bytes)."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as err:
    raise ImportError(
      "reading TFDS tasks needs tensorflow-datasets: pip install tensorflow-datasets array_record"
    ) from err
  if builder_module is not None:
    importlib.import_module(builder_module)
  prepare = None
  if download:
    # Build from the original source: the prepared copies on GCS may be in
    # TFRecord format, which random access cannot read without TensorFlow.
    prepare = {"download_config": tfds.download.DownloadConfig(try_download_gcs=False)}
  try:
    return tfds.data_source(
      name,
      split=split,
      data_dir=data_dir,
      download=download,
      builder_kwargs={"file_format": "array_record"},
      download_and_prepare_kwargs=prepare,
    )
  except ModuleNotFoundError as err:
    if err.name and err.name.startswith("array_record"):
      raise ImportError(
        "tfds.data_source needs the array_record package: pip install array_record"
      ) from err
    failure = err
  except Exception as err:  # noqa: BLE001 -- diagnosed below, re-raised if not understood
    failure = err
  if download:
    raise failure
  formats = prepared_formats(tfds, name, data_dir)
  if not formats:
    raise MissingTfdsData(
      f"{name}: no prepared data in data_dir={data_dir or '(TFDS default)'}, and "
      f"download=False so nothing is fetched at run time. Fetch it once beforehand with "
      f"load_task({name!r}, split=..., download=True, data_dir=...) on a machine with internet, "
      f"or `tfds build {name} --file_format=array_record`."
    ) from failure
  if "array_record" in formats:
    raise failure  # prepared as it should be: the problem is elsewhere, keep TFDS's message
  if tensorflow_installed():
    return load_with_tensorflow(tfds, name, split=split, data_dir=data_dir)
  raise ImportError(
    f"{name} is prepared in {sorted(formats)} format, which only TensorFlow can read. "
    f"Either pip install tensorflow, or rebuild it for random access with "
    f"`tfds build {name} --file_format=array_record` (needs array_record)."
  ) from failure


def prepared_formats(tfds, name: str, data_dir: str | None) -> set[str]:
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      return set()
    return {f.value for f in builder.info.available_file_formats()}
  except Exception:  # noqa: BLE001 -- an unreadable builder counts as not prepared
    return set()


def tensorflow_installed() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def load_with_tensorflow(tfds, name: str, *, split: str, data_dir: str | None) -> list:
  # A list, so the caller keeps its random access (take reads a seeded subset).
  return list(tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir, download=False)))
