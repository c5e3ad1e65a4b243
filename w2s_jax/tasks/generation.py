"""Generative tasks: prompt -> response splits and how generations are scored.

A `GenerationTask` (the `base.Task` protocol) has splits of Dataset(prompt,
prompt_mask, response, response_mask), laid out as sequences.py describes.
`task.score(split, tokens, mask)` grades generations against the split's
references, one value per example and metric, the first metric being the
headline one.

On the testbed (`testbed_generative_task`) the facts of the hidden world must
come from pretraining: the prompt `<bos> a3 b17 lives` asks for the entity's
home, the response `c4 is in r1 .` states the city (a fact pretraining
taught) and its region (pretraining's city sentences). The format is a
choice (testbed_formats.FORMATS).
"""

import dataclasses
import functools
import hashlib
from collections.abc import Callable

import numpy as np

from w2s_jax.data import gen_text, testbed
from w2s_jax.data.dataset import Dataset
from w2s_jax.infra.fingerprint import CONTENTS, fingerprint
from w2s_jax.models import scoring
from w2s_jax.tasks import classification, text_metrics
from w2s_jax.tasks.base import make_tokenizer, probe_batch, split_train
from w2s_jax.tasks.layout import sequences
from w2s_jax.tasks.testbed_formats import FORMATS, testbed_split


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """What makes an experiment generative, and how its models generate."""

  format: str = "city_region"  # testbed response format (FORMATS); text tasks ignore it
  max_new_tokens: int | None = None  # None: the longest ground-truth response
  weak_samples: int = 1  # weak responses per train_w2s prompt (> 1 needs a temperature)
  weak_temperature: float = 0.0  # 0: the weak model writes its greedy response
  weak_top_p: float | None = None

  def __post_init__(self):
    if self.format not in FORMATS:
      raise ValueError(
        f"GenerationConfig.format={self.format!r}: expected one of {sorted(FORMATS)}"
      )
    if self.max_new_tokens is not None and self.max_new_tokens < 1:
      raise ValueError(f"GenerationConfig.max_new_tokens={self.max_new_tokens}: expected >= 1")
    if self.weak_samples < 1:
      raise ValueError(f"GenerationConfig.weak_samples={self.weak_samples}: expected >= 1")
    # Checked here, before any compute (they are used only once the weak model is trained).
    if not self.weak_temperature >= 0:
      raise ValueError(
        f"GenerationConfig.weak_temperature={self.weak_temperature!r}: expected >= 0 (0: greedy)"
      )
    if self.weak_top_p is not None and not 0 < self.weak_top_p <= 1:
      raise ValueError(
        f"GenerationConfig.weak_top_p={self.weak_top_p!r}: expected None or in (0, 1]"
      )
    if self.weak_samples > 1 and self.weak_temperature == 0:
      raise ValueError(
        f"GenerationConfig.weak_samples={self.weak_samples} with "
        "weak_temperature=0: greedy decoding gives one response per prompt; "
        "expected a temperature > 0"
      )


