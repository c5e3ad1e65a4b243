"""Command-line overrides of frozen config dataclasses, and their type check.

`--set finetune.lr=1e-4 --set seeds=0,1,2 --set losses.1.aux_coef=0.3`
reaches any field of any nested dataclass (and an element of a tuple by its
index). A value is read as the field's annotated type: bool (true/false/1/0),
int, float, str, None ("none", where the field allows it), a tuple
(comma-separated items, or a JSON list), or, for a field of a type that
knows how to read itself from a string (a class method `from_string`, as the
losses have), that. The config is rebuilt with dataclasses.replace, so each
dataclass's own checks run on the new value.

A wrong path or a value that does not read as the field's type is a
ValueError naming the path, the value and the type expected, before any
compute. `check_types` walks a whole config and names the first field whose
value is not of its annotated type.
"""

import dataclasses
import json
import types
import typing
from collections.abc import Sequence

NONE_WORDS = ("none", "null")


class OverrideError(ValueError):
  pass


def _type_name(t) -> str:
  """int, str | None, tuple[int, ...], tuple[Loss, ...]: as the annotation reads."""
  if t is type(None):
    return "None"
  if t is Ellipsis:
    return "..."
  members = _union_members(t)
  if len(members) > 1:
    return " | ".join(_type_name(m) for m in members)
  origin = typing.get_origin(t)
  if origin is not None:
    return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(t))}]"
  return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def _hints(cls) -> dict:
  return typing.get_type_hints(cls)


def _union_members(t) -> tuple:
  if typing.get_origin(t) in (typing.Union, types.UnionType):
    return typing.get_args(t)
  return (t,)


def parse_value(raw: str, t, path: str):
  """raw read as type t; an OverrideError naming the path otherwise."""
  members = _union_members(t)
  if raw.strip().lower() in NONE_WORDS and type(None) in members:
    return None
  errors = []
  for member in members:
    if member is type(None):
      continue
    try:
      return _parse_one(raw, member, path)
    except (ValueError, TypeError) as e:
      errors.append(str(e))
  raise OverrideError(
    f"--set {path}={raw!r}: expected {_type_name(t)}"
    + (f" ({'; '.join(errors)})" if errors else "")
  )


def _parse_one(raw: str, t, path: str):
  origin = typing.get_origin(t)
  if t is bool:
    if raw.lower() not in ("true", "false", "1", "0"):
      raise ValueError("not true or false")
    return raw.lower() in ("true", "1")
  if t is int:
    return int(raw)
  if t is float:
    return float(raw)
  if t is str:
    return raw
  if origin is tuple:
    args = typing.get_args(t)
    items = _items(raw)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_coerce(item, args[0], f"{path}[{i}]") for i, item in enumerate(items))
    if len(items) != len(args):
      raise ValueError(f"{len(items)} items, expected {len(args)}")
    return tuple(_coerce(item, a, f"{path}[{i}]") for i, (item, a) in enumerate(zip(items, args)))
  if isinstance(t, type) and hasattr(t, "from_string"):
    return t.from_string(raw)
  if isinstance(t, type) and dataclasses.is_dataclass(t):
    raise ValueError(
      f"a whole {t.__name__} cannot be read from a string: set its fields ({path}.<field>=...)"
    )
  raise ValueError(f"{_type_name(t)} cannot be read from the command line")


def _items(raw: str) -> list:
  text = raw.strip()
  if text.startswith("["):
    value = json.loads(text)
    if not isinstance(value, list):
      raise ValueError("expected a JSON list")
    return value
  return [] if not text else [part.strip() for part in text.split(",")]


def _coerce(item, t, path: str):
  """A tuple item: a string from a comma list, or a value from a JSON list."""
  if isinstance(item, str):
    return parse_value(item, t, path)
  if typing.get_origin(t) is tuple and isinstance(item, list):
    return parse_value(json.dumps(item), t, path)
  if not _is_instance(item, t):
    raise ValueError(f"{path}: {item!r} is not a {_type_name(t)}")
  return item


