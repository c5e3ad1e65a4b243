"""Result files and tables: PGR printing, file modes, the output folder, stale temp files."""

import errno
import math
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from w2s_jax.infra import files
from w2s_jax.w2s import metrics, tables

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


# --- PGR as tables print it ---------------------------------------------------------------


def test_format_pgr_three_cases():
  assert tables.format_pgr(mean=0.54, lo=0.47, hi=0.6, undefined_frac=0.0) == "0.54 [0.47, 0.60]"
  assert (
    tables.format_pgr(mean=0.31, lo=-0.5, hi=2.0, undefined_frac=0.12)
    == "0.31 (undefined in 12% of resamples)"
  )
  assert (
    tables.format_pgr(mean=NAN, lo=-17.39, hi=3.48, undefined_frac=0.41)
    == "undefined (ceiling ≤ weak; 41% of resamples)"
  )
  # undefined_frac unknown (rows written before it was recorded): None or NaN
  assert tables.format_pgr(mean=NAN, lo=-17.39, hi=3.48) == "undefined (ceiling ≤ weak)"
  assert (
    tables.format_pgr(mean=NAN, lo=-17.39, hi=3.48, undefined_frac=NAN)
    == "undefined (ceiling ≤ weak)"
  )
  assert tables.format_pgr(mean=0.54, lo=0.47, hi=0.6) == "0.54 [0.47, 0.60]"
  assert tables.format_pgr(mean=0.54, lo=0.47, hi=0.6, digits=3) == "0.540 [0.470, 0.600]"


def test_format_pgr_threshold_and_rounding():
  limit = tables.PGR_UNDEFINED_FRAC_MAX
  assert limit == 0.05
  # exactly at the limit the interval is still shown; just past it, the share is
  assert tables.format_pgr(mean=0.5, lo=0.4, hi=0.6, undefined_frac=limit) == "0.50 [0.40, 0.60]"
  assert (
    tables.format_pgr(mean=0.5, lo=0.4, hi=0.6, undefined_frac=0.051)
    == "0.50 (undefined in 5% of resamples)"
  )
  # a partial share never rounds to 0% or 100%
  assert (
    tables.format_pgr(mean=NAN, lo=NAN, hi=NAN, undefined_frac=0.001)
    == "undefined (ceiling ≤ weak; <1% of resamples)"
  )
  assert (
    tables.format_pgr(mean=0.2, lo=NAN, hi=NAN, undefined_frac=0.998)
    == "0.20 (undefined in >99% of resamples)"
  )
  assert (
    tables.format_pgr(mean=NAN, lo=NAN, hi=NAN, undefined_frac=1.0)
    == "undefined (ceiling ≤ weak; 100% of resamples)"
  )
  # numpy scalars, as bootstrap numbers often are
  assert (
    tables.format_pgr(mean=np.float32("nan"), lo=0, hi=0, undefined_frac=np.float64(0.5))
    == "undefined (ceiling ≤ weak; 50% of resamples)"
  )


def _stat(m):
  return {"mean": m, "lo": m - 0.05, "hi": m + 0.05}


def test_summary_table_prints_each_pgr_case_and_keeps_the_numbers():
  rows = [
    {
      "name": "fine",
      "weak": _stat(0.6),
      "w2s": _stat(0.7),
      "ceiling": _stat(0.8),
      "pgr": {"mean": 0.54, "lo": 0.47, "hi": 0.6, "undefined_frac": 0.0},
    },
    {
      "name": "shaky",
      "weak": _stat(0.6),
      "w2s": _stat(0.61),
      "ceiling": _stat(0.63),
      "pgr": {"mean": 0.31, "lo": -3.0, "hi": 4.0, "undefined_frac": 0.12},
    },
    {
      "name": "chance",
      "weak": _stat(0.5),
      "w2s": _stat(0.5),
      "ceiling": _stat(0.5),
      "pgr": {"mean": NAN, "lo": -17.39, "hi": 3.48, "undefined_frac": 0.41},
    },
    {
      "name": "old",
      "weak": _stat(0.5),
      "w2s": _stat(0.5),
      "ceiling": _stat(0.5),
      "pgr": {"mean": NAN, "lo": -17.39, "hi": 3.48},
    },
  ]
  lines = dict((l.split()[0], l) for l in tables.summary_table(rows, ("name",)).splitlines()[2:])
  assert lines["fine"].rstrip().endswith("0.54 [0.47, 0.60]")
  assert lines["shaky"].rstrip().endswith("0.31 (undefined in 12% of resamples)")
  assert lines["chance"].rstrip().endswith("undefined (ceiling ≤ weak; 41% of resamples)")
  assert lines["old"].rstrip().endswith("undefined (ceiling ≤ weak)")
  assert "0.600 [0.550, 0.650]" in lines["fine"]  # the other columns as before
  table = tables.summary_table(rows, ("name",))
  assert "nan" not in table and "-17.39" not in table
  assert math.isnan(rows[2]["pgr"]["mean"]) and rows[2]["pgr"]["lo"] == -17.39  # untouched


