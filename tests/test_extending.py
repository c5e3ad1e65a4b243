"""docs/extending.md's "Add a loss", as written there: the class from the page,
registered by its decorator, checked by hand, and run through the pipeline
on configs/default.py:small beside naive KD."""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from w2s_jax import cli
from w2s_jax.training import losses
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.objectives import Loss, known_losses
from w2s_jax.w2s import engine, tables

from fakes import np_log_softmax, np_softmax

ROOT = Path(__file__).resolve().parents[1]


def _loss_module(tmp_path):
  """The first Python block of the page's "Add a loss" section, as a module."""
  page = (ROOT / "docs" / "extending.md").read_text()
  section = page.split("## Add a loss", 1)[1].split("\n## ", 1)[0]
  code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
  path = tmp_path / "my_losses.py"
  path.write_text(code)
  spec = importlib.util.spec_from_file_location("my_losses", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules["my_losses"] = module
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def sce(tmp_path_factory):
  return _loss_module(tmp_path_factory.mktemp("extending")).SymmetricXent


def test_the_page_s_loss_is_registered_and_computes_what_it_says(sce):
  assert "sce" in known_losses("classification") and Loss.from_string("sce") == sce()
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 2)).astype(np.float32)
  p1 = rng.uniform(size=(6, 1)).astype(np.float32)
  labels = np.concatenate([1 - p1, p1], -1)
  # By hand: alpha * CE(labels, p) + beta * CE(p, labels), log(labels) floored.
  logp, p = np_log_softmax(logits), np_softmax(logits)
  want = np.mean(-(labels * logp).sum(-1) - 0.5 * (p * np.maximum(np.log(labels), -4.0)).sum(-1))
  got = sce(beta=0.5).loss(logits=logits, labels=labels, step_frac=0.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # beta = 0 is naive KD exactly.
  np.testing.assert_allclose(
    float(sce(beta=0.0).loss(logits=logits, labels=labels, step_frac=0.0)),
    float(losses.xent(logits=logits, labels=labels)),
    rtol=1e-6,
  )
  assert sce(beta=0.5).tag == "sce,beta=0.5"


def test_the_page_s_loss_runs_through_the_pipeline_on_the_small_config(sce, tmp_path):
  cfg = cli.load_config(
    "run", f"{ROOT / 'configs/default.py'}:small", ["seeds=0,1", "losses=xent,sce"]
  )
  assert cfg.losses == (Xent(), sce())
  results = engine.run_experiment(
    cfg, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False
  )
  by_label = {c["label"]: c for c in results["cells"]}
  assert set(by_label) == {"xent", "sce"}
  for cell in by_label.values():
    stats = cell["summary"]["test"]
    assert 0 <= stats["w2s"]["lo"] <= stats["w2s"]["mean"] <= stats["w2s"]["hi"] <= 1
  # Same weak model and ceiling (shared stages); a different student.
  assert by_label["sce"]["per_seed"]["test"]["weak"] == by_label["xent"]["per_seed"]["test"]["weak"]
  assert by_label["sce"]["summary"]["test"]["w2s"] != by_label["xent"]["summary"]["test"]["w2s"]
  assert "sce" in tables.format_results(results)
