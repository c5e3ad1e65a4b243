"""What the W2S pipeline trains and evaluates on: the offline testbed or a real text task.

A `Task` holds the classification splits (train_gt, train_w2s, test, ...),
the unlabelled text models are pretrained on, the vocabulary and context
sizes, a fingerprint of what determines pretraining (part of cache keys), and
a probe of what pretraining taught a model. `make_task` builds one from an
ExperimentConfig's `world` (testbed) or `text_task` (a TFDS task or local
TSV/CSV/JSONL files, tokenized by bytes or by a checkpoint's tokenizer.json).
"""

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from w2s_jax import inference, scores, testbed, text_files, text_tasks, tokenize
from w2s_jax.data import Dataset

BYTES = "bytes"


@dataclasses.dataclass(frozen=True)
class TextTaskConfig:
  """A binary text task. Its train split is divided, after a seeded shuffle,
  into train_gt (the weak model's and the ceiling's ground truth) and
  train_w2s (what the weak model labels); all train texts, without labels,
  are the pretraining corpus of from-scratch models."""
  tfds_name: str | None = None   # a text_tasks TFDS task ("glue/sst2", "bool_q", ...)
  train_file: str | None = None  # or local TSV/CSV/JSONL files with text and label fields
  test_file: str | None = None
  tfds_train_split: str = "train"
  tfds_test_split: str = "validation"
  data_dir: str | None = None    # TFDS data directory; data is never downloaded at run time
  text_field: str = "text"
  label_field: str = "label"
  # "bytes"; "bpe:N", a byte-level BPE of N tokens learnt from the train texts;
  # or the path of a checkpoint's tokenizer.json
  tokenizer: str = BYTES
  max_len: int = 64
  # The train splits' length (None: max_len). SST-2's train phrases average 13
  # tokens, its dev sentences 25: a shorter train length cuts the padding a
  # fine-tune computes on, while every split is still scored whole.
  train_max_len: int | None = None
  overflow: str = "truncate"     # or "drop" (text_tasks counts either)
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
      raise ValueError("TextTaskConfig: set tfds_name or both train_file and test_file, "
                       f"not {'both' if self.tfds_name else 'neither'}")
    if self.tfds_name is None and None in files:
      raise ValueError(f"TextTaskConfig: train_file={self.train_file!r}, "
                       f"test_file={self.test_file!r}: expected both")
    if not isinstance(self.max_len, int) or self.max_len < 1:
      raise ValueError(f"TextTaskConfig.max_len={self.max_len!r}: expected an int >= 1")
    if self.train_max_len is not None and (not isinstance(self.train_max_len, int)
                                           or not 1 <= self.train_max_len <= self.max_len):
      raise ValueError(f"TextTaskConfig.train_max_len={self.train_max_len!r}: expected None or an "
                       f"int in [1, max_len={self.max_len}]")
    for name in ("gt_examples", "w2s_examples"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"TextTaskConfig.{name}={value!r}: expected an int >= 1 or None "
                         "(a split of the train examples)")
    if self.overflow not in tokenize.OVERFLOW:
      raise ValueError(f"TextTaskConfig.overflow={self.overflow!r}: expected one of "
                       f"{tokenize.OVERFLOW}")

  def corpus_fields(self) -> dict:
    """What determines the pretraining corpus."""
    return {k: v for k, v in dataclasses.asdict(self).items()
            if k not in ("gt_examples", "w2s_examples", "test_examples", "balanced",
                         "train_max_len")}

  def split_len(self, split: str) -> int:
    return self.train_max_len or self.max_len if split.startswith("train") else self.max_len