def test_summary_table_from_bootstrap_with_every_model_at_chance():
  rng = np.random.default_rng(0)
  chance = lambda: (rng.random((2, 200)) < 0.5).astype(np.float64)
  weak, w2s = chance(), chance()
  out = metrics.bootstrap_w2s(
    weak_correct=weak, w2s_correct=w2s, ceiling_correct=weak, num_resamples=300
  )  # ceiling == weak: PGR never defined
  assert math.isnan(out["pgr"]["mean"]) and out["pgr"]["undefined_frac"] == 1.0
  table = tables.summary_table([{"name": "xent", **out}], ("name",))
  assert "undefined (ceiling ≤ weak; 100% of resamples)" in table
  assert "nan" not in table


# --- file modes ---------------------------------------------------------------------------


@pytest.fixture
def umask():
  """Sets the process umask for one test and puts the old one back."""
  old = os.umask(0o022)
  os.umask(old)
  yield lambda mask: os.umask(mask)
  os.umask(old)


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_open_would_give(tmp_path, umask, mask, expected):
  umask(mask)
  files.write_json_atomic(tmp_path / "results.json", {"a": 1})
  with files.atomic_write(tmp_path / "arrays.npz", "wb") as f:
    f.write(b"x")
  with open(tmp_path / "plain.txt", "w") as f:  # the reference
    f.write("x")
  assert _mode(tmp_path / "plain.txt") == expected
  assert _mode(tmp_path / "results.json") == expected
  assert _mode(tmp_path / "arrays.npz") == expected
  assert os.umask(mask) == mask  # reading it did not change it


def test_atomic_write_mode_without_proc_status(tmp_path, umask, monkeypatch):
  """Where /proc/self/status has no Umask line, the umask(0)-and-restore fallback."""
  monkeypatch.setattr(files, "_PROC_STATUS", str(tmp_path / "no-such-status"))
  umask(0o027)
  files.write_json_atomic(tmp_path / "r.json", {})
  assert _mode(tmp_path / "r.json") == 0o640
  assert os.umask(0o027) == 0o027


def test_overwriting_a_private_file_gives_the_default_mode(tmp_path, umask):
  umask(0o022)
  path = tmp_path / "results.json"
  path.write_text("{}")
  path.chmod(0o600)
  files.write_json_atomic(path, {"a": 2})
  assert _mode(path) == 0o644


# --- the output folder --------------------------------------------------------------------


def test_prepare_out_dir_creates_parents_and_returns_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  out = files.prepare_out_dir("runs/a/b")
  assert out == tmp_path / "runs" / "a" / "b" and out.is_absolute() and out.is_dir()
  assert [p.name for p in out.iterdir()] == [files.OUT_MARK]  # the probe is gone; the mark stays
  assert files.prepare_out_dir(out) == out  # an existing folder is fine


def test_prepare_out_dir_rejects_an_existing_file(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  Path("runs").mkdir()
  Path("runs/x").write_text("not a folder")
  with pytest.raises(
    NotADirectoryError, match=r"^--out runs/x: is an existing file, expected a directory$"
  ):
    files.prepare_out_dir("runs/x")
  with pytest.raises(
    OSError,
    match=r"^--out runs/x/y: cannot create the directory "
    r"\(NotADirectoryError",
  ):
    files.prepare_out_dir("runs/x/y")
  assert Path("runs/x").read_text() == "not a folder"


@pytest.mark.skipif(
  os.geteuid() == 0,
  reason="root may write to a folder without write "
  "permission; test_prepare_out_dir_reports_a_failed_probe covers the path",
)
def test_prepare_out_dir_rejects_a_read_only_folder(tmp_path):
  folder = tmp_path / "ro"
  folder.mkdir()
  folder.chmod(0o555)
  try:
    with pytest.raises(PermissionError, match=r"ro: not writable \(PermissionError: "):
      files.prepare_out_dir(folder)
  finally:
    folder.chmod(0o755)


def test_prepare_out_dir_reports_a_failed_probe(tmp_path, monkeypatch):
  """A read-only file system or a permission error at the probe (injected: tests run as root)."""

  def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))

  monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
  with pytest.raises(
    OSError,
    match=rf"^--out {tmp_path}/x: not writable \(OSError: "
    r"\[Errno 30\] Read-only file system\)$",
  ):
    files.prepare_out_dir(tmp_path / "x")

  def denied(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), args and args[0])

  monkeypatch.setattr(files.tempfile, "mkstemp", denied)
  with pytest.raises(PermissionError, match=r"results dir .*/x: not writable \(PermissionError"):
    files.prepare_out_dir(tmp_path / "x", what="results dir")


# --- stale temp files ---------------------------------------------------------------------


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  with pytest.raises(ProcessLookupError):
    os.kill(proc.pid, 0)
  return proc.pid


def _temp_name(name, host, pid, rand="ab12cd_9"):
  return f".{name}.{files.TEMP_MARK}.{host}.pid{pid}.{rand}.tmp"


