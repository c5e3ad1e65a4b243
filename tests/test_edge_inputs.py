"""Issue 28's smaller defects: every bad or degenerate input gets a clear
answer before any compute, naming what it is about."""

import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest

from w2s_jax.data import text_files
from w2s_jax.infra import configs
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


def test_split_sanity_of_a_one_class_split():
  task = types.SimpleNamespace(generative=False, splits={"test": {"labels": np.zeros(3, np.int32)}})
  assert records.split_sanity(task)["test"]["majority"] == 1.0
