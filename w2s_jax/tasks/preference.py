"""Preference tasks: which of two responses to a prompt is preferred.

Burns et al.'s third setting, reward modelling, as a task kind of the one
pipeline: a `ClassificationTask` of two classes, "A" and "B", whose label is
the preferred response's position. Which response is A is a seeded coin per
pair, so the classes are balanced and position carries nothing. Two formats
(PreferenceConfig.format):

- pointwise: an example holds one sequence per response, prompt then
  response, as tokens [N, 2, L]; the model has a scalar head, r(prompt,
  response), and its class logits are (r_A, r_B) (Transformer.class_logits).
  So P(A preferred) = softmax(r_A, r_B)_A = sigma(r_A - r_B), Bradley-Terry:
  cross-entropy on hard labels is the Bradley-Terry loss, and on the weak
  reward model's soft preferences it is KD against the soft target.
- pairwise: one sequence shows the prompt and both responses, and a 2-way
  head says which is preferred (the format openai/weak-to-strong's users asked
  for, #34).

Every stage, loss, sweep, interval and report then applies as it is: the weak
RM trained on ground-truth pairs (Pweak), the strong RM on its soft
preferences (Pweak->strong), the strong RM on ground truth (Pceiling), all
scored by preference accuracy on test pairs.

Sources: the testbed world (`testbed_preference_task`: a true and a false
fact about an entity's home city as two responses to one prompt, the false
one graded by PreferenceConfig.rejected), or JSONL files of {prompt, chosen,
rejected} (`PreferenceTextConfig`, `text_preference_task`).
"""

import dataclasses
import functools

import numpy as np

from w2s_jax.data import testbed, text_files, tokenize
from w2s_jax.data.dataset import Dataset
from w2s_jax.data.text_tasks import TextExamples
from w2s_jax.infra.fingerprint import CONTENTS, fingerprint
from w2s_jax.models import scoring
from w2s_jax.tasks.base import BYTES, make_tokenizer, probe_batch, split_train
from w2s_jax.tasks.classification import ClassificationTask, fact_accuracy

FORMATS = ("pointwise", "pairwise")
LABEL_NAMES = ("A", "B")


@dataclasses.dataclass(frozen=True)
class PreferenceConfig:
  """A preference task's format, and (testbed pairs) how false the rejected response is."""

  format: str = "pointwise"  # or "pairwise"
  # The testbed's rejected city (testbed.REJECTED): any other city, another
  # in the same region (harder), or one in another region (easier).
  rejected: str = "any"
  seed: int = 0  # the A/B coin per pair, and the testbed's false cities

  def __post_init__(self):
    if self.format not in FORMATS:
      raise ValueError(f"PreferenceConfig.format={self.format!r}: expected one of {FORMATS}")
    if self.rejected not in testbed.REJECTED:
      raise ValueError(
        f"PreferenceConfig.rejected={self.rejected!r}: expected one of {testbed.REJECTED}"
      )

  @property
  def per_choice(self) -> bool:
    """Whether an example holds one sequence per response (a scalar-head model)."""
    return self.format == "pointwise"


@dataclasses.dataclass(frozen=True)
class PreferenceTextConfig:
  """Preference pairs from JSONL files, one {prompt, chosen, rejected} object
  per line (field names as given). The train file is split, after a seeded
  shuffle, into train_gt and train_w2s; its texts (prompt and each response)
  are the pretraining corpus of from-scratch models."""

  train_file: str = dataclasses.field(default="", metadata=CONTENTS)
  test_file: str = dataclasses.field(default="", metadata=CONTENTS)
  prompt_field: str = "prompt"
  chosen_field: str = "chosen"
  rejected_field: str = "rejected"
  # "bytes"; "bpe:N" learnt from the train texts; or a tokenizer.json path
  tokenizer: str = dataclasses.field(default=BYTES, metadata=CONTENTS)
  max_len: int = 128  # tokens per sequence (a pairwise sequence holds both responses)
  add_bos: bool = True
  gt_examples: int | None = 2000
  w2s_examples: int | None = 4000
  test_examples: int | None = None  # None: every test pair
  seed: int = 0

  def __post_init__(self):
    if not self.train_file or not self.test_file:
      raise ValueError(
        f"PreferenceTextConfig: train_file={self.train_file!r}, test_file="
        f"{self.test_file!r}: expected both (JSONL files of prompt, chosen, rejected)"
      )
    if not (isinstance(self.max_len, int) and self.max_len >= 2):
      raise ValueError(f"PreferenceTextConfig.max_len={self.max_len!r}: expected an int >= 2")
    for name in ("gt_examples", "w2s_examples", "test_examples"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"PreferenceTextConfig.{name}={value!r}: expected an int >= 1 or None")

  def corpus_fields(self) -> dict:
    """What determines the pretraining corpus (files by their contents)."""
    skip = ("type", "gt_examples", "w2s_examples", "test_examples")
    return {k: v for k, v in fingerprint(self).items() if k not in skip}


