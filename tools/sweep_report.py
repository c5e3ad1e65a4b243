"""Summary table and charts (PNG and SVG) of a sweep.

python tools/sweep_report.py runs/sweeps/sweep [--charts DIR] [--split test|heldout]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax.w2s import engine, report, tables  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("sweep_dir", type=Path, help="a sweep directory (holding sweep.jsonl)")
  parser.add_argument(
    "--charts", type=Path, default=None, help="where to write charts (default <sweep_dir>/charts)"
  )
  parser.add_argument("--split", default="test", choices=("test", "heldout"))
  args = parser.parse_args(argv)
  rows = report.load_rows(args.sweep_dir / "sweep.jsonl")
  print(tables.sweep_table(rows, args.split))
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
