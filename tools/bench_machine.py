"""The machine side of tools/bench_torch.py: what the CPU is, both libraries'
threads and matmul peaks, and the header that prints them, so a ratio can be
explained across machines."""

import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def measure_peak(torch, device, n: int, reps: int) -> dict:
  """fp32 n x n matmul GFLOP/s, jnp.dot and torch.mm interleaved; median of reps."""
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  ta, tb = torch.as_tensor(a, device=device), torch.as_tensor(b, device=device)
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  fns = {"jnp.dot": lambda: jnp.dot(ja, jb).block_until_ready(),
         "torch.mm": lambda: (torch.mm(ta, tb), sync())}
  for fn in fns.values():
    fn()
  times = {k: [] for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - start)
  return {k: 2 * n ** 3 / float(np.median(v)) / 1e9 for k, v in times.items()}



_VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile",
                 "amx_bf16", "asimd", "sve")


def cpu_description() -> dict:
  """The CPU's model name and the vector extensions matmul speed depends on."""
  try:
    text = Path("/proc/cpuinfo").read_text()
  except OSError:
    return {"model": "unknown (no /proc/cpuinfo)", "vector_extensions": []}
  fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  flags = set((fields.get("flags") or fields.get("Features") or "").split())
  return {"model": fields.get("model name", fields.get("CPU part", "unknown")),
          "vector_extensions": [f for f in _VECTOR_FLAGS if f in flags]}


def environment(torch, transformers, device, args) -> dict:
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {
      "cpu": cpu_description(),
      "versions": {"jax": jax.__version__, "torch": torch.__version__,
                   "transformers": transformers.__version__},
      "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
      "torch_device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else device),
      "torch_threads": torch.get_num_threads(),
      "torch_interop_threads": torch.get_num_interop_threads(),
      "cores_available": cores,
      "torch_compile_cache": os.environ["TORCHINDUCTOR_CACHE_DIR"],
      "env": {k: os.environ[k] for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
              if k in os.environ},
      "fp32_matmuls": "tf32 allowed" if args.tf32 else "strict fp32 (highest precision)"}


def print_header(args, env, load_before, device):
  print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
  if device.type == "cpu" and load_before[0] > 0.25 * env["cores_available"]:
    print(f"WARNING: the machine is busy (1-min load {load_before[0]:.2f} on "
          f"{env['cores_available']} cores): timings are unreliable, torch's OpenMP "
          f"thread pool especially (every parallel op waits for its slowest thread)")
  print(f"CPU: {env['cpu']['model']}; vector extensions: "
        f"{' '.join(env['cpu']['vector_extensions']) or 'none of ' + ' '.join(_VECTOR_FLAGS)}")
  print(f"jax {env['versions']['jax']} on {env['jax_backend']}: {', '.join(env['jax_devices'])} "
        f"(1-device mesh; XLA:CPU threads = the {env['cores_available']} cores available)")
  print(f"torch {env['versions']['torch']}, transformers {env['versions']['transformers']} "
        f"on {env['torch_device']}: {env['torch_threads']} intra-op / "
        f"{env['torch_interop_threads']} inter-op threads; env {env['env'] or '{}'}; "
        f"torch.compile cache {env['torch_compile_cache']}")
  shape = f" ({args.shape})" if args.shape else ""
  print(f"model: GPT-2 shape{shape}, {args.layers} layers, width {args.width}, {args.heads} heads, "
        f"seq {args.seq}, vocab {args.vocab}; train batch {args.batch}, inference batch "
        f"{args.infer_batch}; {'bf16 compute, fp32 weights' if args.bf16 else 'fp32'} "
        f"({env['fp32_matmuls']}); lr {args.lr}, weight decay 0.01")
  print(f"freed host memory kept for reuse (w2s_jax/host_memory.py, both libraries): "
        f"{env['host_memory']}")
  print("w2s_jax train step includes its clip-by-global-norm (1.0), warmup-cosine schedule and "
        "NaN guard; torch: plain AdamW, constant lr, no clipping")
