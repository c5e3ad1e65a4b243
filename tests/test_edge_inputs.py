"""Issue 28's smaller defects: every bad or degenerate input gets a clear
answer before any compute, naming what it is about."""

import dataclasses
import errno
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest

from w2s_jax import cli
from w2s_jax.data import text_files
from w2s_jax.data.dataset import Dataset
from w2s_jax.infra import checkpoints, configs, files
from w2s_jax.infra.sharding import MeshConfig
from w2s_jax.tasks.generation import GenerationConfig
from w2s_jax.training import loop
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s import records, report, tables
from w2s_jax.w2s.experiment import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]


def test_sampler_options_are_refused_when_the_config_is_made():
  with pytest.raises(ValueError, match=r"weak_temperature=-1: expected >= 0"):
    GenerationConfig(weak_temperature=-1)
  with pytest.raises(ValueError, match=r"weak_top_p=1.5: expected None or in \(0, 1\]"):
    GenerationConfig(weak_top_p=1.5)
  GenerationConfig(weak_samples=4, weak_temperature=1.0, weak_top_p=0.9)  # fine


def test_sweep_report_names_the_file_it_cannot_read(tmp_path):
  path = tmp_path / "sweep.jsonl"
  path.write_text("")
  with pytest.raises(ValueError, match=r"sweep.jsonl': no rows"):
    report.load_rows(path)
  path.write_text('{"cell": "a", "test/w2s/mean": 0.5}\n{"cell": "b", "te')
  with pytest.raises(ValueError, match=r"sweep.jsonl', line 2: not a JSON row"):
    report.load_rows(path)
  path.write_text("[1, 2]\n")
  with pytest.raises(ValueError, match=r"line 1: a list, expected a JSON object"):
    report.load_rows(path)


def test_a_run_name_cannot_lead_out_of_runs():
  for name in ("../../x", "a/b", "..", "", "a\\b"):
    with pytest.raises(ValueError, match=r"ExperimentConfig.name=.*expected a folder name"):
      ExperimentConfig(name=name)
  ExperimentConfig(name="generative-lr1e+09-small")  # the names the configs make are fine


def test_an_empty_cache_or_out_path_is_refused():
  for flag in ("cache", "out"):
    args = types.SimpleNamespace(cache="runs/cache", out=None, xla_cache="")
    setattr(args, flag, "")
    with pytest.raises(ValueError, match=rf"^--{flag} '': expected a folder"):
      configs.start_run(args)


def test_a_folder_given_as_a_data_file_is_named_a_folder(tmp_path):
  with pytest.raises(IsADirectoryError, match=r"is a folder, expected a TSV, CSV or JSONL file"):
    text_files.read_text_file(tmp_path, file_format="csv")


def test_a_long_valid_csv_field_is_read(tmp_path):
  long = "word " * 40_000  # 200,000 characters: over the csv module's default cap
  path = tmp_path / "long.csv"
  path.write_text(f'text,label\n"{long}",1\nshort,0\n')
  got = text_files.read_text_file(path)
  assert got.text[0] == long and list(got.label) == [1, 0]


def test_a_nan_pretraining_leaves_no_empty_cache_folder(tmp_path):
  cfg = configs.load(f"{ROOT / 'configs/default.py'}:small")
  cfg = dataclasses.replace(
    cfg,
    mesh=MeshConfig(devices=1),
    pretrain=dataclasses.replace(cfg.pretrain, lr=1e12, steps=200, clip_norm=1e30),
  )
  parts = parts_lib.build(cfg, cache_dir=tmp_path / "cache", progress=False)
  with pytest.raises(loop.NonFiniteLossError, match="pretrain pico: loss became NaN"):
    parts.models.get("pico")
  assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == []


def test_degenerate_splits_are_warned_of_and_recorded():
  sanity = {
    "train_gt": {"examples": 40, "majority": 1.0, "chance": 0.5},
    "train_w2s": {"examples": 40, "majority": 0.55, "chance": 0.5},
    "test": {"examples": 1, "majority": 1.0, "chance": 0.5},
  }
  warned = records.data_warnings(sanity)
  assert len(warned) == 2
  assert warned[0].startswith("train_gt: every one of its 40 examples has the same label")
  assert warned[1].startswith("test: 1 example(s)")
  assert records.data_warnings({"test": {"examples": 800, "majority": 0.5, "chance": 0.5}}) == []
  results = {"task": {"warnings": warned, "eval_keys": []}, "models": {}, "cells": [], "seconds": 1}
  assert "WARNING (data) train_gt: every one" in tables.format_results(results)


