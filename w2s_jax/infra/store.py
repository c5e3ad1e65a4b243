"""The one compute-once store every experiment keeps its stages and records in.

A stored artefact is a checksummed file (integrity.py) written atomically
that carries its own identity: what it is the result of (a stage's name and
the fingerprint of everything it depends on). On load:

- absent: computed, under a lock (locks.py), so two processes sharing a
  folder compute it once; the second waits and reads it;
- unreadable, failing its checksum, of another identity than the one asked
  for, or lacking a field the stage now records: a warning naming the file
  (and, for an identity mismatch, both identities), then computed again;
- complete and matching: used as it is, without taking the write lock, so a
  finished store on a read-only file system serves as well.

Arrays live in `.npz` files (no pickle), records in `.json` files.
"""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from w2s_jax.infra import integrity, locks
from w2s_jax.infra.files import write_json_atomic

IDENTITY = "_identity"


def _canonical(identity) -> str:
  return json.dumps(identity, sort_keys=True, separators=(",", ":"), allow_nan=True)


def _identity_problem(stored, wanted) -> str | None:
  if stored is None:
    return "no identity recorded"
  if _canonical(stored) != _canonical(wanted):
    return f"it holds {_canonical(stored)}, this run asks for {_canonical(wanted)}"
  return None


class Store:
  """A folder of stored artefacts, each named by a relative path."""

  def __init__(self, folder):
    self.folder = Path(folder)

  def path(self, name: str) -> Path:
    return self.folder / name

  # --- Arrays -------------------------------------------------------------------

  def load_arrays(self, name: str, *, identity, fields=()) -> dict | None:
    """The stored arrays, or None when they must be (re)computed (see the
    module docstring; a warning says why, except when absent)."""
    path = self.path(name)
    if not path.exists():
      return None
    try:
      arrays = integrity.load_npz_checked(path)
    except integrity.CorruptFileError as err:
      integrity.warn_rebuild(path, err.problem, "computing it again")
      return None
    stored = arrays.pop(IDENTITY, None)
    problem = _identity_problem(None if stored is None else json.loads(str(stored)), identity)
    if problem:
      integrity.warn_rebuild(
        path, f"not the stage this run asks for ({problem})", "computing it again"
      )
      return None
    missing = [f for f in fields if f not in arrays]
    if missing:
      integrity.warn_rebuild(path, f"written without {missing}", "computing it again")
      return None
    return arrays

  def save_arrays(self, name: str, arrays: dict, *, identity) -> None:
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    integrity.save_npz_checked(
      self.path(name), {**arrays, IDENTITY: np.array(_canonical(identity))}
    )

  def arrays(self, name: str, compute: Callable[[], dict], *, identity, fields=()) -> dict:
    """Compute once, read ever after.

    Args:
      name: the file, relative to the store's folder (an .npz).
      compute: () -> {name: array}, called only when nothing valid is stored.
      identity: JSON data saying what the arrays are the result of.
      fields: arrays a valid stored file must hold.

    Returns:
      The stored arrays for this identity (computed and stored first, under
      a lock, when absent or invalid).
    """
    arrays = self.load_arrays(name, identity=identity, fields=fields)
    if arrays is not None:
      return arrays
    with locks.exclusive(self.path(name)):
      arrays = self.load_arrays(name, identity=identity, fields=fields)  # perhaps stored meanwhile
      if arrays is None:
        arrays = {k: np.asarray(v) for k, v in compute().items()}
        self.save_arrays(name, arrays, identity=identity)
    return arrays

  # --- Records ------------------------------------------------------------------

  def load_record(self, name: str, *, identity) -> dict | None:
    path = self.path(name)
    if not path.exists():
      return None
    try:
      record = integrity.read_json_checked(path, "record")
    except integrity.CorruptFileError as err:
      integrity.warn_rebuild(path, err.problem, "computing it again")
      return None
    problem = _identity_problem(record.pop(IDENTITY, None), identity)
    if problem:
      integrity.warn_rebuild(
        path, f"not the record this run asks for ({problem})", "computing it again"
      )
      return None
    return record

  def save_record(self, name: str, record: dict, *, identity) -> None:
    integrity.write_json_checked(self.path(name), {**record, IDENTITY: identity})

  def record(
    self, name: str, compute: Callable[[], dict], *, identity, wait: bool = True
  ) -> dict | None:
    """The record stored under `name` for this identity, or compute() stored
    there first. With wait=False, None at once when another process holds it."""
    record = self.load_record(name, identity=identity)
    if record is not None:
      return record
    with locks.exclusive(self.path(name), wait=wait) as mine:
      if not mine:
        return None
      record = self.load_record(name, identity=identity)
      if record is None:
        record = compute()
        self.save_record(name, record, identity=identity)
    return record


def claim_folder(
  folder: Path, *, record: str, identity: dict, what: str, overwrite: bool = False, extra=None
) -> None:
  """folder/record says which config a folder's results belong to; a folder
  holding another config's results is refused (a ValueError naming the fields
  that differ), unless overwrite, which hands the folder to this config.

  identity: JSON data of the config (compared field by field); extra: more
  data stored beside it, not compared."""
  path = Path(folder) / record
  with locks.exclusive(path):
    if path.exists() and not overwrite:
      previous = integrity.read_json(path, f"{what} config")
      if previous.get("identity") != identity:
        old = previous.get("identity") or {}
        changed = sorted(k for k in set(identity) | set(old) if identity.get(k) != old.get(k))
        raise ValueError(
          f"{folder}: holds the results of {what} with another config (fields {changed} "
          "differ), which this run would replace; use another --out, or pass --overwrite"
        )
    write_json_atomic(path, {"identity": identity, **(extra or {})})
