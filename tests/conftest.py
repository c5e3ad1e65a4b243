"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
_existing = os.environ.get("XLA_FLAGS", "")
if _FLAG not in _existing:
  os.environ["XLA_FLAGS"] = (_existing + " " + _FLAG).strip()

# CPU tests: with libtpu installed (the `tpu` extra, for the planner), JAX would
# otherwise probe for a TPU in every process and log its absence. The planner's
# tests compile for TPU topologies through libtpu all the same.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu lets one process per host compile unless told otherwise; two xdist
# workers may both compile for a topology (test_plans, memory_lora --quick).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# As every entry point does before JAX starts: XLA:CPU's memory-lean scheduler
# (and kept host memory only if W2S_JAX_KEEP_HOST_MEMORY=1), so the tests
# compile what users run.
from w2s_jax.infra import host_memory  # noqa: E402

host_memory.keep_freed_memory(by_default=False)

import atexit  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# configs/common.py, the configs' presets, as `import common` (as config files import it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from w2s_jax.infra import sharding  # noqa: E402

# Speed only: programs compiled twice in one session (e.g. the same train step in the
# two pipeline runs) are compiled once. One fresh directory per session, shared by
# its xdist workers (JAX writes cache entries atomically), keeps runs hermetic.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _RUN:
  _COMPILE_CACHE = os.path.join(tempfile.gettempdir(), f"w2s-jax-test-xla-cache-{_RUN}")
  os.makedirs(_COMPILE_CACHE, exist_ok=True)
else:
  _COMPILE_CACHE = tempfile.mkdtemp(prefix="w2s-jax-test-xla-cache-")
if os.environ.get("PYTEST_XDIST_WORKER") in (None, "gw0"):  # one worker cleans up
  atexit.register(shutil.rmtree, _COMPILE_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _COMPILE_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def mesh4():
  assert len(jax.devices()) >= 4, f"expected 4 simulated devices, got {jax.devices()}"
  return sharding.make_mesh(4)


@pytest.fixture(scope="session")
def mesh1():
  return sharding.make_mesh(1)


# Under `--dist loadfile` each worker takes the next file in collection order; a
# file of minutes collected last runs alone at the end. Long files go first
# (stable sort: the rest keep their order). Where a file runs, not what it tests.
LONG_FILES_FIRST = ("test_ray_sweep.py",)


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.path.name not in LONG_FILES_FIRST)
