"""The cascade experiment end to end (configs/cascade.py:small): the per-query
table against results.json, recomputed by a plain threshold loop; costs from
the model configs; resume without training; errors before compute."""

import contextlib
import dataclasses
import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from w2s_jax.cascade import experiment as cascade_experiment
from w2s_jax.cascade import per_query
from w2s_jax.cascade.experiment import CascadeConfig
from w2s_jax.infra import configs
from w2s_jax.models import flops
from w2s_jax.tasks import factory
from w2s_jax.w2s import supervision

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cascade_entry", ROOT / "experiments/cascade.py")
cascade_entry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cascade_entry)

SPEC = f"{ROOT / 'configs/cascade.py'}:small"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The small config through the entry point, with one weak model (pico): each
  model size compiles its own programs, and compiles dominate the test."""
  tmp = tmp_path_factory.mktemp("cascade")
  out = tmp / "run"
  cfg = dataclasses.replace(configs.load(SPEC), weak_sizes=("pico",))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    cascade_entry.main(
      [
        "--config",
        SPEC,
        "--set",
        "weak_sizes=pico",
        "--out",
        str(out),
        "--cache",
        str(tmp / "cache"),
        "--xla-cache",
        "",
        "--no-progress",
      ]
    )
  results = json.loads((out / "results.json").read_text())
  return (cfg, tmp, out, results, per_query.read_csv(out / "per_query.csv"), printed.getvalue())


def _loop_curve(scores, weak, strong, weak_cost, strong_cost):
  """Defer the k least confident, ties shared evenly: (accuracy, cost) per k."""
  ordered, acc, cost = np.sort(scores), [], []
  for k in range(len(scores) + 1):
    p = np.zeros(len(scores))
    if k:
      below, tied = scores < ordered[k - 1], scores == ordered[k - 1]
      p = below + tied * (k - below.sum()) / tied.sum()
    acc.append(np.mean(weak * (1 - p) + strong * p))
    cost.append(np.mean(weak_cost + p * strong_cost))
  return np.array(acc), np.array(cost)


def _reach(acc, cost, target):
  k = np.flatnonzero(acc >= target - 1e-12)[0]
  if k == 0:
    return cost[0]
  return cost[k - 1] + (target - acc[k - 1]) / (acc[k] - acc[k - 1]) * (cost[k] - cost[k - 1])


def test_files_and_table_shape(run):
  cfg, _, out, results, table, printed = run
  assert (out / "accuracy_vs_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  n = 20  # the small world's entities per split; 2 evaluation splits per task
  assert results["rows"] == len(table["seed"]) == 2 * 2 * 2 * len(cfg.classification.seeds) * n
  assert set(table["strong"]) == {"ceiling", "w2s"} and set(table["split"]) == {"test", "heldout"}
  # A router's score is set exactly on its own task's rows.
  for kind, routers in per_query.ROUTERS.items():
    rows = table["task"] == kind
    for r in per_query.ROUTER_COLUMNS:
      assert np.isnan(table[r][rows]).all() != (r in routers), (kind, r)
  assert "weak pico -> strong ceiling" in printed and "calibration pico: T" in printed


def test_costs_add_up(run):
  cfg, _, _, results, table, _ = run
  world_task = factory.make_task(world=cfg.classification.world)
  for kind, exp in cfg.experiments().items():
    task = factory.make_task(world=exp.world, gen_cfg=exp.generation)
    per_token = results["models"][kind]
    for w in cfg.weak_sizes:
      assert per_token[w]["flops_per_token"] == flops.model_flops(
        config=exp.model_config(w, task), tokens=1
      )
      for split in ("test", "heldout"):
        rows = (table["task"] == kind) & (table["weak"] == w) & (table["split"] == split)
        q = table["query"][rows]
        weak_t = table["weak_flops"][rows] / per_token[w]["flops_per_token"]
        strong_t = table["strong_flops"][rows] / per_token[cfg.strong_size]["flops_per_token"]
        if kind == "classification":  # both read the query's real tokens
          tokens = world_task.splits[split]["mask"].sum(-1)[q]
          np.testing.assert_allclose(weak_t, tokens, rtol=1e-12)
          np.testing.assert_allclose(strong_t, tokens, rtol=1e-12)
          assert (table["agreement_flops"][rows] == 0).all()
        else:  # prompt + 1..max_new_tokens generated; each sample a full pass
          prompt = task.splits[split]["prompt_mask"].sum(-1)[q]
          longest = task.splits[split]["response_mask"].sum(-1).max()
          for t in (weak_t, strong_t):
            assert np.allclose(t, np.round(t)) and (t >= prompt + 1).all()
            assert (t <= prompt + longest).all()
          samples = table["agreement_flops"][rows] / per_token[w]["flops_per_token"]
          n = cfg.agreement_samples
          assert (samples >= n * (prompt + 1)).all() and (samples <= n * (prompt + longest)).all()
          assert set(np.round(table["sample_agreement"][rows] * n).tolist()) <= set(range(1, n + 1))


def test_results_match_a_threshold_loop_over_the_table(run):
  cfg, _, _, results, table, _ = run
  f = cfg.target_fraction
  checked = 0
  for kind, per_weak in results["summary"].items():
    for w, per_variant in per_weak.items():
      for variant, per_split in per_variant.items():
        for split, entry in per_split.items():
          for seed, got in zip(sorted(set(table["seed"].tolist())), entry["per_seed"]):
            rows = (
              (table["task"] == kind)
              & (table["weak"] == w)
              & (table["strong"] == variant)
              & (table["split"] == split)
              & (table["seed"] == seed)
            )
            weak, strong = table["weak_correct"][rows], table["strong_correct"][rows]
            strong_only = table["strong_flops"][rows].mean()
            assert got["weak_accuracy"] == pytest.approx(weak.mean(), abs=1e-12)
            assert got["strong_accuracy"] == pytest.approx(strong.mean(), abs=1e-12)
            rate = np.arange(len(weak) + 1) / len(weak)
            random = weak.mean() + rate * (strong.mean() - weak.mean())
            for r in per_query.ROUTERS[kind]:
              weak_cost = table["weak_flops"][rows] + table["agreement_flops"][rows] * (
                r == "sample_agreement"
              )
              acc, cost = _loop_curve(
                table[r][rows], weak, strong, weak_cost, table["strong_flops"][rows]
              )
              mine = got["routers"][r]
              gap = acc - random
              area = np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(rate))
              assert mine["area_vs_random"] == pytest.approx(area, abs=1e-9), (kind, w, r)
              assert mine["weak_cost"] == pytest.approx(cost[0] / strong_only, rel=1e-12)
              if strong.mean() > weak.mean():
                target = weak.mean() + f * (strong.mean() - weak.mean())
                assert mine["cost_to_gain"] == pytest.approx(
                  _reach(acc, cost, target) / strong_only, rel=1e-9
                )
                assert mine["defer_to_gain"] == pytest.approx(_reach(acc, rate, target), rel=1e-9)
                # The oracle bounds every router at a given cost.
                assert got["oracle"]["cost_to_gain"] <= mine["cost_to_gain"] * (1 + 1e-9)
                checked += 1
              else:
                assert np.isnan(mine["cost_to_gain"])
  assert checked >= 4  # strong beat weak in enough groups for the reach checks to mean something
  means = results["summary"]["classification"]["pico"]["ceiling"]["test"]
  per_seed = [s["routers"]["max_prob"]["area_vs_random"] for s in means["per_seed"]]
  assert means["mean"]["routers"]["max_prob"]["area_vs_random"]["mean"] == pytest.approx(
    np.mean(per_seed)
  )
  # Pooled: every seed's queries as one population, the same loop over all of them.
  rows = (
    (table["task"] == "classification")
    & (table["weak"] == "pico")
    & (table["strong"] == "ceiling")
    & (table["split"] == "test")
  )
  weak, strong = table["weak_correct"][rows], table["strong_correct"][rows]
  acc, _ = _loop_curve(
    table["max_prob"][rows], weak, strong, table["weak_flops"][rows], table["strong_flops"][rows]
  )
  rate = np.arange(len(weak) + 1) / len(weak)
  gap = acc - (weak.mean() + rate * (strong.mean() - weak.mean()))
  pooled = means["pooled"]["routers"]["max_prob"]
  assert len(weak) == len(per_seed) * np.sum(rows & (table["seed"] == 0))
  assert pooled["area_vs_random"] == pytest.approx(
    np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(rate)), abs=1e-9
  )
  assert np.isfinite(pooled["ibc_lift"]) and pooled["ibc_lift_lo"] < pooled["ibc_lift_hi"]


def test_calibration(run):
  cfg, _, _, results, _, _ = run
  assert set(results["calibration"]) == set(cfg.weak_sizes)
  for c in results["calibration"].values():
    assert c["calibration_examples"] == cfg.calibration_examples
    assert all(1e-2 <= t <= 1e2 for t in c["temperature"])
    for key in ("ece_before:test", "ece_after:test", "ece_after:heldout"):
      assert len(c[key]) == len(cfg.classification.seeds)
      assert all(0 <= e <= 1 for e in c[key])


def test_rerun_resumes_without_training(run, monkeypatch):
  cfg, tmp, out, results, _, _ = run

  def no_training(*args, **kwargs):
    raise AssertionError("a finished stage was recomputed")

  monkeypatch.setattr(supervision.Trainer, "tune", no_training)
  again = cascade_experiment.run(cfg, out_dir=out, cache_dir=tmp / "cache", progress=False)
  assert json.dumps(again["summary"]) == json.dumps(results["summary"])  # NaN-safe


def test_swapped_stage_files_are_computed_again_not_used(run, tmp_path):
  """Issue 28's probe: two stage files of one folder swapped. Each holds its
  stage's identity, compared on load: both are computed again, same results."""
  cfg, tmp, out, results, _, _ = run
  copy = tmp_path / "run"
  shutil.copytree(out, copy)
  folder = next((copy / "stages").glob("classification-*"))
  weak, ceiling = folder / "weak-pico.npz", folder / f"ceiling-{cfg.strong_size}.npz"
  weak_bytes, ceiling_bytes = weak.read_bytes(), ceiling.read_bytes()
  weak.write_bytes(ceiling_bytes)
  ceiling.write_bytes(weak_bytes)
  with pytest.warns(UserWarning, match="not the stage this run asks for") as caught:
    again = cascade_experiment.run(cfg, out_dir=copy, cache_dir=tmp / "cache", progress=False)
  named = "\n".join(str(w.message) for w in caught)
  assert "weak-pico.npz" in named and f"ceiling-{cfg.strong_size}.npz" in named
  assert json.dumps(again["summary"]) == json.dumps(results["summary"])  # NaN-safe


