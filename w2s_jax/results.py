"""Atomic result files, package versions, and the summary table."""

import contextlib
import importlib.metadata
import json
import os
import platform
import tempfile
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
            "tensorflow-datasets")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
  """Yields a file that replaces `path` only once closed, fsynced and renamed:
  a reader, or a run killed at any moment, sees the old file or the new one,
  never a partial one."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
  with atomic_write(path) as f:
    json.dump(obj, f, indent=2, allow_nan=True)
    f.write("\n")


def package_versions() -> dict:
  versions = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def _fmt(stat: dict, digits: int = 3) -> str:
  return f"{stat['mean']:.{digits}f} [{stat['lo']:.{digits}f}, {stat['hi']:.{digits}f}]"


def summary_table(rows: list[dict]) -> str:
  """rows: {"name", "weak", "w2s", "ceiling", "pgr"} with mean/lo/hi stats."""
  header = ("method", "Pweak", "Pweak->strong", "Pceiling", "PGR")
  lines = [[r["name"], _fmt(r["weak"]), _fmt(r["w2s"]), _fmt(r["ceiling"]), _fmt(r["pgr"], 2)]
           for r in rows]
  widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
  fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
  return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines])
