"""The one command line: --set reaches every nested field, and a wrong path,
type or kind of config is an error naming it, before any compute."""

import dataclasses
from pathlib import Path

import pytest

from w2s_jax import cli
from w2s_jax.infra import overrides
from w2s_jax.training.classifier_losses import LogConf, Product, Xent
from w2s_jax.w2s.experiment import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = f"{ROOT / 'configs/default.py'}:small"


def test_set_reaches_nested_fields_of_every_kind():
  cfg = cli.load_config(
    "run",
    DEFAULT,
    [
      "finetune.lr=1e-4",
      "seeds=0,2",
      "world.corpus_docs=500",
      "losses.1.aux_coef=0.25",
      "mesh.fsdp=2",
      "weak_finetune=none",
      "pretrain.head_lr=none",
      "remat=true",
      'pretrained_dirs=[["m", "/models/m"]]',
      "name=renamed",
    ],
  )
  assert cfg.finetune.lr == 1e-4 and cfg.seeds == (0, 2) and cfg.world.corpus_docs == 500
  assert cfg.losses == (Xent(), LogConf(aux_coef=0.25))
  assert cfg.mesh.fsdp == 2 and cfg.remat is True and cfg.name == "renamed"
  assert cfg.pretrained_dirs == (("m", "/models/m"),)
  # Later assignments win; a whole tuple of losses by name.
  cfg = cli.load_config("run", DEFAULT, ["finetune.lr=1", "finetune.lr=2", "losses=xent"])
  assert cfg.finetune.lr == 2.0 and cfg.losses == (Xent(),)
  # A sweep's base, and a cell of its grid by index.
  grid = cli.load_config(
    "sweep", f"{ROOT / 'configs/sweep.py'}:tiny", ["base.seeds=0", "cells.0.loss.temperature=2.0"]
  )
  assert grid.base.seeds == (0,) and grid.cells[0].loss == Xent(temperature=2.0)


@pytest.mark.parametrize(
  "assignment,needle",
  [
    ("finetune.lrr=1", "OptimConfig has no field 'lrr'; expected one of"),
    ("nothing=1", "ExperimentConfig has no field 'nothing'"),
    ("seeds=a,b", "--set seeds='a,b': expected tuple[int, ...]"),
    ("finetune.lr=fast", "--set finetune.lr='fast': expected float"),
    ("remat=maybe", "--set remat='maybe': expected bool"),
    ("losses.5.temperature=1", "has 2 items; expected an index in [0, 2)"),
    ("text_task.max_len=3", "text_task is None, so it has no 'max_len' to set"),
    ("world=big", "a whole WorldConfig cannot be read from a string"),
    ("losses=nope", "loss 'nope': expected one of"),
    ("losses=sft", "ExperimentConfig.losses[0]='sft' does not apply to a classification task"),
    ("finetune.steps=0", "--set finetune.steps='0': OptimConfig.steps=0"),
    ("finetune.lr", "expected path=value"),
  ],
)
def test_a_wrong_path_value_or_type_names_it(assignment, needle):
  with pytest.raises((ValueError, TypeError)) as e:
    cli.load_config("run", DEFAULT, [assignment])
  assert needle in str(e.value), str(e.value)


def test_a_config_of_another_kind_is_refused():
  with pytest.raises(TypeError, match="gives a CascadeConfig; `run` expects an? ExperimentConfig"):
    cli.load_config("run", f"{ROOT / 'configs/cascade.py'}:small", [])
  with pytest.raises(AttributeError, match="defines no sweep"):
    cli.load_config("sweep", DEFAULT, [])


def test_the_whole_config_is_type_checked():
  bad = dataclasses.replace(ExperimentConfig(), seeds=[0, 1])  # a list, not a tuple
  with pytest.raises(
    TypeError, match=r"ExperimentConfig.seeds=\[0, 1\]: expected tuple\[int, \.\.\.\]"
  ):
    overrides.check_types(bad)
  deep = dataclasses.replace(ExperimentConfig(), losses=(Product(alpha="strong"),))
  with pytest.raises(TypeError, match=r"ExperimentConfig.losses\[0\].alpha='strong'"):
    overrides.check_types(deep)
  overrides.check_types(ExperimentConfig(losses=(Xent(), LogConf())))


def test_every_command_has_a_thin_wrapper_script():
  for name in ("w2s", "sweep", "cascade", "train", "filter_corpus"):
    text = (ROOT / "experiments" / f"{name}.py").read_text()
    assert "cli.main([" in text and len(text.splitlines()) < 50
