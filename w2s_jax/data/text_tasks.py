"""Real W2S tasks from TensorFlow Datasets, as text examples.

As in openai/weak-to-strong, a task becomes examples (text, label) with a
binary label; a multiple-choice question becomes ONE candidate answer, the
true one with probability 1/2 (label 1) or else a random wrong one (label 0).
Where a task has classes of its own (anli's entailment / neutral /
contradiction, ag_news_subset's four topics), `classes=True` keeps them
instead (TfdsTask.classes names them in label order).

Reading is tfds_source.py's: offline, by random access, nothing downloaded
unless `download=True` is passed.

Everything returned is plain Python/numpy: a TextExamples, the same type as
text_files.read_text_file gives, ready for tokenize.encode_examples.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from w2s_jax.data import tfds_source


@dataclasses.dataclass(frozen=True, eq=False)
class TextExamples:
  """Texts and their integer labels (>= 0), one per example."""

  text: list[str]
  label: np.ndarray  # int64 [N]

  def __post_init__(self):
    text = list(self.text)
    label = np.asarray(self.label)
    if label.ndim != 1:
      raise ValueError(f"TextExamples.label: expected shape [N], got {label.shape}")
    if len(label) and not np.issubdtype(label.dtype, np.integer):
      raise ValueError(f"TextExamples.label: expected ints, got dtype {label.dtype}")
    if len(text) != len(label):
      raise ValueError(f"TextExamples: {len(text)} texts but {len(label)} labels")
    bad = next((i for i, t in enumerate(text) if not isinstance(t, str)), None)
    if bad is not None:
      raise ValueError(f"TextExamples.text[{bad}]: expected str, got {type(text[bad]).__name__}")
    if len(label) and label.min() < 0:
      raise ValueError(f"TextExamples.label: expected ints >= 0, got {label.min()}")
    object.__setattr__(self, "text", text)
    object.__setattr__(self, "label", label.astype(np.int64))

  def __len__(self):
    return len(self.text)

  def take(self, index) -> "TextExamples":
    index = np.asarray(index, dtype=np.int64)
    return TextExamples([self.text[i] for i in index], self.label[index])

  def class_counts(self) -> dict[int, int]:
    values, counts = np.unique(self.label, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


# --- Formatters: (TFDS example, rng) -> (text, label) ------------------------
# Examples come as numpy values from mock data and tfds.load, but as bytes and
# Python lists from real ArrayRecord files: the helpers accept both.


def _label_in(value, num: int, *, field: str = "label") -> int:
  array = np.asarray(value)
  # A float label (2.5, or 1.0 from a CSV-built dataset) is not truncated to an int.
  if array.ndim != 0 or array.dtype.kind not in "iub":
    raise ValueError(f"{field}={value!r}: expected an int in [0, {num})")
  label = int(array)
  if not 0 <= label < num:
    raise ValueError(
      f"{field}={label}: expected an int in [0, {num}) (-1 marks a split without labels)"
    )
  return label


def _one_candidate(
  candidates: Sequence[str], correct: int, rng: np.random.Generator, *, force_wrong: bool = False
) -> tuple[str, int]:
  """The true answer (label 1) with probability 1/2, else a random wrong one (label 0)."""
  true = candidates[correct]
  # Compared by text, not index: a wrong choice that repeats the true answer's
  # text would otherwise be shown labelled 0.
  wrong = [c for c in candidates if c != true]
  label = 0 if force_wrong else int(rng.random() < 0.5)
  if label == 0 and not wrong:
    if force_wrong:
      raise ValueError(f"every candidate equals the true answer {true!r}: no wrong answer to show")
    label = 1
  if label:
    return true, 1
  return wrong[int(rng.integers(len(wrong)))], 0


def format_sst2(ex, rng) -> tuple[str, int]:
  del rng
  return tfds_source.text(ex["sentence"]), _label_in(ex["label"], 2)


def format_imdb(ex, rng) -> tuple[str, int]:
  del rng
  return tfds_source.text(ex["text"]), _label_in(ex["label"], 2)


def format_boolq(ex, rng) -> tuple[str, int]:
  del rng
  return (
    f"Passage: {tfds_source.text(ex['passage'])}\nQuestion: {tfds_source.text(ex['question'])}",
    _label_in(ex["answer"], 2, field="answer"),
  )


COSMOS_NONE_OF_THE_ABOVE = "None of the above choices"


def format_cosmos_qa(ex, rng) -> tuple[str, int]:
  answers = [tfds_source.text(ex[f"answer{i}"]) for i in range(4)]
  correct = _label_in(ex["label"], 4)
  # As the reference does: "None of the above" shown alone as the true answer
  # says nothing about the other choices, so such questions only give a wrong answer.
  none_is_true = answers[correct].startswith(COSMOS_NONE_OF_THE_ABOVE)
  answer, label = _one_candidate(answers, correct, rng, force_wrong=none_is_true)
  return (
    f"Context: {tfds_source.text(ex['context'])}\nQuestion: {tfds_source.text(ex['question'])}\n"
    f"Answer: {answer}",
    label,
  )


def format_hellaswag(ex, rng) -> tuple[str, int]:
  endings = tfds_source.texts(ex["endings"])
  ending, label = _one_candidate(endings, _label_in(ex["label"], len(endings)), rng)
  return (
    f"Topic: {tfds_source.text(ex['activity_label'])}\nContext: {tfds_source.text(ex['context'])}\n"
    f"Ending: {ending}",
    label,
  )


def format_piqa(ex, rng) -> tuple[str, int]:
  solutions = [tfds_source.text(ex["sol1"]), tfds_source.text(ex["sol2"])]
  solution, label = _one_candidate(solutions, _label_in(ex["label"], 2), rng)
  return f"Goal: {tfds_source.text(ex['goal'])}\nSolution: {solution}", label


def format_anli(ex, rng) -> tuple[str, int]:
  del rng
  # TFDS anli labels are (e, n, c): the binary question is "is it entailed?".
  return (
    f"Premise: {tfds_source.text(ex['context'])}\nHypothesis: {tfds_source.text(ex['hypothesis'])}",
    int(_label_in(ex["label"], 3) == 0),
  )


def format_anli_classes(ex, rng) -> tuple[str, int]:
  del rng
  return (
    f"Premise: {tfds_source.text(ex['context'])}\nHypothesis: {tfds_source.text(ex['hypothesis'])}",
    _label_in(ex["label"], 3),
  )


def format_ag_news_classes(ex, rng) -> tuple[str, int]:
  del rng
  return (
    f"{tfds_source.text(ex['title'])}\n{tfds_source.text(ex['description'])}",
    _label_in(ex["label"], 4),
  )


@dataclasses.dataclass(frozen=True)
class TfdsTask:
  format: Callable | None  # (example, rng) -> (text, 0 or 1); None: no binary question
  labeled_splits: tuple[str, ...]
  # TFDS registers its older builders only when their module is imported, and
  # its package import leaves them unimported; None for builders it finds itself.
  builder_module: str | None = None
  # The task's own classes, in label order, and the formatter that keeps
  # them ((example, rng) -> (text, class index)); None: binary only.
  classes: tuple[str, ...] | None = None
  format_classes: Callable | None = None

  def class_names(self, keep_classes: bool) -> tuple[str, ...]:
    return self.classes if keep_classes else ("0", "1")


_HELLASWAG_SPLITS = (
  "train",
  "validation",
  "train_activitynet",
  "train_wikihow",
  "validation_ind_activitynet",
  "validation_ood_activitynet",
  "validation_ind_wikihow",
  "validation_ood_wikihow",
)

ANLI_CLASSES = ("entailment", "neutral", "contradiction")
AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")

# Keyed by TFDS name. super_glue/boolq is left out: its builder needs TensorFlow
# even to be constructed; bool_q holds the same BoolQ data without it.
TASKS: dict[str, TfdsTask] = {
  "glue/sst2": TfdsTask(format_sst2, ("train", "validation"), "tensorflow_datasets.text.glue"),
  "imdb_reviews": TfdsTask(format_imdb, ("train", "test")),
  "bool_q": TfdsTask(format_boolq, ("train", "validation")),
  "cosmos_qa": TfdsTask(
    format_cosmos_qa, ("train", "validation"), "tensorflow_datasets.question_answering.cosmos_qa"
  ),
  "hellaswag": TfdsTask(format_hellaswag, _HELLASWAG_SPLITS, "tensorflow_datasets.text.hellaswag"),
  "piqa": TfdsTask(format_piqa, ("train", "validation")),
  "anli/r1": TfdsTask(
    format_anli,
    ("train", "validation", "test"),
    classes=ANLI_CLASSES,
    format_classes=format_anli_classes,
  ),
  "anli/r2": TfdsTask(
    format_anli,
    ("train", "validation", "test"),
    classes=ANLI_CLASSES,
    format_classes=format_anli_classes,
  ),
  "ag_news_subset": TfdsTask(
    None,
    ("train", "test"),
    "tensorflow_datasets.text.ag_news_subset",
    classes=AG_NEWS_CLASSES,
    format_classes=format_ag_news_classes,
  ),
  "anli/r3": TfdsTask(
    format_anli,
    ("train", "validation", "test"),
    classes=ANLI_CLASSES,
    format_classes=format_anli_classes,
  ),
}


def balance(texts: Sequence[str], labels, *, seed: int) -> tuple[list[str], np.ndarray]:
  """Undersample every class to the size of the smallest; order is kept."""
  labels = np.asarray(labels)
  if len(texts) != len(labels):
    raise ValueError(f"balance: {len(texts)} texts but {len(labels)} labels")
  classes, counts = np.unique(labels, return_counts=True)
  if len(classes) < 2:
    raise ValueError(
      f"balance: only label(s) {classes.tolist()} present, cannot balance "
      "(expected at least 2 classes)"
    )
  rng = np.random.default_rng(seed)
  keep = np.sort(
    np.concatenate(
      [rng.choice(np.flatnonzero(labels == c), size=counts.min(), replace=False) for c in classes]
    )
  )
  return [texts[i] for i in keep], labels[keep]


def examples_from_source(
  source: Sequence,
  format_example: Callable,
  *,
  take: int | None,
  seed: int | Sequence[int],
  balanced: bool = False,
  where: str = "source",
  num_classes: int = 2,
) -> TextExamples:
  """Format `take` examples of a random-access source, picked by a seeded shuffle.

  The same seed gives the same examples, and a smaller take gives a prefix of
  a larger one. Balancing comes after `take`, so it can only shrink the result.
  """
  size = tfds_source.check_source(source, take, where)
  order_rng, format_rng, balance_rng = (
    np.random.default_rng([*np.atleast_1d(seed).tolist(), k]) for k in range(3)
  )
  index = order_rng.permutation(size)[:take].tolist()
  texts, labels = [], []
  for i, example in tfds_source.read_rows(source, index):
    try:
      text, label = format_example(example, format_rng)
    except (KeyError, ValueError, TypeError) as err:
      raise ValueError(f"{where} example {i}: {type(err).__name__}: {err}") from err
    if isinstance(label, bool) or label not in range(num_classes):
      raise ValueError(
        f"{where} example {i}: formatted label {label!r}: expected an int in [0, {num_classes})"
      )
    texts.append(text)
    labels.append(label)
  if balanced:
    texts, labels = balance(texts, labels, seed=int(balance_rng.integers(2**31)))
  return TextExamples(texts, np.asarray(labels, np.int64))


def check_task(name: str, split: str | None = None, *, classes: bool = False) -> TfdsTask:
  """The task, once its name, split and form (binary or its classes) are known to exist."""
  if name not in TASKS:
    raise ValueError(f"task {name!r}: expected one of {sorted(TASKS)}")
  task = TASKS[name]
  if classes and task.classes is None:
    raise ValueError(
      f"task {name!r} with its own classes: it has a binary question only; expected one of "
      f"{sorted(n for n, t in TASKS.items() if t.classes)}"
    )
  if not classes and task.format is None:
    raise ValueError(
      f"task {name!r} has no binary question: keep its {len(task.classes)} classes "
      f"{list(task.classes)} (TextTaskConfig.tfds_classes=True)"
    )
  if split is None:
    return task
  if split not in task.labeled_splits:
    raise ValueError(
      f"split {split!r} of {name}: expected one of {list(task.labeled_splits)} "
      "(the splits that exist and carry labels)"
    )
  return task


def load_task(
  name: str,
  *,
  split: str,
  take: int | None = None,
  seed: int = 0,
  balanced: bool = False,
  data_dir: str | None = None,
  download: bool = False,
  classes: bool = False,
) -> TextExamples:
  """One split of a TFDS task as TextExamples: its binary question, or
  (classes=True) its own classes (TfdsTask.classes).

  take: how many examples to read (a seeded random subset), None for all.
  balanced: undersample the majority class after formatting.
  data_dir: TFDS data directory (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
  download: fetch and prepare the data if missing; by default never, so a run
    cannot start a download: fetch beforehand with download=True.
  """
  task = check_task(name, split, classes=classes)
  tfds_source.check_take(take)
  source = tfds_source.open_tfds_split(
    name, split=split, data_dir=data_dir, download=download, builder_module=task.builder_module
  )
  return examples_from_source(
    source,
    task.format_classes if classes else task.format,
    num_classes=len(task.class_names(classes)),
    take=take,
    seed=tfds_source.split_seed(seed, split),
    balanced=balanced,
    where=f"{name}[{split}]",
  )


def load_task_splits(
  name: str,
  *,
  take: Mapping[str, int | None],
  seed: int = 0,
  balanced: bool = False,
  data_dir: str | None = None,
  download: bool = False,
) -> dict[str, TextExamples]:
  """Several splits at once, e.g. take={"train": 4000, "validation": None}."""
  if not take:
    raise ValueError("take: expected a mapping from split name to size (None for all)")
  for split, n in take.items():  # every split is checked before any is read
    check_task(name, split)
    tfds_source.check_take(n)
  return {
    split: load_task(
      name, split=split, take=n, seed=seed, balanced=balanced, data_dir=data_dir, download=download
    )
    for split, n in take.items()
  }
