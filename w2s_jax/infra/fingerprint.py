"""Cache keys from an explicit fingerprint of the configs they depend on.

`fingerprint(value)` turns a config (frozen dataclasses, tuples, numbers,
strings) into plain JSON data: each dataclass as {"type": its class name,
each field: its fingerprint}, field by field, never through repr. A field
marked WHEN_SET (dataclasses.field(metadata=WHEN_SET)) is left out while it
holds its default, so adding such a field later leaves the keys of every
config that does not use it as they were; a field marked IGNORED (how a
result is computed, not what it is) is never part of a key. `digest` hashes
a fingerprint; `KEY_SCHEME` names this way of keying, and is stored beside
what it keys, so that entries keyed another way are told apart from
corrupt ones (and rebuilt, with a message).
"""

import dataclasses
import hashlib
import json
import math
from pathlib import Path

KEY_SCHEME = 2  # 1: config reprs (w2s_jax before the subpackages)
WHEN_SET = {"fingerprint": "when_set"}
IGNORED = {"fingerprint": "ignored"}
CONTENTS = {"fingerprint": "contents"}
_CHUNK = 1 << 22
_digests: dict = {}  # (path, size, mtime, inode) -> sha256: each file is read once per run


def _file_digest(path: Path) -> str:
  st = path.stat()
  memo = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
  if memo not in _digests:
    h = hashlib.sha256()
    with open(path, "rb") as f:
      while chunk := f.read(_CHUNK):
        h.update(chunk)
    _digests[memo] = h.hexdigest()
  return _digests[memo]


def contents_digest(path) -> str:
  """The sha256 of a file's bytes, or of a folder's files (their relative
  paths and digests, sorted; hidden files and lock files left out). Each
  file is read once per process while its size and mtime stay the same."""
  path = Path(path)
  if path.is_file():
    return _file_digest(path)
  h = hashlib.sha256()
  for f in sorted(p for p in path.rglob("*") if p.is_file()):
    rel = f.relative_to(path)
    if any(part.startswith(".") for part in rel.parts) or f.suffix == ".lock":
      continue
    h.update(f"{rel.as_posix()}\0{_file_digest(f)}\n".encode())
  return h.hexdigest()


def _contents(value):
  """A CONTENTS field's value with every string naming a file or folder
  replaced by {"contents": its digest}."""
  if isinstance(value, str) and value and Path(value).exists():
    return {"contents": contents_digest(value)}
  if isinstance(value, (tuple, list)):
    return [_contents(v) for v in value]
  return fingerprint(value)


def fingerprint(value):
  """Plain JSON data that determines `value`; see the module docstring."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    out = {"type": type(value).__name__}
    for f in dataclasses.fields(value):
      v = getattr(value, f.name)
      mark = f.metadata.get("fingerprint")
      if mark == "ignored" or (mark == "when_set" and v == f.default):
        continue
      out[f.name] = _contents(v) if mark == "contents" else fingerprint(v)
    name = getattr(type(value), "name", None)  # a loss's registered name (a ClassVar)
    if isinstance(name, str) and "name" not in out:
      out["name"] = name
    return out
  if isinstance(value, (tuple, list)):
    return [fingerprint(v) for v in value]
  if isinstance(value, dict):
    return {str(k): fingerprint(v) for k, v in value.items()}
  if isinstance(value, float) and not math.isfinite(value):
    return repr(value)  # JSON has no inf or nan
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise TypeError(
    f"fingerprint: {type(value).__name__} value {value!r} is not config data "
    "(dataclasses, tuples, dicts, numbers, strings)"
  )


def digest(value, length: int = 16) -> str:
  """A cache key.

  Args:
    value: config data (see fingerprint).
    length: hex digits kept.

  Returns:
    The first `length` hex digits of the sha256 of fingerprint(value) as
    canonical JSON.
  """
  blob = json.dumps(fingerprint(value), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode()).hexdigest()[:length]
