"""End-to-end smoke run of the pipeline, cache reuse, and vmapped seeds."""

import contextlib
import dataclasses
import importlib.util
import io
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.infra import configs, host_memory
from w2s_jax.models import transformer
from w2s_jax.training import finetune
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.w2s import engine, records, stages, tables

from fakes import finetune_setup

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1)
_spec = importlib.util.spec_from_file_location("w2s_entry", ROOT / "experiments/w2s.py")
w2s_entry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(w2s_entry)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("pipeline")
  spec = f"{ROOT / 'configs/default.py'}:small"
  cfg = dataclasses.replace(configs.load(spec), seeds=SEEDS)
  # The first run through the documented command (experiments/w2s.py), the second directly.
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    w2s_entry.main(
      [
        "--config",
        spec,
        "--set",
        "seeds=0,1",
        "--out",
        str(tmp / "run1"),
        "--cache",
        str(tmp / "cache"),
        "--xla-cache",
        "",
        "--no-progress",
      ]
    )
  assert "weak   pico" in printed.getvalue() and "wrote" in printed.getvalue()
  first = json.loads((tmp / "run1" / "results.json").read_text())
  second = engine.run_experiment(cfg, out_dir=tmp / "run2", cache_dir=tmp / "cache", progress=False)
  return cfg, tmp, first, second


def test_results_json_written_and_complete(two_runs):
  cfg, tmp, first, _ = two_runs
  path = tmp / "run1" / "results.json"
  on_disk = json.loads(path.read_text())
  assert on_disk["schema"] == records.SCHEMA
  assert on_disk["config"]["name"] == "default-small"
  assert on_disk["config"]["seeds"] == list(SEEDS)
  assert on_disk["environment"]["versions"]["jax"] == jax.__version__
  assert on_disk["task"]["eval_keys"] == ["test", "heldout"]
  assert list(on_disk["models"]) == [cfg.weak_size, cfg.strong_size]
  # One cell per loss, in the config's order; each its own record on disk too.
  assert [c["label"] for c in on_disk["cells"]] == [loss.tag for loss in cfg.losses]
  for cell in on_disk["cells"]:
    assert cell["seeds"] == list(SEEDS)
    assert len(cell["weak_label_accuracy"]) == len(SEEDS)
    stored = json.loads((tmp / "run1" / "cells" / cell["id"] / "results.json").read_text())
    assert stored["summary"] == cell["summary"] and stored["per_seed"] == cell["per_seed"]
    assert set(cell["summary"]) == {"test", "heldout"}
    for split, stats in cell["summary"].items():
      per_seed = cell["per_seed"][split]
      for model in ("weak", "w2s", "ceiling"):
        s = stats[model]
        assert 0.0 <= s["lo"] <= s["mean"] <= s["hi"] <= 1.0, (split, model, s)
        assert len(per_seed[model]) == len(SEEDS)
        # the summary's point estimates are the seed means of the per-seed numbers
        assert s["mean"] == pytest.approx(np.mean(per_seed[model]))
  # Memory: the run's process peak (>= every steady sample of its loops) and each cell's.
  memory = on_disk["memory"]
  assert 0 < memory["steady_rss_bytes"] <= memory["peak_rss_bytes"]
  assert memory["device_peak_bytes"] is None  # XLA:CPU keeps no device count
  first_cell_memory = on_disk["cells"][0]["memory"]
  assert 0 < first_cell_memory["steady_rss_bytes"] <= first_cell_memory["peak_rss_bytes"]
  assert "memory: peak RSS" in tables.format_results(on_disk)
  # conftest asked for the memory-lean scheduler (an xdist worker inherits it in XLA_FLAGS).
  assert on_disk["environment"]["xla_cpu_scheduler"] in (
    "memory-lean (concurrency-optimized scheduler off)",
    "as XLA_FLAGS sets it",
  )
  assert host_memory.LEAN_SCHEDULER in os.environ["XLA_FLAGS"]
  # Pweak and Pceiling come from the shared stages: the same in every cell.
  first_cell, second_cell = on_disk["cells"]
  assert first_cell["per_seed"]["test"]["weak"] == second_cell["per_seed"]["test"]["weak"]
  assert first_cell["per_seed"]["test"]["ceiling"] == second_cell["per_seed"]["test"]["ceiling"]
  # the in-memory results are what was written (NaN compares unequal, so compare via JSON)
  assert json.dumps(first, sort_keys=True) == json.dumps(on_disk, sort_keys=True)
  assert first["models"][cfg.weak_size]["cached"] is False
  assert first["models"][cfg.strong_size]["cached"] is False
  assert not list((tmp / "run1").glob("*.tmp"))


