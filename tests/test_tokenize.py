"""Tokenizers and TextExamples -> Dataset(tokens, mask, labels)."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from w2s_jax.data import tokenize
from w2s_jax.data.dataset import Dataset
from w2s_jax.data.text_tasks import TextExamples
from w2s_jax.data.tokenize import ByteTokenizer, HFTokenizer, encode_examples

SENTENCES = [
  "the film is good",
  "the film is bad",
  "a good story",
  "a bad story told well",
  "the answer is yes",
  "the answer is no",
] * 3


def _examples(texts, labels=None):
  return TextExamples(list(texts), np.arange(len(texts)) % 2 if labels is None else labels)


@pytest.fixture
def bpe_file(tmp_path):
  """A GPT-2 style byte-level BPE trained on a few sentences, saved as tokenizer.json."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(
    SENTENCES,
    trainers.BpeTrainer(
      vocab_size=300,
      special_tokens=["<|endoftext|>", "<|padding|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
    ),
  )
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  return path


def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  text = 'héllo "world" \u2603\n'
  ids = tok.encode(text)
  assert ids == list(text.encode("utf-8")) and max(ids) < 256
  assert tok.decode(ids) == text
  assert tok.decode([tok.bos_id] + ids + [tok.pad_id, tok.eos_id]) == text
  assert tok.vocab_size == 259
  assert len({tok.pad_id, tok.bos_id, tok.eos_id}) == 3
  assert all(256 <= i < tok.vocab_size for i in (tok.pad_id, tok.bos_id, tok.eos_id))


def test_truncate_left_keeps_the_end_and_counts():
  texts = ["short", "exactly8", "much longer text ... Answer: yes"]
  data, report = encode_examples(
    _examples(texts), ByteTokenizer(), max_len=8, overflow="truncate", add_bos=True
  )
  assert isinstance(data, Dataset) and data["tokens"].shape == (3, 8)
  assert data["tokens"].dtype == np.int32 and data["mask"].dtype == np.int32
  decoded = [ByteTokenizer().decode(row[m > 0]) for row, m in zip(data["tokens"], data["mask"])]
  assert decoded == ["short", "xactly8", "er: yes"]  # bos + 7 bytes: the end is kept
  assert (data["tokens"][:, 0] == ByteTokenizer.bos_id).all()
  assert report["examples"] == 3 and report["kept_whole"] == 1
  assert report["truncated"] == 2 and report["dropped"] == 0
  assert report["longest"] == len(texts[2]) + 1
  assert "2 truncated, 0 dropped" in tokenize.describe_encoding(report)


def test_truncate_right_keeps_the_beginning():
  data, _ = encode_examples(
    _examples(["abcdefgh"]), ByteTokenizer(), max_len=4, overflow="truncate", truncate_side="right"
  )
  assert ByteTokenizer().decode(data["tokens"][0]) == "abcd"


def test_drop_removes_long_examples_and_keeps_labels_aligned():
  texts = ["aa", "bbbbbbbbbb", "cc", "dddddddddd"]
  data, report = encode_examples(
    _examples(texts, np.array([0, 1, 1, 0])), ByteTokenizer(), max_len=4, overflow="drop"
  )
  assert len(data) == 2 and data["labels"].tolist() == [0, 1]
  assert report["dropped"] == 2 and report["truncated"] == 0 and report["kept_whole"] == 2
  with pytest.raises(ValueError, match="drops all 4 examples: the shortest has 3 tokens"):
    encode_examples(_examples(texts), ByteTokenizer(), max_len=2, overflow="drop", add_bos=True)


def test_padding_side_gives_the_right_mask():
  ex = _examples(["ab", "abcd"])
  right, _ = encode_examples(ex, ByteTokenizer(), max_len=5, overflow="drop", pad_side="right")
  left, _ = encode_examples(ex, ByteTokenizer(), max_len=5, overflow="drop", pad_side="left")
  assert right["mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]
  assert left["mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]]
  pad = ByteTokenizer.pad_id
  assert right["tokens"][0].tolist() == [97, 98, pad, pad, pad]
  assert left["tokens"][0].tolist() == [pad, pad, pad, 97, 98]
  # The same real tokens either way, in the same order.
  for a, b in zip(right["tokens"], left["tokens"]):
    assert a[a != pad].tolist() == b[b != pad].tolist()


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"max_len": 0, "overflow": "drop"}, "max_len=0"),
    ({"max_len": 4, "overflow": "cut"}, "overflow='cut': expected one of"),
    ({"max_len": 4, "overflow": "drop", "truncate_side": "middle"}, "truncate_side='middle'"),
    ({"max_len": 4, "overflow": "drop", "pad_side": "top"}, "pad_side='top'"),
    (
      {"max_len": 1, "overflow": "truncate", "add_bos": True},
      "no room for text between the special tokens",
    ),
  ],
)
def test_bad_arguments_fail_before_encoding(kwargs, match):
  with pytest.raises(ValueError, match=match):
    encode_examples(_examples(["abc"]), ByteTokenizer(), **kwargs)


def test_text_that_encodes_to_nothing_is_an_error(bpe_file):
  # Byte-level BPE turns any text into tokens; an empty string is the one that gives none.
  with pytest.raises(ValueError, match="example 1 .* encodes to no tokens"):
    encode_examples(
      _examples(["fine", ""]), HFTokenizer.from_file(bpe_file), max_len=8, overflow="truncate"
    )


def test_hf_tokenizer_from_a_trained_tokenizer_json(bpe_file):
  tok = HFTokenizer.from_file(bpe_file)
  raw = Tokenizer.from_file(str(bpe_file))
  assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True)
  text = "the film is good"
  ids = tok.encode(text)
  assert ids == raw.encode(text).ids and len(ids) < len(text)  # merges were learned
  assert tok.decode(ids) == text
  assert tok.encode_batch([text, "a bad story"]) == [ids, tok.encode("a bad story")]
  # GPT-2 / Pythia convention: <|endoftext|> begins and ends a document.
  assert tok.bos_id == tok.eos_id == raw.token_to_id("<|endoftext|>")
  assert tok.pad_id == raw.token_to_id("<|padding|>")

  data, report = encode_examples(
    _examples(SENTENCES), tok, max_len=4, overflow="truncate", add_bos=True
  )
  assert (data["tokens"][:, 0] == tok.bos_id).all() and data["tokens"].max() < tok.vocab_size
  longest_whole = max(len(tok.encode(s)) for s in SENTENCES) + 1
  assert report["longest"] == longest_whole
  assert report["truncated"] == sum(len(tok.encode(s)) + 1 > 4 for s in SENTENCES)
  last = tok.encode(SENTENCES[3])[-3:]  # left truncation keeps the last tokens
  assert data["tokens"][3, 1:].tolist() == last


def test_hf_special_tokens_from_config_files_or_arguments(bpe_file):
  config = bpe_file.parent / "special_tokens_map.json"
  config.write_text(
    json.dumps({"bos_token": {"content": "<|padding|>"}, "eos_token": "<|endoftext|>"})
  )
  tok = HFTokenizer.from_file(bpe_file)
  assert tok.bos_id == Tokenizer.from_file(str(bpe_file)).token_to_id("<|padding|>")
  explicit = HFTokenizer.from_file(bpe_file, bos_token="<|endoftext|>")
  assert explicit.bos_id == explicit.eos_id
  with pytest.raises(ValueError, match="pad_token='<nope>': not in the vocabulary"):
    HFTokenizer.from_file(bpe_file, pad_token="<nope>")


