"""host_memory.keep_freed_memory: XLA:CPU's per-step scratch stops being
page-faulted in afresh (counted with getrusage, in fresh processes, since the
settings are per process and must precede JAX's backend)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from w2s_jax.infra import host_memory

import fakes

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, resource, sys, warnings
    sys.path.insert(0, {root!r})
    from w2s_jax.infra import host_memory
    import jax, jax.numpy as jnp
    status = None
    if sys.argv[1] == "keep":
      status = host_memory.keep_freed_memory()
    if sys.argv[1] == "late":
      jnp.ones(1).block_until_ready()
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = host_memory.keep_freed_memory()
      status += " | " + str(caught[0].message) if caught else ""

    x = jnp.full((4096, 64), 0.01, jnp.float32)
    @jax.jit
    def step(w):   # 128 MiB of XLA temporaries: a 4096 x 4096 activation and its gradient
      loss = lambda w: jnp.sum(jnp.tanh(jnp.tanh(x @ w) @ w.T))
      return w - 1e-3 * jax.grad(loss)(w)
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    minflt = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    w = jnp.full((64, 4096), 0.01, jnp.float32)
    # Like a training loop, each step's output is the next input. A kept heap
    # first grows by a few blocks (a long-lived output lands in freed scratch,
    # so the next scratch block extends the heap; how often depends on thread
    # timing), then stops: it counts as settled after 10 steps in a row fault
    # in no new pages. A heap that kept growing would never settle. Both
    # modes run the same 60 + 20 steps, so their results can be compared.
    quiet, steps_to_settle = 0, None
    for i in range(60):
      before = minflt()
      w = step(w).block_until_ready()
      quiet = quiet + 1 if minflt() - before < 1000 else 0
      if quiet == 10 and steps_to_settle is None:
        steps_to_settle = i + 1
    settled = rss()
    faults = []
    for _ in range(20):
      before = minflt()
      w = step(w).block_until_ready()
      faults.append(minflt() - before)
    grew = rss() - settled
    checksum = float(jnp.sum(w))
    del w
    held = rss()
    host_memory.release_freed_memory()
    print(json.dumps({{"status": status, "faults_per_step": sorted(faults)[10],
                      "faulting_steps": sum(f > 1000 for f in faults),
                      "grew_mib": grew / 2 ** 20, "steps_to_settle": steps_to_settle, "released_mib": (held - rss()) / 2 ** 20,
                      "checksum": checksum}}))
""").format(root=str(ROOT))


def run(mode, **env):
  out = subprocess.run(
    [sys.executable, "-c", SCRIPT, mode],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, **env},
    check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_kept_memory_is_not_faulted_in_again_each_step():
  default, kept = run("default"), run("keep")
  assert kept["status"] == "kept"
  assert kept["steps_to_settle"] is not None, kept  # the kept heap stopped growing
  # Without it each step maps its 128 MiB of temporaries afresh (32K 4-KiB
  # pages); with it, the pages of earlier steps are reused.
  assert default["faults_per_step"] > 10_000, default
  assert kept["faults_per_step"] < 0.05 * default["faults_per_step"], (default, kept)
  # Steady: the same pages, step after step. Every default step maps its
  # scratch afresh; a kept heap at most rarely extends by one scratch block
  # (host_memory's docstring: a long-lived output landing in freed scratch,
  # as thread timing has it; seen on CI with two test workers), and grows by
  # nothing else.
  assert default["faulting_steps"] == 20, default
  assert kept["faulting_steps"] <= 2, kept
  assert kept["grew_mib"] < 16 + 140 * kept["faulting_steps"], kept
  assert default["checksum"] == kept["checksum"]  # where buffers live changes no number
  # What loop.fit does when its loop ends: the kept scratch pages go back.
  assert kept["released_mib"] > 32, kept
  # Without kept memory the scratch was unmapped at once; what the trim hands
  # back is what glibc's per-thread arenas held of smaller blocks.
  assert default["released_mib"] < kept["released_mib"] / 2, (default, kept)


@pytest.mark.slow  # a minute and a half of subprocesses; the main path is the test above
def test_opt_out_and_too_late_change_nothing():
  assert run("keep", W2S_JAX_KEEP_HOST_MEMORY="0")["status"] == (
    "disabled by W2S_JAX_KEEP_HOST_MEMORY=0"
  )
  late = run("late")
  if sys.platform.startswith("linux"):
    assert (
      late["status"].startswith("too late | ")
      and "before the first JAX computation" in (late["status"])
    )
    assert late["faults_per_step"] > 10_000


def test_experiments_keep_memory_only_when_asked(monkeypatch):
  # Decided before any malloc setting, so it can run in this process.
  monkeypatch.setattr(host_memory, "_status", host_memory.status())  # restored afterwards
  monkeypatch.delenv(host_memory.ENV, raising=False)
  status = host_memory.keep_freed_memory(by_default=False)
  assert status.startswith("not kept") and f"{host_memory.ENV}=1 keeps it" in status
  monkeypatch.setenv(host_memory.ENV, "0")
  assert host_memory.keep_freed_memory() == f"disabled by {host_memory.ENV}=0"
  monkeypatch.setenv(host_memory.ENV, "yes")
  with pytest.raises(ValueError, match=r"W2S_JAX_KEEP_HOST_MEMORY='yes': expected 1 .* or 0"):
    host_memory.keep_freed_memory(by_default=False)


