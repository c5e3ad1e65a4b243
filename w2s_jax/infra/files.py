"""Atomic result files, the output folder, package versions, and the summary table.

Result files are written by `atomic_write`: to a temp file next to the target,
then renamed over it, so a reader or a killed run never sees half a file. The
final file gets the mode a plain `open(path, "w")` would give (0o666 & ~umask),
so a shared results folder stays readable by the lab.

Temp files are named `.<name>.w2s-jax-tmp.<host>.pid<pid>.<random>.tmp`: the
marker is a name only this project writes, and host and PID let the next write
of the same file tell the leftover of a killed writer (same host, PID gone)
from the file of a writer still at work (`remove_stale_temps_of`). Nothing
else is ever deleted, and no folder tree is walked: a user's `.notes.tmp` or
`.chapter3.autosave.tmp` is never touched.
"""

import contextlib
import contextvars
import errno
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import tempfile
import threading
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-datasets")


_TEMP_SUFFIX = ".tmp"
TEMP_MARK = "w2s-jax-tmp"  # in every temp file name this project writes, and in no other
# tempfile's random names: 8 characters of [a-z0-9_].
TEMP_NAME = re.compile(
  rf"^\.(?P<name>.+)\.{TEMP_MARK}\.(?P<host>[A-Za-z0-9_-]+)\.pid(?P<pid>\d+)"
  r"\.[a-z0-9_]+\.tmp$"
)
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
  return f".{name[:120]}.{TEMP_MARK}.{host_token()}.pid{os.getpid()}."