@dataclasses.dataclass
class GenerationTask:
  """A `base.Task` whose splits hold prompts and responses, scored on generations."""

  name: str
  splits: dict[str, Dataset]
  eval_splits: tuple[str, ...]
  vocab_size: int
  max_len: int
  fingerprint: dict  # what determines pretraining; part of cache keys
  make_corpus: Callable[[], Dataset]
  probe_fn: Callable[..., dict]  # as ClassificationTask.probe_fn
  # score(split, tokens, mask) -> {metric: [N]} for each metric (the first is the headline).
  score: Callable[..., dict]
  metrics: tuple[str, ...]
  eos_id: int | None = None
  pad_id: int = 0
  decode: Callable | None = None  # token ids -> text, where the task has a tokenizer
  # answers(tokens, mask) -> int [N, fields]: each generation's parsed answer per
  # field (ids comparable across calls; -1: none), without the references;
  # answer_names: the fields' names; answer_class: the column of a class-like
  # field (a few values), or None.
  answers: Callable | None = None
  answer_names: tuple[str, ...] = ()
  answer_class: int | None = None
  world: testbed.World | None = None
  encoding: dict = dataclasses.field(default_factory=dict)
  tokenizer: str | None = None

  @property
  def generative(self) -> bool:
    return True

  @functools.cached_property
  def corpus(self) -> Dataset:
    return self.make_corpus()

  def probe(self, params, model_cfg, mesh, *, test: Dataset | None = None) -> dict:
    return self.probe_fn(params, model_cfg, mesh, test)

  def encode_with(self, tokenizer_file: str, *, encoder: bool) -> tuple[dict, dict]:
    del encoder
    raise ValueError(
      f"the {self.name} task (generative) encodes every model with one tokenizer "
      f"({self.tokenizer or 'its own vocabulary'}), not {tokenizer_file}"
    )


def score_fields(*, tokens, mask, truth, fields: dict) -> dict:
  """Per example: the share of fields generated right ("fields") and whether the
  whole response, and its end, match ("exact"). tokens, mask: [N, T]
  generations; truth: [N, R] the ground-truth response."""
  tokens, mask, truth = np.asarray(tokens), np.asarray(mask), np.asarray(truth)
  n, width = truth.shape
  if tokens.shape[1] < width:
    tokens = np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=-1)
    mask = np.pad(mask, ((0, 0), (0, width - mask.shape[1])))
  generated = np.where(mask[:, :width] > 0, tokens[:, :width], -1)
  per_field = np.stack([generated[:, col] == truth[:, col] for col in fields.values()], axis=1)
  exact = (generated == truth).all(1) & (mask.sum(1) == width)
  return {"fields": per_field.mean(1), "exact": exact.astype(np.float64)}


def stable_id(text: str) -> int:
  """A parsed answer as a non-negative int64, the same in every call and process."""
  digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") & (2**62 - 1)


def answer_fields(tokens, mask, *, fields: dict) -> np.ndarray:
  """Each generation's token in each field's column, -1 where none was
  generated there: [N, fields], comparable across generations (no truth)."""
  tokens, mask = np.asarray(tokens), np.asarray(mask)
  return np.stack(
    [
      np.where(mask[:, col] > 0, tokens[:, col], -1)
      if col < tokens.shape[1]
      else np.full(len(tokens), -1)
      for col in fields.values()
    ],
    axis=1,
  )


def testbed_generative_task(world_cfg: testbed.WorldConfig, gen_cfg: GenerationConfig):
  """The classification testbed's world, corpus and probe (so its cache
  entries), with prompt -> response splits in place of the binary ones."""
  base = classification.testbed_task(world_cfg)
  world = base.world
  fmt = FORMATS[gen_cfg.format]
  splits, fields = {}, {}
  for name in testbed.SPLITS:
    splits[name], fields[name] = testbed_split(world, fmt, world.split_entities[name])
  eval_splits = ("test",)
  if fmt.heldout:
    splits["heldout"], fields["heldout"] = testbed_split(
      world, fmt, world.split_entities["test"], relation=1
    )
    eval_splits = ("test", "heldout")

  def score(split, tokens, mask):
    return score_fields(
      tokens=tokens, mask=mask, truth=splits[split]["response"], fields=fields[split]
    )

  return GenerationTask(
    name=f"testbed-generative-{gen_cfg.format}",
    splits=splits,
    eval_splits=eval_splits,
    vocab_size=base.vocab_size,
    max_len=base.max_len,
    fingerprint=base.fingerprint,
    make_corpus=base.make_corpus,
    probe_fn=base.probe_fn,
    world=world,
    metrics=("fields", "exact"),
    score=score,
    # Every split's response has the same columns; the region is the class-like field.
    answers=functools.partial(answer_fields, fields=fields["train_w2s"]),
    answer_names=tuple(fields["train_w2s"]),
    answer_class=list(fields["train_w2s"]).index("{region}")
    if "{region}" in fields["train_w2s"]
    else None,
    eos_id=world.token(testbed.DOT) if fmt.stop_at_dot else None,
    pad_id=world.token(testbed.PAD),
    encoding={"format": " ".join(fmt.prompt) + " -> " + " ".join(fmt.response)},
  )