@dataclasses.dataclass
class Task:
  name: str
  splits: dict[str, Dataset]
  eval_splits: tuple[str, ...]
  vocab_size: int
  max_len: int
  fingerprint: dict  # what determines pretraining; part of cache keys
  make_corpus: Callable[[], Dataset]
  # probe(params, model_cfg, mesh) -> {name: value}: what pretraining taught a model
  probe: Callable[..., dict]
  world: testbed.World | None = None
  encoding: dict = dataclasses.field(default_factory=dict)  # truncated/dropped counts per split
  # Generative tasks (gen_tasks.py): splits of prompts and responses, graded by
  # score(split, tokens, mask) -> {metric: [N]} for each metric (the first is the headline).
  kind: str = "classification"
  metrics: tuple[str, ...] = ("accuracy",)
  score: Callable | None = None
  eos_id: int | None = None
  pad_id: int = 0
  decode: Callable | None = None  # token ids -> text, where the task has a tokenizer
  # answers(tokens, mask) -> int [N, fields]: each generation's parsed answer per
  # field (ids comparable within one call; -1: none), without the references;
  # answer_class: the column of a class-like field (a few values), or None.
  answers: Callable | None = None
  answer_class: int | None = None
  # Per-model encoding (text classification): encode_with(tokenizer_file, *,
  # encoder) -> (splits, encoding), the same examples in the same order through
  # another model's tokenizer.json; None where every model shares `splits`.
  encode_with: Callable | None = None
  tokenizer: str | None = None   # the spec `splits` were encoded with

  @property
  def generative(self) -> bool:
    return self.kind == "generative"

  @functools.cached_property
  def corpus(self) -> Dataset:
    return self.make_corpus()


def make_task(*, world: testbed.WorldConfig, text=None, generation=None) -> Task:
  """The task an experiment runs on: the testbed or a text task, classifying
  or (with a gen_tasks.GenerationConfig) generating."""
  # gen_tasks builds on this module's Task, so it is imported here, not above.
  from w2s_jax import gen_tasks
  if isinstance(text, gen_tasks.GenTextTaskConfig):
    return gen_tasks.text_generative_task(text)
  if text is not None:
    return text_task(text)
  if generation is not None:
    return gen_tasks.testbed_generative_task(world, generation)
  return testbed_task(world)


def fact_accuracy(params, model_cfg, world, mesh) -> dict:
  """Fraction of (entity, relation) facts whose city the LM ranks first among cities."""
  prompts, answers = testbed.fact_probe(world)
  probs = inference.next_token_probs(params, model_cfg, prompts, mesh=mesh)
  cities = world.city_tokens
  known = cities[np.argmax(probs[:, cities], axis=-1)] == answers
  n = world.cfg.num_entities
  out = {rel: float(known[i * n:(i + 1) * n].mean()) for i, rel in enumerate(testbed.RELATIONS)}
  for split, ents in world.split_entities.items():
    out[f"lives/{split}"] = float(known[ents].mean())
  return out


def testbed_task(world_cfg: testbed.WorldConfig) -> Task:
  world = testbed.make_world(world_cfg)
  return Task(name="testbed", splits=testbed.task_splits(world), eval_splits=("test", "heldout"),
              vocab_size=len(world.vocab), max_len=world_cfg.doc_len,
              fingerprint=world_cfg.corpus_fields(),
              make_corpus=lambda: testbed.pretraining_corpus(world),
              probe=lambda params, model_cfg, mesh: fact_accuracy(params, model_cfg, world, mesh),
              world=world)


def make_tokenizer(spec: str, texts=()):
  """spec: "bytes", "bpe:N" (learnt from texts) or a tokenizer.json path."""
  if spec == BYTES:
    return tokenize.ByteTokenizer()
  if spec.startswith("bpe:"):
    try:
      vocab_size = int(spec[4:])
    except ValueError:
      raise ValueError(f"TextTaskConfig.tokenizer={spec!r}: expected 'bpe:<vocab size>'") from None
    return tokenize.train_bpe(texts, vocab_size=vocab_size)
  return tokenize.HFTokenizer.from_file(spec)


def _read_examples(cfg: TextTaskConfig) -> tuple[text_tasks.TextExamples, text_tasks.TextExamples]:
  if cfg.tfds_name is not None:
    read = lambda split, take: text_tasks.load_task(cfg.tfds_name, split=split, take=take,
                                                    seed=cfg.seed, data_dir=cfg.data_dir)
    return read(cfg.tfds_train_split, None), read(cfg.tfds_test_split, cfg.test_examples)
  # Every split's labels are checked against the task's two classes, with file and line.
  read = lambda path: text_files.read_text_file(path, text_field=cfg.text_field,
                                                label_field=cfg.label_field, num_labels=2)
  test = read(cfg.test_file)
  if cfg.test_examples is not None and cfg.test_examples < len(test):
    rng = np.random.default_rng([cfg.seed, 1])
    test = test.take(np.sort(rng.choice(len(test), cfg.test_examples, replace=False)))
  return read(cfg.train_file), test


