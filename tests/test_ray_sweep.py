"""The Ray executor (w2s_jax/w2s/ray_executor.py) on a local Ray cluster of two
worker nodes: its rows are the local executor's, bit for bit; the driver alone
writes the sweep folder; a cell that raises is recorded and the others
finish; killing a worker node or the driver loses nothing (slow)."""

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from w2s_jax.infra import configs
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import engine, ray_executor
from w2s_jax.w2s.grid import Cell, RayOptions

ROOT = Path(__file__).resolve().parents[1]
AUDIT_HELPER = Path(__file__).resolve().parent / "write_audit"
TINY = "configs/sweep.py:tiny"


# Three of the tiny sweep's six cells: every stage kind (three pretrained
# sizes, two weak models, two ceilings, both losses) at half the compute.
CELLS = ("pico_micro_xent_4bb8570f", "pico_mini_logconf_e2ecdaef", "micro_mini_xent_c69331f5")


def _tiny():
  sweep = configs.load_sweep(str(ROOT / TINY))
  cells = tuple(c for c in sweep.cells if c.id in CELLS)
  assert [c.id for c in cells] == list(CELLS), "configs/sweep.py:tiny changed its cells"
  return dataclasses.replace(sweep, cells=cells)


def _cluster(audit_dir=None, node_tmp=(None, None)) -> Cluster:
  """A head node that runs no task (the driver's) and two worker nodes of
  one CPU each; with audit_dir, the workers record every file they write;
  node_tmp: each node's TMPDIR (its scratch and its tasks' log files)."""
  env = {}
  if audit_dir is not None:
    path = os.pathsep.join(filter(None, [str(AUDIT_HELPER), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "W2S_WRITE_AUDIT": str(audit_dir)}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # JAX's fork warning: Ray forks and execs
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [
      cluster.add_node(num_cpus=1, env_vars={**env, **({"TMPDIR": str(t)} if t else {})})
      for t in node_tmp
    ]
  cluster.wait_for_nodes()
  cluster.workers = workers
  return cluster


def _connect(cluster):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # JAX's fork warning: Ray forks and execs
    ray.init(address=cluster.address, log_to_driver=False)


def _rows(out: Path) -> str:
  return _same([json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()])


def _same(rows) -> str:
  """Rows as text, to compare every number bit for bit: NaN (a PGR undefined in a
  resample) equals NaN here, where it would not in a list comparison. Memory
  is left out: it is the process's that computed the cell, not a result."""
  memory = ("peak_rss_bytes", "steady_rss_bytes")
  return json.dumps([{k: v for k, v in r.items() if k not in memory} for r in rows], allow_nan=True)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
  """The tiny sweep under the local executor: its folder, cache and rows."""
  base = tmp_path_factory.mktemp("local")
  outcome = engine.run_sweep(
    _tiny(), out_dir=base / "sweep", cache_dir=base / "cache", progress=False
  )
  return base, outcome.rows


@pytest.fixture(scope="module")
def audited_cluster(tmp_path_factory):
  audit = tmp_path_factory.mktemp("audit")
  cluster = _cluster(audit)
  _connect(cluster)
  yield cluster, audit
  ray.shutdown()
  cluster.shutdown()


@pytest.mark.slow  # four minutes; Ray runs cells in the default suite through the failure tests
def test_rows_equal_the_local_executors_and_the_driver_alone_writes(
  local, audited_cluster, tmp_path
):
  _, audit = audited_cluster
  out, cache = tmp_path / "sweep", tmp_path / "cache"
  outcome = ray_executor.run_sweep(_tiny(), out_dir=out, cache_dir=cache, progress=True)
  assert not outcome.failed
  assert _same(outcome.rows) == _same(local[1])  # every number, bit for bit
  assert _rows(out) == _same(local[1])
  assert (out / "results.json").is_file()
  assert (
    json.loads((out / "results.json").read_text())["config"]
    == json.loads((local[0] / "sweep" / "results.json").read_text())["config"]
  )
  # Every stage ran as a task and left its log; each cell its record.
  logs = sorted(p.name for p in (out / "logs").iterdir())
  assert len([n for n in logs if n.startswith("cell-")]) == len(CELLS)
  assert {"pretrain0-pico.log", "pretrain0-weak-pico.log", "pretrain0-ceiling-mini.log"} <= set(
    logs
  )
  # The workers wrote only in their own scratch folders: never in the sweep
  # folder or the pretrained cache (which the driver wrote).
  written = [
    json.loads(line)["path"]
    for log in audit.glob("*.jsonl")
    for line in log.read_text().splitlines()
  ]
  scratch = [p for p in written if "w2s-jax-stage" in p]
  assert scratch, "the workers' write audit recorded nothing: the check would be vacuous"
  assert all(p.startswith(tempfile.gettempdir()) for p in scratch)
  for folder in (out, cache):
    inside = [p for p in written if Path(p).resolve().is_relative_to(folder.resolve())]
    assert inside == [], f"workers wrote in {folder}: {inside[:5]}"
  # A rerun finds every cell stored and submits nothing.
  again = ray_executor.run_sweep(_tiny(), out_dir=out, cache_dir=cache, progress=False)
  assert _same(again.rows) == _same(local[1])


def test_a_cell_that_raises_is_recorded_as_failed_and_the_others_finish(
  local, audited_cluster, tmp_path
):
  sweep = _tiny()
  bad = Cell("pico", "micro", finetune=OptimConfig(steps=20, batch_size=8, lr=1e30, head_lr=1e30))
  sweep = dataclasses.replace(sweep, cells=(*sweep.cells, bad))
  out = tmp_path / "sweep"
  # The pretrained models come from the local run's cache: the driver ships them.
  outcome = ray_executor.run_sweep(sweep, out_dir=out, cache_dir=local[0] / "cache", progress=False)
  assert list(outcome.failed) == [bad.id]
  assert "NaN or infinite" in outcome.failed[bad.id]
  assert _same(outcome.rows) == _same(local[1])  # the other cells, with the local numbers
  assert outcome.results is None and not (out / "results.json").exists()
  failed = json.loads((out / "cells" / bad.id / "failed.json").read_text())
  assert failed["error"] == outcome.failed[bad.id]
  assert "NonFiniteLossError" in (out / failed["log"]).read_text()  # the traceback
  # The sweep's report lists it beside the table of the others.
  spec = importlib.util.spec_from_file_location("sweep_report", ROOT / "tools" / "sweep_report.py")
  report = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(report)
  with contextlib.redirect_stdout(io.StringIO()) as printed:
    report.main([str(out), "--charts", str(tmp_path / "charts")])
  assert f"1 cell failed (rerun the sweep to retry them):\n  {bad.id}: {failed['error']}" in (
    printed.getvalue()
  )
  assert not (out / "logs" / "pretrain0-pico.log").exists()  # stored stages: no task


def test_the_cli_prints_the_failed_cells_and_exits_1(local, audited_cluster, tmp_path, capsys):
  from w2s_jax import cli

  args = ["sweep", "--config", str(ROOT / TINY), "--out", str(tmp_path / "s")]
  args += ["--cache", str(local[0] / "cache"), "--xla-cache", "", "--no-progress"]
  args += ["--executor", "ray", "--set", "base.finetune.lr=1e30", "--set", "base.seeds=0"]
  with pytest.raises(SystemExit) as exit_:
    cli.main(args)
  assert exit_.value.code == 1
  printed = capsys.readouterr().out
  assert "6 of 6 cells failed (rerun to retry them):" in printed
  assert "loss became NaN or infinite" in printed


def test_ray_options_are_checked_and_set_from_the_command_line():
  from w2s_jax import cli

  sweep = cli.load_config("sweep", str(ROOT / TINY), ["ray.gpus=1", "ray.max_retries=0"])
  assert (sweep.ray.cpus, sweep.ray.gpus, sweep.ray.max_retries) == (1.0, 1.0, 0)
  with pytest.raises(ValueError, match=r"RayOptions.cpus=-1.0: expected a number >= 0"):
    RayOptions(cpus=-1.0)
  with pytest.raises(ValueError, match="all 0"):
    RayOptions(cpus=0)
  with pytest.raises(ValueError, match=r"RayOptions.max_retries=-1: expected an int >= 0"):
    RayOptions(max_retries=-1)


def test_address_without_ray_is_an_error_before_compute(tmp_path):
  from w2s_jax import cli

  with pytest.raises(ValueError, match="--address 'auto': expected only with --executor ray"):
    cli.main(
      ["sweep", "--config", str(ROOT / TINY), "--out", str(tmp_path / "s"), "--address", "auto"]
    )
  assert not (tmp_path / "s").exists()


def test_the_local_executor_never_imports_ray(local, tmp_path):
  """Every module but the Ray executor imported, and a local sweep run (over
  the local run's finished folder: every cell read, the record and curves
  written), in a fresh process: Ray is never imported."""
  shutil.copytree(local[0], tmp_path / "run")
  code = f"""
import importlib, pkgutil, sys
import w2s_jax
from w2s_jax import cli
for m in pkgutil.walk_packages(w2s_jax.__path__, "w2s_jax."):
  if m.name not in ("w2s_jax.w2s.ray_executor", "w2s_jax.__main__"):
    importlib.import_module(m.name)
run = {str(tmp_path / "run")!r}
cli.main(["sweep", "--config", {str(ROOT / TINY)!r}, "--out", run + "/sweep", "--cache", run + "/cache",
          "--xla-cache", "", "--no-progress"])
assert "ray" not in sys.modules, "ray was imported"
"""
  done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "6 cells in" in done.stdout


# --- Faults (slow): a worker node killed mid-sweep; the driver killed, then rerun -----


def _driver(cluster, out: Path, cache: Path, log: Path) -> subprocess.Popen:
  cmd = [sys.executable, "-m", "w2s_jax", "sweep", "--config", str(ROOT / TINY)]
  cmd += ["--out", str(out), "--cache", str(cache), "--xla-cache", "", "--no-progress"]
  cmd += ["--executor", "ray", "--address", cluster.address]
  with open(log, "w") as f:
    return subprocess.Popen(
      cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
    )


def _wait_for_cells(out: Path, count: int, driver, timeout=600) -> int:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    done = len(list(out.glob("cells/*/results.json")))
    if done >= count:
      return done
    assert driver.poll() is None, f"the driver ended early (status {driver.returncode})"
    time.sleep(0.2)
  raise TimeoutError(f"{out}: fewer than {count} cells after {timeout} s")


def _started_not_finished(node_tmp: Path, out: Path) -> set[str]:
  """Stages a node has started (its task's log file) whose result the driver has not stored."""
  started = {p.name.split(".pid")[0] for p in node_tmp.glob("w2s-jax-logs/*/*.log")}
  return started - {p.stem for p in (out / "logs").glob("*.log")}


@pytest.mark.slow
def test_killing_a_worker_node_mid_sweep_loses_nothing(local, tmp_path):
  node_tmp = (tmp_path / "node-a", tmp_path / "node-b")
  for t in node_tmp:
    t.mkdir()
  cluster = _cluster(node_tmp=node_tmp)
  try:
    out = tmp_path / "sweep"
    driver = _driver(cluster, out, tmp_path / "cache", tmp_path / "driver.log")
    _wait_for_cells(out, 1, driver)
    deadline = time.monotonic() + 300  # until node a is running a stage
    while not (running := _started_not_finished(node_tmp[0], out)):
      assert time.monotonic() < deadline and driver.poll() is None, "node a ran nothing more"
      time.sleep(0.05)
    cluster.remove_node(cluster.workers[0], allow_graceful=False)
    assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-3000:]
  finally:
    cluster.shutdown()
  assert _rows(out) == _same(local[1])
  assert (out / "results.json").is_file()
  # What node a was computing when it died ran again, on node b.
  rerun_on_b = [s for s in running if list(node_tmp[1].glob(f"w2s-jax-logs/*/{s}.pid*.log"))]
  assert rerun_on_b, f"{running}: none ran again on node b"


@pytest.mark.slow
def test_killing_the_driver_and_rerunning_resumes_with_the_same_rows(local, tmp_path):
  cluster = _cluster()
  try:
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    driver = _driver(cluster, out, cache, tmp_path / "first.log")
    done = _wait_for_cells(out, 2, driver)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert done < 6, "every cell was done before the kill: the test would show nothing"
    stored = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cells/*/results.json")}
    rerun = _driver(cluster, out, cache, tmp_path / "rerun.log")
    assert rerun.wait(timeout=900) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
  finally:
    cluster.shutdown()
  assert _rows(out) == _same(local[1])
  # The rerun computed only what the first driver had not stored.
  for cell, mtime in stored.items():
    assert (out / "cells" / cell / "results.json").stat().st_mtime_ns == mtime
  assert (out / "results.json").is_file()