# --- Real text ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GenTextTaskConfig:
  """A prompt -> response text task: TFDS (gen_text.GEN_TASKS) or JSONL files.
  Its train split is divided, after a seeded shuffle, into train_gt and
  train_w2s; all train prompts and responses are the pretraining corpus of
  from-scratch models."""

  tfds_name: str | None = None
  train_file: str | None = dataclasses.field(default=None, metadata=CONTENTS)  # keyed by contents
  test_file: str | None = dataclasses.field(default=None, metadata=CONTENTS)
  metric: str = "exact_match"  # files only (a TFDS task has its own); text_metrics.METRICS
  prompt_field: str = "prompt"
  response_field: str = "response"
  references_field: str | None = None
  # Files only: how a row's prompt and response are shown to the model (a TFDS
  # task has its own template), e.g. "Question: {prompt}\nAnswer:" and " ".
  prompt_template: str = "{prompt}"
  response_prefix: str = ""
  tfds_train_split: str = "train"
  tfds_test_split: str | None = None  # None: "test" or "validation", whichever the task has
  data_dir: str | None = None
  tokenizer: str = dataclasses.field(default="bytes", metadata=CONTENTS)  # as TextTaskConfig
  max_prompt_len: int = 96
  max_response_len: int = 32
  overflow: str = "truncate"
  gt_examples: int = 500
  w2s_examples: int = 1000
  test_examples: int | None = 200
  seed: int = 0

  def __post_init__(self):
    files = (self.train_file, self.test_file)
    if (self.tfds_name is None) == (files == (None, None)) or (
      self.tfds_name is None and None in files
    ):
      raise ValueError(
        "GenTextTaskConfig: set tfds_name, or both train_file and test_file "
        f"(got tfds_name={self.tfds_name!r}, train_file={self.train_file!r}, "
        f"test_file={self.test_file!r})"
      )
    if self.tfds_name is not None:
      gen_text.metric_of(self.tfds_name)  # an unknown task is an error now, not after loading
    if "{prompt}" not in self.prompt_template:
      raise ValueError(
        f"GenTextTaskConfig.prompt_template={self.prompt_template!r}: expected "
        "a '{prompt}' placeholder"
      )
    if self.metric not in text_metrics.METRICS:
      raise ValueError(
        f"GenTextTaskConfig.metric={self.metric!r}: expected one of {sorted(text_metrics.METRICS)}"
      )
    for name in ("max_prompt_len", "max_response_len", "gt_examples", "w2s_examples"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise ValueError(f"GenTextTaskConfig.{name}={getattr(self, name)!r}: expected an int >= 1")

  @property
  def headline_metric(self) -> str:
    return gen_text.metric_of(self.tfds_name) if self.tfds_name else self.metric

  def corpus_fields(self) -> dict:
    """What determines the pretraining corpus (files by their contents)."""
    return {
      k: v
      for k, v in fingerprint(self).items()
      if k not in ("type", "gt_examples", "w2s_examples", "test_examples", "metric")
    }


def _read_pairs(cfg: GenTextTaskConfig):
  if cfg.tfds_name is not None:
    splits = gen_text.GEN_TASKS[cfg.tfds_name].labeled_splits
    test_split = cfg.tfds_test_split or ("test" if "test" in splits else "validation")
    read = lambda split, take: gen_text.load_gen_task(
      cfg.tfds_name, split=split, take=take, seed=cfg.seed, data_dir=cfg.data_dir
    )
    return read(cfg.tfds_train_split, None), read(test_split, cfg.test_examples)
  read = functools.partial(
    gen_text.read_jsonl_pairs,
    prompt_field=cfg.prompt_field,
    response_field=cfg.response_field,
    references_field=cfg.references_field,
  )

  def read_templated(path):
    pairs = read(path)
    return gen_text.PromptResponses(
      [cfg.prompt_template.replace("{prompt}", p) for p in pairs.prompts],
      [cfg.response_prefix + r for r in pairs.responses],
      pairs.references,
    )

  test = read_templated(cfg.test_file)
  if cfg.test_examples is not None and cfg.test_examples < len(test):
    rng = np.random.default_rng([cfg.seed, 1])
    test = test.take(np.sort(rng.choice(len(test), cfg.test_examples, replace=False)))
  return read_templated(cfg.train_file), test


def text_generative_task(cfg: GenTextTaskConfig):
  """Reads, splits and tokenizes a prompt -> response text task; the corpus
  (every train prompt and response) is tokenized on first use."""
  train, test = _read_pairs(cfg)
  parts = split_train(train, test, cfg)
  tokenizer = make_tokenizer(cfg.tokenizer, train.prompts + train.responses)
  splits, references, encoding = {}, {}, {}
  for name, pairs in parts.items():
    data, encoding[name] = gen_text.encode_pairs(
      pairs,
      tokenizer=tokenizer,
      max_prompt_len=cfg.max_prompt_len,
      max_response_len=cfg.max_response_len,
      overflow=cfg.overflow,
    )
    splits[name] = data
    references[name] = [pairs.references[i] for i in data["index"]]
  metrics = (cfg.headline_metric,) + (
    ("exact_match",) if cfg.headline_metric != "exact_match" else ()
  )

  def decode_all(tokens, mask):
    return [tokenizer.decode(row[m > 0]) for row, m in zip(np.asarray(tokens), np.asarray(mask))]

  def score(split, tokens, mask):
    texts = decode_all(tokens, mask)
    return {
      m: text_metrics.score_all(metric=m, predictions=texts, references=references[split])
      for m in metrics
    }

  def answers(tokens, mask):
    """One field: GSM8K's final number, else the SQuAD-normalized text; -1 if empty."""
    parse = (
      text_metrics.gsm8k_final_answer
      if cfg.headline_metric == "gsm8k"
      else text_metrics.normalize_answer
    )
    keys = [parse(t) or None for t in decode_all(tokens, mask)]
    return np.array([-1 if k is None else stable_id(k) for k in keys], np.int64).reshape(-1, 1)

  def corpus() -> Dataset:
    data, _ = gen_text.encode_pairs(
      train,
      tokenizer=tokenizer,
      max_prompt_len=cfg.max_prompt_len,
      max_response_len=cfg.max_response_len,
      overflow="truncate",
    )
    data = sequences(data)
    return Dataset(tokens=data["tokens"], mask=data["mask"])

  def probe(params, model_cfg, mesh, test) -> dict:
    del test  # every model reads a generative task through its one tokenizer
    test_xent = scoring.cross_entropy(
      params, model_cfg, sequences(splits["test"]), batch_size=probe_batch(mesh), mesh=mesh
    )
    return {"test_lm_xent": float(np.mean(test_xent))}

  max_len = cfg.max_prompt_len + cfg.max_response_len
  return GenerationTask(
    name=cfg.tfds_name or str(cfg.train_file),
    splits=splits,
    eval_splits=("test",),
    vocab_size=tokenizer.vocab_size,
    max_len=max_len,
    fingerprint=cfg.corpus_fields(),
    make_corpus=corpus,
    probe_fn=probe,
    encoding=encoding,
    metrics=metrics,
    score=score,
    answers=answers,
    answer_names=("answer",),
    eos_id=tokenizer.eos_id,
    pad_id=tokenizer.pad_id,
    decode=tokenizer.decode,
    tokenizer=cfg.tokenizer,
  )
