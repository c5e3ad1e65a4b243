"""Summary table and charts (PNG and SVG) of a sweep; of several, the leaderboard of their methods.

python tools/sweep_report.py runs/sweeps/sweep [--charts DIR] [--split test|heldout]
python tools/sweep_report.py runs/sweeps/methods runs/sweeps/methods-shifted   # the leaderboard
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax.w2s import engine, report, sweep_tables  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument(
    "sweep_dirs", type=Path, nargs="+", help="sweep directories (each holding sweep.jsonl)"
  )
  parser.add_argument(
    "--charts", type=Path, default=None, help="where to write charts (default <sweep_dir>/charts)"
  )
  parser.add_argument("--split", default="test", choices=("test", "heldout"))
  args = parser.parse_args(argv)
  if len(args.sweep_dirs) > 1:  # one leaderboard of the methods over every sweep (setting)
    settings = {d.name: report.load_rows(d / "sweep.jsonl") for d in args.sweep_dirs}
    print(sweep_tables.leaderboard(settings, args.split))
    entries = sweep_tables.leaderboard_entries(settings, args.split)
    paths = report.leaderboard_chart(entries, args.charts or args.sweep_dirs[0] / "charts")
    print(f"\nwrote {len(paths)} chart files to {paths[0].parent}")
    return
  args.sweep_dir = args.sweep_dirs[0]
  rows = report.load_rows(args.sweep_dir / "sweep.jsonl")
  print(sweep_tables.sweep_table(rows, args.split))
  paths = report.all_charts(rows, args.charts or args.sweep_dir / "charts", args.split)
  print(f"\nwrote {len(paths)} chart files to {paths[0].parent}")
  failed = engine.failed_cells(args.sweep_dir)
  if failed:
    print(f"\n{len(failed)} cell{'s' * (len(failed) != 1)} failed (rerun the sweep to retry them):")
    for cell, record in failed.items():
      print(
        f"  {cell}: {record['error']}" + (f" (log: {record['log']})" if "log" in record else "")
      )


if __name__ == "__main__":
  main()