def _balanced(examples: text_tasks.TextExamples, seed: int) -> text_tasks.TextExamples:
  texts, labels = text_tasks.balance(examples.text, examples.label, seed=seed)
  return text_tasks.TextExamples(text=list(texts), label=np.asarray(labels))


def split_train(train, test, cfg) -> dict:
  """train_gt and train_w2s, disjoint, from a seeded shuffle of the train
  examples (TextExamples or PromptResponses), and test as it is. cfg: a text
  task config with gt_examples, w2s_examples (None: see split_sizes) and seed."""
  gt, w2s = split_sizes(cfg, len(train))
  order = np.random.default_rng([cfg.seed, 0]).permutation(len(train))
  return {"train_gt": train.take(order[:gt]), "train_w2s": train.take(order[gt:gt + w2s]),
          "test": test}


def split_sizes(cfg, num_train: int) -> tuple[int, int]:
  """(train_gt, train_w2s) sizes: as set, or, where None, half of the train
  examples each, or what the other one leaves."""
  gt, w2s = cfg.gt_examples, cfg.w2s_examples
  if gt is None:
    gt = num_train // 2 if w2s is None else num_train - w2s
  if w2s is None:
    w2s = num_train - gt
  name = type(cfg).__name__
  if gt < 1 or w2s < 1 or gt + w2s > num_train:
    raise ValueError(f"{name}: gt_examples={cfg.gt_examples}, w2s_examples={cfg.w2s_examples} "
                     f"need {max(gt, 1) + max(w2s, 1)} examples (at least one each), but the "
                     f"train split has {num_train}")
  return gt, w2s


def text_task(cfg: TextTaskConfig) -> Task:
  """Reads, splits and tokenizes a text task; the corpus is tokenized on first use."""
  train, test = _read_examples(cfg)
  parts = split_train(train, test, cfg)
  if cfg.balanced:
    parts = {name: _balanced(ex, cfg.seed) for name, ex in parts.items()}
  tokenizer = make_tokenizer(cfg.tokenizer, train.text)
  encode = functools.partial(tokenize.encode_examples, tokenizer=tokenizer,
                             overflow=cfg.overflow, add_bos=cfg.add_bos)
  splits, encoding = {}, {}
  for name, examples in parts.items():
    splits[name], encoding[name] = encode(examples, max_len=cfg.split_len(name))

  def corpus() -> Dataset:
    # Next-token training reads the start of each text: truncate on the right.
    data, _ = tokenize.encode_examples(train, tokenizer, max_len=cfg.max_len, overflow="truncate",
                                       truncate_side="right", add_bos=cfg.add_bos)
    return Dataset(tokens=data["tokens"], mask=data["mask"])

  def probe(params, model_cfg, mesh, test=None) -> dict:
    test_xent = scores.cross_entropy(params, model_cfg, splits["test"] if test is None else test,
                                     batch_size=_probe_batch(mesh), mesh=mesh)
    return {"test_lm_xent": float(np.mean(test_xent))}

  def encode_with(tokenizer_file, *, encoder: bool):
    """The splits through a model's own tokenizer.json. Encoders read
    [CLS] text [SEP], as BERT was trained."""
    if cfg.overflow == "drop":
      raise ValueError("TextTaskConfig.overflow='drop' with a model that brings its own "
                       f"tokenizer ({tokenizer_file}): expected 'truncate', so that every "
                       "tokenizer keeps the same examples and labels pass between models by index")
    own = tokenize.HFTokenizer.from_file(tokenizer_file)
    encode_own = functools.partial(tokenize.encode_examples, tokenizer=own,
                                   overflow=cfg.overflow, add_bos=encoder or cfg.add_bos,
                                   add_eos=encoder)
    out, report = {}, {}
    for name, examples in parts.items():
      out[name], report[name] = encode_own(examples, max_len=cfg.split_len(name))
    return out, report

  return Task(name=cfg.tfds_name or str(cfg.train_file), splits=splits, eval_splits=("test",),
              vocab_size=tokenizer.vocab_size, max_len=cfg.max_len,
              fingerprint=cfg.corpus_fields(), make_corpus=corpus, probe=probe,
              encoding=encoding, encode_with=encode_with, tokenizer=cfg.tokenizer)


def _probe_batch(mesh) -> int:
  return max(mesh.size, 64 // mesh.size * mesh.size)
