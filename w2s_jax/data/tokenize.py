"""Tokenizers, and TextExamples turned into a training Dataset(tokens, mask, labels).

ByteTokenizer serves models trained from scratch; HFTokenizer reads a
pretrained checkpoint's tokenizer.json (GPT-2 / Pythia BPE) with the
`tokenizers` package alone, without transformers.

A tokenizer here has: vocab_size, pad_id, bos_id (None if it has none),
eos_id (likewise), encode(text) -> list[int] and encode_batch(texts).
Neither adds special tokens by itself: encode_examples adds <bos> when asked,
so every tokenizer is treated alike and truncation sees every token.
"""

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from w2s_jax.data.dataset import Dataset
from w2s_jax.data.text_tasks import TextExamples

OVERFLOW = ("truncate", "drop")
SIDES = ("left", "right")


class ByteTokenizer:
  """UTF-8 bytes are ids 0-255 as they are; then <pad>, <bos>, <eos>."""

  pad_id, bos_id, eos_id = 256, 257, 258

  @property
  def vocab_size(self) -> int:
    return 259

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    # Special ids are dropped; a truncation that cut a character in two shows as U+FFFD.
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


# Conventional names, for a tokenizer.json that comes without its config files:
# GPT-2 and Pythia use <|endoftext|> both to begin and to end a document.
_CONVENTIONAL = {
  "bos_token": ("<|endoftext|>", "<s>", "<bos>", "[CLS]"),
  "eos_token": ("<|endoftext|>", "</s>", "<eos>", "[SEP]"),
  "pad_token": ("<|padding|>", "<pad>", "[PAD]"),
}


@dataclasses.dataclass(frozen=True)
class HFTokenizer:
  # A tokenizers.Tokenizer, left out of repr: its repr prints the whole vocabulary.
  tokenizer: object = dataclasses.field(repr=False)
  bos_id: int | None
  eos_id: int | None
  pad_id: int  # what padding positions hold; always masked out, so any valid id

  @classmethod
  def from_file(
    cls,
    path,
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
  ) -> "HFTokenizer":
    """Load tokenizer.json. Special tokens come from the arguments, else from the
    special_tokens_map.json / tokenizer_config.json beside it (as a Hugging Face
    checkpoint ships them), else from conventional names found in the vocab."""
    if os.path.isdir(path):
      raise IsADirectoryError(f"{path}: is a folder, expected its tokenizer.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no such tokenizer file (expected a tokenizer.json)")
    try:
      from tokenizers import Tokenizer
    except ImportError as err:
      raise ImportError("HFTokenizer needs the tokenizers package: pip install tokenizers") from err
    try:
      tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 -- the Rust error text is kept in the chain
      raise ValueError(f"{path}: not a readable tokenizer.json ({err})") from err
    # A tokenizer.json may be saved with truncation or padding switched on; either
    # would cut or pad behind encode_examples' back and falsify its counts and mask.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    configured = _configured_special_tokens(os.path.dirname(os.path.abspath(path)))
    explicit = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token}
    ids = {}
    for role, token in explicit.items():
      if token is not None:
        if tokenizer.token_to_id(token) is None:
          raise ValueError(f"{role}={token!r}: not in the vocabulary of {path}")
        ids[role] = tokenizer.token_to_id(token)
        continue
      candidates = ((configured[role],) if role in configured else ()) + _CONVENTIONAL[role]
      ids[role] = next(
        (tokenizer.token_to_id(t) for t in candidates if tokenizer.token_to_id(t) is not None), None
      )
    pad_id = next(i for i in (ids["pad_token"], ids["eos_token"], 0) if i is not None)
    return cls(tokenizer, ids["bos_token"], ids["eos_token"], pad_id)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    # add_special_tokens=False: a template post-processor (e.g. BERT's [CLS] ...
    # [SEP]) would add tokens behind the back of truncation and of add_bos.
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids])


def train_bpe(texts: Sequence[str], *, vocab_size: int) -> HFTokenizer:
  """A byte-level BPE (GPT-2's scheme) learnt from texts, for from-scratch
  models on a task's own unlabelled text. Deterministic for the same texts."""
  if vocab_size < 260:
    raise ValueError(f"train_bpe vocab_size={vocab_size}: expected >= 260 (256 bytes + specials)")
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(
    list(texts),
    trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=["<|endoftext|>", "<pad>"],
      show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ),
  )
  eos = tokenizer.token_to_id("<|endoftext|>")
  return HFTokenizer(tokenizer, bos_id=eos, eos_id=eos, pad_id=tokenizer.token_to_id("<pad>"))


def _configured_special_tokens(directory: str) -> dict[str, str]:
  found = {}
  # special_tokens_map.json is read last, so it wins, as in transformers.
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      continue
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
    for role in _CONVENTIONAL:
      value = config.get(role)
      value = value.get("content") if isinstance(value, dict) else value
      if isinstance(value, str):
        found[role] = value
  return found


def check_vocabulary(
  *, tokenizer_vocab_size: int, model_vocab_size: int, model: str, tokenizer: str
) -> None:
  """Every id the tokenizer gives must index the model's embedding matrix.

  A tokenizer with fewer ids than the model's vocabulary is fine (GPT-2's and
  Pythia's embedding matrices are padded beyond their tokenizers); one with
  more, e.g. another model's tokenizer.json, would read past the embeddings.
  model / tokenizer: names for the message (a size or path, a spec or path).
  """
  for name, value in (
    ("tokenizer_vocab_size", tokenizer_vocab_size),
    ("model_vocab_size", model_vocab_size),
  ):
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
      raise ValueError(f"check_vocabulary {name}={value!r}: expected a positive int")
  if tokenizer_vocab_size > model_vocab_size:
    raise ValueError(
      f"tokenizer {tokenizer} has {tokenizer_vocab_size} ids but model {model}'s vocabulary has "
      f"{model_vocab_size}: expected a tokenizer whose ids fit the model "
      "(the model's own tokenizer.json)"
    )


