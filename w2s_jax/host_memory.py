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
main heap, never to mmap, and never to return freed memory to the system:
the second step reuses the first step's pages. The cost: the process keeps
its peak host memory until it exits, and threads share one malloc arena.
Call it before JAX creates its CPU backend (before the first computation or
device query): threads that already hold an arena keep it. Opt out with
W2S_JAX_KEEP_HOST_MEMORY=0. It changes no numbers, only where buffers live.
"""

import ctypes
import ctypes.util
import os
import sys
import warnings

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV = "W2S_JAX_KEEP_HOST_MEMORY"


def _backend_started() -> bool:
  from jax._src import xla_bridge
  return xla_bridge.backends_are_initialized()


def keep_freed_memory() -> str:
  """Applies the malloc settings above if it can; returns what happened, one
  of "kept", "disabled by W2S_JAX_KEEP_HOST_MEMORY=0", "not glibc" or "too late"
  (JAX's backend already started: a warning says so; nothing changes)."""
  if os.environ.get(ENV, "1") == "0":
    return f"disabled by {ENV}=0"
  if not sys.platform.startswith("linux"):
    return "not glibc"
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
    return "not glibc"   # e.g. musl: its allocator has no such knobs
  if _backend_started():
    warnings.warn("host_memory.keep_freed_memory() was called after JAX's backend started; "
                  "its threads keep their own malloc arenas, so nothing was changed. Call it "
                  "before the first JAX computation.", stacklevel=2)
    return "too late"
  ok = (libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0)
        and libc.mallopt(_M_TRIM_THRESHOLD, -1))
  if not ok:
    raise RuntimeError("glibc mallopt refused the host-memory settings "
                       f"(arena_max=1, mmap_max=0, trim_threshold=-1); set {ENV}=0 to skip them")
  return "kept"