def test_a_folder_of_another_cascade_config_is_refused_unless_overwrite(run, tmp_path):
  """Issue 28: a second run with the same --out and another config replaced
  results.json without a word."""
  cfg, tmp, out, _, _, _ = run
  copy = tmp_path / "run"
  shutil.copytree(out, copy)
  before = (copy / "results.json").read_bytes()
  other = dataclasses.replace(cfg, target_fraction=0.9)  # not in any stage's key: nothing retrains
  with pytest.raises(
    ValueError, match=r"another config \(fields \['target_fraction'\].*--overwrite"
  ):
    cascade_experiment.run(other, out_dir=copy, cache_dir=tmp / "cache", progress=False)
  assert (copy / "results.json").read_bytes() == before
  again = cascade_experiment.run(
    other, out_dir=copy, cache_dir=tmp / "cache", progress=False, overwrite=True
  )
  assert json.loads((copy / "results.json").read_text())["config"] == json.loads(
    json.dumps(again["config"])
  )


def test_bad_config_fails_before_compute(run, tmp_path):
  cfg, tmp, _, _, _, _ = run
  with pytest.raises(
    ValueError,
    match=r"weak_sizes=\('pico', 'mini'\): expected distinct "
    r"sizes, each smaller than strong_size='micro'",
  ):
    dataclasses.replace(cfg, weak_sizes=("pico", "mini"))
  with pytest.raises(ValueError, match="agreement_samples=1: expected >= 2"):
    dataclasses.replace(cfg, agreement_samples=1)
  with pytest.raises(ValueError, match="classification and generative are both None"):
    CascadeConfig()
  with pytest.raises(ValueError, match=r"calibration_examples=19: expected in \[2, 18\]"):
    cascade_experiment.run(
      dataclasses.replace(cfg, calibration_examples=19),
      out_dir=tmp_path / "x",
      cache_dir=tmp / "cache",
      progress=False,
    )
  assert not (tmp_path / "x").exists()


