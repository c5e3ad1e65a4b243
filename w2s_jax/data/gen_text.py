"""Prompt -> response text data for generative W2S, and its tokenisation.

A PromptResponses holds prompts, the responses a model is trained to write,
and the references a scorer compares a generation with (SQuAD has several
acceptable answers; by default the one reference is the response itself).
It comes from a JSONL file (read_jsonl_pairs) or a TFDS task (load_gen_task,
read through tfds_source.open_tfds_split as the binary tasks are: a seeded
subset, random access, nothing downloaded unless download=True).

encode_pairs turns it into a Dataset of two rows per example: the prompt
LEFT-padded and the response RIGHT-padded, so that prompt + response is laid
out exactly as a sampler writes new tokens after a left-padded prompt.
"""

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from w2s_jax.data import text_files, tfds_source
from w2s_jax.data.dataset import Dataset
from w2s_jax.data.text_files import TextFileError
from w2s_jax.data.tokenize import OVERFLOW, check_ids


@dataclasses.dataclass(frozen=True, eq=False)
class PromptResponses:
  """Prompts, their responses and each one's acceptable answers (references)."""

  prompts: list[str]
  responses: list[str]
  references: list[list[str]] | None = None  # None: [response] for each example

  def __post_init__(self):
    prompts, responses = list(self.prompts), list(self.responses)
    references = (
      [[r] for r in responses]
      if self.references is None
      else [list(r) if isinstance(r, tuple | list) else r for r in self.references]
    )
    if not len(prompts) == len(responses) == len(references):
      raise ValueError(
        f"PromptResponses: {len(prompts)} prompts, {len(responses)} responses, "
        f"{len(references)} reference lists (expected equal lengths)"
      )
    for name, values in (("prompts", prompts), ("responses", responses)):
      bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
      if bad is not None:
        raise ValueError(
          f"PromptResponses.{name}[{bad}]: expected str, got {type(values[bad]).__name__}"
        )
    for i, refs in enumerate(references):
      if not (isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs)):
        raise ValueError(
          f"PromptResponses.references[{i}]={refs!r}: expected a non-empty list of strings"
        )
    object.__setattr__(self, "prompts", prompts)
    object.__setattr__(self, "responses", responses)
    object.__setattr__(self, "references", references)

  def __len__(self):
    return len(self.prompts)

  def take(self, index) -> "PromptResponses":
    index = np.asarray(index, dtype=np.int64).tolist()
    return PromptResponses(
      [self.prompts[i] for i in index],
      [self.responses[i] for i in index],
      [list(self.references[i]) for i in index],
    )


# --- JSONL files ----------------------------------------------------------------


def read_jsonl_pairs(
  path,
  *,
  prompt_field: str = "prompt",
  response_field: str = "response",
  references_field: str | None = None,
) -> PromptResponses:
  """All rows of a JSONL file (one object per line, blank lines skipped).

  Texts are kept exactly as written: a response that follows a prompt ending
  in "Answer:" should start with its space, as the TFDS tasks' responses do.
  references_field: a field holding a non-empty list of strings, the answers a
  generation is scored against; None scores against the response alone.
  """
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path}: is a folder, expected a JSONL file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  prompts, responses, references = [], [], []
  fields = [prompt_field, response_field] + ([references_field] if references_field else [])
  for line, row in text_files.jsonl_rows(path, text_files.decode_bytes(path)):
    for field in fields:
      if field not in row:
        raise TextFileError(path, line, f"missing field {field!r} (found {sorted(row)})")
    for field in (prompt_field, response_field):
      value = row[field]
      if not isinstance(value, str):
        raise TextFileError(path, line, f"{field}={value!r}: expected a string")
      if not value.strip():
        raise TextFileError(path, line, f"empty {field} {value!r}: expected some text")
    prompts.append(row[prompt_field])
    responses.append(row[response_field])
    if references_field:
      refs = row[references_field]
      if not (isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs)):
        raise TextFileError(
          path, line, f"{references_field}={refs!r}: expected a non-empty list of strings"
        )
      references.append(refs)
  if not prompts:
    raise TextFileError(path, None, "no examples (expected at least one JSON object)")
  return PromptResponses(prompts, responses, references if references_field else None)


# --- TFDS tasks -------------------------------------------------------------------
# Formatters: TFDS example -> (prompt, response, references). Examples come as
# numpy values from mock data, as bytes and lists from ArrayRecord files.


class EmptyField(ValueError):
  """A source example whose text is empty: skipped (and counted), not formatted."""


def _field(ex, name: str) -> str:
  text = tfds_source.text(ex[name])
  if not text.strip():
    raise EmptyField(f"empty {name} {text!r}")
  return text


def format_gsm8k(ex) -> tuple[str, str, list[str]]:
  answer = _field(ex, "answer")  # the worked solution, ending in "#### <number>"
  return f"Question: {_field(ex, 'question')}\nAnswer:", " " + answer, [answer]