def coins(n: int, *, seed: int, split: str) -> np.ndarray:
  """[n] 0/1 per pair: 1 where the preferred response is shown second (B).
  The label is this coin."""
  return np.random.default_rng([seed, 23, *split.encode()]).integers(0, 2, n)


def _ordered(chosen, rejected, flip):
  """(A, B) per pair: (chosen, rejected), or swapped where flip."""
  flip = np.asarray(flip, bool)
  return np.where(flip[..., None], rejected, chosen), np.where(flip[..., None], chosen, rejected)


# ----------------------------------------------------------------- testbed


def testbed_pair_split(world: testbed.World, entities, cfg: PreferenceConfig, *, relation, split):
  """A split of fact pairs: Dataset(tokens, mask, labels). Pointwise: tokens
  [N, 2, 6], '<bos> aX bY lives cK .' per response; pairwise: [N, 11],
  '<bos> aX bY lives cA . aX bY lives cB .'."""
  prompts, true_city, false_city = testbed.fact_pairs(
    world, entities, relation=relation, rejected=cfg.rejected, seed=cfg.seed
  )
  dot = np.full(len(prompts), world.token(testbed.DOT))
  respond = lambda city: np.stack([world.city_tokens[city], dot], axis=1)
  flip = coins(len(prompts), seed=cfg.seed, split=split)
  a, b = _ordered(respond(true_city), respond(false_city), flip)
  if cfg.per_choice:
    tokens = np.stack([np.concatenate([prompts, a], 1), np.concatenate([prompts, b], 1)], axis=1)
  else:
    tokens = np.concatenate([prompts, a, prompts[:, 1:], b], axis=1)
  tokens = tokens.astype(np.int32)
  return Dataset(tokens=tokens, mask=np.ones_like(tokens), labels=flip.astype(np.int32))


def testbed_preference_task(world_cfg: testbed.WorldConfig, cfg: PreferenceConfig):
  """Fact pairs over the testbed world: train_gt, train_w2s and test ask
  where an entity lives, heldout where test's entities work. The world, its
  corpus and the pretrained models are the classification testbed's."""
  world = testbed.make_world(world_cfg)
  splits = {
    name: testbed_pair_split(world, world.split_entities[name], cfg, relation=0, split=name)
    for name in testbed.SPLITS
  }
  splits["heldout"] = testbed_pair_split(
    world, world.split_entities["test"], cfg, relation=1, split="heldout"
  )
  return ClassificationTask(
    name=f"testbed-preference-{cfg.format}",
    splits=splits,
    eval_splits=("test", "heldout"),
    vocab_size=len(world.vocab),
    max_len=world_cfg.doc_len,
    fingerprint=world_cfg.corpus_fields(),
    make_corpus=lambda: testbed.pretraining_corpus(world),
    probe_fn=lambda params, model_cfg, mesh, test: fact_accuracy(params, model_cfg, world, mesh),
    world=world,
    label_names=LABEL_NAMES,
    per_choice=cfg.per_choice,
  )


# ----------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class Pairs:
  """Preference pairs as text."""

  prompt: list
  chosen: list
  rejected: list

  def __len__(self):
    return len(self.prompt)

  def take(self, idx) -> "Pairs":
    return Pairs(
      *([column[i] for i in idx] for column in (self.prompt, self.chosen, self.rejected))
    )


def read_pairs(path, text: PreferenceTextConfig) -> Pairs:
  """A JSONL file's pairs; a missing field or an empty text is an error at its line."""
  fields = (text.prompt_field, text.chosen_field, text.rejected_field)
  columns = ([], [], [])
  for line, row in text_files.checked_rows(path, "jsonl", fields):
    for field, column in zip(fields, columns):
      value = row[field]
      if not isinstance(value, str) or (field != text.prompt_field and not value.strip()):
        raise text_files.TextFileError(
          path, line, f"field {field!r}={value!r}: expected a non-empty string"
        )
      column.append(value)
  if not columns[0]:
    raise text_files.TextFileError(path, None, "no pairs")
  return Pairs(*columns)


