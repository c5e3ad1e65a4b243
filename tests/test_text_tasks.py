"""TFDS tasks as binary text examples, offline: every task is read through
tfds.data_source under tfds.testing.mock_data, as a real run reads it."""

import os
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from w2s_jax.data import text_tasks, tfds_source
from w2s_jax.data.text_tasks import TextExamples

import fakes

N = fakes.TFDS_EXAMPLES  # examples per fake split


@pytest.fixture(autouse=True)
def _fix_tfds_mock_batched_reads(monkeypatch):
  # tfds 4.9.10's mock binds its __getitems__ without `self`, so a batched read
  # (what load_task does, as ArrayRecord reads batches faster) raises TypeError.
  # This stands in for it with the same result: the mocked examples in order.
  from tensorflow_datasets.testing import mocking

  monkeypatch.setattr(
    mocking,
    "_getitems",
    lambda record_keys, generator, serialized=False: [generator[k] for k in record_keys],
  )


def _first_split(name):
  return text_tasks.TASKS[name].labeled_splits[0]


def _load(name, **kwargs):
  """The task's binary question, or its own classes where it has no binary one."""
  return text_tasks.load_task(name, classes=text_tasks.TASKS[name].format is None, **kwargs)


def _labels(name):
  task = text_tasks.TASKS[name]
  return set(range(len(task.class_names(task.format is None))))


def _candidate(text: str) -> str:
  return text.rsplit(": ", 1)[1]  # the last line is "Answer: ...", "Ending: ..." or "Solution: ..."


# hellaswag is left out here: the random mock draws its int32 label in [0, 255)
# and its endings' count at random, so most of its examples are invalid.
@pytest.mark.parametrize("name", sorted(set(text_tasks.TASKS) - {"hellaswag"}))
def test_random_mock_data_gives_binary_examples_deterministically(name):
  with tfds.testing.mock_data(num_examples=12):
    split = _first_split(name)
    first = _load(name, split=split, take=8, seed=3)
    again = _load(name, split=split, take=8, seed=3)
    whole = _load(name, split=split, seed=3)
  assert isinstance(first, TextExamples) and len(first) == 8 and len(whole) == 12
  assert set(first.label.tolist()) <= _labels(name)
  assert all(isinstance(t, str) and t for t in first.text)
  assert first.text == again.text and (first.label == again.label).all()
  # a smaller take is a prefix of a larger one
  assert whole.text[:8] == first.text and (whole.label[:8] == first.label).all()


@pytest.mark.parametrize("name", sorted(text_tasks.TASKS))
def test_every_task_formats_real_shaped_examples(name):
  with fakes.fake_tfds():
    ex = _load(name, split=_first_split(name), seed=0)
    again = _load(name, split=_first_split(name), seed=0)
    other = _load(name, split=_first_split(name), seed=1)
  assert len(ex) == N and set(ex.label.tolist()) == _labels(name)
  assert ex.text == again.text and (ex.label == again.label).all()
  assert ex.text != other.text


def test_formats_match_the_reference_prompts():
  with fakes.fake_tfds():
    sst2 = text_tasks.load_task("glue/sst2", split="validation", take=5)
    boolq = text_tasks.load_task("bool_q", split="train", take=5)
    cosmos = text_tasks.load_task("cosmos_qa", split="train", take=5)
    anli = text_tasks.load_task("anli/r2", split="test")
  for text, label in zip(sst2.text, sst2.label):
    i = int(text.split()[1])
    assert text == f'film {i} "quoted" é ' and label == i % 2
  for text, label in zip(boolq.text, boolq.label):
    i = int(text.split()[2])
    assert text == f"Passage: passage {i}\nQuestion: is {i} even" and label == int(i % 2 == 0)
  for text in cosmos.text:
    context, question, answer = text.split("\n")
    i = int(context.split()[-1])
    assert (context, question) == (f"Context: context {i}", f"Question: question {i}")
    assert answer.startswith("Answer: ")
  for text, label in zip(anli.text, anli.label):
    i = int(text.split("\n")[0].split()[-1])
    assert text == f"Premise: premise {i}\nHypothesis: hyp {i} {fakes.ANLI_CUES[i % 3]}"
    assert label == int(i % 3 == 0)  # entailment is label 0 of (e, n, c)