def format_squad(ex) -> tuple[str, str, list[str]]:
  answers = [a for a in tfds_source.texts(ex["answers"]["text"]) if a.strip()]
  if not answers:
    raise EmptyField("no answers.text")
  return (
    f"Context: {_field(ex, 'context')}\nQuestion: {_field(ex, 'question')}\nAnswer:",
    " " + answers[0],
    answers,
  )


def format_xsum(ex) -> tuple[str, str, list[str]]:
  summary = _field(ex, "summary")
  return f"Document: {_field(ex, 'document')}\nSummary:", " " + summary, [summary]


def format_cnn_dailymail(ex) -> tuple[str, str, list[str]]:
  highlights = _field(ex, "highlights")
  return f"Article: {_field(ex, 'article')}\nSummary:", " " + highlights, [highlights]


@dataclasses.dataclass(frozen=True)
class GenTask:
  format: Callable  # example -> (prompt, response, references)
  metric: str  # what a generation is scored with against the references
  labeled_splits: tuple[str, ...]
  builder_module: str | None = None  # as text_tasks.TfdsTask's
  config: str | None = None  # read as "name/config", pinned so a new default cannot slip in


# Keyed by TFDS name. Preparing xsum and cnn_dailymail (download=True) needs
# TensorFlow (their builders read with tf.io.gfile), and xsum a manual download;
# reading prepared ArrayRecord files needs neither.
GEN_TASKS: dict[str, GenTask] = {
  "gsm8k": GenTask(
    format_gsm8k,
    "gsm8k",
    ("train", "test", "train_socratic", "test_socratic"),
    "tensorflow_datasets.text.gsm8k",
  ),
  # token_f1 is the SQuAD score; the caller reports exact match beside it.
  "squad": GenTask(format_squad, "token_f1", ("train", "validation"), config="v1.1"),
  "xsum": GenTask(
    format_xsum,
    "rouge_l",
    ("train", "validation", "test"),
    "tensorflow_datasets.summarization.xsum",
  ),
  "cnn_dailymail": GenTask(
    format_cnn_dailymail,
    "rouge_l",
    ("train", "validation", "test"),
    "tensorflow_datasets.summarization.cnn_dailymail",
  ),
}


def _check_gen_task(name: str, split: str | None = None) -> GenTask:
  if name not in GEN_TASKS:
    raise ValueError(f"generative task {name!r}: expected one of {sorted(GEN_TASKS)}")
  task = GEN_TASKS[name]
  if split is not None and split not in task.labeled_splits:
    raise ValueError(f"split {split!r} of {name}: expected one of {list(task.labeled_splits)}")
  return task


def metric_of(name: str) -> str:
  """The metric task `name` is scored with, e.g. "rouge_l"."""
  return _check_gen_task(name).metric


def pairs_from_source(
  source: Sequence,
  format_example: Callable,
  *,
  take: int | None,
  seed: int | Sequence[int],
  where: str = "source",
) -> PromptResponses:
  """Format `take` examples of a random-access source, picked by a seeded shuffle.

  The same seed gives the same examples, and a smaller take a prefix of a
  larger one. Examples with an empty text (EmptyField) are skipped with a
  warning, and the next ones in the shuffled order read in their place (a
  full read, take=None, returns the others).
  """
  size = tfds_source.check_source(source, take, where)
  want = size if take is None else take
  order = np.random.default_rng([*np.atleast_1d(seed).tolist(), 0]).permutation(size).tolist()
  prompts, responses, references, skipped, pos = [], [], [], [], 0
  while len(prompts) < want and pos < size:
    keys = order[pos : pos + want - len(prompts)]
    pos += len(keys)
    for i, example in tfds_source.read_rows(source, keys):
      try:
        prompt, response, refs = format_example(example)
      except EmptyField as err:
        skipped.append(f"{i} ({err})")
        continue
      except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{where} example {i}: {type(err).__name__}: {err}") from err
      prompts.append(prompt)
      responses.append(response)
      references.append(refs)
  if take is not None and len(prompts) < take:
    raise ValueError(
      f"{where}: only {len(prompts)} of {size} examples have text, expected "
      f"{want} (skipped examples {', '.join(skipped[:5])}...)"
    )
  if skipped:
    warnings.warn(
      f"{where}: skipped {len(skipped)} examples with an empty text: {', '.join(skipped[:5])}",
      stacklevel=2,
    )
  return PromptResponses(prompts, responses, references)


def load_gen_task(
  name: str,
  *,
  split: str,
  take: int | None = None,
  seed: int = 0,
  data_dir: str | None = None,
  download: bool = False,
) -> PromptResponses:
  """One split of a TFDS generative task (arguments as text_tasks.load_task)."""
  task = _check_gen_task(name, split)
  tfds_source.check_take(take)
  tfds_name = f"{name}/{task.config}" if task.config else name
  source = tfds_source.open_tfds_split(
    tfds_name, split=split, data_dir=data_dir, download=download, builder_module=task.builder_module
  )
  return pairs_from_source(
    source,
    task.format,
    take=take,
    seed=tfds_source.split_seed(seed, split),
    where=f"{name}[{split}]",
  )


