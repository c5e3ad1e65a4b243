"""What every benchmark in tools/ shares: warm-up, interleaved rounds, matmul
peaks, the machine's description and the JSON record.

A contender is run(n): n calls (steps, passes over a stream), returning only
once the device is done. `warm_up` times each one's first call (compiles
included) apart and drops the ones that fail, with their error; `interleaved`
then runs every contender in turn for a number of rounds, rotating the order
from round to round, and returns a `Timings`. Ratios between contenders are
read as the median of per-round ratios (both ran under the same conditions
in each round) beside the ratio of the medians.

Tools import this module's names only, never each other's internals, so a
change here is a change of one stable interface.
"""

import dataclasses
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax.infra import host_memory, memory  # noqa: E402

# The project's config folder: tools find their default configs from any cwd.
CONFIGS = Path(__file__).resolve().parent.parent / "configs"

VECTOR_FLAGS = (
  "avx2",
  "fma",
  "avx512f",
  "avx512bw",
  "avx512_vnni",
  "avx512_bf16",
  "amx_tile",
  "amx_bf16",
  "asimd",
  "sve",
)


@dataclasses.dataclass(frozen=True)
class Timings:
  """What `interleaved` measured, per contender key.

  seconds: seconds per call, one entry per round.
  page_faults: the process's minor page faults per call (memory the kernel
    mapped in afresh), one entry per round.
  peak_rss_mb: the contender's own peak resident memory (MB), the largest
    over its rounds: the kernel's high-water mark is reset before each call
    (memory.Peak(own_span=True), Linux). Where it cannot be reset, the
    process's peak so far, which only grows (`peak_rss_covers` says which).
  """

  seconds: dict[Hashable, list[float]]
  page_faults: dict[Hashable, list[float]]
  peak_rss_mb: dict[Hashable, float]
  peak_rss_covers: str = "each contender's own calls"

  def median(self, key) -> float:
    return float(np.median(self.seconds[key]))

  def speedup(self, key, *, over) -> dict:
    """How much faster `key` ran than `over` (> 1: key faster): from the
    medians, and as the median of per-round ratios."""
    a, b = np.asarray(self.seconds[key]), np.asarray(self.seconds[over])
    return {
      "of_medians": float(np.median(b) / np.median(a)),
      "median_of_round_ratios": float(np.median(b / a)),
    }

  def __contains__(self, key) -> bool:
    return key in self.seconds

  def keys(self):
    return self.seconds.keys()


def peak_rss_mb() -> float:
  """The process's peak resident memory since it started, in MB."""
  return memory.process_peak_rss_bytes() / 2**20


def warm_up(contenders: dict[Hashable, Callable[[int], object]], calls: int) -> tuple[dict, dict]:
  """Times each contender's first call (compile included), then runs `calls`
  more untimed; a contender that raises is removed from `contenders`, its
  error kept. Freed host memory is handed back after each (as loop.fit does
  when its loop ends). Returns (first-call seconds, errors), by key."""
  first, errors = {}, {}
  for key, run in list(contenders.items()):
    try:
      start = time.perf_counter()
      run(1)
      first[key] = time.perf_counter() - start
      if calls:
        run(calls)
      host_memory.release_freed_memory()
    except Exception as e:  # noqa: BLE001 -- report and go on without it
      message = str(e).strip()
      errors[key] = f"{type(e).__name__}: {message.splitlines()[0] if message else ''}"
      del contenders[key]
  return first, errors


