"""Python config files: `get_config(arg)` returns a config dataclass.

A spec is "path/to/config.py" or "path/to/config.py:arg", where arg is a
comma-separated list of flags and key=value pairs (as big_vision's
`parse_arg`), e.g. "configs/default.py:small,seeds=3". While a config file
runs, its folder is first on the import path, so it can `import common`
(the presets beside it, configs/common.py).
"""

import contextlib
import importlib.util
import sys
import types
from pathlib import Path


def parse_arg(arg: str | None, **defaults) -> types.SimpleNamespace:
  """ "small,seeds=3" -> namespace(small=True, seeds=3), typed by the defaults.

  A tuple-valued arg takes the items after it up to the next `key=value` or
  known flag: "names=neg,pos,small" -> names=("neg", "pos"), small=True.
  """
  values = dict(defaults)
  listing = None  # the tuple arg that plain items continue
  for item in filter(None, (arg or "").split(",")):
    key, eq, raw = item.partition("=")
    if not eq and key not in defaults and listing is not None:
      values[listing] += (item,)
      continue
    listing = None
    if key not in defaults:
      raise ValueError(f"config arg {key!r}: expected one of {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is tuple:
      if not eq or not raw:
        raise ValueError(f"config arg {key!r} needs values: {key}=a,b,...")
      values[key], listing = (raw,), key
    elif not eq:
      if kind is not bool:
        raise ValueError(f"config arg {key!r} needs a value: {key}=<{kind.__name__}>")
      values[key] = True
    elif kind is bool:
      if raw.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config arg {key}={raw!r}: expected true or false")
      values[key] = raw.lower() in ("true", "1")
    else:
      try:
        values[key] = kind(raw)
      except ValueError:
        raise ValueError(f"config arg {key}={raw!r}: expected a {kind.__name__}") from None
  return types.SimpleNamespace(**values)


@contextlib.contextmanager
def _importable_beside(folder: Path):
  """The config's own folder first on sys.path; its sibling modules (common.py)
  fresh from that folder, whichever folder a previous config came from."""
  folder = str(folder.resolve())
  siblings = {p.stem for p in Path(folder).glob("*.py")}
  stale = [
    name
    for name in siblings
    if name in sys.modules
    and not str(getattr(sys.modules[name], "__file__", "") or "").startswith(folder)
  ]
  for name in stale:
    del sys.modules[name]
  sys.path.insert(0, folder)
  try:
    yield
  finally:
    sys.path.remove(folder)


def _module(spec: str, function: str):
  path, _, arg = spec.partition(":")
  file = Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"w2s_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  with _importable_beside(file.parent):
    module_spec.loader.exec_module(module)
  if not hasattr(module, function):
    raise AttributeError(f"config file {path!r} defines no {function}(arg)")
  return getattr(module, function), arg or None


def load(spec: str, function: str = "get_config"):
  """function(arg) of "path.py[:arg]": get_config, or another the file defines."""
  make, arg = _module(spec, function)
  return make(arg)


def load_sweep(spec: str):
  """sweep(arg) of "path.py[:arg]": a SweepConfig."""
  sweep, arg = _module(spec, "sweep")
  return sweep(arg)


def use_compilation_cache(path) -> None:
  """Keep compiled XLA programs on disk, so a rerun (or a resumed sweep) skips
  most compilation. Programs are keyed by their HLO, flags and jax version."""
  import jax

  jax.config.update("jax_compilation_cache_dir", str(Path(path).absolute()))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def add_run_args(parser) -> None:
  """The flags every experiment entry point shares."""
  parser.add_argument("--cache", default="runs/cache", help="pretrained-model cache directory")
  parser.add_argument(
    "--xla-cache", default="runs/cache/xla", help="persistent compilation cache ('' to disable)"
  )
  parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def start_run(args) -> None:
  """What every entry point does with those flags before any work."""
  for flag in ("cache", "out"):
    value = getattr(args, flag, None)
    if value is not None and not str(value).strip():
      raise ValueError(
        f"--{flag} {value!r}: expected a folder; an empty path would fill the working folder"
        + (" (the pretrained-model cache cannot be turned off)" if flag == "cache" else "")
      )
  if args.xla_cache:
    use_compilation_cache(args.xla_cache)
