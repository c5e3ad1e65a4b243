"""Orbax checkpoints of params pytrees, and a cache of pretrained models."""

import hashlib
import json
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from w2s_jax.results import write_json_atomic


def save_params(path: Path, params) -> None:
  """Orbax writes to a temporary directory and renames it when complete."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(Path(path).absolute(), params, force=True)


def load_params(path: Path, like):
  """Restores onto the shapes, dtypes and shardings of `like` (arrays or ShapeDtypeStructs)."""
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      like)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(Path(path).absolute(), abstract)


def cache_key(**parts) -> str:
  """A stable hash of the configs that determine a pretrained model."""
  blob = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PretrainedCache:
  """<root>/<name>-<key>/{params/, info.json}. info.json is written last, so a
  cache entry without it is incomplete and is rebuilt, never half-read."""

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root)

  def _dir(self, name, key):
    return self.root / f"{name}-{key}"

  def load(self, name: str, key: str, like):
    entry = self._dir(name, key)
    info_path = entry / "info.json"
    if not info_path.exists():
      return None, None
    return load_params(entry / "params", like), json.loads(info_path.read_text())

  def save(self, name: str, key: str, params, info: dict) -> None:
    entry = self._dir(name, key)
    entry.mkdir(parents=True, exist_ok=True)
    save_params(entry / "params", params)
    write_json_atomic(entry / "info.json", info)
