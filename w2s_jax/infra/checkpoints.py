"""Orbax checkpoints: train states that resume, params, and a cache of pretrained models.

Every one carries a checksum of its arrays (integrity.tree_checksum), written
with it and verified when it is read: a corrupt train checkpoint gives way
to the one before it, a corrupt cache entry is rebuilt, a corrupt params
checkpoint is a named error. Nothing is ever trained on from a corrupt file.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from w2s_jax.infra import integrity, locks
from w2s_jax.infra import sharding as shd
from w2s_jax.infra.files import write_json_atomic
from w2s_jax.infra.integrity import CorruptFileError


def abstract_like(tree, sharding=None):
  """ShapeDtypeStructs of a tree; sharding: a tree of shardings to restore onto
  (default: each leaf's own, or this process's first device for a leaf with
  none, never the topology the checkpoint was saved on)."""
  if sharding is None:
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=getattr(x, "sharding", None) or here
      ),
      tree,
    )
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sharding
  )


def save_params(path: Path, params) -> list[int]:
  """Orbax writes to a temporary directory and renames it when complete.
  Returns the params' checksum, for load_params to verify."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(Path(path).absolute(), params, force=True)
  return integrity.tree_checksum(params)


def load_params(path: Path, like, checksum=None):
  """Restores onto the shapes, dtypes and shardings of `like` (arrays or
  ShapeDtypeStructs). With a checksum (from save_params), a mismatch, or a
  checkpoint that cannot be read, is a CorruptFileError naming the path."""
  path = Path(path).absolute()
  try:
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(path, abstract_like(like))
  except FileNotFoundError:
    raise
  except Exception as err:  # noqa: BLE001 -- TensorStore raises many kinds; named and re-raised
    raise CorruptFileError(
      path, f"unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:300]})"
    ) from err
  if checksum is not None:
    integrity.check_tree(params, checksum, path)
  return params


