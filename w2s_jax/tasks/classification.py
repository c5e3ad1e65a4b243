"""Classification tasks: the testbed's region question, or a labelled text task.

`testbed_task` asks for the region of an entity's home (testbed.py);
`text_task` reads a TFDS task or local TSV/CSV/JSONL files (TextTaskConfig),
split into train_gt and train_w2s, tokenized by bytes, a BPE learnt from the
train text, or a checkpoint's tokenizer.json. Both are `ClassificationTask`s
(the `base.Task` protocol), scored by accuracy.
"""

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from w2s_jax.data import testbed, text_files, text_tasks, tokenize
from w2s_jax.data.dataset import Dataset
from w2s_jax.infra.fingerprint import CONTENTS, WHEN_SET, fingerprint
from w2s_jax.models import inference, scoring
from w2s_jax.tasks.base import BYTES, make_tokenizer, probe_batch, split_train


@dataclasses.dataclass(frozen=True)
class TextTaskConfig:
  """A text classification task of k classes. Its train split is divided, after a seeded shuffle,
  into train_gt (the weak model's and the ceiling's ground truth) and
  train_w2s (what the weak model labels); all train texts, without labels,
  are the pretraining corpus of from-scratch models."""

  tfds_name: str | None = None  # a text_tasks TFDS task ("glue/sst2", "bool_q", ...)
  # or local TSV/CSV/JSONL files with text and label fields (keyed by their contents)
  train_file: str | None = dataclasses.field(default=None, metadata=CONTENTS)
  test_file: str | None = dataclasses.field(default=None, metadata=CONTENTS)
  # Keep a TFDS task's own classes (anli's 3, ag_news_subset's 4) instead of
  # its binary question (text_tasks.TfdsTask.classes).
  tfds_classes: bool = dataclasses.field(default=False, metadata=WHEN_SET)
  tfds_train_split: str = "train"
  tfds_test_split: str = "validation"
  data_dir: str | None = None  # TFDS data directory; data is never downloaded at run time
  text_field: str = "text"
  label_field: str = "label"
  # A file's classes, in label order: the label values as the files have
  # them. None: read from the train file (ints 0..K-1, or its distinct
  # strings sorted); a test label outside them is an error at its line.
  label_names: tuple[str, ...] | None = None
  # "bytes"; "bpe:N", a byte-level BPE of N tokens learnt from the train texts;
  # or the path of a checkpoint's tokenizer.json
  tokenizer: str = dataclasses.field(default=BYTES, metadata=CONTENTS)
  max_len: int = 64
  # The train splits' length (None: max_len). SST-2's train phrases average 13
  # tokens, its dev sentences 25: a shorter train length cuts the padding a
  # fine-tune computes on, while every split is still scored whole.
  train_max_len: int | None = None
  overflow: str = "truncate"  # or "drop" (text_tasks counts either)
  add_bos: bool = True
  # None: half the train split each (train_gt the first half of the shuffle,
  # train_w2s the rest), or what the other leaves when only one is set.
  gt_examples: int | None = 2000
  w2s_examples: int | None = 4000
  test_examples: int | None = None  # None: the whole test split
  balanced: bool = False
  seed: int = 0

  def __post_init__(self):
    files = (self.train_file, self.test_file)
    if (self.tfds_name is None) == (files == (None, None)):
      raise ValueError(
        "TextTaskConfig: set tfds_name or both train_file and test_file, "
        f"not {'both' if self.tfds_name else 'neither'}"
      )
    if self.tfds_name is None and None in files:
      raise ValueError(
        f"TextTaskConfig: train_file={self.train_file!r}, "
        f"test_file={self.test_file!r}: expected both"
      )
    if not isinstance(self.max_len, int) or self.max_len < 1:
      raise ValueError(f"TextTaskConfig.max_len={self.max_len!r}: expected an int >= 1")
    if self.train_max_len is not None and (
      not isinstance(self.train_max_len, int) or not 1 <= self.train_max_len <= self.max_len
    ):
      raise ValueError(
        f"TextTaskConfig.train_max_len={self.train_max_len!r}: expected None or an "
        f"int in [1, max_len={self.max_len}]"
      )
    for name in ("gt_examples", "w2s_examples"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(
          f"TextTaskConfig.{name}={value!r}: expected an int >= 1 or None "
          "(a split of the train examples)"
        )
    if self.label_names is not None and (
      not isinstance(self.label_names, tuple)
      or len(self.label_names) < 2
      or len(set(self.label_names)) != len(self.label_names)
      or not all(isinstance(n, str) and n for n in self.label_names)
    ):
      raise ValueError(
        f"TextTaskConfig.label_names={self.label_names!r}: expected a tuple of at least "
        "two distinct, non-empty strings (the label values, in class order)"
      )
    if self.tfds_name is not None:
      text_tasks.check_task(self.tfds_name, classes=self.tfds_classes)
    elif self.tfds_classes:
      raise ValueError(
        "TextTaskConfig.tfds_classes=True with files: expected a tfds_name (a file's "
        "classes are its labels; label_names orders them)"
      )
    if self.label_names is not None and self.tfds_name is not None:
      raise ValueError(
        f"TextTaskConfig.label_names={self.label_names!r} with tfds_name="
        f"{self.tfds_name!r}: expected None (a TFDS task names its own classes)"
      )
    if self.overflow not in tokenize.OVERFLOW:
      raise ValueError(
        f"TextTaskConfig.overflow={self.overflow!r}: expected one of {tokenize.OVERFLOW}"
      )

  def corpus_fields(self) -> dict:
    """What determines the pretraining corpus (files by their contents)."""
    return {
      k: v
      for k, v in fingerprint(self).items()
      if k
      not in (
        "type",
        "gt_examples",
        "w2s_examples",
        "test_examples",
        "balanced",
        "train_max_len",
        "label_names",
      )
    }

  def split_len(self, split: str) -> int:
    return self.train_max_len or self.max_len if split.startswith("train") else self.max_len


@dataclasses.dataclass
class ClassificationTask:
  """A `base.Task` whose splits hold labels (Dataset tokens, mask, labels)."""

  name: str
  splits: dict[str, Dataset]
  eval_splits: tuple[str, ...]
  vocab_size: int
  max_len: int
  fingerprint: dict  # what determines pretraining; part of cache keys
  make_corpus: Callable[[], Dataset]
  # probe_fn(params, model_cfg, mesh, test) -> {name: value}: what pretraining taught a
  # model; test: the test split as the model reads it (None: the task's own).
  probe_fn: Callable[..., dict]
  world: testbed.World | None = None
  encoding: dict = dataclasses.field(default_factory=dict)  # truncated/dropped counts per split
  # encode_fn(tokenizer_file, *, encoder) -> (splits, encoding): the same examples in
  # the same order through another model's tokenizer.json; None where it cannot.
  encode_fn: Callable | None = None
  tokenizer: str | None = None  # the spec `splits` were encoded with
  metrics: tuple[str, ...] = ("accuracy",)
  # The classes, in label order: label i is label_names[i] (a file's or
  # TFDS's names, or the ints themselves as strings).
  label_names: tuple[str, ...] = ("0", "1")
  # Each example holds one sequence per class, and a model scores each with
  # one scalar (tokens [N, classes, L]; a pointwise reward model, preference.py).
  per_choice: bool = False

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  @property
  def generative(self) -> bool:
    return False

  @functools.cached_property
  def corpus(self) -> Dataset:
    return self.make_corpus()

  def probe(self, params, model_cfg, mesh, *, test: Dataset | None = None) -> dict:
    return self.probe_fn(params, model_cfg, mesh, test)

  def encode_with(self, tokenizer_file: str, *, encoder: bool) -> tuple[dict, dict]:
    if self.encode_fn is None:
      raise ValueError(
        f"the {self.name} task encodes every model with one tokenizer "
        f"({self.tokenizer or 'its own vocabulary'})"
      )
    return self.encode_fn(tokenizer_file, encoder=encoder)


def fact_accuracy(params, model_cfg, world, mesh) -> dict:
  """Fraction of (entity, relation) facts whose city the LM ranks first among cities."""
  prompts, answers = testbed.fact_probe(world)
  probs = inference.next_token_probs(params, model_cfg, prompts, mesh=mesh)
  cities = world.city_tokens
  known = cities[np.argmax(probs[:, cities], axis=-1)] == answers
  n = world.cfg.num_entities
  out = {rel: float(known[i * n : (i + 1) * n].mean()) for i, rel in enumerate(testbed.RELATIONS)}
  for split, ents in world.split_entities.items():
    out[f"lives/{split}"] = float(known[ents].mean())
  return out


def testbed_task(world_cfg: testbed.WorldConfig) -> ClassificationTask:
  world = testbed.make_world(world_cfg)
  return ClassificationTask(
    name="testbed",
    splits=testbed.task_splits(world),
    eval_splits=("test", "heldout"),
    vocab_size=len(world.vocab),
    max_len=world_cfg.doc_len,
    fingerprint=world_cfg.corpus_fields(),
    make_corpus=lambda: testbed.pretraining_corpus(world),
    probe_fn=lambda params, model_cfg, mesh, test: fact_accuracy(params, model_cfg, world, mesh),
    world=world,
    label_names=tuple(f"r{r}" for r in range(world_cfg.num_regions)),
  )


def _read_examples(cfg: TextTaskConfig):
  """(train, test, label_names): the examples, labels as class indices."""
  if cfg.tfds_name is not None:
    read = lambda split, take: text_tasks.load_task(
      cfg.tfds_name,
      split=split,
      take=take,
      seed=cfg.seed,
      data_dir=cfg.data_dir,
      classes=cfg.tfds_classes,
    )
    train, test = read(cfg.tfds_train_split, None), read(cfg.tfds_test_split, cfg.test_examples)
    return train, test, text_tasks.TASKS[cfg.tfds_name].class_names(cfg.tfds_classes)
  names = cfg.label_names or text_files.infer_label_names(
    cfg.train_file, label_field=cfg.label_field
  )
  ints = names == tuple(str(i) for i in range(len(names)))
  # Every split's labels are checked against the task's classes, with file and line.
  read = lambda path: text_files.read_text_file(
    path,
    text_field=cfg.text_field,
    label_field=cfg.label_field,
    label_names=None if ints and cfg.label_names is None else names,
    num_labels=len(names),
  )
  test = read(cfg.test_file)
  if cfg.test_examples is not None and cfg.test_examples < len(test):
    rng = np.random.default_rng([cfg.seed, 1])
    test = test.take(np.sort(rng.choice(len(test), cfg.test_examples, replace=False)))
  return read(cfg.train_file), test, names


def _balanced(examples: text_tasks.TextExamples, seed: int) -> text_tasks.TextExamples:
  texts, labels = text_tasks.balance(examples.text, examples.label, seed=seed)
  return text_tasks.TextExamples(text=list(texts), label=np.asarray(labels))


def text_task(cfg: TextTaskConfig) -> ClassificationTask:
  """Reads, splits and tokenizes a text task; the corpus is tokenized on first use."""
  train, test, label_names = _read_examples(cfg)
  parts = split_train(train, test, cfg)
  if cfg.balanced:
    parts = {name: _balanced(ex, cfg.seed) for name, ex in parts.items()}
  tokenizer = make_tokenizer(cfg.tokenizer, train.text)
  encode = functools.partial(
    tokenize.encode_examples, tokenizer=tokenizer, overflow=cfg.overflow, add_bos=cfg.add_bos
  )
  splits, encoding = {}, {}
  for name, examples in parts.items():
    splits[name], encoding[name] = encode(examples, max_len=cfg.split_len(name))

  def corpus() -> Dataset:
    # Next-token training reads the start of each text: truncate on the right.
    data, _ = tokenize.encode_examples(
      train,
      tokenizer,
      max_len=cfg.max_len,
      overflow="truncate",
      truncate_side="right",
      add_bos=cfg.add_bos,
    )
    return Dataset(tokens=data["tokens"], mask=data["mask"])

  def probe(params, model_cfg, mesh, test) -> dict:
    test_xent = scoring.cross_entropy(
      params,
      model_cfg,
      splits["test"] if test is None else test,
      batch_size=probe_batch(mesh),
      mesh=mesh,
    )
    return {"test_lm_xent": float(np.mean(test_xent))}

  def encode_with(tokenizer_file, *, encoder: bool):
    """The splits through a model's own tokenizer.json. Encoders read
    [CLS] text [SEP], as BERT was trained."""
    if cfg.overflow == "drop":
      raise ValueError(
        "TextTaskConfig.overflow='drop' with a model that brings its own "
        f"tokenizer ({tokenizer_file}): expected 'truncate', so that every "
        "tokenizer keeps the same examples and labels pass between models by index"
      )
    own = tokenize.HFTokenizer.from_file(tokenizer_file)
    encode_own = functools.partial(
      tokenize.encode_examples,
      tokenizer=own,
      overflow=cfg.overflow,
      add_bos=encoder or cfg.add_bos,
      add_eos=encoder,
    )
    out, report = {}, {}
    for name, examples in parts.items():
      out[name], report[name] = encode_own(examples, max_len=cfg.split_len(name))
    return out, report

  return ClassificationTask(
    name=cfg.tfds_name or str(cfg.train_file),
    splits=splits,
    eval_splits=("test",),
    vocab_size=tokenizer.vocab_size,
    max_len=cfg.max_len,
    fingerprint=cfg.corpus_fields(),
    make_corpus=corpus,
    probe_fn=probe,
    encoding=encoding,
    encode_fn=encode_with,
    tokenizer=cfg.tokenizer,
    label_names=label_names,
  )