def test_every_stage_has_a_training_curve_ending_at_its_scores(two_runs):
  """Curves for the weak model, the ceiling and each W2S cell, per seed, in
  the record and in curves/ (JSONL and TensorBoard events); each curve's last
  point is the final params' score, as evaluate() gives it."""
  from tensorboard.backend.event_processing import event_accumulator

  cfg, tmp, first, _ = two_runs
  steps = cfg.finetune.steps
  for cell in first["cells"]:
    assert set(cell["curves"]) == {"weak", "w2s", "ceiling"}
    for stage, curve in cell["curves"].items():
      assert curve["step"][-1] == steps and len(curve["step"]) == cfg.curve_points
      for split in ("test", "heldout"):
        last = curve[f"{split}/accuracy"][-1]
        np.testing.assert_allclose(last, cell["per_seed"][split][stage], atol=1e-6)
    assert "test/agreement" in cell["curves"]["w2s"]  # the student's imitation, as it trains
    oracle = cell["oracle"]["w2s"]
    assert (
      oracle["best"] >= oracle["final"] == pytest.approx(cell["summary"]["test"]["w2s"]["mean"])
    )
    folder = tmp / "run1" / "curves" / "pretrain0" / f"w2s-{cell['id']}"
    for seed in SEEDS:
      events = event_accumulator.EventAccumulator(str(folder / f"seed{seed}"))
      events.Reload()
      assert [e.step for e in events.Tensors("test/accuracy")] == cell["curves"]["w2s"]["step"]
  for stage in (f"weak-{cfg.weak_size}", f"ceiling-{cfg.strong_size}"):
    assert (tmp / "run1" / "curves" / "pretrain0" / stage / "seed1" / "curve.jsonl").is_file()
  assert (tmp / "run1" / "curves" / f"{cfg.weak_size}_{cfg.strong_size}.png").is_file()
  assert "ORACLE-picked" in tables.format_results(first)


def test_second_run_reuses_cache_and_reproduces(two_runs):
  cfg, tmp, first, second = two_runs
  assert all(second["models"][size]["cached"] is True for size in second["models"])
  assert len(list((tmp / "cache").glob("*/info.json"))) == 2
  per_seed = lambda r: [c["per_seed"] for c in r["cells"]]
  assert per_seed(second) == per_seed(first)
  # Not vacuous: the small config's models differ from one another and across seeds.
  test = first["cells"][0]["per_seed"]["test"]
  assert len({*test["weak"], *test["ceiling"]}) > 2
  assert all(c > w for c, w in zip(test["ceiling"], test["weak"]))  # PGR defined on every seed
  for size in (cfg.weak_size, cfg.strong_size):
    for key in ("lives", "works", "final_lm_loss"):
      assert second["models"][size][key] == first["models"][size][key]
  summary = lambda r: json.dumps([c["summary"] for c in r["cells"]], sort_keys=True)
  assert summary(first) == summary(second)
  text = tables.format_results(second)
  assert "pretrained (cached)" in text and "weak   pico" in text


