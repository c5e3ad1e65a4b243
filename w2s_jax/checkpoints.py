"""Orbax checkpoints: train states that resume, params, and a cache of pretrained models."""

import hashlib
import json
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from w2s_jax import sharding as shd
from w2s_jax.results import write_json_atomic


def abstract_like(tree, sharding=None):
  """ShapeDtypeStructs of a tree; sharding: a tree of shardings to restore onto
  (default: each leaf's own, or this process's first device for a leaf with
  none, never the topology the checkpoint was saved on)."""
  if sharding is None:
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=getattr(x, "sharding", None) or here), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, sharding)


def save_params(path: Path, params) -> None:
  """Orbax writes to a temporary directory and renames it when complete."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(Path(path).absolute(), params, force=True)


def load_params(path: Path, like):
  """Restores onto the shapes, dtypes and shardings of `like` (arrays or ShapeDtypeStructs)."""
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(Path(path).absolute(), abstract_like(like))


class TrainCheckpoints:
  """Checkpoints of a whole train state (params, optimizer state, step, rng)
  plus the data stream's position, saved asynchronously every `every` steps,
  keeping the last `keep`.

  The data stream is a pure function of (its description, step), so the
  description is saved beside the state and must match on restore: a resume
  on other data is an error, not a silent restart. Restores go onto the
  shardings of the state you pass in, so a run may resume on another mesh.
  Only the student's state is saved: frozen teachers enter training as data
  (their labels), never as state.
  """

  def __init__(self, directory: str | os.PathLike, *, every: int, keep: int = 2,
               data: dict | None = None, async_save: bool = True):
    if every < 1:
      raise ValueError(f"checkpoint every={every}: expected >= 1")
    if keep < 1:
      raise ValueError(f"checkpoint keep={keep}: expected >= 1")
    self.directory = Path(directory).absolute()
    self.every, self.data = every, dict(data or {})
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=async_save,
                                             cleanup_tmp_directories=True),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, state):
    """The latest checkpoint restored onto `state`'s shapes and shardings, or
    `state` itself when there is none."""
    step = self._manager.latest_step()
    if step is None:
      return state
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_like(state)),
        data=ocp.args.JsonRestore()))
    saved = {k: v for k, v in restored["data"].items() if k != "step"}
    if saved != json.loads(json.dumps(self.data)):
      raise ValueError(f"checkpoint {self.directory} step {step} was saved for data {saved}, "
                       f"but this run reads {self.data}: refusing to resume on other data")
    return restored["state"]

  def save(self, step: int, state) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({**self.data, "step": step})))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def cache_key(**parts) -> str:
  """A stable hash of the configs that determine a pretrained model."""
  blob = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PretrainedCache:
  """<root>/<name>-<key>/{params/, info.json}. info.json is written last, so a
  cache entry without it is incomplete and is rebuilt, never half-read. A
  build interrupted part-way resumes from <root>/<name>-<key>/train/."""

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root)

  def entry(self, name, key) -> Path:
    return self.root / f"{name}-{key}"

  def load(self, name: str, key: str, like):
    entry = self.entry(name, key)
    info_path = entry / "info.json"
    if not info_path.exists():
      return None, None
    return load_params(entry / "params", like), json.loads(info_path.read_text())

  def save(self, name: str, key: str, params, info: dict) -> None:
    entry = self.entry(name, key)
    entry.mkdir(parents=True, exist_ok=True)
    save_params(entry / "params", params)
    if shd.is_main_process():
      write_json_atomic(entry / "info.json", info)
