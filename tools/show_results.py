"""Prints the summary of one or more results.json files (a run, a sweep, a
cascade or a pool-curation run: whichever the file holds).

  python tools/show_results.py runs/default/results.json [more results.json ...]
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax.cascade import summary as cascade_summary  # noqa: E402
from w2s_jax.w2s import pool_curation, records, tables  # noqa: E402


def format_any(results: dict, path: Path) -> str:
  if results.get("schema") not in records.READABLE:
    raise ValueError(
      f"{path}: results of schema {results.get('schema')!r}, expected one of "
      f"{records.READABLE} (written by an older w2s_jax: rerun it, or read the "
      "JSON itself)"
    )
  if results.get("kind") == "cascade":
    return cascade_summary.format_results(results)
  if "removal" in results:
    return pool_curation.format_report(results)
  return tables.format_results(results)


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("results", nargs="+", type=Path, help="results.json files")
  args = parser.parse_args(argv)
  for path in args.results:
    if not path.is_file():
      parser.error(f"results file {str(path)!r} does not exist")
    try:
      results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      parser.error(f"results file {str(path)!r} is not JSON ({e})")
    print(f"== {path}")
    try:
      print(format_any(results, path))
    except ValueError as e:
      parser.error(str(e))


if __name__ == "__main__":
  main()
