"""A sweep's stages as Ray tasks: many machines, one sweep folder, written by the driver alone.

  python -m w2s_jax sweep --config configs/sweep.py --executor ray [--address auto|HOST:PORT]

Imported only for `--executor ray` (the local executor never imports Ray).
Every stage of stage_graph.py (a pretrained model, a weak model's
supervision, a ceiling, a cell) is one Ray task asking for
SweepConfig.ray's resources. A task's inputs are the object refs of the
stages it reads: Ray starts it when they are ready and moves their files
to it.

Stage outputs move through Ray's object store, not a shared path: they are
the stage's own files as bytes (stage_graph.Files). Ray already ships
objects between nodes, spills them to local disk when memory runs short,
and recomputes one lost with its node from its lineage; a shared path
would need a file system every node mounts, which is what object stores
such as GCS and S3 do not give with working locks. The testbed's stages
are kilobytes to megabytes; a real model's pretrained params travel once
per task that reads them (docs/sweeps.md says when a shared cache is the
better choice).

The driver alone writes the sweep folder and the pretrained cache: every
stage a task returns is placed atomically and read back through the
driver's own store (checksums and identity) before a cell's row is
written, so no lock is needed across machines, and a killed driver resumes
from what it stored, as a local sweep does.

Faults: a task whose worker or node dies is retried by Ray
(RayOptions.max_retries). A stage that raises is not retried (a bad config
or a NaN raises again): the cells that read it are recorded as failed
(cells/<id>/failed.json and the outcome's `failed`), and every other cell
finishes. Each task's output goes to a log file on its worker
(<tmp>/w2s-jax-logs/) and, through the driver, to the sweep's logs/<stage>.log.
"""

import contextlib
import io
import json
import os
import socket
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import ray
from tqdm.auto import tqdm

from w2s_jax.infra import interrupts
from w2s_jax.infra.files import atomic_write, package_versions, write_json_atomic
from w2s_jax.infra.fingerprint import digest
from w2s_jax.w2s import engine as engine_lib
from w2s_jax.w2s import stage_graph
from w2s_jax.w2s.grid import SweepConfig


def _log_path(sweep: SweepConfig, stage) -> Path:
  folder = Path(tempfile.gettempdir()) / "w2s-jax-logs" / digest(sweep.base, 12)
  folder.mkdir(parents=True, exist_ok=True)
  return folder / f"{stage.name}.pid{os.getpid()}.log"


def run_stage(sweep: SweepConfig, stage, tracker, *inputs) -> dict:
  """A Ray task: computes one stage on a worker (stage_graph.compute).

  Returns:
    {"files": stage_graph.Files or None, "error": None or the error's text,
    "log": what the stage printed, "host", "pid", "seconds", "versions"}.
    An input that failed fails this stage too, naming it, without compute.
  """
  started = time.perf_counter()
  failed = [r for r in inputs if r["error"] is not None]
  if failed:  # no log of its own: the failed input's says why
    return {**_stored(None), "error": f"an input failed: {failed[0]['error']}"}
  result = {"host": socket.gethostname(), "pid": os.getpid(), "versions": package_versions()}
  if tracker is not None:
    tracker.start.remote(stage.name, result["host"])
  log_path, buffer = _log_path(sweep, stage), io.StringIO()
  files, error = None, None
  with open(log_path, "w") as log_file:

    class Tee(io.TextIOBase):
      def write(self, text):
        log_file.write(text)
        log_file.flush()
        return buffer.write(text)

    tee = Tee()
    with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(tee):
      print(f"{stage.name} on {result['host']} (pid {result['pid']})")
      try:
        with warnings.catch_warnings():
          warnings.simplefilter("default")
          files = stage_graph.compute(sweep, stage, [r["files"] for r in inputs])
      except Exception as err:  # recorded, not retried: it would raise again
        traceback.print_exc()
        error = f"{stage.name}: {type(err).__name__}: {err}"
  return {
    **result,
    "files": files,
    "error": error,
    "log": buffer.getvalue(),
    "seconds": time.perf_counter() - started,
  }


@ray.remote(num_cpus=0)
class Tracker:
  """Which stages have started, and where: the progress line's `running`."""

  def __init__(self):
    self.started = {}

  def start(self, name: str, host: str) -> None:
    self.started[name] = host

  def running(self) -> dict:
    return dict(self.started)


def _stored(files) -> dict:
  """A result not computed by a task: a stage the driver had stored."""
  return {
    "files": files,
    "error": None,
    "log": "",
    "host": "",
    "pid": 0,
    "seconds": 0.0,
    "versions": {},
  }


def _task(options):
  """run_stage as a Ray task with the sweep's resource requests."""
  accelerated = options.gpus > 0 or options.tpus > 0
  # A JAX process keeps the accelerator it first saw, and Ray may give a
  # reused worker another one: one task per process where tasks hold accelerators.
  remote = ray.remote(max_calls=1 if accelerated else 0)(run_stage)
  return remote.options(
    num_cpus=options.cpus,
    num_gpus=options.gpus,
    resources={"TPU": options.tpus} if options.tpus else {},
    max_retries=options.max_retries,
    retry_exceptions=False,
  )


