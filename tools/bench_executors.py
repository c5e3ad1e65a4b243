"""The sweep's two executors side by side: wall time and memory of one whole sweep.

  python tools/bench_executors.py                  # configs/sweep.py, 2 rounds: ~40 min on 2 cores
  python tools/bench_executors.py --quick          # configs/sweep.py:tiny, shortened, 1 round

Each round runs the sweep once per executor (`sweep --executor local`, then
`--executor ray`, the order rotating from round to round), each in its own
process from an empty run folder, an empty pretrained cache and no
compilation cache, so both pay for the whole sweep, pretraining included.
Ray runs on this machine alone (the driver's `ray.init()`: one task per core
at SweepConfig.ray's default of 1 CPU a task).

Reported: each executor's median wall seconds and ray/local (the median of
per-round ratios beside the ratio of medians); the peak resident memory of
each run's whole process tree (the driver and, under Ray, its daemons and
workers; sampled every 0.5 s from /proc); whether every run wrote the same
rows; the machine (CPU, cores, matmul peak).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import harness

ROOT = Path(__file__).resolve().parents[1]
EXECUTORS = ("local", "ray")
QUICK_SETS = ("base.seeds=0", "base.pretrain.steps=20", "base.finetune.steps=5")


def tree_rss_mb(pid: int) -> float:
  """Resident memory of process `pid` and all its descendants, in MB (Linux /proc)."""
  parent, rss = {}, {}
  for entry in Path("/proc").iterdir():
    if not entry.name.isdigit():
      continue
    try:
      stat = (entry / "stat").read_text()
      status = (entry / "status").read_text()
    except OSError:  # ended meanwhile
      continue
    parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    kb = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
    rss[int(entry.name)] = int(kb[0]) if kb else 0
  tree, frontier = {pid}, [pid]
  while frontier:
    p = frontier.pop()
    children = [c for c, pp in parent.items() if pp == p and c not in tree]
    tree.update(children)
    frontier.extend(children)
  return sum(rss.get(p, 0) for p in tree) / 1024


def run_once(executor: str, config: str, sets, folder: Path) -> dict:
  """One whole sweep in a fresh process: its seconds, peak tree memory and rows."""
  cmd = [sys.executable, "-m", "w2s_jax", "sweep", "--config", config]
  cmd += ["--out", str(folder / "sweep"), "--cache", str(folder / "cache"), "--xla-cache", ""]
  cmd += ["--no-progress", "--executor", executor]
  for assignment in sets:
    cmd += ["--set", assignment]
  log = folder / "log.txt"
  folder.mkdir(parents=True)
  peak = [0.0]
  with open(log, "w") as out:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def sample():
      while proc.poll() is None:
        peak[0] = max(peak[0], tree_rss_mb(proc.pid))
        time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    seconds = time.perf_counter() - start
    sampler.join()
  if code != 0:
    raise RuntimeError(f"{' '.join(cmd)}: exit status {code}\n{log.read_text()[-3000:]}")
  return {
    "seconds": seconds,
    "peak_tree_rss_mb": peak[0],
    "rows": (folder / "sweep" / "sweep.jsonl").read_text(),
  }


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--config", default=str(harness.CONFIGS / "sweep.py"), help="a sweep config[:arg]")
  p.add_argument(
    "--set", action="append", default=[], metavar="PATH=VALUE", help="passed to both runs"
  )
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--quick", action="store_true", help="configs/sweep.py:tiny, shortened, 1 round")
  p.add_argument("--json", help="write the numbers here")
  args = p.parse_args(argv)
  config, sets, rounds = args.config, list(args.set), args.rounds
  if args.quick:
    config, sets, rounds = str(harness.CONFIGS / "sweep.py:tiny"), [*QUICK_SETS, *sets], 1
  if rounds < 1:
    p.error(f"--rounds {rounds}: expected at least 1")
  wall_start, load_before = time.perf_counter(), os.getloadavg()
  env = harness.machine()
  peak = harness.matmul_peak(1024, 5)
  harness.print_machine(env, load_before)
  print(f"matmul peak (fp32 1024^2): jnp.dot {peak['jnp.dot']:.0f} GFLOP/s")
  print(f"sweep: {config} {' '.join('--set ' + s for s in sets)}; {rounds} round(s)\n")
  runs = {k: [] for k in EXECUTORS}
  with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
    for r in range(rounds):
      for executor in EXECUTORS[r % 2 :] + EXECUTORS[: r % 2]:
        folder = Path(tmp) / f"{executor}{r}"
        result = run_once(executor, config, sets, folder)
        shutil.rmtree(folder)
        runs[executor].append(result)
        print(
          f"round {r}: {executor:5s} {result['seconds']:7.1f} s, peak {result['peak_tree_rss_mb']:.0f} MB"
        )
  seconds = {k: [r["seconds"] for r in v] for k, v in runs.items()}
  ratios = np.asarray(seconds["ray"]) / np.asarray(seconds["local"])
  same = len({r["rows"] for v in runs.values() for r in v}) == 1
  print(f"\n{'executor':8s}  {'median s':>8s}  {'rounds (s)':24s}  peak RSS, process tree")
  for k in EXECUTORS:
    rounds_text = ", ".join(f"{s:.1f}" for s in seconds[k])
    print(
      f"{k:8s}  {np.median(seconds[k]):8.1f}  {rounds_text:24s}  "
      f"{max(r['peak_tree_rss_mb'] for r in runs[k]) / 1024:.2f} GB"
    )
  of_medians = np.median(seconds["ray"]) / np.median(seconds["local"])
  print(
    f"ray / local: {np.median(ratios):.2f} (median of per-round ratios), {of_medians:.2f} (of medians)"
  )
  print(f"rows: {'identical in every run' if same else 'DIFFER between runs'}")
  harness.print_footer(load_before, wall_start)
  if args.json:
    harness.write_record(
      args.json,
      {
        "machine": env,
        "matmul_peak_gflops": peak,
        "config": config,
        "sets": sets,
        "seconds": seconds,
        "peak_tree_rss_mb": {k: [r["peak_tree_rss_mb"] for r in v] for k, v in runs.items()},
        "ray_over_local": {
          "median_of_round_ratios": float(np.median(ratios)),
          "of_medians": float(of_medians),
        },
        "rows_identical": same,
      },
    )
  if not same:
    raise SystemExit("the executors' rows differ")


if __name__ == "__main__":
  main()