@pytest.mark.slow  # minutes: the small cascade run five times in subprocesses
def test_sigkill_at_random_moments_gives_the_uninterrupted_results(tmp_path):
  """Issue 28: the cascade killed at random moments, rerun after each, ends with
  the uninterrupted run's table and summary; a user's file in its folder stays."""
  import signal
  import subprocess
  import sys
  import time

  def start(out):
    cmd = [sys.executable, str(ROOT / "experiments" / "cascade.py"), "--config", SPEC]
    cmd += ["--set", "weak_sizes=pico", "--out", str(out), "--cache", str(tmp_path / "cache")]
    cmd += ["--xla-cache", str(tmp_path / "xla"), "--no-progress"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

  whole = start(tmp_path / "whole")  # fills the pretrained and compilation caches
  assert whole.wait() == 0, whole.stderr.read().decode()[-3000:]
  expected = (tmp_path / "whole" / "per_query.csv").read_text()
  began = time.perf_counter()  # the killed runs are timed against a cached run, as they are
  cached = start(tmp_path / "cached")
  assert cached.wait() == 0, cached.stderr.read().decode()[-3000:]
  seconds = time.perf_counter() - began
  assert (tmp_path / "cached" / "per_query.csv").read_text() == expected
  summary = json.loads((tmp_path / "whole" / "results.json").read_text())["summary"]
  out, rng, kills = tmp_path / "killed", np.random.default_rng(1), 0
  for _ in range(4):
    proc = start(out)
    time.sleep(rng.uniform(0.1, 0.6) * seconds)
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      kills += 1
    proc.wait()
    if (out / ".w2s-jax-out").exists() and not (out / "notes.txt").exists():
      (out / "notes.txt").write_text("mine")
  assert kills >= 2, f"only {kills} of 4 runs were still going when killed"
  proc = start(out)
  assert proc.wait() == 0, proc.stderr.read().decode()[-3000:]
  assert (out / "per_query.csv").read_text() == expected
  got = json.loads((out / "results.json").read_text())["summary"]
  assert json.dumps(got) == json.dumps(summary)  # NaN-safe
  assert (out / "notes.txt").read_text() == "mine"