_group = contextvars.ContextVar("atomic_files_group", default=None)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
  """Yields a file that replaces `path` only once closed, fsynced and renamed:
  a reader, or a run killed at any moment, sees the old file or the new one,
  never a partial one. The new file's mode is 0o666 & ~umask, as with open().
  Inside `atomic_files()`, the rename waits for the group's end."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_temps_of(path)  # a killed writer's leftover of this very file
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=_TEMP_SUFFIX)
  group = _group.get()
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0o600: unreadable to the lab
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    if group is None:
      os.replace(tmp, path)
    else:
      group.append((tmp, path))
  except OSError as err:
    Path(tmp).unlink(missing_ok=True)
    if err.errno in (errno.ENOSPC, errno.EDQUOT) and not err.filename:
      raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
    raise
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


@contextlib.contextmanager
def atomic_files():
  """Files that belong together (a table, its chart, the record naming them):
  every atomic_write inside goes to its temp file, and all are renamed at the
  end, after the last one is written. If any write fails (a full disk), none
  replaces what was there: no new table beside an old or absent record."""
  pending = []
  token = _group.set(pending)
  try:
    yield
  except BaseException:
    for tmp, _ in pending:
      Path(tmp).unlink(missing_ok=True)
    raise
  finally:
    _group.reset(token)
  for tmp, path in pending:
    os.replace(tmp, path)


def staging_dir(target: str | os.PathLike) -> Path:
  """A new, empty folder beside `target`, named as this project's temp files
  (so a killed writer's is removed by the next call for the same target), in
  which a folder is built before it is renamed into place."""
  target = Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_temps_of(target)
  return Path(
    tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=_TEMP_SUFFIX, dir=target.parent)
  )


def write_tree_atomic(target: str | os.PathLike, files: dict[str, bytes]) -> None:
  """Writes a folder of files ({relative path: contents}) in place of
  `target`, at once: built in a staging folder, then renamed. A reader sees
  the old folder or the new one. An existing `target` is removed first: call
  this only on folders this project writes."""
  target = Path(target)
  staging = staging_dir(target)
  try:
    for name, data in files.items():
      path = staging / name
      if (
        path.resolve().parent != staging.resolve()
        and staging.resolve() not in path.resolve().parents
      ):
        raise ValueError(f"write_tree_atomic: {name!r} is outside {target}")
      path.parent.mkdir(parents=True, exist_ok=True)
      with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0o700: unreadable to the lab
    if target.exists():
      shutil.rmtree(target)
    staging.rename(target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def read_tree(folder: str | os.PathLike, *, skip=()) -> dict[str, bytes]:
  """Every file under `folder`, {path relative to it: contents}, in sorted
  order; folders named in `skip` (relative paths) are left out."""
  folder = Path(folder)
  out = {}
  for path in sorted(folder.rglob("*")):
    rel = path.relative_to(folder).as_posix()
    if path.is_file() and not any(rel == s or rel.startswith(s + "/") for s in skip):
      out[rel] = path.read_bytes()
  return out


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


OUT_MARK = ".w2s-jax-out"  # written in every output folder this project prepares
# What a run of this project leaves at the top of its folder (folders from
# before OUT_MARK was written are recognised by these).
RUN_FILES = (
  "results.json",
  "sweep.json",
  "cascade.json",
  "sweep.jsonl",
  "per_query.csv",
  "stages",
  "cells",
  "shared",
  "checkpoints",
  "params",
)


def _check_out_folder(p: Path, label: str) -> None:
  """An output folder is new, empty, or one this project wrote: never a home
  folder, the root, or someone's folder of other files."""
  resolved = Path(os.path.abspath(p)).resolve()
  if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
    raise ValueError(
      f"{label}: is {'the root folder' if resolved == Path(resolved.anchor) else 'your home folder'}; "
      "expected a folder of its own for the run's results (e.g. runs/NAME)"
    )
  if not p.is_dir():
    return
  entries = {e.name for e in p.iterdir()}
  if entries and OUT_MARK not in entries and not entries & set(RUN_FILES):
    shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    raise FileExistsError(
      f"{label}: holds {len(entries)} entries ({shown}) and no run of w2s_jax; "
      "expected a new or empty folder, or one a run wrote (it is left as it is)"
    )


def check_run_name(name, field: str) -> None:
  """A run's name becomes its default folder, runs/<name>: one folder name,
  never a path that leads elsewhere."""
  if not isinstance(name, str) or name in ("", ".", "..") or re.search(r"[/\\\0]", name):
    raise ValueError(
      f"{field}={name!r}: expected a folder name (no '/', '\\', NUL, '.' or '..'); "
      "the run's default folder is runs/<name>"
    )


def prepare_out_dir(path: str | os.PathLike, *, what: str = "--out") -> Path:
  """Creates the output folder (and its parents) and proves it writable; returns it absolute.

  A folder that is the root, the home folder, or non-empty without a run of
  this project in it is refused (ValueError, FileExistsError), so results
  never mix with a user's files. Call it before any compute, so that an unwritable folder (permissions, read-only
  file system, full disk) or a path naming an existing file fails at once rather
  than when the first result is written. A small probe file is written and
  removed; it is named like atomic_write's temp files, so a run killed in between
  leaves nothing that the next probe would not clean up. `what` names the
  folder in errors, e.g. "--out runs/x: is an existing file, expected a directory".
  """
  label = f"{what} {os.fspath(path)}" if what else os.fspath(path)
  p = Path(path)
  probe_name = "w2s-write-probe"
  try:
    is_file = p.exists() and not p.is_dir()
  except OSError as e:  # e.g. a parent folder that may not be searched
    raise _oserror(e, f"{label}: cannot be checked ({type(e).__name__}: {e})") from e
  if is_file:
    raise NotADirectoryError(f"{label}: is an existing file, expected a directory")
  _check_out_folder(p, label)
  try:
    p.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise _oserror(e, f"{label}: cannot create the directory ({type(e).__name__}: {e})") from e
  remove_stale_temps_of(p / probe_name)
  try:
    fd, probe = tempfile.mkstemp(dir=p, prefix=temp_prefix(probe_name), suffix=_TEMP_SUFFIX)
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(b"w2s-jax write probe\n")
        f.flush()
        os.fsync(f.fileno())
    finally:
      Path(probe).unlink(missing_ok=True)
    if not (p / OUT_MARK).exists():
      with atomic_write(p / OUT_MARK) as f:
        f.write("w2s_jax writes its results in this folder\n")
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


def remove_stale_temps_of(path: str | os.PathLike) -> list[Path]:
  """Deletes the temp files atomic_write left for `path` in its folder (and
  the staging folders named the same way) when their writer is gone;
  returns them.

  Only names `.<path's name>.w2s-jax-tmp.<host>.pid<pid>.<random>.tmp` are
  considered (the marker is this project's alone), only in path's own
  folder (no tree is walked), and only when <host> is this host and no
  process <pid> is alive here. Files of another host (its PIDs cannot be
  checked from here) or of a live PID are kept; a PID reused by an
  unrelated process only keeps a leftover longer. Symlinks are never removed.

  Limitation: two containers sharing a host name and a results folder but not
  a PID namespace see each other's writers as dead.
  """
  path = Path(path)
  prefix = f".{path.name[:120]}.{TEMP_MARK}."
  try:
    candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
  except (FileNotFoundError, NotADirectoryError):
    return []
  host, removed = host_token(), []
  for p in candidates:
    m = TEMP_NAME.match(p.name)
    if not m or m["name"] != path.name[:120] or m["host"] != host or _pid_alive(int(m["pid"])):
      continue
    if p.is_symlink() or not (p.is_file() or p.is_dir()):
      continue
    try:
      if p.is_dir():  # a staging folder (curves.write)
        shutil.rmtree(p)
      else:
        p.unlink()
    except FileNotFoundError:  # another cleaner was first
      continue
    removed.append(p)
  return removed


_FULL = ("No space left on device", "RESOURCE_EXHAUSTED", "Disk quota exceeded")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')


def _chain(err: BaseException):
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    yield err
    err = err.__cause__ or err.__context__


def disk_full(err: BaseException) -> str | None:
  """One line for a write that failed on a full disk (ENOSPC or EDQUOT, or
  TensorStore's RESOURCE_EXHAUSTED from an orbax save), anywhere in err's
  chain: the file and the free space on its file system. None otherwise."""
  for e in _chain(err):
    errno_full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(e)
    if not errno_full and not any(m in text for m in _FULL):
      continue
    path = getattr(e, "filename", None) or next(iter(_QUOTED_PATH.findall(text)), None)
    where = Path(path) if path else None
    probe = where
    while probe is not None and not probe.exists() and probe != probe.parent:
      probe = probe.parent
    free = ""
    if probe is not None:
      usage = shutil.disk_usage(probe)
      free = (
        f": {usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB on its file system"
      )
    return (
      f"no space left on the device writing {where or 'a result file'}{free}; free some "
      "space and run again: finished stages and cache entries are kept, and the run resumes"
    )
  return None


def package_versions() -> dict:
  versions = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions
