"""The W2S pipeline on a real-text task: local files, byte tokens, and imported
Hugging Face checkpoints with their own tokenizer.json."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from w2s_jax.data.text_files import TextFileError
from w2s_jax.infra import configs
from w2s_jax.tasks import base, classification, factory
from w2s_jax.tasks.classification import TextTaskConfig
from w2s_jax.w2s import engine, tables
from w2s_jax.w2s import grid as sweep_grid

import fakes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return fakes.sentiment_files(tmp_path_factory.mktemp("sst"))


def test_text_task_splits_encoding_and_corpus(files):
  task = classification.text_task(fakes.text_task_cfg(files))
  assert {k: len(v) for k, v in task.splits.items()} == {
    "train_gt": 96,
    "train_w2s": 128,
    "test": 64,
  }
  assert task.eval_splits == ("test",)
  assert task.vocab_size == base.make_tokenizer("bytes").vocab_size
  assert len(task.corpus) == 400 and set(task.corpus) == {"tokens", "mask"}
  assert task.encoding["test"]["examples"] == 64
  # train_gt and train_w2s are disjoint rows of the train file
  gt, w2s = (set(map(bytes, task.splits[s]["tokens"])) for s in ("train_gt", "train_w2s"))
  assert len(gt | w2s) > 0.9 * (96 + 128)


def test_text_task_config_errors(files):
  with pytest.raises(ValueError, match="set tfds_name or both"):
    TextTaskConfig()
  with pytest.raises(ValueError, match="test_file=None"):
    TextTaskConfig(train_file=files[0])
  with pytest.raises(ValueError, match="train split has 400"):
    classification.text_task(fakes.text_task_cfg(files, gt_examples=300, w2s_examples=200))


@pytest.mark.parametrize(
  "gt,w2s,expected",
  [
    (None, None, (200, 200)),
    (100, None, (100, 300)),
    (None, 150, (250, 150)),
    (96, 128, (96, 128)),
  ],
)
def test_split_sizes_default_to_a_split_of_the_train_file(files, gt, w2s, expected):
  task = classification.text_task(fakes.text_task_cfg(files, gt_examples=gt, w2s_examples=w2s))
  assert (len(task.splits["train_gt"]), len(task.splits["train_w2s"])) == expected
  with pytest.raises(ValueError, match="gt_examples=400, w2s_examples=None .* has 400"):
    classification.text_task(fakes.text_task_cfg(files, gt_examples=400, w2s_examples=None))
  with pytest.raises(
    ValueError, match=r"TextTaskConfig.gt_examples=0: expected an int >= 1 or None"
  ):
    fakes.text_task_cfg(files, gt_examples=0)


def test_generic_text_config_reads_a_users_file(files, tmp_path):
  # A JSONL file with its own field names, as a new user brings it.
  rows = [l.split("\t") for l in Path(files[0]).read_text().splitlines()[1:]]
  train = tmp_path / "mine.jsonl"
  train.write_text("".join(f'{{"sentence": "{t}", "y": {y}}}\n' for t, y in rows))
  test = tmp_path / "mine_test.jsonl"
  test.write_text("".join(f'{{"sentence": "{t}", "y": {y}}}\n' for t, y in rows[:40]))
  spec = f"{ROOT / 'configs/text.py'}:train={train},test={test},text=sentence,label=y,small,seeds=1"
  cfg = configs.load(spec)
  assert cfg.name.startswith(f"text-{tmp_path.name}-mine-") and cfg.name.endswith("-small")
  assert cfg.text_task.gt_examples is None
  # The pipeline itself on text files is test_pipeline_on_text_files; here, what
  # the config makes of the file: its fields, and half of its rows per split.
  task = factory.make_task(world=cfg.world, text=cfg.text_task)
  assert {k: len(v) for k, v in task.splits.items()} == {
    "train_gt": 200,
    "train_w2s": 200,
    "test": 40,
  }
  assert task.splits["test"]["labels"].tolist() == [int(y) for _, y in rows[:40]]
  with pytest.raises(ValueError, match="test=PATH is required"):
    configs.load(f"{ROOT / 'configs/text.py'}:train={train}")
  # Wrong field names: the config's own reading of the file (its row count) names it.
  with pytest.raises(TextFileError, match="mine.jsonl:1: missing field 'text'"):
    configs.load(f"{ROOT / 'configs/text.py'}:train={train},test={test},small")


def test_pipeline_on_text_files(files, tmp_path):
  results = engine.run_experiment(
    fakes.text_experiment(files),
    out_dir=tmp_path / "run",
    cache_dir=tmp_path / "cache",
    progress=False,
  )
  assert results["task"]["eval_keys"] == ["test"]
  stats = results["cells"][0]["summary"]["test"]
  for key in ("weak", "w2s", "ceiling"):
    assert 0 <= stats[key]["lo"] <= stats[key]["mean"] <= stats[key]["hi"] <= 1
  assert results["task"]["encoding"]["train_gt"]["examples"] == 96
  assert "test_lm_xent" in results["models"]["nano"]
  text = tables.format_results(results)
  assert "test_lm_xent" in text and "Pweak" in text


def test_pipeline_with_imported_checkpoints(files, tmp_path):
  words = sorted({w for ws in fakes.WORDS.values() for w in ws} | set(fakes.FILLER))
  dirs = (
    ("gpt2-a", fakes.tiny_gpt2(tmp_path / "a", 1, words)),
    ("gpt2-b", fakes.tiny_gpt2(tmp_path / "b", 3, words)),
  )
  cfg = fakes.text_experiment(files, pretrained_dirs=dirs, weak_size="gpt2-a", strong_size="gpt2-b")
  cfg = dataclasses.replace(
    cfg,
    text_task=fakes.text_task_cfg(files, tokenizer=f"{dirs[0][1]}/tokenizer.json", add_bos=False),
  )
  results = engine.run_experiment(
    cfg, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False
  )
  assert results["models"]["gpt2-b"]["pretrained"].startswith("imported from")
  assert 0 <= results["cells"][0]["summary"]["test"]["w2s"]["mean"] <= 1
  assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
  # Sweeps order imported models by their real size.
  assert sweep_grid.pairs(["gpt2-b", "gpt2-a"], dirs) == [("gpt2-a", "gpt2-b")]


# The TFDS path of a real run (classification.text_task -> text_tasks.load_task ->
# tfds.data_source), offline under tfds.testing.mock_data.


def test_pipeline_on_tfds_sst2_under_mock_data(tmp_path):
  cfg = TextTaskConfig(tfds_name="glue/sst2", max_len=24, gt_examples=20, w2s_examples=32)
  with fakes.fake_tfds():
    task = classification.text_task(cfg)
    assert {k: len(v) for k, v in task.splits.items()} == {
      "train_gt": 20,
      "train_w2s": 32,
      "test": 60,
    }
    results = engine.run_experiment(
      dataclasses.replace(fakes.text_experiment(None), text_task=cfg),
      out_dir=tmp_path / "run",
      cache_dir=tmp_path / "cache",
      progress=False,
    )
  assert results["task"]["eval_keys"] == ["test"]
  assert results["task"]["encoding"]["test"]["examples"] == 60


def test_bpe_learnt_from_the_task_text_is_deterministic(files):
  task_a = classification.text_task(fakes.text_task_cfg(files, tokenizer="bpe:300"))
  task_b = classification.text_task(fakes.text_task_cfg(files, tokenizer="bpe:300"))
  assert task_a.vocab_size == task_b.vocab_size <= 300
  for split in task_a.splits:
    np.testing.assert_array_equal(task_a.splits[split]["tokens"], task_b.splits[split]["tokens"])
  # Whole words became single tokens: far fewer tokens than bytes.
  by_bytes = classification.text_task(fakes.text_task_cfg(files))
  assert task_a.splits["test"]["mask"].sum() < 0.5 * by_bytes.splits["test"]["mask"].sum()
  with pytest.raises(ValueError, match="expected 'bpe:<vocab size>'"):
    base.make_tokenizer("bpe:many", ["a b"])


def test_label_outside_the_binary_task_in_the_test_file_names_file_and_line(files, tmp_path):
  rows = Path(files[1]).read_text().splitlines()
  text, _ = rows[3].split("\t")
  rows[3] = f"{text}\t2"  # line 4 of the file
  bad = tmp_path / "test.tsv"
  bad.write_text("\n".join(rows) + "\n")
  with pytest.raises(TextFileError, match=rf"{bad}:4: label 2: expected an int in \[0, 2\)"):
    classification.text_task(fakes.text_task_cfg((files[0], str(bad))))


def test_tokenizer_larger_than_the_models_vocabulary_fails_before_compute(files, tmp_path):
  words = sorted({w for ws in fakes.WORDS.values() for w in ws} | set(fakes.FILLER))
  model_dir = fakes.tiny_gpt2(tmp_path / "m", 1, words[:4])  # a vocabulary of 6 ids
  big_tokenizer = fakes.tiny_gpt2(tmp_path / "t", 1, words) + "/tokenizer.json"
  cfg = fakes.text_experiment(
    files,
    pretrained_dirs=(("gpt2-a", model_dir), ("gpt2-b", model_dir)),
    weak_size="gpt2-a",
    strong_size="gpt2-b",
  )
  # The folder's own tokenizer.json, which the model reads the task through,
  # does not match its config.json's vocabulary: both files are named.
  (Path(model_dir) / "tokenizer.json").write_bytes(Path(big_tokenizer).read_bytes())
  with pytest.raises(
    ValueError,
    match=rf"tokenizer {model_dir}/tokenizer.json has "
    rf"{len(words) + 2} ids but model gpt2-a "
    rf"\({model_dir}/config.json\)'s vocabulary has 6",
  ):
    engine.run_experiment(
      cfg, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False
    )
  # A folder without a tokenizer.json reads the task's tokenizer, checked alike.
  (Path(model_dir) / "tokenizer.json").unlink()
  cfg = dataclasses.replace(
    cfg, text_task=fakes.text_task_cfg(files, tokenizer=big_tokenizer, add_bos=False)
  )
  with pytest.raises(
    ValueError,
    match=rf"tokenizer {big_tokenizer} has {len(words) + 2} ids but "
    "model gpt2-a",
  ):
    engine.run_experiment(
      cfg, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False
    )
