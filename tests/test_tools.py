"""tools/: the shared harness's Timings, show_results on every kind of record,
and (slow) bench_torch's torch.compile contenders, which the documented quick
form leaves out (a cold torch.compile takes minutes), and bench_executors's quick
form (two sweeps in fresh processes)."""

import contextlib
import importlib.util
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import harness  # noqa: E402


def _tool(name):
  spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_interleaved_rotates_the_order_and_reports_per_round():
  order = []
  contenders = {k: (lambda n, k=k: order.extend([k] * n)) for k in ("a", "b", "c")}
  first, errors = harness.warm_up(dict(contenders), 0)
  assert set(first) == {"a", "b", "c"} and errors == {}
  order.clear()
  timings = harness.interleaved(contenders, rounds=3, calls=2)
  assert (
    order
    == ["a"] * 2
    + ["b"] * 2
    + ["c"] * 2
    + ["b"] * 2
    + ["c"] * 2
    + ["a"] * 2
    + ["c"] * 2
    + ["a"] * 2
    + ["b"] * 2
  )
  assert all(len(timings.seconds[k]) == 3 for k in contenders)
  assert timings.peak_rss_mb["a"] > 0 and len(timings.page_faults["b"]) == 3
  ratio = harness.Timings({"x": [1.0, 2.0], "y": [2.0, 6.0]}, {}, {}).speedup("x", over="y")
  assert ratio == {"of_medians": 4.0 / 1.5, "median_of_round_ratios": 2.5}


def test_warm_up_drops_a_failing_contender_with_its_error():
  def broken(n):
    raise RuntimeError("no such device\nmore")

  contenders = {"ok": lambda n: None, "bad": broken}
  _, errors = harness.warm_up(contenders, 1)
  assert list(contenders) == ["ok"] and errors == {"bad": "RuntimeError: no such device"}


def test_show_results_prints_a_run_and_refuses_an_older_schema(tmp_path):
  stat = {"mean": 0.5, "lo": 0.4, "hi": 0.6}
  record = {
    "schema": "w2s-jax/results/2",
    "models": {
      "pico": {"pretrained": False, "lives": 0.5, "works": 0.5},
      "nano": {"pretrained": False, "lives": 0.7, "works": 0.6},
    },
    "task": {"eval_keys": ["test"], "encoding": {}},
    "cells": [
      {
        "cell": {"weak": "pico", "strong": "nano"},
        "label": "xent",
        "seeds": [0],
        "summary": {
          "test": {
            "weak": stat,
            "w2s": stat,
            "ceiling": stat,
            "pgr": {"mean": math.nan, "lo": math.nan, "hi": math.nan},
          }
        },
      }
    ],
    "seconds": 3.0,
  }
  good = tmp_path / "results.json"
  good.write_text(json.dumps(record))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    _tool("show_results").main([str(good)])
  assert "weak   pico" in printed.getvalue() and "undefined (ceiling ≤ weak)" in printed.getvalue()
  old = tmp_path / "old.json"
  old.write_text(json.dumps({"summary": {}, "per_seed": {}}))
  with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
    _tool("show_results").main([str(old)])
  assert "schema None" in err.getvalue() and "older w2s_jax" in err.getvalue()


@pytest.mark.slow  # a cold torch.compile of the step and of inference: minutes
def test_bench_torch_quick_with_torch_compile(tmp_path):
  out = tmp_path / "bench.json"
  with contextlib.redirect_stdout(io.StringIO()):
    _tool("bench_torch").main(["--quick", "--json", str(out)])
  record = json.loads(out.read_text())
  assert "train/vs_torch_compile" in record["speedups"]
  assert record["cpu"]["model"] and record["contenders"]["train/w2s_jax"]["peak_rss_mb"] > 0


@pytest.mark.slow  # two whole (shortened) sweeps in fresh processes, one starting Ray: 2 minutes
def test_bench_executors_quick_times_both_executors_with_the_same_rows(tmp_path):
  out = tmp_path / "bench.json"
  with contextlib.redirect_stdout(io.StringIO()) as printed:
    _tool("bench_executors").main(["--quick", "--json", str(out)])
  record = json.loads(out.read_text())
  assert record["rows_identical"] is True
  assert set(record["seconds"]) == {"local", "ray"} and all(
    len(v) == 1 and v[0] > 0 for v in record["seconds"].values()
  )
  # Ray's process tree holds its daemons and a worker per core beside the driver.
  assert record["peak_tree_rss_mb"]["ray"][0] > record["peak_tree_rss_mb"]["local"][0] > 0
  assert "ray / local:" in printed.getvalue() and record["matmul_peak_gflops"]["jnp.dot"] > 0


def test_tree_rss_counts_a_process_and_its_children():
  import subprocess

  child = subprocess.Popen(
    [sys.executable, "-c", 'import time; x = b"x" * (200 << 20); time.sleep(30)']
  )
  try:
    bench = _tool("bench_executors")
    deadline = time.monotonic() + 30  # until the child has written its 200 MiB
    while (child_mb := bench.tree_rss_mb(child.pid)) < 200 and time.monotonic() < deadline:
      time.sleep(0.1)
    assert 200 <= child_mb < 400
    assert bench.tree_rss_mb(os.getpid()) >= child_mb + 10  # this process and its child
  finally:
    child.kill()
    child.wait()