def pair_texts(pairs: Pairs, flip, *, per_choice: bool) -> list[str]:
  """The texts a model reads: per pair, 'prompt\\nA' and 'prompt\\nB'
  (pointwise, A's then B's interleaved), or 'prompt\\nA: ...\\nB: ...'."""
  out = []
  for prompt, chosen, rejected, f in zip(pairs.prompt, pairs.chosen, pairs.rejected, flip):
    a, b = (rejected, chosen) if f else (chosen, rejected)
    out += [f"{prompt}\n{a}", f"{prompt}\n{b}"] if per_choice else [f"{prompt}\nA: {a}\nB: {b}"]
  return out


def _encode_split(pairs: Pairs, flip, *, per_choice, encode) -> tuple[Dataset, dict]:
  texts = pair_texts(pairs, flip, per_choice=per_choice)
  data, report = encode(TextExamples(text=texts, label=np.zeros(len(texts), np.int64)))
  tokens, mask = data["tokens"], data["mask"]
  if per_choice:
    tokens, mask = (x.reshape(len(pairs), 2, -1) for x in (tokens, mask))
  return Dataset(tokens=tokens, mask=mask, labels=np.asarray(flip, np.int32)), report


def text_preference_task(text: PreferenceTextConfig, cfg: PreferenceConfig) -> ClassificationTask:
  """Reads, splits and tokenizes JSONL pairs; the corpus is tokenized on first use."""
  train, test = read_pairs(text.train_file, text), read_pairs(text.test_file, text)
  if text.test_examples is not None and text.test_examples < len(test):
    rng = np.random.default_rng([text.seed, 1])
    test = test.take(np.sort(rng.choice(len(test), text.test_examples, replace=False)))
  parts = split_train(train, test, text)
  flips = {name: coins(len(p), seed=cfg.seed, split=name) for name, p in parts.items()}
  corpus_texts = [
    f"{p}\n{r}" for p, c, x in zip(train.prompt, train.chosen, train.rejected) for r in (c, x)
  ]
  tokenizer = make_tokenizer(text.tokenizer, corpus_texts)

  def encode_all(tok, *, bos, eos) -> tuple[dict, dict]:
    encode = functools.partial(
      tokenize.encode_examples,
      tokenizer=tok,
      max_len=text.max_len,
      overflow="truncate",
      add_bos=bos,
      add_eos=eos,
    )
    splits, report = {}, {}
    for name, pairs in parts.items():
      splits[name], report[name] = _encode_split(
        pairs, flips[name], per_choice=cfg.per_choice, encode=encode
      )
    return splits, report

  splits, encoding = encode_all(tokenizer, bos=text.add_bos, eos=False)

  def corpus() -> Dataset:
    data, _ = tokenize.encode_examples(
      TextExamples(text=corpus_texts, label=np.zeros(len(corpus_texts), np.int64)),
      tokenizer,
      max_len=text.max_len,
      overflow="truncate",
      truncate_side="right",
      add_bos=text.add_bos,
    )
    return Dataset(tokens=data["tokens"], mask=data["mask"])

  def probe(params, model_cfg, mesh, test_split) -> dict:
    data = splits["test"] if test_split is None else test_split
    tokens, mask = data["tokens"], data["mask"]
    flat = Dataset(
      tokens=tokens.reshape(-1, tokens.shape[-1]), mask=mask.reshape(-1, mask.shape[-1])
    )
    xent = scoring.cross_entropy(params, model_cfg, flat, batch_size=probe_batch(mesh), mesh=mesh)
    return {"test_lm_xent": float(np.mean(xent))}

  def encode_with(tokenizer_file, *, encoder: bool):
    """The pairs through a model's own tokenizer.json (encoders: [CLS] text [SEP])."""
    own = tokenize.HFTokenizer.from_file(tokenizer_file)
    return encode_all(own, bos=encoder or text.add_bos, eos=encoder)

  return ClassificationTask(
    name=f"{text.train_file}-{cfg.format}",
    splits=splits,
    eval_splits=("test",),
    vocab_size=tokenizer.vocab_size,
    max_len=text.max_len,
    fingerprint=text.corpus_fields(),
    make_corpus=corpus,
    probe_fn=probe,
    encoding=encoding,
    encode_fn=encode_with,
    tokenizer=text.tokenizer,
    label_names=LABEL_NAMES,
    per_choice=cfg.per_choice,
  )