def test_entry_points_keep_memory_by_the_rule():
  """Experiments and the pipeline's benchmarks (small models on a CPU) keep
  freed memory only when asked; the benchmarks of large steps by default."""
  large_steps = {"tools/bench_torch.py", "tools/profile_step.py"}
  callers = [
    p
    for p in [
      *ROOT.glob("experiments/*.py"),
      *ROOT.glob("tools/*.py"),
      ROOT / "w2s_jax/__main__.py",
    ]
    if "keep_freed_memory(" in p.read_text()
  ]
  assert len(callers) >= 10
  for p in callers:
    name = str(p.relative_to(ROOT))
    small = "keep_freed_memory(by_default=False)" in p.read_text()
    assert small != (name in large_steps), name


def test_entry_points_ask_for_the_memory_lean_scheduler_unless_xla_flags_chose(monkeypatch):
  """keep_freed_memory() also turns XLA:CPU's concurrency-optimized scheduler
  off through XLA_FLAGS (before JAX starts), keeping what XLA_FLAGS holds,
  and leaves the option alone when XLA_FLAGS already sets it."""
  monkeypatch.setattr(host_memory, "_status", "not requested")
  monkeypatch.setattr(host_memory, "_scheduler", host_memory.scheduler_status())  # restored
  monkeypatch.setattr(host_memory, "_backend_started", lambda: False)
  monkeypatch.setenv(host_memory.ENV, "0")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  host_memory.keep_freed_memory(by_default=False)
  assert os.environ["XLA_FLAGS"] == (
    "--xla_force_host_platform_device_count=2 " + host_memory.LEAN_SCHEDULER
  )
  assert host_memory.scheduler_status().startswith("memory-lean")
  chosen = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
  monkeypatch.setenv("XLA_FLAGS", chosen)
  host_memory.keep_freed_memory(by_default=False)
  assert os.environ["XLA_FLAGS"] == chosen  # the user's choice wins
  assert host_memory.scheduler_status() == "as XLA_FLAGS sets it"
  monkeypatch.setattr(host_memory, "_backend_started", lambda: True)
  monkeypatch.delenv("XLA_FLAGS")
  host_memory.keep_freed_memory(by_default=False)
  assert "XLA_FLAGS" not in os.environ and host_memory.scheduler_status().startswith("too late")


def _growth(config: str, tmp_path, **env) -> dict:
  out = subprocess.run(
    [sys.executable, str(ROOT / "tools" / "memory_growth.py"), "--config", config, "--runs", "3"],
    capture_output=True,
    text=True,
    timeout=1200,
    env={**os.environ, **env},
    cwd=tmp_path,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # three minutes; the per-step path: test_kept_memory_is_not_faulted_in_again_each_step
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_a_long_mixed_run_in_one_process_does_not_grow_with_kept_memory(tmp_path):
  """Three runs of a small text experiment (pretraining, weak training,
  inference, fine-tuning, evaluation: allocations of every size), one
  process, kept host memory (the mode that can fragment): the resident set
  after the third run is within 1.2x of the first's."""
  train = fakes.write_sentiment_tsv(tmp_path / "train.tsv", 400, 0)
  test = fakes.write_sentiment_tsv(tmp_path / "test.tsv", 64, 1)
  config = f"{ROOT}/configs/text.py:train={train},test={test},small"
  growth = _growth(config, tmp_path, **{host_memory.ENV: "1"})
  assert growth["host_memory"] == "kept", growth
  assert growth["growth"] <= 1.2, growth


@pytest.mark.slow  # three MiniLM runs: a few minutes
@pytest.mark.skipif(importlib.util.find_spec("all_minilm_l6_v2") is None, reason="the minilm extra")
@pytest.mark.parametrize("keep", ["0", "1"])
def test_three_minilm_small_runs_in_one_process_stay_within_1_2x_of_the_first(tmp_path, keep):
  (tmp_path / "sst2").mkdir()
  fakes.write_sentiment_tsv(tmp_path / "sst2" / "sst2_train.tsv", 600, 0)
  fakes.write_sentiment_tsv(tmp_path / "sst2" / "sst2_dev.tsv", 64, 1)
  config = f"{ROOT}/configs/sst2_minilm.py:files={tmp_path / 'sst2'},models={tmp_path / 'm'},small"
  growth = _growth(config, tmp_path, **{host_memory.ENV: keep})
  assert growth["growth"] <= 1.2, growth


def test_release_compiled_programs_drops_them_and_they_come_back():
  import jax

  add = jax.jit(lambda x: x + 1)
  assert float(add(1.0)) == 2.0 and add._cache_size() == 1
  host_memory.release_compiled_programs()
  assert add._cache_size() == 0
  assert float(add(1.0)) == 2.0 and add._cache_size() == 1