def check_ids(
  tokenizer, encoded: list[list[int]], texts: Sequence[str], add_bos: bool, add_eos: bool = False
) -> None:
  """Every id written, the special ones included, within [0, tokenizer.vocab_size)."""
  vocab_size = tokenizer.vocab_size
  name = type(tokenizer).__name__
  roles = ("pad_id",) + (("bos_id",) if add_bos else ()) + (("eos_id",) if add_eos else ())
  for role in roles:
    value = getattr(tokenizer, role)
    if value is not None and not 0 <= value < vocab_size:
      raise ValueError(
        f"{name}.{role}={value}: expected an id in [0, {vocab_size}) "
        "(its vocab_size): the tokenizer is corrupt or inconsistent"
      )
  for i, ids in enumerate(encoded):
    if ids and (max(ids) >= vocab_size or min(ids) < 0):  # builtins: fast on long corpora
      bad = next(t for t in ids if not 0 <= t < vocab_size)
      raise ValueError(
        f"example {i} ({texts[i]!r}) encodes to token id {bad}: expected ids in "
        f"[0, {vocab_size}) ({name}.vocab_size): the tokenizer is corrupt or "
        "inconsistent"
      )


def encode_examples(
  examples: TextExamples,
  tokenizer,
  *,
  max_len: int,
  overflow: str,
  truncate_side: str = "left",
  add_bos: bool = False,
  add_eos: bool = False,
  pad_side: str = "right",
) -> tuple[Dataset, dict]:
  """Tokenize, fit to max_len and pad: Dataset(tokens, mask, labels) and a report.

  overflow: what to do with a text longer than max_len: "truncate" it or
    "drop" the example (dropping all of them is an error).
  truncate_side: "left" (default) cuts the beginning and keeps the end, because
    prompts such as cosmos_qa's put the answer being judged last, and the
    models classify at the last real token; "right" keeps the beginning.
    <bos> is never cut.
  add_eos: end every example with <eos> (BERT's [SEP]), which is never cut either.
  pad_side: where padding goes; mask marks the real tokens either way.
  The report counts examples kept whole, truncated and dropped (print it, or
  describe_encoding(report)).
  """
  if not isinstance(examples, TextExamples):
    raise TypeError(f"examples: expected TextExamples, got {type(examples).__name__}")
  if not (isinstance(max_len, int) and max_len >= 1):
    raise ValueError(f"max_len={max_len!r}: expected a positive int")
  for name, value, allowed in (
    ("overflow", overflow, OVERFLOW),
    ("truncate_side", truncate_side, SIDES),
    ("pad_side", pad_side, SIDES),
  ):
    if value not in allowed:
      raise ValueError(f"{name}={value!r}: expected one of {allowed}")
  if add_bos and tokenizer.bos_id is None:
    raise ValueError(f"add_bos=True but {type(tokenizer).__name__} has no bos token")
  if add_eos and tokenizer.eos_id is None:
    raise ValueError(f"add_eos=True but {type(tokenizer).__name__} has no eos token")
  prefix = [tokenizer.bos_id] if add_bos else []
  suffix = [tokenizer.eos_id] if add_eos else []
  room = max_len - len(prefix) - len(suffix)
  if room < 1:
    raise ValueError(
      f"max_len={max_len}: no room for text between the special tokens, "
      f"expected >= {len(prefix) + len(suffix) + 1}"
    )
  if len(examples) == 0:
    raise ValueError("examples: empty, nothing to encode")

  encoded = tokenizer.encode_batch(examples.text)
  lengths = np.array([len(ids) for ids in encoded])
  if (lengths == 0).any():
    i = int(np.argmin(lengths))
    raise ValueError(f"example {i} ({examples.text[i]!r}) encodes to no tokens")
  check_ids(tokenizer, encoded, examples.text, add_bos, add_eos)
  too_long = lengths > room
  keep = np.flatnonzero(~too_long) if overflow == "drop" else np.arange(len(encoded))
  if len(keep) == 0:
    raise ValueError(
      f"overflow='drop' drops all {len(encoded)} examples: the shortest has "
      f"{lengths.min() + len(prefix) + len(suffix)} tokens, max_len={max_len}"
    )

  tokens = np.full((len(keep), max_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(keep), max_len), np.int32)
  for row, i in enumerate(keep):
    body = encoded[i]
    if len(body) > room:
      body = body[len(body) - room :] if truncate_side == "left" else body[:room]
    ids = prefix + list(body) + suffix
    start = 0 if pad_side == "right" else max_len - len(ids)
    tokens[row, start : start + len(ids)] = ids
    mask[row, start : start + len(ids)] = 1
  data = Dataset(tokens=tokens, mask=mask, labels=examples.label[keep].astype(np.int32))
  report = {
    "examples": len(encoded),
    "kept_whole": int((~too_long).sum()),
    "truncated": int(too_long.sum()) if overflow == "truncate" else 0,
    "dropped": int(too_long.sum()) if overflow == "drop" else 0,
    "max_len": max_len,
    "longest": int(lengths.max()) + len(prefix) + len(suffix),
    "mean_len": round(float(lengths.mean()) + len(prefix) + len(suffix), 1),
  }
  return data, report


def describe_encoding(report: dict) -> str:
  return (
    f"{report['examples']} examples at max_len={report['max_len']}: "
    f"{report['kept_whole']} kept whole, {report['truncated']} truncated, "
    f"{report['dropped']} dropped (longest {report['longest']} tokens, "
    f"mean {report['mean_len']})"
  )
