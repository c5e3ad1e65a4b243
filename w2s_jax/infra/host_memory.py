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
its own: the second step reuses the first step's pages. It must come before
JAX creates its CPU backend (threads that already hold an arena keep it), so
it is called first thing under `if __name__ == "__main__"`.

It pays only for large steps, and it costs small ones. One arena means one
lock for every malloc of every thread, and XLA:CPU's runtime allocates from
its worker threads all the time: the default experiment's 110K-parameter
model pretrained 1.45x slower with kept memory (1500 steps: 40.6 and 47.5 s
kept, 27.9 and 32.1 s not, alternating runs, identical losses), whereas the
benchmark's 6 x 384 step ran 1.2 s -> 0.92-0.95 s with it (docs/performance.md).
Hence two callers: the benchmarks of large steps (tools/bench_torch.py,
tools/profile_step.py) keep memory unless W2S_JAX_KEEP_HOST_MEMORY=0; the
experiments and the pipeline's benchmarks, whose models are small on a CPU,
keep it only with W2S_JAX_KEEP_HOST_MEMORY=1 (`keep_freed_memory(by_default=False)`).
On an accelerator none of this matters: the scratch lives on the device.

The cost is memory: freed scratch stays resident, and one heap can
fragment when workloads of different sizes interleave (a long-lived buffer
allocated into a freed scratch block makes the next large block extend the
heap). So `loop.fit` hands free pages back (`release_freed_memory`, glibc's
malloc_trim) when its loop ends: within a loop, steps reuse pages; between
stages, memory is returned.

Glibc's huge-page tunable (glibc.malloc.hugetlb=1, read at process start
only) also cut the faults, 512-fold, but the pages are still zeroed on every
step and in tools/bench_torch.py the step was slower than with kept memory
(fwd+bwd 1613 vs 995-1013 ms); it is not used. Per-thread arenas with mmap
off and trimming off do not keep the pages either (a thread's heap is
unmapped when it empties): every step still faulted its scratch in.

It changes no numbers, only where buffers live.
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
  """Hands the pages of freed blocks back to the system (glibc's
  malloc_trim, over every arena), so that neither a kept heap nor glibc's
  per-thread arenas hold on to one stage's memory while the next runs
  (measured: 0.2-0.4 GB after each all-MiniLM-L6-v2 fine-tune without
  kept memory, docs/performance.md)."""
  if _glibc() is not None:
    _glibc().malloc_trim(0)


def release_compiled_programs() -> None:
  """Drops every compiled program this process holds (jax.clear_caches),
  then the freed pages. An XLA:CPU executable holds 30-60 MB of the
  host's memory (its code and buffer plan, measured on the testbed's
  sizes), so a sweep that kept every cell's programs grew by about 0.8 GB
  over 28 cells (docs/performance.md). With the persistent compilation
  cache (--xla-cache, on by default), a dropped program comes back from
  disk in about a second instead of being compiled again."""
  import jax

  jax.clear_caches()
  release_freed_memory()


def _backend_started() -> bool:
  from jax._src import xla_bridge

  return xla_bridge.backends_are_initialized()


# XLA:CPU's concurrency-optimized scheduler orders a program's operations so
# that more of them may run at once, which keeps more buffers alive together.
# Off, all-MiniLM-L6-v2's fine-tuning step (3 seeds, batch 32 x 64 tokens)
# needs 1.72 GB of scratch instead of 2.62, one seed at a time 0.63 instead
# of 1.30, at the same speed (docs/performance.md). Only XLA_FLAGS, read when
# the CPU client starts, sets it: jit's compiler_options do not reach it.
LEAN_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
_scheduler = "not requested (host_memory.keep_freed_memory() was not called)"


def scheduler_status() -> str:
  """What keep_freed_memory() did about XLA:CPU's scheduler in this process."""
  return _scheduler


def _lean_scheduler() -> None:
  """Adds LEAN_SCHEDULER to XLA_FLAGS, unless XLA_FLAGS already names the
  option (the user's choice wins) or JAX's backend has started."""
  global _scheduler
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_enable_concurrency_optimized_scheduler" in flags:
    _scheduler = "as XLA_FLAGS sets it"
  elif _backend_started():
    _scheduler = "too late (JAX's backend had started): XLA:CPU's default scheduler"
  else:
    os.environ["XLA_FLAGS"] = f"{flags} {LEAN_SCHEDULER}".strip()
    _scheduler = "memory-lean (concurrency-optimized scheduler off)"


def keep_freed_memory(*, by_default: bool = True) -> str:
  """Applies the malloc settings above if asked and able; returns what
  happened, one of "kept", "disabled by W2S_JAX_KEEP_HOST_MEMORY=0", "not
  kept (...)", "not glibc" or "too late" (JAX's backend already started: a
  warning says so; nothing changes).

  by_default: whether to keep memory when W2S_JAX_KEEP_HOST_MEMORY is unset
  (True for benchmarks of large steps, False for the experiments); "1"
  keeps it and "0" does not, whatever the default.

  Every call also asks XLA:CPU for its memory-lean scheduler (LEAN_SCHEDULER
  above), whatever happens to the malloc settings."""
  global _status
  _lean_scheduler()
  if _status == "kept":
    return _status
  libc = _glibc()
  asked = os.environ.get(ENV, "")
  if asked not in ("", "0", "1"):
    raise ValueError(f"{ENV}={asked!r}: expected 1 (keep freed host memory) or 0 (do not)")
  if asked == "0":
    _status = f"disabled by {ENV}=0"
  elif asked == "" and not by_default:
    _status = f"not kept (the default here: small steps run faster without it; {ENV}=1 keeps it)"
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
