"""File locks, so two runs can share a cache or a sweep folder.

An advisory `fcntl.flock` on a `.<name>.lock` file beside the path: the operating system drops
it when its holder exits, killed or not, so a crashed run never leaves a
folder locked. Locks apply within one host (and on file systems where flock
is shared between hosts). A multi-process (jax.distributed) run takes no
locks: its processes must all run the same work in the same order, so such a
run must have its cache and sweep folder to itself.
"""

import contextlib
import fcntl
import os
from pathlib import Path

import jax


def _active() -> bool:
  return jax.process_count() == 1


@contextlib.contextmanager
def exclusive(path, *, wait: bool = True, say=print):
  """Holds `.<name>.lock` beside path while the block runs. Yields True when held. With
  wait=False and another holder, yields False at once (the block runs
  unlocked: the caller must skip the work). With wait=True and another
  holder, says so, then waits."""
  if not _active():
    yield True
    return
  path = Path(path)
  lock_path = path.parent / f".{path.name}.lock"
  try:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
  except PermissionError as err:
    raise PermissionError(
      f"{path}: cannot write here ({err.strerror}: {lock_path}), and what is stored there "
      "is absent or incomplete, so it would have to be built; use a writable folder "
      "(a read-only folder serves only complete entries)"
    ) from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      if not wait:
        yield False
        return
      say(f"{path}: another process holds it; waiting for it to finish")
      fcntl.flock(fd, fcntl.LOCK_EX)
    try:
      yield True
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
