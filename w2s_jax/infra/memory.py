"""How much memory the process holds: for results.json, sweep rows, the
end-of-run tables and the benchmarks.

Three readings, in bytes:

- peak RSS: the most host memory resident at once: the process's, since
  it started (getrusage). A benchmark measures each contender's own with
  `Peak(own_span=True)`, which resets the kernel's high-water mark (VmHWM,
  via /proc/self/clear_refs, Linux) when it starts; peaks nest, an outer one
  keeping the larger of its own and every inner one's. A reset also lowers
  what getrusage and `/usr/bin/time -v` report afterwards, so runs never
  reset it: their peak is the whole process's, as an outside tool measures.
- steady RSS: what a training loop holds once it runs, without the
  transients of loading and compiling: `loop.fit` samples the resident set
  when its last step has run (before it hands freed pages back), and a Peak
  reports the largest sample in its span.
- device peak: the accelerators' own high-water mark (`memory_stats()`
  peak_bytes_in_use, summed over this process's devices, for the process's
  life); None on the CPU, which has no such counter.
"""

import dataclasses
import os
import resource
import sys

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_folded_process_peak = 0  # the largest VmHWM seen before any reset
_open: list["Peak"] = []  # Peaks whose span is running, outermost first
_steady_samples: list[int] = []  # loop.fit's end-of-loop RSS samples, in order


def rss_bytes() -> int | None:
  """The resident set now (Linux), else None."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return None


def _high_water_bytes() -> int | None:
  """The kernel's resident high-water mark since it was last reset (VmHWM)."""
  try:
    with open(_STATUS) as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def process_peak_rss_bytes() -> int:
  """The process's peak resident set since it started (getrusage: KB on
  Linux, bytes on macOS; with the peaks seen before any reset)."""
  maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  maxrss = maxrss if sys.platform == "darwin" else maxrss * 1024
  return max(_folded_process_peak, maxrss, _high_water_bytes() or 0, rss_bytes() or 0)


def _reset_high_water() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0); whether it could."""
  try:
    with open(_CLEAR_REFS, "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def device_peak_bytes() -> int | None:
  """The sum over this process's devices of their peak bytes in use, or None
  where devices keep no such count (XLA:CPU). Imports JAX only if it is loaded."""
  jax = sys.modules.get("jax")
  if jax is None:
    return None
  total, seen = 0, False
  for device in jax.local_devices():
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      total, seen = total + int(stats["peak_bytes_in_use"]), True
  return total if seen else None


def sample_steady() -> None:
  """Records the resident set as a training loop's steady state (loop.fit
  calls it after its last step)."""
  global _folded_process_peak
  rss = rss_bytes()
  if rss is not None:
    _steady_samples.append(rss)
    # The kernel's counters behind getrusage lag the resident set: a peak
    # is never below a sample taken.
    _folded_process_peak = max(_folded_process_peak, rss)


@dataclasses.dataclass
class Peak:
  """The memory of a span of work: `with Peak() as p: ...; p.report()`, or
  start() / report() around it (report() may be read while the span runs).

  own_span: reset the high-water mark at the start, so that the peak is the
  span's own (benchmarks only: see the module docstring); otherwise the peak
  is the process's since it started."""

  own_span: bool = False
  resets: bool = False  # whether VmHWM was reset (the peak is the span's own)
  _folded: int = 0  # the largest VmHWM seen before a reset inside the span
  _first_sample: int = 0
  _started: bool = False

  def start(self) -> "Peak":
    if self.own_span:
      _fold_open_peaks()
      self.resets = _reset_high_water()
    self._folded = rss_bytes() or 0
    self._first_sample = len(_steady_samples)
    self._started = True
    _open.append(self)
    return self

  def stop(self) -> None:
    if self in _open:
      self._folded = self.peak_rss_bytes()
      _open.remove(self)

  def __enter__(self) -> "Peak":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  def peak_rss_bytes(self) -> int:
    if not self.resets:
      return process_peak_rss_bytes()
    if self not in _open:
      return self._folded
    return max(self._folded, _high_water_bytes() or 0)

  def steady_rss_bytes(self) -> int | None:
    samples = _steady_samples[self._first_sample :]
    return max(samples) if samples else None

  def _peak_at_least_steady(self) -> int:
    return max(self.peak_rss_bytes(), self.steady_rss_bytes() or 0)

  def report(self) -> dict:
    """What results.json records as "memory" (docs/outputs.md)."""
    if not self._started:
      raise RuntimeError("Peak.report(): the span was never started (Peak().start())")
    return {
      "peak_rss_bytes": self._peak_at_least_steady(),
      "steady_rss_bytes": self.steady_rss_bytes(),
      "rss_bytes": rss_bytes(),
      "device_peak_bytes": device_peak_bytes(),
      "peak_covers": "this span" if self.resets else "the process since it started",
    }


def _fold_open_peaks() -> None:
  """Before VmHWM is reset, the process and every running Peak keep the
  high-water mark so far."""
  global _folded_process_peak
  hwm = _high_water_bytes() or 0
  _folded_process_peak = max(_folded_process_peak, process_peak_rss_bytes(), hwm)
  for peak in _open:
    peak._folded = max(peak._folded, hwm)


def gigabytes(n: int | None) -> str:
  """A byte count for a table: '1.23 GB', or '-' when unknown."""
  return "-" if n is None else f"{n / 1e9:.2f} GB"


def largest(reports) -> dict | None:
  """The largest peak and steady RSS over reports (dicts with those keys:
  report()s, sweep rows) that recorded them; None if none did."""
  found = [r for r in reports if r and r.get("peak_rss_bytes") is not None]
  if not found:
    return None
  steady = [r["steady_rss_bytes"] for r in found if r.get("steady_rss_bytes") is not None]
  return {
    "peak_rss_bytes": max(r["peak_rss_bytes"] for r in found),
    "steady_rss_bytes": max(steady, default=None),
    "count": len(found),
  }


def summary_line(report: dict | None, *, over: str = "") -> str:
  """One line for an end-of-run table, from a report() (None: not recorded),
  or from largest(...) with `over` naming what it is the largest over."""
  if not report:
    return "memory: not recorded"
  device = report.get("device_peak_bytes")
  what = f" (largest over {report['count']} {over})" if over else ""
  return (
    f"memory{what}: peak RSS {gigabytes(report.get('peak_rss_bytes'))}, steady RSS "
    f"{gigabytes(report.get('steady_rss_bytes'))}"
    + (f", device peak {gigabytes(device)}" if device is not None else "")
  )
