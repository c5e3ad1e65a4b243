"""Does a long, mixed workload's memory grow? The same experiment, run again
and again in one process, each time into a fresh folder (pretraining
included), with the resident set printed after each run.

  python tools/memory_growth.py --config "configs/sst2_minilm.py:files=DIR,small" --runs 3
  W2S_JAX_KEEP_HOST_MEMORY=1 python tools/memory_growth.py ...   # with kept host memory

A process that keeps what earlier runs freed (a fragmented heap, caches that
hold every run's programs) grows from run to run; one that hands memory back
settles after the first run, which also pays for the compiled programs.
Prints one JSON line per run and a last one: {"rss_after": [...],
"peak": [...], "growth": last / first}. tests/test_host_memory.py asserts
growth <= 1.2 over three runs.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax.infra import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.keep_freed_memory(by_default=False)  # before JAX starts: as the experiments

from w2s_jax.infra import configs, memory  # noqa: E402
from w2s_jax.w2s import engine  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="an ExperimentConfig file[:arg]")
  parser.add_argument("--runs", type=int, default=3)
  args = parser.parse_args(argv)
  if args.runs < 2:
    parser.error(f"--runs={args.runs}: expected >= 2 (growth compares runs)")
  cfg = configs.load(args.config)
  rss, peaks = [], []
  with tempfile.TemporaryDirectory(prefix="w2s-jax-growth-") as tmp:
    for i in range(args.runs):
      started = time.perf_counter()
      with memory.Peak() as peak:
        engine.run_experiment(
          cfg, out_dir=Path(tmp) / f"run{i}", cache_dir=Path(tmp) / f"cache{i}", progress=False
        )
      rss.append(memory.rss_bytes())
      peaks.append(peak.peak_rss_bytes())
      print(
        json.dumps(
          {
            "run": i,
            "seconds": round(time.perf_counter() - started, 1),
            "rss_after": rss[-1],
            "process_peak": peaks[-1],
          }
        ),
        flush=True,
      )
  print(
    json.dumps(
      {
        "host_memory": host_memory.status(),
        "rss_after": rss,
        "peak": peaks,
        "growth": rss[-1] / rss[0],
      }
    )
  )


if __name__ == "__main__":
  main()