def test_a_second_pretraining_draw_extends_the_runs(two_runs):
  """pretrain_seeds=(0, 1): draw 0's runs are the one-draw run's, bit for bit
  (its pretrained models come from the same cache entries); draw 1 pretrains
  its own; the intervals resample both levels and the table says so."""
  cfg, tmp, first, _ = two_runs
  both = engine.run_experiment(
    dataclasses.replace(cfg, pretrain_seeds=(0, 1)),
    out_dir=tmp / "two_draws",
    cache_dir=tmp / "cache",
    progress=False,
  )
  for one, two in zip(first["cells"], both["cells"]):
    assert two["pretrain_seeds"] == [0, 1] and two["seeds"] == list(SEEDS)
    assert two["runs"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    for key, per_model in two["per_seed"].items():
      for model, values in per_model.items():
        assert values[:2] == one["per_seed"][key][model], (key, model)
    assert [info["seed"] for info in two["pretraining"]["strong"]] == [0, 1]
    assert two["pretraining"]["strong"][0]["cached"] is True
    assert two["pretraining"]["strong"][1]["cached"] is False
    stats = two["summary"]["test"]
    assert stats["draws"] == {"pretraining": 2, "runs": 4, "examples": 20}
    for model in ("weak", "w2s", "ceiling"):
      assert stats[model]["lo"] <= stats[model]["mean"] <= stats[model]["hi"]
      fixed = stats["fixed_pretraining"][model]
      assert fixed["lo"] <= stats[model]["mean"] <= fixed["hi"]
  assert [d["seed"] for d in both["models"][cfg.strong_size]["draws"]] == [0, 1]
  assert (tmp / "two_draws/shared/pretrain1").is_dir()
  text = tables.format_results(both)
  assert "2 pretraining draws x 2 seeds, 20 examples" in text
  assert "PGR, pretraining fixed" in text and "imitation" in text


def test_a_single_run_is_a_sweep_of_its_pair_and_resumes_from_its_store(two_runs, monkeypatch):
  """The run's folder is a sweep folder: a rerun into it computes nothing and
  gives the same record; the rows are the cells'."""
  cfg, tmp, first, _ = two_runs
  rows = [json.loads(line) for line in (tmp / "run1" / "sweep.jsonl").read_text().splitlines()]
  assert [r["cell"] for r in rows] == [c["id"] for c in first["cells"]]
  assert [r["test/pgr/mean"] for r in rows] == [
    c["summary"]["test"]["pgr"]["mean"] for c in first["cells"]
  ]

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run trained again")

  monkeypatch.setattr(stages, "weak_stage", no_training)
  monkeypatch.setattr(stages, "ceiling_stage", no_training)
  monkeypatch.setattr(stages, "w2s_stage", no_training)
  again = engine.run_experiment(cfg, out_dir=tmp / "run1", cache_dir=tmp / "cache", progress=False)
  assert [c["summary"] for c in again["cells"]] == [c["summary"] for c in first["cells"]]


def _finetune(params, cfg, data, labels, seeds, optim, mesh, params_per_seed=False):
  per_seed = [data.with_fields(labels=l) for l in labels]
  return jax.device_get(
    finetune.finetune(
      params,
      cfg,
      per_seed,
      seeds=seeds,
      loss_cfg=Xent(),
      optim_cfg=optim,
      mesh=mesh,
      desc="t",
      progress=False,
      params_per_seed=params_per_seed,
    )[0]
  )


def test_finetune_seeds_together_equal_one_at_a_time(mesh4):
  cfg, data, labels, optim = finetune_setup()
  params = jax.device_get(transformer.init_params(cfg, jax.random.key(0)))
  together = _finetune(params, cfg, data, labels, (0, 1, 2), optim, mesh4)
  for i, seed in enumerate((0, 1, 2)):
    alone = _finetune(params, cfg, data, labels[i : i + 1], (seed,), optim, mesh4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b[0], atol=1e-5), together, alone)
  # the seeds really differ (different labels and batch orders)
  diff = max(float(np.abs(x[0] - x[1]).max()) for x in jax.tree.leaves(together))
  assert diff > 1e-4