# --- Tokenisation -------------------------------------------------------------------


def encode_pairs(
  pairs: PromptResponses,
  *,
  tokenizer,
  max_prompt_len: int,
  max_response_len: int,
  overflow: str = "truncate",
  add_bos: bool = True,
  add_eos: bool = True,
) -> tuple[Dataset, dict]:
  """Tokenize prompts and responses: Dataset(prompt, prompt_mask, response,
  response_mask, index) and counts.

  prompt: [N, max_prompt_len] int32, <bos> (if add_bos) + prompt tokens,
    LEFT-padded with tokenizer.pad_id; response: [N, max_response_len] int32,
    response tokens + <eos> (if add_eos), RIGHT-padded; masks mark real tokens.
    index: [N] int32, each row's position in `pairs` (rows go when dropped).
  overflow="truncate": a prompt too long loses its BEGINNING (after <bos>),
    keeping the question at its end; a response too long is cut at
    max_response_len and then has NO <eos>, as it does not end there (also
    when only the <eos> does not fit). overflow="drop": an example whose
    prompt or response does not fit is dropped (dropping all is an error).
  counts: {"examples", "prompt_truncated", "response_truncated", "dropped"}.
  """
  if not isinstance(pairs, PromptResponses):
    raise TypeError(f"pairs: expected PromptResponses, got {type(pairs).__name__}")
  for name, value in (("max_prompt_len", max_prompt_len), ("max_response_len", max_response_len)):
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
      raise ValueError(f"{name}={value!r}: expected a positive int")
  if overflow not in OVERFLOW:
    raise ValueError(f"overflow={overflow!r}: expected one of {OVERFLOW}")
  for flag, value, role in (("add_bos", add_bos, "bos"), ("add_eos", add_eos, "eos")):
    if value and getattr(tokenizer, f"{role}_id") is None:
      raise ValueError(f"{flag}=True but {type(tokenizer).__name__} has no {role} token")
  prefix = [tokenizer.bos_id] if add_bos else []
  suffix = [tokenizer.eos_id] if add_eos else []
  room = max_prompt_len - len(prefix)
  if room < 1:
    raise ValueError(
      f"max_prompt_len={max_prompt_len}: no room for a prompt after <bos>, expected >= 2"
    )
  if len(pairs) == 0:
    raise ValueError("pairs: empty, nothing to encode")

  prompts = tokenizer.encode_batch(pairs.prompts)
  responses = [list(ids) + suffix for ids in tokenizer.encode_batch(pairs.responses)]
  for what, encoded, texts in (
    ("prompt", prompts, pairs.prompts),
    ("response", responses, pairs.responses),
  ):
    empty = next((i for i, ids in enumerate(encoded) if not ids), None)
    if empty is not None:
      raise ValueError(f"example {empty}: {what} {texts[empty]!r} encodes to no tokens")
    check_ids(tokenizer, encoded, texts, add_bos)
  long_prompt = np.array([len(ids) > room for ids in prompts])
  long_response = np.array([len(ids) > max_response_len for ids in responses])
  too_long = long_prompt | long_response
  keep = np.flatnonzero(~too_long) if overflow == "drop" else np.arange(len(pairs))
  if len(keep) == 0:
    raise ValueError(
      f"overflow='drop' drops all {len(pairs)} examples: none has a prompt of "
      f"<= {max_prompt_len} and a response of <= {max_response_len} tokens"
    )

  prompt = np.full((len(keep), max_prompt_len), tokenizer.pad_id, np.int32)
  prompt_mask = np.zeros((len(keep), max_prompt_len), np.int32)
  response = np.full((len(keep), max_response_len), tokenizer.pad_id, np.int32)
  response_mask = np.zeros((len(keep), max_response_len), np.int32)
  for row, i in enumerate(keep):
    ids = prefix + list(prompts[i][max(0, len(prompts[i]) - room) :])  # the tail is kept
    prompt[row, max_prompt_len - len(ids) :] = ids
    prompt_mask[row, max_prompt_len - len(ids) :] = 1
    ids = responses[i][:max_response_len]  # a cut response loses its <eos>
    response[row, : len(ids)] = ids
    response_mask[row, : len(ids)] = 1
  data = Dataset(
    prompt=prompt,
    prompt_mask=prompt_mask,
    response=response,
    response_mask=response_mask,
    index=keep.astype(np.int32),
  )
  truncating = overflow == "truncate"
  counts = {
    "examples": len(pairs),
    "prompt_truncated": int(long_prompt.sum()) if truncating else 0,
    "response_truncated": int(long_response.sum()) if truncating else 0,
    "dropped": 0 if truncating else int(too_long.sum()),
  }
  return data, counts