def test_hf_tokenizer_without_bos_refuses_add_bos(tmp_path):
  tok = Tokenizer(models.WordLevel({"[UNK]": 0, "yes": 1, "no": 2}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  hf = HFTokenizer.from_file(path)
  assert hf.bos_id is None and hf.eos_id is None and hf.pad_id == 0
  assert hf.encode("yes no maybe") == [1, 2, 0]
  with pytest.raises(ValueError, match="add_bos=True but HFTokenizer has no bos token"):
    encode_examples(_examples(["yes"]), hf, max_len=4, overflow="drop", add_bos=True)


def test_hf_tokenizer_ignores_truncation_and_padding_saved_in_the_file(bpe_file):
  tok = Tokenizer.from_file(str(bpe_file))
  tok.enable_truncation(max_length=2)
  tok.enable_padding(length=30, pad_token="<|padding|>")
  tok.save(str(bpe_file))
  assert len(tok.encode("a bad story told well").ids) == 30
  hf = HFTokenizer.from_file(bpe_file)
  ids = hf.encode("a bad story told well")
  assert 2 < len(ids) < 30 and hf.decode(ids) == "a bad story told well"
  assert "vocab" not in repr(hf)


def test_hf_tokenizer_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such tokenizer file"):
    HFTokenizer.from_file(tmp_path / "missing.json")
  bad = tmp_path / "tokenizer.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="not a readable tokenizer.json"):
    HFTokenizer.from_file(bad)


def test_check_vocabulary_rejects_a_tokenizer_larger_than_the_model():
  with pytest.raises(ValueError) as caught:
    tokenize.check_vocabulary(
      tokenizer_vocab_size=58, model_vocab_size=18, model="gpt2-small", tokenizer="tok.json"
    )
  assert str(caught.value) == (
    "tokenizer tok.json has 58 ids but model gpt2-small's vocabulary has 18: expected a "
    "tokenizer whose ids fit the model (the model's own tokenizer.json)"
  )
  with pytest.raises(ValueError, match="has 19 ids but model m's vocabulary has 18"):
    tokenize.check_vocabulary(
      tokenizer_vocab_size=19, model_vocab_size=18, model="m", tokenizer="t"
    )


def test_check_vocabulary_accepts_a_model_vocabulary_padded_beyond_the_tokenizer():
  # GPT-2: 50257 tokenizer ids, embedding matrices often padded to 50304; Pythia alike.
  for tok_size, model_size in ((50257, 50257), (50257, 50304), (50277, 50304), (259, 260)):
    assert (
      tokenize.check_vocabulary(
        tokenizer_vocab_size=tok_size, model_vocab_size=model_size, model="m", tokenizer="t"
      )
      is None
    )


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"tokenizer_vocab_size": 0, "model_vocab_size": 18}, "tokenizer_vocab_size=0"),
    ({"tokenizer_vocab_size": 5, "model_vocab_size": 18.0}, r"model_vocab_size=18\.0"),
    ({"tokenizer_vocab_size": True, "model_vocab_size": 18}, "tokenizer_vocab_size=True"),
  ],
)
def test_check_vocabulary_rejects_sizes_that_are_not_positive_ints(kwargs, match):
  with pytest.raises(ValueError, match=f"{match}: expected a positive int"):
    tokenize.check_vocabulary(**kwargs, model="m", tokenizer="t")


class _CorruptTokenizer(ByteTokenizer):
  """Gives an id past its vocabulary for texts containing 'z' (as a tokenizer.json
  whose model lists more ids than its vocab would)."""

  def __init__(self, *, bad_id=300, pad_id=None, bos_id=None):
    self.bad_id = bad_id
    if pad_id is not None:
      self.pad_id = pad_id
    if bos_id is not None:
      self.bos_id = bos_id

  def encode(self, text):
    return [self.bad_id if ch == "z" else ord(ch) for ch in text]


@pytest.mark.parametrize("bad_id", [259, 300, -1])
def test_an_id_outside_the_tokenizers_vocabulary_names_the_example(bad_id):
  tok = _CorruptTokenizer(bad_id=bad_id)
  with pytest.raises(ValueError) as caught:
    encode_examples(_examples(["fine", "ok", "lazy"]), tok, max_len=8, overflow="truncate")
  assert str(caught.value) == (
    f"example 2 ('lazy') encodes to token id {bad_id}: expected ids in [0, 259) "
    "(_CorruptTokenizer.vocab_size): the tokenizer is corrupt or inconsistent"
  )
  data, _ = encode_examples(_examples(["fine", "ok"]), tok, max_len=8, overflow="truncate")
  assert data["tokens"].max() < tok.vocab_size


def test_a_special_id_outside_the_vocabulary_is_an_error():
  with pytest.raises(
    ValueError,
    match=r"^_CorruptTokenizer\.pad_id=259: expected an id in "
    r"\[0, 259\) \(its vocab_size\)",
  ):
    encode_examples(
      _examples(["ok"]), _CorruptTokenizer(pad_id=259), max_len=4, overflow="truncate"
    )
  bad_bos = _CorruptTokenizer(bos_id=400)
  with pytest.raises(ValueError, match=r"_CorruptTokenizer\.bos_id=400: expected an id in"):
    encode_examples(_examples(["ok"]), bad_bos, max_len=4, overflow="truncate", add_bos=True)
  encode_examples(_examples(["ok"]), bad_bos, max_len=4, overflow="truncate")  # bos unused
