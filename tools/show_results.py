"""Prints the summary of one or more results.json files.

  python tools/show_results.py runs/default/results.json [more results.json ...]
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax.pipeline import format_results  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("results", nargs="+", type=Path, help="results.json files")
  args = parser.parse_args(argv)
  for path in args.results:
    if not path.is_file():
      parser.error(f"results file {str(path)!r} does not exist")
    print(f"== {path}")
    print(format_results(json.loads(path.read_text())))


if __name__ == "__main__":
  main()