@pytest.mark.parametrize("name", ["cosmos_qa", "hellaswag", "piqa"])
def test_multiple_choice_gives_one_candidate_labelled_by_correctness(name):
  with fakes.fake_tfds():
    ex = text_tasks.load_task(name, split=_first_split(name), seed=5)
  for text, label in zip(ex.text, ex.label):
    candidate = _candidate(text)
    assert sum(word in text for word in ("right", "wrong")) == 1  # one candidate shown
    assert label == int(candidate.startswith("right")), text
  assert 0.25 < ex.label.mean() < 0.75  # the true answer about half the time


def test_cosmos_none_of_the_above_is_never_the_shown_true_answer():
  rng = np.random.default_rng(0)
  ex = {
    "context": b"c",
    "question": b"q",
    "label": 2,
    "answer0": b"a",
    "answer1": b"b",
    "answer2": b"None of the above choices .",
    "answer3": b"d",
  }
  for _ in range(20):
    text, label = text_tasks.format_cosmos_qa(ex, rng)
    assert label == 0 and _candidate(text) in {"a", "b", "d"}


def test_wrong_candidate_with_the_true_answers_text_is_not_labelled_wrong():
  rng = np.random.default_rng(0)
  ex = {"goal": b"g", "sol1": b"same", "sol2": b"same", "label": 1}
  assert {text_tasks.format_piqa(ex, rng)[1] for _ in range(10)} == {1}


def test_balance_undersamples_the_majority_class():
  texts = [f"t{i}" for i in range(10)]
  labels = np.array([1, 1, 0, 1, 1, 1, 0, 1, 0, 1])
  kept, kept_labels = text_tasks.balance(texts, labels, seed=0)
  assert (kept_labels == 0).sum() == (kept_labels == 1).sum() == 3
  assert kept == sorted(kept, key=texts.index)  # order kept
  assert kept == text_tasks.balance(texts, labels, seed=0)[0]
  with pytest.raises(ValueError, match="cannot balance"):
    text_tasks.balance(texts[:2], labels[:2], seed=0)


def test_balanced_task_has_equal_class_counts():
  with fakes.fake_tfds():
    ex = text_tasks.load_task("anli/r1", split="train", balanced=True)  # 1/3 entailed
  counts = ex.class_counts()
  assert counts[0] == counts[1] == N // 3


def test_split_sizes_and_bad_requests_fail_before_reading():
  with fakes.fake_tfds():
    splits = text_tasks.load_task_splits("piqa", take={"train": 10, "validation": None})
    assert {k: len(v) for k, v in splits.items()} == {"train": 10, "validation": N}
    # Splits are drawn from different seeds: the same index order is not reused.
    assert splits["train"].text != splits["validation"].text[:10]
    with pytest.raises(ValueError, match=r"take=100: glue/sst2\[train\] has only 60"):
      text_tasks.load_task("glue/sst2", split="train", take=100)
    for take in (0, -1, 2.5, True):
      with pytest.raises(ValueError, match="expected a positive int"):
        text_tasks.load_task("glue/sst2", split="train", take=take)
    with pytest.raises(ValueError, match="task 'sst2': expected one of"):
      text_tasks.load_task("sst2", split="train")


