"""Classification with k classes and labels as a file has them: topics as
strings, ints 0..K-1, label_names fixing the order, and the k-region testbed."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from w2s_jax import cli
from w2s_jax.data import text_files
from w2s_jax.data.text_files import TextFileError
from w2s_jax.infra import configs
from w2s_jax.tasks import classification, factory
from w2s_jax.tasks.classification import TextTaskConfig
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import engine, tables

import fakes

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "configs" / "text.py"


def test_label_names_are_read_from_the_train_file(tmp_path):
  topics = fakes.write_topic_csv(tmp_path / "t.csv", 50, 0)
  assert text_files.infer_label_names(topics) == ("food", "music", "sport", "travel")
  ints = fakes.write_sentiment_jsonl(tmp_path / "s.jsonl", 20, 0)
  assert text_files.infer_label_names(ints) == ("0", "1")
  (tmp_path / "k.jsonl").write_text('{"text": "a", "label": 4}\n{"text": "b", "label": 0}\n')
  assert text_files.infer_label_names(tmp_path / "k.jsonl") == ("0", "1", "2", "3", "4")
  mixed = tmp_path / "mixed.csv"
  mixed.write_text("text,label\na,pos\nb,neg\nc,1\nd,pos\n")
  with pytest.raises(
    TextFileError, match=r"mixed.csv:4: label 1: the file's labels are mostly strings"
  ):
    text_files.infer_label_names(mixed)


def test_string_labels_run_without_label_names_and_label_names_fix_the_order(tmp_path):
  train, test = tmp_path / "train.csv", tmp_path / "test.csv"
  train.write_text(
    "text,label\n"
    + "".join(f"{t},{'pos' if y else 'neg'}\n" for t, y in fakes.sentiment_rows(200, 0))
  )
  test.write_text(
    "text,label\n"
    + "".join(f"{t},{'pos' if y else 'neg'}\n" for t, y in fakes.sentiment_rows(40, 1))
  )
  inferred = configs.load(f"{TEXT}:train={train},test={test},small")
  task = factory.make_task(world=inferred.world, text=inferred.text_task)
  assert task.label_names == ("neg", "pos")  # sorted
  rows = fakes.sentiment_rows(40, 1)
  assert task.splits["test"]["labels"].tolist() == [y for _, y in rows]
  fixed = configs.load(f"{TEXT}:train={train},test={test},label_names=pos,neg,small,seeds=1")
  assert fixed.text_task.label_names == ("pos", "neg") and fixed.seeds == (0,)
  task = factory.make_task(world=fixed.world, text=fixed.text_task)
  assert task.label_names == ("pos", "neg")
  assert task.splits["test"]["labels"].tolist() == [1 - y for _, y in rows]
  # A test label the train file does not have: a named error at its line.
  test.write_text(test.read_text() + "so so,meh\n")
  with pytest.raises(TextFileError, match=r"test.csv:42: unknown label 'meh': expected one of"):
    factory.make_task(world=inferred.world, text=inferred.text_task)
  with pytest.raises(ValueError, match=r"TextTaskConfig.label_names=\('pos',\): expected a tuple"):
    configs.load(f"{TEXT}:train={train},test={test},label_names=pos")


def test_same_file_name_in_two_folders_gives_two_run_names(tmp_path):
  names = []
  for folder in ("a", "b"):
    (tmp_path / folder).mkdir()
    train = fakes.write_sentiment_jsonl(tmp_path / folder / "train.jsonl", 30, len(names))
    test = fakes.write_sentiment_jsonl(tmp_path / folder / "test.jsonl", 10, 9)
    names.append(configs.load(f"{TEXT}:train={train},test={test}").name)
  assert names[0] != names[1]
  assert names[0].startswith("text-a-train-") and names[1].startswith("text-b-train-")
  # The same folder and file name with other contents: another name too.
  fakes.write_sentiment_jsonl(tmp_path / "b" / "train.jsonl", 30, 7)
  again = configs.load(f"{TEXT}:train={tmp_path / 'b' / 'train.jsonl'},test={test}").name
  assert again != names[1] and again.startswith("text-b-train-")


def test_four_class_file_end_to_end_with_pgr_and_intervals(tmp_path):
  train = fakes.write_topic_csv(tmp_path / "train.csv", 400, 0)
  test = fakes.write_topic_csv(tmp_path / "test.csv", 80, 1)
  files = (str(train), str(test))
  # Word-sized tokens and 40 steps: every model above the majority rate, so PGR is defined.
  cfg = fakes.text_experiment(
    files,
    text_task=fakes.text_task_cfg(files, tokenizer="bpe:320"),
    finetune=OptimConfig(steps=40, batch_size=16, lr=3e-3, head_lr=3e-2),
  )
  results = engine.run_experiment(
    cfg, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False
  )
  assert results["task"]["label_names"] == ["food", "music", "sport", "travel"]
  assert results["task"]["splits"]["test"]["chance"] == 0.25
  summary = results["cells"][0]["summary"]["test"]
  majority = results["task"]["splits"]["test"]["majority"]
  for key in ("weak", "w2s", "ceiling"):
    assert 0 <= summary[key]["lo"] <= summary[key]["mean"] <= summary[key]["hi"] <= 1
  assert summary["weak"]["mean"] > majority + 0.2 and summary["ceiling"]["mean"] > majority + 0.2
  assert summary["pgr"]["lo"] <= summary["pgr"]["mean"] <= summary["pgr"]["hi"]
  assert "pgr" in summary and np.isfinite(summary["pgr"]["mean"])
  text = tables.format_results(results)
  assert "classes (4, in label order): food, music, sport, travel" in text
  assert "chance 0.250" in text
  stored = json.loads((tmp_path / "run" / "results.json").read_text())
  assert stored["task"]["label_names"] == results["task"]["label_names"]


def test_k_region_testbed_is_a_k_class_task():
  cfg = configs.load(f"{ROOT / 'configs/default.py'}:small,regions=4")
  assert cfg.world.num_regions == 4 and cfg.name == "default-small-regions4"
  task = classification.testbed_task(cfg.world)
  assert task.num_classes == 4 and task.label_names == ("r0", "r1", "r2", "r3")
  labels = np.concatenate([d["labels"] for d in task.splits.values()])
  assert set(labels.tolist()) == {0, 1, 2, 3}
  assert cfg.model_config(cfg.strong_size, task).num_classes == 4
  with pytest.raises(ValueError, match=r"WorldConfig.num_regions=1: expected >= 2"):
    configs.load(f"{ROOT / 'configs/default.py'}:small,regions=1")


def test_tuple_config_args_take_the_items_that_follow():
  arg = configs.parse_arg("names=a,b,c,small,seeds=2", names=(), small=False, seeds=1)
  assert (arg.names, arg.small, arg.seeds) == (("a", "b", "c"), True, 2)
  with pytest.raises(ValueError, match="config arg 'names' needs values"):
    configs.parse_arg("names", names=())
  with pytest.raises(ValueError, match="config arg 'c': expected one of"):
    configs.parse_arg("seeds=2,c", names=(), seeds=1)


def test_three_class_tfds_task_end_to_end_under_mock_data(tmp_path):
  cfg = TextTaskConfig(
    tfds_name="anli/r1",
    tfds_classes=True,
    tfds_test_split="validation",
    max_len=24,
    gt_examples=24,
    w2s_examples=36,
    tokenizer="bpe:300",
  )
  with fakes.fake_tfds():
    results = engine.run_experiment(
      dataclasses.replace(
        fakes.text_experiment(None),
        text_task=cfg,
        finetune=OptimConfig(steps=40, batch_size=16, lr=3e-3, head_lr=3e-2),
      ),
      out_dir=tmp_path / "run",
      cache_dir=tmp_path / "cache",
      progress=False,
    )
  assert results["task"]["label_names"] == ["entailment", "neutral", "contradiction"]
  sanity = results["task"]["splits"]["test"]
  assert sanity["chance"] == pytest.approx(1 / 3)
  summary = results["cells"][0]["summary"]["test"]
  for key in ("weak", "w2s", "ceiling"):
    assert 0 <= summary[key]["lo"] <= summary[key]["mean"] <= summary[key]["hi"] <= 1
  assert summary["weak"]["mean"] > sanity["majority"] + 0.2
  assert summary["ceiling"]["mean"] > sanity["majority"] + 0.2
  # fake_tfds gives every split the same rows, so models may all be perfect:
  # PGR then is undefined and the table says why.
  if summary["ceiling"]["mean"] > summary["weak"]["mean"]:
    assert summary["pgr"]["lo"] <= summary["pgr"]["mean"] <= summary["pgr"]["hi"]
  else:
    assert "undefined (ceiling ≤ weak" in tables.format_results(results)
  with pytest.raises(ValueError, match="task 'glue/sst2' with its own classes"):
    TextTaskConfig(tfds_name="glue/sst2", tfds_classes=True)


def test_quick_preset_gets_a_new_users_file_above_chance(tmp_path, capsys):
  """configs/text.py's quick preset on a small review file (negation, label
  noise): the weak model and the ceiling above the majority rate, each
  interval clear of it and of each other; its note and schedule printed first."""
  train = fakes.write_review_jsonl(tmp_path / "train.jsonl", 400, 0)
  test = fakes.write_review_jsonl(tmp_path / "test.jsonl", 150, 1, noise=0.0)
  cli.main(
    [
      "run",
      "--config",
      f"{TEXT}:train={train},test={test},quick",
      "--out",
      str(tmp_path / "run"),
      "--cache",
      str(tmp_path / "cache"),
      "--no-progress",
    ]
  )
  printed = capsys.readouterr().out
  assert printed.index("quick preset: a first look") < printed.index("schedule: 3 seeds")
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  majority = results["task"]["splits"]["test"]["majority"]
  summary = results["cells"][0]["summary"]["test"]
  weak, ceiling = summary["weak"], summary["ceiling"]
  assert weak["lo"] > majority and ceiling["lo"] > majority, (majority, weak, ceiling)
  assert ceiling["lo"] > weak["hi"], (weak, ceiling)