def test_repeated_and_leaked_examples_are_counted_and_warned_of():
  """Equal real tokens are one example whatever the padding; an evaluation
  example found in a train split is a leak."""
  rows = lambda *r: np.array(r, np.int32)
  splits = {
    "train_gt": Dataset(tokens=rows([5, 6, 0], [5, 6, 9], [5, 6, 7]), mask=rows([1, 1, 0], [1, 1, 0], [1, 1, 1]), labels=rows(0, 1, 1)),
    "train_w2s": Dataset(tokens=rows([1, 2, 3], [3, 2, 1]), mask=rows([1, 1, 1], [1, 1, 1]), labels=rows(0, 1)),
    "test": Dataset(tokens=rows([1, 2, 3], [4, 4, 4], [8, 0, 0]), mask=rows([1, 1, 1], [1, 1, 1], [1, 0, 0]), labels=rows(0, 1, 0)),
  }  # fmt: skip
  sanity = records.split_sanity(
    types.SimpleNamespace(generative=False, splits=splits, num_classes=2)
  )
  assert sanity["train_gt"]["duplicates"] == 1  # rows 0 and 1: [5, 6] once padding is masked
  assert sanity["test"]["duplicates"] == 0 and sanity["test"]["in_train"] == 1
  assert "in_train" not in sanity["train_gt"]
  warned = records.data_warnings(sanity)
  assert warned == [
    "train_gt: 1 of its 3 examples repeat an earlier one: they count more than once in "
    "its readings (and intervals treat them as independent)",
    "test: 1 of its 3 examples also appear in a train split: readings on them measure "
    "memory, not generalisation",
  ]


def test_split_sanity_of_a_one_class_split():
  task = types.SimpleNamespace(
    generative=False, splits={"test": {"labels": np.zeros(3, np.int32)}}, num_classes=2
  )
  assert records.split_sanity(task)["test"]["majority"] == 1.0


# --- a full disk ------------------------------------------------------------------------


def test_a_full_disk_is_one_line_naming_the_file_and_the_free_space(tmp_path):
  err = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cells" / "x.json"))
  assert files.disk_full(RuntimeError("another failure")) is None
  wrapped = RuntimeError("while saving")
  wrapped.__cause__ = err
  message = files.disk_full(wrapped)
  assert message.startswith(f"no space left on the device writing {tmp_path}/cells/x.json: ")
  assert "MiB free of" in message and "\n" not in message
  # TensorStore's error from an orbax save: a ValueError whose text names the file.
  orbax = ValueError(
    f'RESOURCE_EXHAUSTED: Error writing local file "{tmp_path}/c/pico-1/train/400": '
    "Failed writing: No space left on device [os_error_code='28']"
  )
  assert f"writing {tmp_path}/c/pico-1/train/400: " in files.disk_full(orbax)


