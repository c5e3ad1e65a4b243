"""The package's layout holds: no private names used across modules, modules of
one job (no module over MAX_LINES), no re-export shims. The layers and cycles
are import-linter's contracts (pyproject.toml), run here and by .ci/run."""

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400
CODE = ("w2s_jax", "tools", "experiments", "configs", "tests")
# Project modules a file may import: the package, and the helpers beside tools and tests.
LOCAL = {"fakes", "harness", "bench_model", "common"}


def _files():
  return sorted(p for folder in CODE for p in (ROOT / folder).rglob("*.py"))


def _project(module: str | None) -> bool:
  return bool(module) and (
    module == "w2s_jax" or module.startswith("w2s_jax.") or module.split(".")[0] in LOCAL
  )


def _is_module(dotted: str) -> bool:
  base = ROOT / dotted.replace(".", "/")
  return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path) -> list[str]:
  """`from m import _x` and `m._x` for project modules m."""
  tree = ast.parse(path.read_text())
  modules, out = set(), []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and _project(node.module):
      for alias in node.names:
        if _private(alias.name):
          out.append(f"from {node.module} import {alias.name}")
        elif _is_module(f"{node.module}.{alias.name}"):
          modules.add(alias.asname or alias.name)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if _project(alias.name):
          modules.add(alias.asname or alias.name.split(".")[0])
  for node in ast.walk(tree):
    if (
      isinstance(node, ast.Attribute)
      and isinstance(node.value, ast.Name)
      and node.value.id in modules
      and _private(node.attr)
    ):
      out.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
  return out


def test_no_private_names_used_across_modules():
  found = {str(p.relative_to(ROOT)): uses for p in _files() if (uses := private_uses(p))}
  assert not found, found


def test_no_module_of_the_package_is_over_max_lines():
  long = {
    str(p.relative_to(ROOT)): n
    for p in (ROOT / "w2s_jax").rglob("*.py")
    if (n := len(p.read_text().splitlines())) > MAX_LINES
  }
  assert not long, f"split these by job: {long}"


def test_packages_hold_no_code_in_their_init():
  """No re-exports: a name is imported from the module that defines it."""
  for init in (ROOT / "w2s_jax").rglob("__init__.py"):
    assert not init.read_text().strip(), init


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_layers_and_cycles_hold():
  result = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  assert "0 broken" in result.stdout or "Contracts: 2 kept, 0 broken" in result.stdout


def test_the_checker_sees_a_private_import(tmp_path):
  """Not vacuous: a file importing a private name of the package is found."""
  bad = tmp_path / "bad.py"
  bad.write_text(
    "from w2s_jax.infra.files import _umask\nfrom w2s_jax.infra import files\nfiles._host_token()\n"
  )
  assert private_uses(bad) == [
    "from w2s_jax.infra.files import _umask",
    "files._host_token (line 3)",
  ]