@pytest.mark.parametrize("seeds_per_pass", [1, 2])
def test_finetune_seeds_in_groups_equal_all_at_once(mesh4, seeds_per_pass):
  """OptimConfig.seeds_per_pass only changes how many seeds train together:
  every seed's params (from its own start) and training curve are the
  all-at-once run's, sharded the same; a count that does not divide the
  seeds is a named error."""
  cfg, data, labels, optim = finetune_setup()
  labels = np.concatenate([labels, labels[:1]])  # four seeds
  starts = jax.vmap(lambda k: transformer.init_params(cfg, k))(
    jax.random.split(jax.random.key(0), 4)
  )
  per_seed = [data.with_fields(labels=l) for l in labels]
  measure = lambda p: {
    "norm": jax.vmap(lambda q: sum(jnp.sum(x**2) for x in jax.tree.leaves(q)))(p)
  }

  def run(optim):
    return finetune.finetune(
      starts,
      cfg,
      per_seed,
      seeds=(0, 1, 2, 3),
      loss_cfg=Xent(),
      optim_cfg=optim,
      mesh=mesh4,
      desc="t",
      progress=False,
      params_per_seed=True,
      measure=measure,
      measure_every=2,
    )

  together, together_curve = run(optim)
  in_groups, groups_curve = run(dataclasses.replace(optim, seeds_per_pass=seeds_per_pass))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), together, in_groups)
  jax.tree.map(lambda a, b: assert_same_sharding(a, b), together, in_groups)
  assert [p["step"] for p in groups_curve] == [p["step"] for p in together_curve]
  assert len(groups_curve[0]["norm"]) == 4
  for a, b in zip(together_curve, groups_curve):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["norm"], b["norm"], rtol=1e-5)
  params = jax.device_get(transformer.init_params(cfg, jax.random.key(0)))
  with pytest.raises(ValueError, match=r"seeds_per_pass=2: expected a divisor of the 3 seeds"):
    _finetune(
      params, cfg, data, labels[:3], (0, 1, 2), dataclasses.replace(optim, seeds_per_pass=2), mesh4
    )
  with pytest.raises(ValueError, match=r"OptimConfig.seeds_per_pass=-1: expected an int >= 0"):
    dataclasses.replace(optim, seeds_per_pass=-1)


def assert_same_sharding(a, b):
  assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)


def test_finetune_accepts_params_stacked_per_seed(mesh4):
  """With params_per_seed, stacked params give each seed its own start."""
  cfg, data, labels, optim = finetune_setup()
  starts = [jax.device_get(transformer.init_params(cfg, jax.random.key(10 + i))) for i in range(2)]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *starts)
  together = _finetune(stacked, cfg, data, labels[:2], (0, 1), optim, mesh4, params_per_seed=True)
  for i in range(2):
    alone = _finetune(starts[i], cfg, data, labels[i : i + 1], (i,), optim, mesh4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b[0], atol=1e-5), together, alone)


def test_format_results_handles_nan_pgr():
  stat = {"mean": 0.5, "lo": 0.4, "hi": 0.6}
  nan = {"mean": math.nan, "lo": math.nan, "hi": math.nan}
  results = {
    "models": {
      "pico": {"lives": 0.5, "works": 0.25, "pretrained": False},
      "nano": {"lives": 0.7, "works": 0.5, "pretrained": False},
    },
    "task": {"eval_keys": ["test"]},
    "cells": [
      {
        "cell": {"weak": "pico", "strong": "nano"},
        "label": "xent",
        "seeds": [0],
        "summary": {"test": {"weak": stat, "w2s": stat, "ceiling": stat, "pgr": nan}},
      }
    ],
    "seconds": 1.0,
  }
  text = tables.format_results(results)
  assert "not pretrained" in text and "undefined (ceiling ≤ weak)" in text