def test_files_written_together_are_all_replaced_or_none(tmp_path, monkeypatch):
  for name in ("per_query.csv", "results.json"):
    (tmp_path / name).write_text("old")
  real_fsync, calls = os.fsync, []

  def fsync_then_full(fd):
    calls.append(fd)
    if len(calls) == 2:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_fsync(fd)

  monkeypatch.setattr(files.os, "fsync", fsync_then_full)
  with pytest.raises(OSError), files.atomic_files():
    with files.atomic_write(tmp_path / "per_query.csv") as f:
      f.write("new")
    with files.atomic_write(tmp_path / "results.json") as f:
      f.write("new")
  assert [(tmp_path / n).read_text() for n in ("per_query.csv", "results.json")] == ["old", "old"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["per_query.csv", "results.json"]
  monkeypatch.setattr(files.os, "fsync", real_fsync)
  with files.atomic_files():
    for name in ("per_query.csv", "results.json"):
      files.write_json_atomic(tmp_path / name, {"new": True})
  assert json.loads((tmp_path / "results.json").read_text()) == {"new": True}


def test_the_command_line_ends_a_full_disk_with_one_line(tmp_path, monkeypatch, capsys):
  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results.json"))

  monkeypatch.setattr(cli.engine, "run_experiment", full)
  exits = []
  with pytest.raises(SystemExit):
    cli.main(
      ["run", "--config", f"{ROOT / 'configs/default.py'}:small", "--out", str(tmp_path / "o")],
      exit_now=exits.append,
    )
  assert exits == [1]
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(
    f"w2s_jax: no space left on the device writing {tmp_path}"
  )


@pytest.mark.slow  # three small runs per write site
@pytest.mark.parametrize("site", ["cache", "first_file", "last_file"])
def test_a_full_disk_at_a_write_site_is_one_line_and_the_rerun_completes(
  tmp_path, monkeypatch, capsys, site
):
  """ENOSPC injected where a run writes: the pretrained cache (orbax), the
  first file a run writes (its folder's mark), or its last (results.json). One
  line, exit 1, no results.json; with space again the run resumes and gives
  the numbers of a run that never failed."""
  spec = f"{ROOT / 'configs/default.py'}:small"
  run = lambda out, cache: cli.main(
    [
      "run",
      "--config",
      spec,
      "--out",
      str(out),
      "--cache",
      str(cache),
      "--xla-cache",
      "",
      "--no-progress",
    ],
    exit_now=lambda code: None,
  )
  run(tmp_path / "clean", tmp_path / "clean_cache")
  clean = json.loads((tmp_path / "clean" / "results.json").read_text())
  capsys.readouterr()
  full = OSError(errno.ENOSPC, "No space left on device")
  if site == "cache":
    monkeypatch.setattr(checkpoints, "save_params", lambda *a, **k: (_ for _ in ()).throw(full))
  else:
    real = files.os.replace

    def replace(src, dst):
      name = Path(dst).name
      if name == {"first_file": ".w2s-jax-out", "last_file": "results.json"}[site]:
        full.filename = str(dst)
        raise full
      return real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
  with pytest.raises(SystemExit):
    run(tmp_path / "o", tmp_path / "cache")
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("w2s_jax: no space left on the device writing"), err
  assert not (tmp_path / "o" / "results.json").exists()
  monkeypatch.undo()
  run(tmp_path / "o", tmp_path / "cache")
  again = json.loads((tmp_path / "o" / "results.json").read_text())
  assert json.dumps([c["summary"] for c in again["cells"]]) == json.dumps(
    [c["summary"] for c in clean["cells"]]
  )


@pytest.mark.slow  # two small runs per file a run writes (minutes)
def test_a_full_disk_at_every_file_a_run_writes_is_one_line_and_the_rerun_completes(
  tmp_path, monkeypatch, capsys
):
  """ENOSPC injected at each file a run moves into place in turn (every
  os.replace / os.rename of a cached run: its folder's mark, stage arrays, cell
  records, curves, charts, results.json). Each time: one line, exit 1, no
  results.json unless the failure came after it; then the rerun with space
  again gives the numbers of a run that never failed."""
  spec = f"{ROOT / 'configs/default.py'}:small"
  cache = tmp_path / "cache"
  run = lambda out: cli.main(
    ["run", "--config", spec, "--out", str(out), "--cache", str(cache), "--no-progress",
     "--xla-cache", str(tmp_path / "xla")],
    exit_now=lambda code: None,
  )  # fmt: skip
  real = {name: getattr(files.os, name) for name in ("replace", "rename")}
  written: list[str] = []

  def recording(name):
    def move(src, dst, *args, **kwargs):
      written.append(Path(dst).name)
      return real[name](src, dst, *args, **kwargs)

    return move

  for name in real:
    monkeypatch.setattr(files.os, name, recording(name))
  run(tmp_path / "clean")  # fills the pretrained cache: the runs below write their own files only
  written.clear()
  run(tmp_path / "clean2")
  monkeypatch.undo()
  clean = json.loads((tmp_path / "clean2" / "results.json").read_text())
  targets = list(dict.fromkeys(written))
  # The run's own results.json is the last file it writes (a cell's record, of the
  # same name, comes earlier: failing the name fails both).
  assert ".w2s-jax-out" in targets and written[-1] == "results.json" and len(targets) > 5, targets
  capsys.readouterr()
  for i, target in enumerate(targets):

    def failing(name):
      def move(src, dst, *args, **kwargs):
        if Path(dst).name == target:
          raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real[name](src, dst, *args, **kwargs)

      return move

    for name in real:
      monkeypatch.setattr(files.os, name, failing(name))
    out = tmp_path / f"o{i}"
    with pytest.raises(SystemExit):
      run(out)
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("w2s_jax: no space left on the device writing"), (
      target,
      err,
    )
    assert not (out / "results.json").exists(), target
    run(out)
    again = json.loads((out / "results.json").read_text())
    assert json.dumps([c["summary"] for c in again["cells"]]) == json.dumps(
      [c["summary"] for c in clean["cells"]]
    ), target