class TrainCheckpoints:
  """Checkpoints of a whole train state (params, optimizer state, step, rng)
  plus the data stream's position, saved asynchronously every `every` steps,
  keeping the last `keep`.

  The data stream is a pure function of (its description, step), so the
  description is saved beside the state and must match on restore: a resume
  on other data is an error, not a silent restart. Restores go onto the
  shardings of the state you pass in, so a run may resume on another mesh.
  Only the student's state is saved: frozen teachers are arguments of the
  train step, never state.

  Beside the state, each checkpoint's JSON item holds the state's checksum
  and a `record` (the run's loss and seconds so far), so a run killed after
  its last checkpoint resumes with the same record. A checkpoint that cannot
  be read, or whose checksum does not match, is deleted with a warning and
  the one before it is used.
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    every: int,
    keep: int = 2,
    data: dict | None = None,
    async_save: bool = True,
  ):
    if every < 1:
      raise ValueError(f"checkpoint every={every}: expected >= 1")
    if keep < 1:
      raise ValueError(f"checkpoint keep={keep}: expected >= 1")
    self.directory = Path(directory).absolute()
    self.every, self.data = every, dict(data or {})
    self.record = {}  # of the last checkpoint restored or saved
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, cleanup_tmp_directories=True
      ),
      item_names=("state", "data"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _read(self, step, **items):
    return self._manager.restore(step, args=ocp.args.Composite(**items))

  def restore(self, state):
    """The latest intact checkpoint restored onto `state`'s shapes and
    shardings, or `state` itself when there is none. Sets self.record.

    A checkpoint of other data or of another model is refused (an error, the
    checkpoint kept); one that is unreadable or fails its checksum is
    deleted with a warning and the one before it is tried."""
    self.record = {}
    for step in sorted(self._manager.all_steps(), reverse=True):
      where = self.directory / str(step)
      try:
        data = dict(self._read(step, data=ocp.args.JsonRestore())["data"])
      except Exception as err:  # noqa: BLE001 -- an unreadable item gives way to an older checkpoint
        self._discard(step, where, err)
        continue
      saved = {k: v for k, v in data.items() if k not in ("step", "checksum", "record", "shapes")}
      if saved != json.loads(json.dumps(self.data)):
        raise ValueError(
          f"checkpoint {self.directory} step {step} was saved for data {saved}, "
          f"but this run reads {self.data}: refusing to resume on other data"
        )
      if data.get("shapes", _shapes(state)) != _shapes(state):
        raise ValueError(
          f"checkpoint {where} holds a state of other shapes than this run's "
          "(another model or optimizer): refusing to resume from it"
        )
      try:
        restored = self._read(step, state=ocp.args.StandardRestore(abstract_like(state)))["state"]
        if "checksum" in data:
          integrity.check_tree(restored, data["checksum"], where)
        else:
          integrity.warn_rebuild(where, "saved without a checksum", "resuming unverified")
      except Exception as err:  # noqa: BLE001 -- likewise
        self._discard(step, where, err)
        continue
      self.record = data.get("record") or {}
      return restored
    return state

  def _discard(self, step, where, err):
    problem = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
    integrity.warn_rebuild(
      where, f"corrupt checkpoint ({problem})", "deleting it and falling back to the one before"
    )
    self._manager.delete(step)

  def save(self, step: int, state, record: dict | None = None) -> None:
    """record: JSON-able facts about the run so far (its loss, its seconds)."""
    self.record = dict(record or {})
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(
          {
            **self.data,
            "step": step,
            "shapes": _shapes(state),
            "checksum": integrity.tree_checksum(state),
            "record": record or {},
          }
        ),
      ),
    )

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _shapes(state) -> str:
  """A digest of the state's structure, shapes and dtypes."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  blob = json.dumps([(jax.tree_util.keystr(p), list(x.shape), str(x.dtype)) for p, x in leaves])
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PretrainedCache:
  """<root>/<name>-<key>/{params/, info.json}. info.json is written last, so a
  cache entry without it is incomplete and is rebuilt, never half-read. A
  build interrupted part-way resumes from <root>/<name>-<key>/train/.

  info.json holds the params' checksum; an entry whose info or params cannot
  be read, or whose params do not match it, is deleted with a warning naming
  it and rebuilt. `lock(name, key)` keeps two runs from building one entry."""

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root)

  def entry(self, name, key) -> Path:
    return self.root / f"{name}-{key}"

  def older_entries(self, name: str, key_scheme: int) -> list[Path]:
    """Complete entries of `name` keyed another way (an older w2s_jax): never
    read under this scheme's keys, and left in place."""
    out = []
    for entry in sorted(self.root.glob(f"{name}-*")):
      info = entry / "info.json"
      if not info.is_file():
        continue
      try:
        scheme = json.loads(info.read_text()).get("key_scheme")
      except (OSError, ValueError):
        continue
      if scheme != key_scheme:
        out.append(entry)
    return out

  def lock(self, name, key):
    return locks.exclusive(self.entry(name, key))

  def load(self, name: str, key: str, like, *, repair: bool = True):
    """(params, info) of a complete entry of this name and key, else (None,
    None). An entry that holds another identity (copied over from another
    entry, or written without one) is treated as corrupt: a warning naming
    both identities, and it is rebuilt. repair=False (a read without the
    entry's lock): a bad entry is left alone and silently reported absent,
    for the caller to look again under the lock."""
    entry = self.entry(name, key)
    info_path = entry / "info.json"
    if not info_path.exists():
      return None, None
    try:
      info = integrity.read_json(info_path, "cache info")
      if "params_checksum" not in info:  # written before checksums: cannot be verified
        raise CorruptFileError(
          info_path, "no params checksum (an entry written by an older w2s_jax cannot be verified)"
        )
      held = (info.pop("entry_name", None), info.pop("entry_key", None))
      if held != (name, key):
        raise CorruptFileError(
          info_path,
          f"not the entry asked for: it holds {held[0]}-{held[1]}, this run asks for "
          f"{name}-{key}"
          + (" (an entry written by an older w2s_jax, without its key)" if held[1] is None else ""),
        )
      params = load_params(entry / "params", like, info.pop("params_checksum"))
      return params, info
    except (CorruptFileError, FileNotFoundError) as err:
      if not repair:
        return None, None
      integrity.warn_rebuild(entry, f"corrupt cache entry ({err})", "deleting it to rebuild")
      if shd.is_main_process():
        (entry / "info.json").unlink(missing_ok=True)  # first: an entry without it is incomplete
        shutil.rmtree(entry / "params", ignore_errors=True)
      return None, None

  def save(self, name: str, key: str, params, info: dict) -> None:
    entry = self.entry(name, key)
    entry.mkdir(parents=True, exist_ok=True)
    checksum = save_params(entry / "params", params)
    if shd.is_main_process():
      write_json_atomic(
        entry / "info.json",
        {**info, "params_checksum": checksum, "entry_name": name, "entry_key": key},
      )
