"""Checksums for everything the project stores, so no run goes on from a corrupt file.

- Arrays on devices (params, whole train states): `tree_checksum`, two
  32-bit sums of every leaf's raw bits, one plain and one weighted by
  position, computed by one jitted program on the arrays where they live
  (sharded or not, any number of processes). Integer addition wraps mod
  2**32 and is associative, so the sums do not depend on the mesh, the
  sharding or the reduction order: a state saved under FSDP on 8 devices
  and restored onto 1 has the same checksum. Any single flipped bit changes
  the plain sum; swapped values change the weighted one. Stored beside the
  arrays (in a checkpoint's JSON item, a cache entry's info.json).
- JSON records (a sweep cell's results.json): a sha256 of their canonical
  text, embedded under "checksum".
- Stage arrays (.npz): a sha256 of every array's name, dtype, shape and
  bytes, stored in the file as "_checksum".

A mismatch, or a file that cannot be read at all, is a `CorruptFileError`
naming the file. Callers decide what follows: rebuild what is derived and
cheap (with a warning that names it), fall back to an earlier checkpoint, or
stop.
"""

import hashlib
import json
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.infra.files import atomic_write

CHECKSUM_KEY = "checksum"
NPZ_CHECKSUM = "_checksum"


class CorruptFileError(RuntimeError):
  """A stored artefact whose contents are not what was written."""

  def __init__(self, path, problem: str, remedy: str = "delete it to rebuild"):
    super().__init__(f"{path}: {problem}; {remedy}")
    self.path, self.problem = str(path), problem


def warn_rebuild(path, problem: str, action: str = "rebuilding it") -> None:
  warnings.warn(f"{path}: {problem}; {action}", stacklevel=3)


# --- Arrays on devices ------------------------------------------------------------


def _words(x):
  """A leaf's raw bits as a flat uint32 vector."""
  x = jnp.asarray(x)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  size = x.dtype.itemsize
  if x.dtype == jnp.bool_:
    return x.reshape(-1).astype(jnp.uint32)
  if size >= 4:  # 64-bit values become two words each
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)


@jax.jit
def _tree_sums(tree):
  odd = jnp.uint32(2654435761)  # Knuth's multiplicative hash constant
  plain = weighted = jnp.uint32(0)
  for i, leaf in enumerate(jax.tree.leaves(tree)):
    words = _words(leaf)
    position = jnp.arange(words.shape[0], dtype=jnp.uint32) * odd + jnp.uint32(1)
    leaf_weight = jnp.uint32(2 * i + 1)
    plain = plain + leaf_weight * jnp.sum(words, dtype=jnp.uint32)
    weighted = weighted + leaf_weight * jnp.sum(words * position, dtype=jnp.uint32)
  return jnp.stack([plain, weighted])


def tree_checksum(tree) -> list[int]:
  """[plain, weighted] 32-bit sums of every leaf's bits, as Python ints."""
  return [int(v) for v in np.asarray(jax.device_get(_tree_sums(tree)))]


def check_tree(tree, expected, path) -> None:
  got = tree_checksum(tree)
  if [int(v) for v in expected] != got:
    raise CorruptFileError(path, f"checksum mismatch (stored {list(expected)}, read {got})")


# --- JSON records -----------------------------------------------------------------


def _canonical(obj) -> str:
  return json.dumps(obj, sort_keys=True, allow_nan=True)


def _sha256(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()


def write_json_checked(path, obj: dict) -> None:
  """obj with a sha256 of its canonical text under "checksum", written atomically."""
  record = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
  record[CHECKSUM_KEY] = _sha256(_canonical(record))
  with atomic_write(path) as f:
    json.dump(record, f, indent=2, allow_nan=True)
    f.write("\n")


def read_json(path, what: str = "JSON file") -> dict:
  """A JSON object from path; unreadable or truncated is a CorruptFileError."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise CorruptFileError(path, f"unreadable {what} ({type(err).__name__}: {err})") from None
  if not isinstance(obj, dict):
    raise CorruptFileError(path, f"unreadable {what} (a {type(obj).__name__}, expected an object)")
  return obj


def read_json_checked(path, what: str = "record") -> dict:
  """A record written by write_json_checked, its checksum verified (and removed)."""
  obj = read_json(path, what)
  stored = obj.pop(CHECKSUM_KEY, None)
  if stored is None:
    raise CorruptFileError(path, f"{what} has no checksum")
  if _sha256(_canonical(obj)) != stored:
    raise CorruptFileError(path, f"checksum mismatch in {what}")
  return obj


# --- Stage arrays -----------------------------------------------------------------


def _arrays_digest(arrays: dict) -> str:
  digest = hashlib.sha256()
  for name in sorted(arrays):
    value = np.ascontiguousarray(arrays[name])
    digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def save_npz_checked(path, arrays: dict) -> None:
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  with atomic_write(path, "wb") as f:
    np.savez(f, **arrays, **{NPZ_CHECKSUM: np.array(_arrays_digest(arrays))})


def load_npz_checked(path) -> dict:
  """The arrays of a save_npz_checked file, verified; no pickle is ever loaded."""
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
    raise CorruptFileError(path, f"unreadable arrays ({type(err).__name__}: {err})") from None
  stored = arrays.pop(NPZ_CHECKSUM, None)
  if stored is None or str(stored) != _arrays_digest(arrays):
    raise CorruptFileError(path, "checksum mismatch" if stored is not None else "no checksum")
  return arrays