def _is_instance(value, t) -> bool:
  if t is typing.Any:
    return True
  members = _union_members(t)
  if len(members) > 1:
    return any(_is_instance(value, m) for m in members)
  if t is type(None):
    return value is None
  if t is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if t is int:
    return isinstance(value, int) and not isinstance(value, bool)
  origin = typing.get_origin(t)
  if origin is tuple:
    if not isinstance(value, tuple):
      return False
    args = typing.get_args(t)
    if len(args) == 2 and args[1] is Ellipsis:
      return all(_is_instance(v, args[0]) for v in value)
    return len(args) == len(value) and all(_is_instance(v, a) for v, a in zip(value, args))
  if origin is not None:
    return isinstance(value, origin)
  return isinstance(value, t) if isinstance(t, type) else True


def set_path(config, path: str, raw: str):
  """A copy of `config` with the field at the dotted `path` read from `raw`."""
  parts = path.split(".")
  if not all(parts):
    raise OverrideError(f"--set {path}={raw!r}: expected a dotted path like finetune.lr")
  return _set(config, parts, raw, path, type(config).__name__)


def _set(node, parts, raw, path, where):
  head, rest = parts[0], parts[1:]
  if isinstance(node, tuple):
    if not head.isdigit() or int(head) >= len(node):
      raise OverrideError(
        f"--set {path}={raw!r}: {where} has {len(node)} items; expected an "
        f"index in [0, {len(node)}) at {head!r}"
      )
    i = int(head)
    if not rest:
      raise OverrideError(f"--set {path}={raw!r}: set a field of {where}[{i}] or the whole tuple")
    return node[:i] + (_set(node[i], rest, raw, path, f"{where}[{i}]"),) + node[i + 1 :]
  if not dataclasses.is_dataclass(node):
    raise OverrideError(f"--set {path}={raw!r}: {where} is {node!r}, which has no field {head!r}")
  fields = {f.name: f for f in dataclasses.fields(node) if f.init}
  if head not in fields:
    raise OverrideError(
      f"--set {path}={raw!r}: {type(node).__name__} has no field {head!r}; "
      f"expected one of {sorted(fields)}"
    )
  hint = _hints(type(node))[head]
  if rest:
    child = getattr(node, head)
    if child is None:
      raise OverrideError(
        f"--set {path}={raw!r}: {where}.{head} is None, so it has no {rest[0]!r} to set"
      )
    value = _set(child, rest, raw, path, f"{where}.{head}")
  else:
    value = parse_value(raw, hint, path)
  try:
    return dataclasses.replace(node, **{head: value})
  except (ValueError, TypeError) as e:
    raise OverrideError(f"--set {path}={raw!r}: {e}") from None


def apply(config, assignments: Sequence[str]):
  """The --set overrides of the command line.

  Args:
    config: a frozen config dataclass.
    assignments: "path=value" strings, applied in turn (later ones win).

  Returns:
    A new config, type-checked whole (check_types).

  Raises:
    OverrideError: a path, value or type that does not fit, named.
  """
  for assignment in assignments:
    path, eq, raw = assignment.partition("=")
    if not eq:
      raise OverrideError(f"--set {assignment!r}: expected path=value, e.g. finetune.lr=1e-4")
    config = set_path(config, path.strip(), raw)
  check_types(config)
  return config


def check_types(config, where: str | None = None) -> None:
  """Every field of every nested dataclass holds a value of its annotated type:
  a TypeError naming the first that does not, its value and the type."""
  where = where or type(config).__name__
  if isinstance(config, tuple):
    for i, item in enumerate(config):
      check_types(item, f"{where}[{i}]")
    return
  if not dataclasses.is_dataclass(config):
    return
  hints = _hints(type(config))
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if f.name in hints and not _is_instance(value, hints[f.name]):
      raise TypeError(f"{where}.{f.name}={value!r}: expected {_type_name(hints[f.name])}")
    check_types(value, f"{where}.{f.name}")
