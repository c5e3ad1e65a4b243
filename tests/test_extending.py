"""docs/extending.md's "Add a loss", as written there: the class from the page,
registered by its decorator, checked by hand, and run through the pipeline
on configs/default.py:small beside naive KD."""

import re
from pathlib import Path

import numpy as np
import pytest

from w2s_jax import cli
from w2s_jax.infra.fingerprint import fingerprint
from w2s_jax.training import losses
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.objectives import FunctionLoss, Loss, known_losses, loss_from
from w2s_jax.w2s import engine, tables

from fakes import np_log_softmax, np_softmax

ROOT = Path(__file__).resolve().parents[1]


def _page_blocks():
  page = (ROOT / "docs" / "extending.md").read_text()
  section = page.split("## Add a loss", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def loss_file(tmp_path_factory):
  """The page's function, in a file of the test's own (nothing in the library)."""
  path = tmp_path_factory.mktemp("extending") / "my_losses.py"
  path.write_text(_page_blocks()[0])
  return path


def _by_hand(logits, labels, alpha, beta):
  logp, p = np_log_softmax(logits), np_softmax(logits)
  return np.mean(
    -alpha * (labels * logp).sum(-1) - beta * (p * np.maximum(np.log(labels), -4.0)).sum(-1)
  )


def _logits_labels():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 3)).astype(np.float32)
  labels = rng.dirichlet([1, 1, 1], size=6).astype(np.float32)
  return logits, labels


def test_the_page_s_function_is_a_loss_by_its_file_and_name(loss_file):
  logits, labels = _logits_labels()
  sce = Loss.from_string(f"{loss_file}:symmetric_xent")
  assert isinstance(sce, FunctionLoss) and sce.name == sce.tag == "symmetric_xent"
  got = sce.loss(logits=logits, labels=labels, step_frac=0.0)
  np.testing.assert_allclose(float(got), _by_hand(logits, labels, 1.0, 1.0), rtol=1e-5)
  half = loss_from(f"{loss_file}:symmetric_xent", beta=0.5)
  assert half.tag == "symmetric_xent,beta=0.5"
  got = half.loss(logits=logits, labels=labels, step_frac=0.0)
  np.testing.assert_allclose(float(got), _by_hand(logits, labels, 1.0, 0.5), rtol=1e-5)
  # beta = 0 is naive KD exactly.
  none = loss_from(f"{loss_file}:symmetric_xent", beta=0.0)
  np.testing.assert_allclose(
    float(none.loss(logits=logits, labels=labels, step_frac=0.0)),
    float(losses.xent(logits=logits, labels=labels)),
    rtol=1e-6,
  )
  # A built-in pure function is named the same way (it takes step_frac).
  logconf = Loss.from_string("w2s_jax.training.losses:logconf")
  np.testing.assert_allclose(
    float(logconf.loss(logits=logits, labels=labels, step_frac=0.5)),
    float(losses.logconf(logits=logits, labels=labels, step_frac=0.5)),
    rtol=1e-6,
  )
  # The cache key holds the file's contents: an edit is another loss.
  before = fingerprint(sce)
  edited = loss_file.parent / "edited" / "my_losses.py"
  edited.parent.mkdir(exist_ok=True)
  edited.write_text(loss_file.read_text() + "\n# edited\n")
  assert fingerprint(Loss.from_string(f"{edited}:symmetric_xent"))["digest"] != before["digest"]


@pytest.mark.parametrize(
  "source,match",
  [
    ("{file}:nope", "defines no function 'nope'"),
    ("{file}.missing.py:symmetric_xent", "no such file"),
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("{file}:", "expected FILE.py:FUNCTION or MODULE:FUNCTION"),
  ],
)
def test_a_bad_loss_reference_is_a_named_error(loss_file, source, match):
  with pytest.raises(ValueError, match=match):
    Loss.from_string(source.format(file=loss_file)).loss(
      logits=np.zeros((2, 2), np.float32), labels=np.full((2, 2), 0.5, np.float32), step_frac=0.0
    )
  with pytest.raises(ValueError, match=r"takes no \['gamma'\]"):
    loss_from(f"{loss_file}:symmetric_xent", gamma=1.0)


def test_the_page_s_class_registers_the_function_by_name(loss_file, monkeypatch):
  monkeypatch.syspath_prepend(str(loss_file.parent))
  namespace = {}
  exec(compile(_page_blocks()[1], "extending.md", "exec"), namespace)
  sce = namespace["SymmetricXent"]
  assert "sce" in known_losses("classification") and Loss.from_string("sce") == sce()
  logits, labels = _logits_labels()
  got = sce(beta=0.5).loss(logits=logits, labels=labels, step_frac=0.0)
  np.testing.assert_allclose(float(got), _by_hand(logits, labels, 1.0, 0.5), rtol=1e-5)
  assert sce(beta=0.5).tag == "sce,beta=0.5"


def test_the_page_s_loss_runs_through_the_pipeline_on_the_small_config(loss_file, tmp_path):
  """From the command line's config arg alone: no import, no library edit."""
  cfg = cli.load_config(
    "run",
    f"{ROOT / 'configs/default.py'}:small,losses=xent,{loss_file}:symmetric_xent",
    ["seeds=0,1"],
  )
  assert cfg.losses == (Xent(), Loss.from_string(f"{loss_file}:symmetric_xent"))
  results = engine.run_experiment(
    cfg, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False
  )
  by_label = {c["label"]: c for c in results["cells"]}
  assert set(by_label) == {"xent", "symmetric_xent"}
  for cell in by_label.values():
    stats = cell["summary"]["test"]
    assert 0 <= stats["w2s"]["lo"] <= stats["w2s"]["mean"] <= stats["w2s"]["hi"] <= 1
    assert stats["pgr"]["lo"] <= stats["pgr"]["mean"] <= stats["pgr"]["hi"]
  # Same weak model and ceiling (shared stages); a different student.
  sce = by_label["symmetric_xent"]
  assert sce["per_seed"]["test"]["weak"] == by_label["xent"]["per_seed"]["test"]["weak"]
  assert sce["summary"]["test"]["w2s"] != by_label["xent"]["summary"]["test"]["w2s"]
  table = tables.format_results(results)
  assert re.search(r"^symmetric_xent\s+\d", table, re.M), table