@pytest.mark.parametrize(
  "name,split",
  [
    ("glue/sst2", "test"),
    ("glue/sst2", "dev"),
    ("bool_q", "test"),
    ("imdb_reviews", "unsupervised"),
    ("cosmos_qa", "test"),
  ],
)
def test_a_split_that_does_not_exist_or_has_no_labels_is_a_clear_error(name, split):
  with tfds.testing.mock_data(num_examples=3):  # the mock alone would accept any split name
    with pytest.raises(ValueError, match=rf"split '{split}' of {name}: expected one of \["):
      text_tasks.load_task(name, split=split)
    with pytest.raises(ValueError, match=f"split '{split}'"):
      text_tasks.load_task_splits(
        name, take={text_tasks.TASKS[name].labeled_splits[0]: 2, split: 2}
      )


def test_unlabelled_examples_are_an_error_naming_the_example():
  with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: [{"sentence": b"x", "label": -1}]):
    with pytest.raises(ValueError, match=r"glue/sst2\[train\] example 0: .*label=-1"):
      text_tasks.load_task("glue/sst2", split="train")


# A raw label one past each task's range (bool_q's is a bool, so 2 is out too).
_OUT_OF_RANGE = {
  "glue/sst2": ("label", 2, 2),
  "imdb_reviews": ("label", 2, 2),
  "bool_q": ("answer", 2, 2),
  "cosmos_qa": ("label", 4, 4),
  "hellaswag": ("label", 4, 4),
  "piqa": ("label", 2, 2),
  "anli/r1": ("label", 3, 3),
  "anli/r2": ("label", 3, 3),
  "anli/r3": ("label", 3, 3),
  "ag_news_subset": ("label", 4, 4),
}


def test_every_registered_task_has_an_out_of_range_case():
  assert set(_OUT_OF_RANGE) == set(text_tasks.TASKS)


@pytest.mark.parametrize("name", sorted(text_tasks.TASKS))
def test_an_out_of_range_raw_label_names_the_task_split_and_example(name):
  field, value, num = _OUT_OF_RANGE[name]
  split = text_tasks.TASKS[name].labeled_splits[-1]
  bad = 37

  def source(builder, split, **kwargs):
    rows = fakes.fake_tfds_rows(builder.name)
    rows[bad] = {**rows[bad], field: value}
    return rows

  with tfds.testing.mock_data(as_data_source_fn=source):
    with pytest.raises(ValueError) as caught:
      _load(name, split=split)
    # The same examples less the bad one read fine, so the error is about it alone.
    assert len(_load(name, split=split, take=5, seed=1)) == 5
  assert str(caught.value) == (
    f"{name}[{split}] example {bad}: ValueError: {field}={value}: "
    f"expected an int in [0, {num}) (-1 marks a split without labels)"
  )


def test_a_non_integer_raw_label_is_not_truncated():
  rows = [{"sentence": b"fine", "label": 1}, {"sentence": b"odd", "label": 1.5}]
  with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: rows):
    with pytest.raises(
      ValueError,
      match=r"glue/sst2\[validation\] example 1: ValueError: "
      r"label=1\.5: expected an int in \[0, 2\)",
    ):
      text_tasks.load_task("glue/sst2", split="validation")


def test_a_formatter_giving_a_non_binary_label_is_an_error_naming_the_example():
  source = [{"x": 0}, {"x": 1}, {"x": 2}]
  fmt = lambda ex, rng: (f"text {ex['x']}", ex["x"])
  with pytest.raises(
    ValueError, match=r"^mine example 2: formatted label 2: expected an int in \[0, 2\)"
  ):
    text_tasks.examples_from_source(source, fmt, take=None, seed=0, where="mine")
  ok = text_tasks.examples_from_source(source[:2], fmt, take=None, seed=0, where="mine")
  assert sorted(ok.label.tolist()) == [0, 1]


def test_missing_data_is_not_downloaded_and_says_how_to_fetch(tmp_path):
  with pytest.raises(tfds_source.MissingTfdsData, match="download=False"):
    text_tasks.load_task("glue/sst2", split="train", data_dir=str(tmp_path))
  assert not any(p.suffix == ".array_record" for p in tmp_path.rglob("*"))


