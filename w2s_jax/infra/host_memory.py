"""Keep freed host memory in the process, so XLA:CPU stops page-faulting its
scratch space in again on every step.

XLA:CPU allocates each execution's temporaries (the activations a backward
pass keeps: 1.2 GB for the benchmark's 6 x 384 train step) with malloc from
its worker threads. glibc serves a block that large from a per-thread arena
by a fresh mmap and unmaps it on free, so every step touched new pages: 350K
minor page faults per step, 0.6 s of kernel time (each fault also zeroes its
page), about a quarter of the step on a 2-core machine. torch allocates
tensor by tensor, below glibc's mmap threshold, and reuses its pages.

`keep_freed_memory()` tells glibc (mallopt) to serve every thread from the
main heap, never to mmap, and not to return freed memory to the system on
its own: the second step reuses the first step's pages. Entry points call it
first thing under `if __name__ == "__main__"`: it must come before JAX
creates its CPU backend (threads that already hold an arena keep it).

The cost is memory: freed scratch stays resident, and one heap can
fragment when workloads of different sizes interleave (a long-lived buffer
allocated into a freed scratch block makes the next large block extend the
heap). So `loop.fit` hands free pages back (`release_freed_memory`, glibc's
malloc_trim) when its loop ends: within a loop, steps reuse pages; between
stages, memory is returned.

Glibc's huge-page tunable (glibc.malloc.hugetlb=1, read at process start
only) also cut the faults, 512-fold, but the pages are still zeroed on every
step and in tools/bench_torch.py the step was slower than with kept memory
(fwd+bwd 1613 vs 995-1013 ms); it is not used.

Opt out with W2S_JAX_KEEP_HOST_MEMORY=0. It changes no numbers, only where
buffers live.
"""

import ctypes
import ctypes.util
import functools
import os
import sys
import warnings

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV = "W2S_JAX_KEEP_HOST_MEMORY"
_status = "not requested (host_memory.keep_freed_memory() was not called)"


def status() -> str:
  """What keep_freed_memory() did in this process."""
  return _status


@functools.cache
def _glibc():
  if not sys.platform.startswith("linux"):
    return None
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
    return None  # e.g. musl: its allocator has no such knobs
  return libc


def release_freed_memory() -> None:
  """Hands the pages of freed blocks back to the system (malloc_trim), so a
  kept heap does not hold on to one stage's scratch while the next runs."""
  if _status == "kept":
    _glibc().malloc_trim(0)


def _backend_started() -> bool:
  from jax._src import xla_bridge

  return xla_bridge.backends_are_initialized()


def keep_freed_memory() -> str:
  """Applies the malloc settings above if it can; returns what happened, one
  of "kept", "disabled by W2S_JAX_KEEP_HOST_MEMORY=0", "not glibc" or "too late"
  (JAX's backend already started: a warning says so; nothing changes)."""
  global _status
  if _status == "kept":
    return _status
  libc = _glibc()
  if os.environ.get(ENV, "1") == "0":
    _status = f"disabled by {ENV}=0"
  elif libc is None:
    _status = "not glibc"
  elif _backend_started():
    warnings.warn(
      "host_memory.keep_freed_memory() was called after JAX's backend started; "
      "its threads keep their own malloc arenas, so nothing was changed. Call it "
      "before the first JAX computation.",
      stacklevel=2,
    )
    _status = "too late"
  elif not (
    libc.mallopt(_M_ARENA_MAX, 1)
    and libc.mallopt(_M_MMAP_MAX, 0)
    and libc.mallopt(_M_TRIM_THRESHOLD, -1)
  ):
    raise RuntimeError(
      "glibc mallopt refused the host-memory settings "
      f"(arena_max=1, mmap_max=0, trim_threshold=-1); set {ENV}=0 to skip them"
    )
  else:
    _status = "kept"
  return _status
