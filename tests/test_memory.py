"""infra/memory.py: the peak and steady resident set a run reports, and the
per-contender peaks of the benchmarks."""

import sys

import numpy as np
import pytest

from w2s_jax.infra import memory

LINUX = sys.platform.startswith("linux")
MB = 2**20


def _touch(n_bytes: int) -> np.ndarray:
  a = np.ones(n_bytes // 8)  # written, so resident
  return a


@pytest.mark.skipif(not LINUX, reason="/proc/self: VmHWM and its reset")
def test_a_span_of_its_own_reads_its_own_peak_and_nested_spans_keep_theirs():
  big = _touch(300 * MB)
  del big  # the process's peak is now at least 300 MB above where it is
  with memory.Peak(own_span=True) as outer:
    assert outer.resets
    # The reset: the outer span's peak is not the earlier 300 MB.
    assert outer.peak_rss_bytes() < memory.rss_bytes() + 100 * MB
    with memory.Peak(own_span=True) as inner:
      a = _touch(200 * MB)
      del a
    with memory.Peak(own_span=True) as later:
      pass
  start = memory.rss_bytes()
  assert inner.peak_rss_bytes() >= start + 180 * MB
  assert later.peak_rss_bytes() < inner.peak_rss_bytes() - 150 * MB  # its own, reset again
  assert outer.peak_rss_bytes() >= inner.peak_rss_bytes()  # an inner reset does not lose it
  # The process's peak still counts the 300 MB from before every reset.
  assert memory.process_peak_rss_bytes() >= start + 280 * MB


def test_a_run_span_reports_the_process_peak_and_its_loops_steady_samples():
  with memory.Peak() as run:
    assert not run.resets  # runs never reset: /usr/bin/time -v would read less
    memory.sample_steady()
    first = memory.rss_bytes()
    a = _touch(100 * MB)
    memory.sample_steady()
    del a
  report = run.report()
  assert report["peak_rss_bytes"] == memory.process_peak_rss_bytes()
  if LINUX:
    assert report["steady_rss_bytes"] >= first + 90 * MB  # the largest loop-end sample
    assert report["peak_covers"] == "the process since it started"
  with memory.Peak() as empty:
    pass
  assert empty.report()["steady_rss_bytes"] is None  # no loop ran in it
  assert empty.report()["device_peak_bytes"] is None  # XLA:CPU keeps no device count
  with pytest.raises(RuntimeError, match="never started"):
    memory.Peak().report()


def test_largest_and_the_table_line():
  rows = [
    {"peak_rss_bytes": 2_000_000_000, "steady_rss_bytes": 1_500_000_000},
    {"peak_rss_bytes": 2_500_000_000, "steady_rss_bytes": None},
    {"peak_rss_bytes": None, "steady_rss_bytes": None},  # a cell stored before memory was measured
  ]
  assert memory.largest(rows) == {
    "peak_rss_bytes": 2_500_000_000,
    "steady_rss_bytes": 1_500_000_000,
    "count": 2,
  }
  assert memory.summary_line(memory.largest(rows), over="cells") == (
    "memory (largest over 2 cells): peak RSS 2.50 GB, steady RSS 1.50 GB"
  )
  assert memory.largest(rows[2:]) is None
  assert memory.summary_line(None) == "memory: not recorded"
  line = memory.summary_line(
    {"peak_rss_bytes": 10**9, "steady_rss_bytes": None, "device_peak_bytes": 3 * 10**9}
  )
  assert line == "memory: peak RSS 1.00 GB, steady RSS -, device peak 3.00 GB"