def interleaved(
  contenders: dict[Hashable, Callable[[int], object]], rounds: int, calls: int
) -> Timings:
  """`rounds` rounds; in each, every contender runs `calls` calls in turn, the
  order rotating by one from round to round."""
  keys = list(contenders)
  seconds, faults, peak = {k: [] for k in keys}, {k: [] for k in keys}, {k: 0.0 for k in keys}
  covers = "each contender's own calls"
  for r in range(rounds):
    for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
      with memory.Peak(own_span=True) as span:  # outside the timed region: it reads /proc
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        contenders[key](calls)
        seconds[key].append((time.perf_counter() - start) / calls)
        faults[key].append(
          (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / calls
        )
      peak[key] = max(peak[key], span.peak_rss_bytes() / 2**20)
      if not span.resets:
        covers = "the process since it started (its high-water mark cannot be reset here)"
  return Timings(seconds=seconds, page_faults=faults, peak_rss_mb=peak, peak_rss_covers=covers)


# --- Matmul peaks ------------------------------------------------------------------


def matmul_peak(n: int, reps: int, *, torch=None, device=None) -> dict[str, float]:
  """fp32 n x n matmul GFLOP/s, median of reps after one warm-up call: jnp.dot,
  and torch.mm interleaved with it when torch is given."""
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  dot = jax.jit(jnp.dot)
  fns = {"jnp.dot": lambda: dot(ja, jb).block_until_ready()}
  if torch is not None:
    ta, tb = torch.as_tensor(a, device=device), torch.as_tensor(b, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fns["torch.mm"] = lambda: (torch.mm(ta, tb), sync())
  for fn in fns.values():
    fn()
  times = {k: [] for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - start)
  return {k: 2 * n**3 / float(np.median(v)) / 1e9 for k, v in times.items()}


# --- The machine ---------------------------------------------------------------------


def cpu_description() -> dict:
  """The CPU's model name and the vector extensions matmul speed depends on."""
  try:
    text = Path("/proc/cpuinfo").read_text()
  except OSError:
    return {"model": "unknown (no /proc/cpuinfo)", "vector_extensions": []}
  fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  flags = set((fields.get("flags") or fields.get("Features") or "").split())
  return {
    "model": fields.get("model name", fields.get("CPU part", "unknown")),
    "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
  }


def cores_available() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine() -> dict:
  """CPU, cores, JAX's backend and devices, the settings timings depend on."""
  import jax

  return {
    "cpu": cpu_description(),
    "cores_available": cores_available(),
    "versions": {"jax": jax.__version__},
    "jax_backend": jax.default_backend(),
    "jax_devices": [str(d) for d in jax.devices()],
    "host_memory": host_memory.status(),
    "xla_cpu_scheduler": host_memory.scheduler_status(),
    "env": {
      k: os.environ[k]
      for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
      if k in os.environ
    },
    "date": time.strftime("%Y-%m-%d"),
  }


def torch_machine(torch, transformers, device) -> dict:
  """What the torch side adds to `machine()`."""
  return {
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    "torch_device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else device),
    "torch_threads": torch.get_num_threads(),
    "torch_interop_threads": torch.get_num_interop_threads(),
  }


def import_torch(cache_dir: str, tool: str):
  """torch and transformers, or an exit naming how to install them. torch.compile
  caches its kernels on disk; a fresh cache makes its first step a cold
  compile, like w2s_jax's. Env settings win."""
  os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache_dir, "inductor"))
  os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(cache_dir, "triton"))
  try:
    import torch
    import transformers
  except ImportError as e:
    sys.exit(
      f"{tool} needs torch and transformers ({e}); they are not dependencies "
      f"of w2s_jax. Install them with: pip install torch==2.13.0 transformers"
    )
  return torch, transformers


def print_machine(env: dict, load_before) -> None:
  """The header every benchmark prints: load, CPU, cores, JAX's devices."""
  print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
  if env["jax_backend"] == "cpu" and load_before[0] > 0.25 * env["cores_available"]:
    print(
      f"WARNING: the machine is busy (1-min load {load_before[0]:.2f} on "
      f"{env['cores_available']} cores): timings are unreliable, torch's OpenMP "
      f"thread pool especially (every parallel op waits for its slowest thread)"
    )
  print(
    f"CPU: {env['cpu']['model']}; vector extensions: "
    f"{' '.join(env['cpu']['vector_extensions']) or 'none of ' + ' '.join(VECTOR_FLAGS)}"
  )
  print(
    f"jax {env['versions']['jax']} on {env['jax_backend']}: {', '.join(env['jax_devices'])} "
    f"(XLA:CPU threads = the {env['cores_available']} cores available); env "
    f"{env['env'] or '{}'}; freed host memory kept for reuse: {env['host_memory']}; "
    f"XLA:CPU scheduler: {env['xla_cpu_scheduler']}"
  )


def print_footer(load_before, wall_start: float) -> tuple[float, ...]:
  load_after = os.getloadavg()
  print(
    f"\nload average after: {' '.join(f'{x:.2f}' for x in load_after)}; peak RSS "
    f"{peak_rss_mb():.0f} MB; wall time {time.perf_counter() - wall_start:.0f}s"
  )
  return load_after


def write_record(path, record: dict) -> None:
  """The run's numbers as JSON, written atomically."""
  from w2s_jax.infra import files

  with files.atomic_write(path) as f:
    json.dump(record, f, indent=2, default=float)
  print(f"wrote {path}")