def run_sweep(
  sweep: SweepConfig,
  *,
  out_dir,
  cache_dir=None,
  progress: bool = True,
  config=None,
  overwrite: bool = False,
  address: str | None = None,
) -> engine_lib.Outcome:
  """Runs every unfinished cell of a sweep as Ray tasks (the module docstring).

  Args:
    sweep, out_dir, cache_dir, progress, config, overwrite: engine.run_sweep's.
    address: the Ray cluster to join ("auto": the one `ray start` runs on
      this host; "HOST:PORT": its head); None starts a Ray instance on this
      machine alone.

  Returns:
    engine.run_sweep's Outcome; with failed cells, `failed` names each with
    its error, and results.json is not written (the sweep is not complete).
  """
  started_here = not ray.is_initialized()
  if started_here:
    # Workers' prints go to their own log files, not this terminal.
    with warnings.catch_warnings():
      # JAX warns of any fork once it runs threads; Ray's fork is its
      # subprocesses' fork-and-exec, which runs no code of this process.
      warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
      ray.init(address=address, log_to_driver=False, configure_logging=False)
  try:
    opened = engine_lib.open_sweep(
      sweep, out_dir=out_dir, cache_dir=cache_dir, progress=progress, overwrite=overwrite
    )
    failed = _drive(opened, progress=progress) if opened.todo else {}
  finally:
    if started_here:
      ray.shutdown()
  return opened.close(config=config, failed=failed)


def _drive(opened: engine_lib.OpenSweep, *, progress: bool) -> dict:
  """Submits every stage the unfinished cells need, inputs first, and stores
  each result as it arrives. Returns {cell id: error} of the failed cells."""
  engine, sweep = opened.engine, opened.sweep
  graph = stage_graph.needed(engine, opened.todo)
  task = _task(sweep.ray)
  tracker = Tracker.remote() if progress else None
  sweep_ref = ray.put(sweep)
  refs, pending = {}, {}
  for stage in graph:
    if not isinstance(stage, stage_graph.CellStage) and stage.is_stored(engine):
      refs[stage] = ray.put(_stored(stage_graph.read(engine, stage)))
      continue
    ref = task.remote(sweep_ref, stage, tracker, *(refs[i] for i in stage.inputs(engine)))
    refs[stage], pending[ref] = ref, stage
  cells = [s for s in graph if isinstance(s, stage_graph.CellStage)]
  failed, versions = {}, package_versions()
  stages_total = len(pending)
  bar = tqdm(
    total=len(sweep.cells),
    initial=len(opened.done),
    desc="cells",
    unit="cell",
    disable=not progress,
    dynamic_ncols=True,
  )
  finished = set()
  while pending:
    interrupts.raise_if_interrupted()
    ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
    for ref in ready:
      stage = pending.pop(ref)
      finished.add(stage.name)
      try:
        result = ray.get(ref)
      except ray.exceptions.RayError as err:  # its worker died more than max_retries times
        result = {**_stored(None), "error": f"{stage.name}: {type(err).__name__}: {err}"}
      if result["versions"] and result["versions"] != versions:
        warnings.warn(
          f"{stage.name} ran on {result['host']} with packages {result['versions']}; this "
          f"driver has {versions}",
          stacklevel=2,
        )
      _write_log(engine.folder, stage, result)
      if result["error"] is None:
        stage_graph.place(engine, stage, result["files"], where=f"{result['host']}")
      if isinstance(stage, stage_graph.CellStage):
        _record_cell(opened, stage, result, failed)
        bar.update(1)
    if progress:
      bar.set_postfix_str(_status(tracker, cells, finished, failed, stages_total, pending))
  bar.close()
  return failed


def _status(tracker, cells, finished, failed, stages_total, pending) -> str:
  try:
    started = ray.get(tracker.running.remote(), timeout=5)
  except ray.exceptions.RayError:
    started = None
  running = (
    "?" if started is None else sum(c.name in started and c.name not in finished for c in cells)
  )
  return (
    f"running {running}, failed {len(failed)}, stages {stages_total - len(pending)}/{stages_total}"
  )


def _record_cell(opened, stage, result, failed: dict) -> None:
  cell = stage.cell
  failed_file = opened.engine.folder / "cells" / cell.id / "failed.json"
  if result["error"] is None:
    opened.finish(cell, opened.engine.stored_cell(cell))
    failed_file.unlink(missing_ok=True)  # an earlier run's failure, now fixed
    return
  failed[cell.id] = result["error"]
  write_json_atomic(
    failed_file,
    {
      "cell": cell.id,
      "error": result["error"],
      "host": result["host"],
      "log": f"logs/{stage.name}.log",
    },
  )


def _write_log(folder: Path, stage, result) -> None:
  if not result["host"]:  # a stage that failed before starting: its input's log says why
    return
  header = {k: result[k] for k in ("host", "pid", "seconds", "error")}
  with atomic_write(folder / "logs" / f"{stage.name}.log") as f:
    f.write(json.dumps(header) + "\n" + result["log"])
