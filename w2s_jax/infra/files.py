"""Atomic result files, the output folder, package versions, and the summary table.

Result files are written by `atomic_write`: to a temp file next to the target,
then renamed over it, so a reader or a killed run never sees half a file. The
final file gets the mode a plain `open(path, "w")` would give (0o666 & ~umask),
so a shared results folder stays readable by the lab.

Temp files are named `.<name>.<host>.pid<pid>.<random>.tmp`, so that
`remove_stale_temp_files` can tell the leftovers of a killed writer (same host,
PID gone) from the file of a writer still at work.
"""

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import socket
import tempfile
import threading
import time
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-datasets")


# Temp files in the naming used before the writer's host and PID were recorded
# (`.<name>.<8 random>.tmp`) are removed by remove_stale_temp_files once they are
# this old. Their writer cannot be checked; atomic_write keeps a temp file only for
# the seconds a write takes, and a file still being written has a fresh mtime, so an
# hour-old one is a leftover of a killed run.
OLD_TEMP_MAX_AGE_S = 3600.0

_TEMP_SUFFIX = ".tmp"
# tempfile's random names: 8 characters of [a-z0-9_].
TEMP_NAME = re.compile(
  r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)\.pid(?P<pid>\d+)"
  r"\.[a-z0-9_]+\.tmp$"
)
OLD_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
_PROC_STATUS = "/proc/self/status"
_umask_lock = threading.Lock()


def _umask() -> int:
  """The process umask, read without changing it where the OS allows.

  Linux (4.7+) reports it in /proc/self/status, which has no side effect.
  Elsewhere the only way is os.umask(0) and putting the old value back at once:
  for those few microseconds a file another thread creates gets mode 0o666.
  Read on every call rather than once per process: a write is far costlier than
  this read, and a program that sets its umask after import (say 0o002 for a
  group folder) is honoured.
  """
  try:
    with open(_PROC_STATUS) as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  with _umask_lock:  # keeps our own threads from reading each other's 0
    mask = os.umask(0)
    os.umask(mask)
  return mask


def host_token() -> str:
  """This host's name as one file-name field: no dots, at most 64 characters."""
  return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())[:64] or "unknown-host"


def temp_prefix(name: str) -> str:
  # The name is cut so the whole temp name stays well under the usual 255-byte limit.
  return f".{name[:120]}.{host_token()}.pid{os.getpid()}."


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
  """Yields a file that replaces `path` only once closed, fsynced and renamed:
  a reader, or a run killed at any moment, sees the old file or the new one,
  never a partial one. The new file's mode is 0o666 & ~umask, as with open()."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=_TEMP_SUFFIX)
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0o600: unreadable to the lab
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
  with atomic_write(path) as f:
    json.dump(obj, f, indent=2, allow_nan=True)
    f.write("\n")


def _oserror(e: OSError, message: str) -> OSError:
  """An error of e's class (PermissionError stays one) carrying message."""
  try:
    return type(e)(message)
  except Exception:  # an OSError subclass with another constructor
    return OSError(message)


def prepare_out_dir(path: str | os.PathLike, *, what: str = "--out") -> Path:
  """Creates the output folder (and its parents) and proves it writable; returns it absolute.

  Call it before any compute, so that an unwritable folder (permissions, read-only
  file system, full disk) or a path naming an existing file fails at once rather
  than when the first result is written. A small probe file is written and
  removed; it is named like atomic_write's temp files, so a run killed in between
  leaves nothing that remove_stale_temp_files would not clean up. `what` names the
  folder in errors, e.g. "--out runs/x: is an existing file, expected a directory".
  """
  label = f"{what} {os.fspath(path)}" if what else os.fspath(path)
  p = Path(path)
  try:
    is_file = p.exists() and not p.is_dir()
  except OSError as e:  # e.g. a parent folder that may not be searched
    raise _oserror(e, f"{label}: cannot be checked ({type(e).__name__}: {e})") from e
  if is_file:
    raise NotADirectoryError(f"{label}: is an existing file, expected a directory")
  try:
    p.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise _oserror(e, f"{label}: cannot create the directory ({type(e).__name__}: {e})") from e
  try:
    fd, probe = tempfile.mkstemp(dir=p, prefix=temp_prefix("w2s-write-probe"), suffix=_TEMP_SUFFIX)
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(b"w2s-jax write probe\n")
        f.flush()
        os.fsync(f.fileno())
    finally:
      Path(probe).unlink(missing_ok=True)
  except OSError as e:
    raise _oserror(e, f"{label}: not writable ({type(e).__name__}: {e})") from e
  return Path(os.path.abspath(p))


def _pid_alive(pid: int) -> bool:
  """False only when this host has no process `pid` (os.kill(pid, 0) finds none)."""
  if pid <= 0:
    return True  # 0 and negatives address process groups: never "dead"
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError, OSError):
    return True  # another user's process, or an answer we cannot read: keep the file
  return True


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
  """Deletes atomic_write temp files, anywhere under `directory`, whose writer is gone.

  A temp file `.<name>.<host>.pid<pid>.<random>.tmp` is removed when <host> is
  this host and no process <pid> is alive here. Files of another host (its PIDs
  cannot be checked from here) or of a live PID are kept; a PID reused by an
  unrelated process only keeps a leftover longer. Files in the older naming
  `.<name>.<random>.tmp`, whose writer is unknown, are removed once older than
  OLD_TEMP_MAX_AGE_S (one hour). Other files are never touched. Symlinked folders
  are not followed. Returns the removed paths; a folder that does not exist has none.

  Limitation: two containers sharing a host name and a results folder but not a
  PID namespace see each other's writers as dead. Call this at the start of a
  run, never while another run on this host may be writing with the same host name
  from another PID namespace.
  """
  directory = Path(directory)
  if not directory.exists():
    return []
  if not directory.is_dir():
    raise NotADirectoryError(f"remove_stale_temp_files: {str(directory)!r} is not a directory")
  host, now, removed = host_token(), time.time(), []
  for root, _, files in os.walk(directory):
    for name in files:
      if not (name.startswith(".") and name.endswith(_TEMP_SUFFIX)):
        continue
      path = Path(root) / name
      new = TEMP_NAME.match(name)
      if new:
        stale = new["host"] == host and not _pid_alive(int(new["pid"]))
      elif OLD_TEMP_NAME.match(name):
        try:
          stale = now - path.lstat().st_mtime > OLD_TEMP_MAX_AGE_S
        except FileNotFoundError:
          continue
      else:
        continue
      if stale and path.is_file() and not path.is_symlink():
        try:
          path.unlink()
        except FileNotFoundError:  # another cleaner was first
          continue
        removed.append(path)
  return removed


def package_versions() -> dict:
  versions = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions
