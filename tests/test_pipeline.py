"""End-to-end smoke run of the pipeline, cache reuse, and vmapped seeds."""

import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from _helpers import tiny_model_cfg
from w2s_jax import configs, models, pipeline, stages
from w2s_jax.data import Dataset
from w2s_jax.objectives import LossConfig
from w2s_jax.train import OptimConfig

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("pipeline")
  cfg = configs.load(f"{ROOT / 'configs/default.py'}:small")
  cfg = dataclasses.replace(cfg, seeds=SEEDS)
  first = pipeline.run(cfg, out_dir=tmp / "run1", cache_dir=tmp / "cache", progress=False)
  second = pipeline.run(cfg, out_dir=tmp / "run2", cache_dir=tmp / "cache", progress=False)
  return cfg, tmp, first, second


def _check_accuracies(tree, num_seeds):
  for split in ("test", "heldout"):
    for name, accs in tree[split].items():
      assert len(accs) == num_seeds, (split, name)
      assert all(0.0 <= a <= 1.0 for a in accs), (split, name, accs)
  assert len(tree["weak_label_accuracy_train_w2s"]) == num_seeds


def test_results_json_written_and_complete(two_runs):
  cfg, tmp, first, _ = two_runs
  path = tmp / "run1" / "results.json"
  assert path.is_file()
  on_disk = json.loads(path.read_text())
  for key in ("config", "versions", "per_seed", "summary", "pretraining"):
    assert key in on_disk, key
  assert on_disk["config"]["name"] == "default-small"
  assert on_disk["config"]["seeds"] == list(SEEDS)
  assert on_disk["versions"]["jax"] == jax.__version__
  per_seed = on_disk["per_seed"]
  assert per_seed["seeds"] == list(SEEDS)
  _check_accuracies(per_seed, len(SEEDS))
  losses = {l.name for l in cfg.losses}
  assert set(per_seed["test"]) == {"weak", "ceiling"} | losses
  assert set(on_disk["summary"]) == {"test", "heldout"}
  for split, per_loss in on_disk["summary"].items():
    assert set(per_loss) == losses
    for name, stats in per_loss.items():
      for model in ("weak", "w2s", "ceiling"):
        s = stats[model]
        assert 0.0 <= s["lo"] <= s["mean"] <= s["hi"] <= 1.0, (split, name, model, s)
      # the summary's point estimates are the seed means of the per-seed numbers
      assert stats["weak"]["mean"] == pytest.approx(np.mean(per_seed[split]["weak"]))
      assert stats["w2s"]["mean"] == pytest.approx(np.mean(per_seed[split][name]))
      assert stats["ceiling"]["mean"] == pytest.approx(np.mean(per_seed[split]["ceiling"]))
  # the in-memory results are what was written (NaN compares unequal, so compare via JSON)
  assert json.dumps(first, sort_keys=True) == json.dumps(on_disk, sort_keys=True)
  assert first["pretraining"]["weak"]["cached"] is False
  assert first["pretraining"]["strong"]["cached"] is False
  assert not list((tmp / "run1").glob("*.tmp"))


def test_second_run_reuses_cache_and_reproduces(two_runs):
  _, tmp, first, second = two_runs
  assert second["pretraining"]["weak"]["cached"] is True
  assert second["pretraining"]["strong"]["cached"] is True
  assert len(list((tmp / "cache").glob("*/info.json"))) == 2
  assert second["per_seed"] == first["per_seed"]
  # Not vacuous: the small config's models differ from one another and across seeds.
  test = first["per_seed"]["test"]
  assert len({*test["weak"], *test["ceiling"]}) > 2
  assert all(c > w for c, w in zip(test["ceiling"], test["weak"]))  # PGR defined on every seed
  for role in ("weak", "strong"):
    for key in ("lives", "works", "final_lm_loss"):
      assert second["pretraining"][role][key] == first["pretraining"][role][key]
  a = json.dumps(first["summary"], sort_keys=True)
  b = json.dumps(second["summary"], sort_keys=True)
  assert a == b
  text = pipeline.format_results(second)
  assert "pretrained (cached)" in text


def _finetune_setup():
  cfg = tiny_model_cfg(vocab_size=11, max_len=6)
  rng = np.random.default_rng(0)
  n = 16
  tokens = rng.integers(1, 11, size=(n, 6)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[::2, :3] = 0
  data = Dataset(tokens=tokens, mask=mask)
  p1 = rng.uniform(size=(3, n)).astype(np.float32)
  labels = np.stack([1 - p1, p1], -1)  # different soft labels per seed
  optim = OptimConfig(steps=3, batch_size=8, lr=1e-2, head_lr=1e-1, warmup_frac=0.0)
  return cfg, data, labels, optim


def _finetune(params, cfg, data, labels, seeds, optim, mesh, params_per_seed=False):
  per_seed = [data.with_fields(labels=l) for l in labels]
  return jax.device_get(stages.finetune(params, cfg, per_seed, seeds=seeds,
                                          loss_cfg=LossConfig("xent"), optim_cfg=optim,
                                          mesh=mesh, desc="t", progress=False,
                                          params_per_seed=params_per_seed))


def test_finetune_seeds_together_equal_one_at_a_time(mesh4):
  cfg, data, labels, optim = _finetune_setup()
  params = jax.device_get(models.init_params(cfg, jax.random.key(0)))
  together = _finetune(params, cfg, data, labels, (0, 1, 2), optim, mesh4)
  for i, seed in enumerate((0, 1, 2)):
    alone = _finetune(params, cfg, data, labels[i:i + 1], (seed,), optim, mesh4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b[0], atol=1e-5), together,
                 alone)
  # the seeds really differ (different labels and batch orders)
  diff = max(float(np.abs(x[0] - x[1]).max()) for x in jax.tree.leaves(together))
  assert diff > 1e-4


def test_finetune_accepts_params_stacked_per_seed(mesh4):
  """With params_per_seed, stacked params give each seed its own start."""
  cfg, data, labels, optim = _finetune_setup()
  starts = [jax.device_get(models.init_params(cfg, jax.random.key(10 + i))) for i in range(2)]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *starts)
  together = _finetune(stacked, cfg, data, labels[:2], (0, 1), optim, mesh4,
                       params_per_seed=True)
  for i in range(2):
    alone = _finetune(starts[i], cfg, data, labels[i:i + 1], (i,), optim, mesh4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b[0], atol=1e-5), together,
                 alone)


def test_format_results_handles_nan_pgr():
  stat = {"mean": 0.5, "lo": 0.4, "hi": 0.6}
  results = {"pretraining": {"weak": {"lives": 0.5, "works": 0.25, "pretrained": False,
                                      "size": "pico"}},
             "per_seed": {"seeds": [0]},
             "summary": {"test": {"xent": {"weak": stat, "w2s": stat, "ceiling": stat,
                                           "pgr": {"mean": math.nan, "lo": math.nan,
                                                   "hi": math.nan}}}},
             "seconds": 1.0}
  text = pipeline.format_results(results)
  assert "not pretrained" in text and "undefined (ceiling ≤ weak)" in text