def test_real_array_record_files_prepared_from_local_sources(tmp_path):
  """The unmocked path: glue/sst2's own builder prepares ArrayRecord files from
  local TSVs (standing in for the download), then data_source reads them."""
  source = tmp_path / "extracted" / "SST-2"
  source.mkdir(parents=True)
  for split, n in (("train", 30), ("dev", 10)):
    rows = "".join(f'film {i} "quoted" é \t{i % 2}\n' for i in range(n))
    (source / f"{split}.tsv").write_text("sentence\tlabel\n" + rows, encoding="utf-8")
  (source / "test.tsv").write_text("index\tsentence\n0\tno label\n", encoding="utf-8")
  data_dir = str(tmp_path / "tfds")
  with mock.patch.object(
    tfds.download.DownloadManager, "download_and_extract", return_value=str(tmp_path / "extracted")
  ):
    text_tasks.load_task("glue/sst2", split="train", take=1, data_dir=data_dir, download=True)
  assert any(
    f.endswith(".array_record-00000-of-00001")
    for f in os.listdir(os.path.join(data_dir, "glue", "sst2", "2.0.0"))
  )
  ex = text_tasks.load_task("glue/sst2", split="validation", data_dir=data_dir)
  assert sorted(ex.text) == sorted(f'film {i} "quoted" é ' for i in range(10))
  assert all(label == int(t.split()[1]) % 2 for t, label in zip(ex.text, ex.label))


def test_tfrecord_data_without_tensorflow_says_what_to_install(monkeypatch):
  def no_random_access(*args, **kwargs):
    raise NotImplementedError("Random access data source for file format tfrecord")

  monkeypatch.setattr(tfds, "data_source", no_random_access)
  monkeypatch.setattr(tfds_source, "prepared_formats", lambda *a: {"tfrecord"})
  monkeypatch.setattr(tfds_source, "tensorflow_installed", lambda: False)
  with pytest.raises(ImportError, match="pip install tensorflow.*--file_format=array_record"):
    text_tasks.load_task("bool_q", split="train")


def test_text_examples_check_their_fields():
  with pytest.raises(ValueError, match="2 texts but 1 labels"):
    TextExamples(["a", "b"], np.array([0]))
  with pytest.raises(ValueError, match=r"text\[1\]: expected str"):
    TextExamples(["a", b"b"], np.array([0, 1]))
  with pytest.raises(ValueError, match="expected ints"):
    TextExamples(["a"], np.array([0.5]))
  with pytest.raises(ValueError, match=">= 0"):
    TextExamples(["a"], np.array([-1]))
  ex = TextExamples(("a", "b", "c"), [1, 0, 1])
  assert ex.take([2, 0]).text == ["c", "a"] and ex.class_counts() == {0: 1, 1: 2}


@pytest.mark.parametrize(
  "name,classes",
  [
    ("anli/r1", ("entailment", "neutral", "contradiction")),
    ("ag_news_subset", ("World", "Sports", "Business", "Sci/Tech")),
  ],
)
def test_tasks_with_classes_of_their_own_keep_them_when_asked(name, classes):
  task = text_tasks.TASKS[name]
  assert task.class_names(True) == classes
  with fakes.fake_tfds():
    kept = text_tasks.load_task(name, split=_first_split(name), classes=True)
  rows = fakes.fake_tfds_rows(name.split("/")[0])
  assert set(kept.label.tolist()) == set(range(len(classes)))
  # The label is the raw class, unchanged (examples come in a seeded order).
  by_text = {t: y for t, y in zip(kept.text, kept.label.tolist())}
  raw = {row["label"] for row in rows}
  assert set(by_text.values()) == raw


def test_asking_for_a_form_a_task_does_not_have_is_a_named_error():
  with pytest.raises(ValueError, match=r"task 'glue/sst2' with its own classes: it has a binary"):
    text_tasks.check_task("glue/sst2", classes=True)
  with pytest.raises(ValueError, match=r"task 'ag_news_subset' has no binary question: keep its 4"):
    text_tasks.check_task("ag_news_subset")