def test_atomic_write_temp_name_records_marker_host_and_pid(tmp_path):
  with files.atomic_write(tmp_path / "results.json") as f:
    f.write("{}")
    (tmp,) = [p.name for p in tmp_path.iterdir()]
  host = files.host_token()
  assert tmp.startswith(f".results.json.w2s-jax-tmp.{host}.pid{os.getpid()}.")
  assert tmp.endswith(".tmp") and "." not in host
  assert files.TEMP_NAME.match(tmp)["pid"] == str(os.getpid())
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_write_removes_only_its_own_files_dead_writers_on_this_host(tmp_path):
  """Issue 28's decoy probe: nothing but this project's temp files of the
  file being written, in its own folder, is ever removed."""
  host, dead = files.host_token(), _dead_pid()
  sub = tmp_path / "cell"
  sub.mkdir()
  stale = tmp_path / _temp_name("results.json", host, dead)
  kept = [
    tmp_path / _temp_name("results.json", host, os.getpid()),  # live writer
    tmp_path / _temp_name("results.json", "other-host", dead),  # another host
    tmp_path / _temp_name("sweep.jsonl", host, dead),  # another file's: its own write cleans it
    sub / _temp_name("results.json", host, dead),  # another folder: never walked
    tmp_path / ".chapter3.autosave.tmp",  # a user's, in the naming before the marker
    tmp_path / f".results.json.{host}.pid{dead}.ab12cd_9.tmp",  # no marker: not provably ours
    tmp_path / ".notes.tmp",
  ]
  for p in [stale, *kept]:
    p.write_text("x")
  two_hours_ago = time.time() - 7200
  for p in kept:
    os.utime(p, (two_hours_ago, two_hours_ago))
  with files.atomic_write(tmp_path / "results.json") as f:
    f.write("{}")
  assert not stale.exists()
  assert all(p.exists() for p in kept)
  assert files.remove_stale_temps_of(tmp_path / "results.json") == []


def test_the_next_write_removes_a_killed_writers_temp_file(tmp_path):
  """End to end: a run killed inside atomic_write leaves its temp file; the
  next write of that file removes it."""
  code = textwrap.dedent(f"""
    import sys, time
    from w2s_jax.infra import files
    with files.atomic_write({str(tmp_path / "results.json")!r}) as f:
      f.write("partial")
      print("writing", flush=True)
      time.sleep(60)
  """)
  proc = subprocess.Popen(
    [sys.executable, "-c", code],
    stdout=subprocess.PIPE,
    text=True,
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
  )
  try:
    assert proc.stdout.readline().strip() == "writing"
    (tmp,) = list(tmp_path.iterdir())
    assert f".pid{proc.pid}." in tmp.name
    assert files.remove_stale_temps_of(tmp_path / "results.json") == []  # writer alive: kept
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    proc.kill()
    proc.stdout.close()
  assert tmp.exists() and not (tmp_path / "results.json").exists()
  files.write_json_atomic(tmp_path / "results.json", {})
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_remove_stale_temps_of_a_missing_folder(tmp_path):
  assert files.remove_stale_temps_of(tmp_path / "nope" / "results.json") == []


def test_out_refuses_home_root_and_a_folder_of_other_files(tmp_path, monkeypatch):
  """Issue 28: `--out ~` would have put results among the user's files."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  (tmp_path / "home").mkdir()
  with pytest.raises(ValueError, match=r"^--out .*/home: is your home folder; expected"):
    files.prepare_out_dir(tmp_path / "home")
  with pytest.raises(ValueError, match=r"^--out /: is the root folder"):
    files.prepare_out_dir("/")
  thesis = tmp_path / "thesis"
  thesis.mkdir()
  (thesis / "chapter3.tex").write_text("x")
  with pytest.raises(FileExistsError, match=r"thesis: holds 1 entries \(chapter3.tex\) and no run"):
    files.prepare_out_dir(thesis)
  assert sorted(p.name for p in thesis.iterdir()) == ["chapter3.tex"]
  # New, empty, marked, or holding a run from before the marker: all fine.
  for folder, content in [("new", None), ("empty", ""), ("old", "results.json")]:
    if content is not None:
      (tmp_path / folder).mkdir()
      if content:
        (tmp_path / folder / content).write_text("{}")
    out = files.prepare_out_dir(tmp_path / folder)
    assert (out / files.OUT_MARK).is_file()
    (out / "notes.txt").write_text("the user's own note beside the results")
    assert files.prepare_out_dir(out) == out  # marked: the run's folder


def test_host_token_is_one_name_field(monkeypatch):
  monkeypatch.setattr(socket, "gethostname", lambda: "node-7.cluster.example.org")
  assert files.host_token() == "node-7_cluster_example_org"
  name = files.temp_prefix("results.json") + "abcd1234.tmp"
  assert files.TEMP_MARK in name
  m = files.TEMP_NAME.match(name)
  assert m["host"] == "node-7_cluster_example_org" and m["name"] == "results.json"
