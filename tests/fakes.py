"""Offline stand-ins the tests share: labelled text files, TFDS under
tfds.testing.mock_data, and tiny random Hugging Face checkpoints saved by
transformers (so the import path reads real files, written by the test)."""

import contextlib
import json

import numpy as np

from w2s_jax.data.dataset import Dataset
from w2s_jax.models import model_config
from w2s_jax.tasks.classification import TextTaskConfig
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig

WORDS = {1: ["good", "great", "fine", "lovely"], 0: ["bad", "awful", "dull", "poor"]}
FILLER = ["the", "film", "was", "a", "plot", "and", "cast", "very"]
TFDS_EXAMPLES = 60  # examples per split of fake_tfds
ANLI_CUES = ("surely", "maybe", "never")  # per anli class (entailment, neutral, contradiction)


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
  """(text, label): filler words and one word that gives the label away."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    label = int(rng.integers(2))
    words = list(rng.choice(FILLER, size=int(rng.integers(2, 6)))) + [rng.choice(WORDS[label])]
    rng.shuffle(words)
    rows.append((" ".join(words), label))
  return rows


def write_sentiment_tsv(path, n: int, seed: int, *, text="text", label="label"):
  rows = [f"{text}\t{label}"] + [f"{t}\t{y}" for t, y in sentiment_rows(n, seed)]
  path.write_text("\n".join(rows) + "\n")
  return path


def write_sentiment_jsonl(path, n: int, seed: int, *, text="text", label="label"):
  path.write_text(
    "".join(json.dumps({text: t, label: y}) + "\n" for t, y in sentiment_rows(n, seed))
  )
  return path


def write_preference_jsonl(path, n: int, seed: int):
  """{prompt, chosen, rejected} lines: the chosen text is a positive sentence
  (sentiment_rows), the rejected a negative one: a learnable preference."""
  rows = sentiment_rows(4 * n, seed)
  pos = [t for t, y in rows if y == 1][:n]
  neg = [t for t, y in rows if y == 0][:n]
  prompt = "Which review is more positive?"
  path.write_text(
    "".join(
      json.dumps({"prompt": prompt, "chosen": c, "rejected": r}) + "\n" for c, r in zip(pos, neg)
    )
  )
  return path


TOPICS = {
  "sport": ["goal", "match", "team", "score"],
  "music": ["song", "band", "album", "tune"],
  "food": ["bread", "soup", "spice", "meal"],
  "travel": ["train", "hotel", "beach", "trip"],
}


def write_topic_csv(path, n: int, seed: int, *, topics=tuple(TOPICS)):
  """A CSV of (text, label) rows whose labels are topic names: filler words
  and one word of the row's topic."""
  rng = np.random.default_rng(seed)
  rows = ["text,label"]
  for _ in range(n):
    topic = topics[int(rng.integers(len(topics)))]
    words = list(rng.choice(FILLER, size=int(rng.integers(2, 6)))) + [rng.choice(TOPICS[topic])]
    rng.shuffle(words)
    rows.append(f"{' '.join(words)},{topic}")
  path.write_text("\n".join(rows) + "\n")
  return path


NEGATED = {
  1: ["good", "great", "lovely", "superb", "fun"],
  0: ["bad", "awful", "dull", "poor", "boring"],
}


def write_review_jsonl(path, n: int, seed: int, *, noise: float = 0.05):
  """A new user's sentiment file: a few filler words, a sentiment word, and
  in a third of the rows "not" before it, which flips the label; `noise` of
  the labels flipped at random."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    label = int(rng.integers(2))
    negated = rng.random() < 1 / 3
    word = str(rng.choice(NEGATED[1 - label if negated else label]))
    words = list(rng.choice(FILLER, size=int(rng.integers(2, 7))))
    at = int(rng.integers(len(words) + 1))
    words[at:at] = ["not", word] if negated else [word]
    if rng.random() < noise:
      label = 1 - label
    rows.append(json.dumps({"text": " ".join(words), "label": label}) + "\n")
  path.write_text("".join(rows))
  return path


def sentiment_files(root) -> tuple[str, str]:
  """(train.tsv of 400 rows, test.tsv of 64) under root."""
  return (
    str(write_sentiment_tsv(root / "train.tsv", 400, 0)),
    str(write_sentiment_tsv(root / "test.tsv", 64, 1)),
  )


def text_task_cfg(files, **changes) -> TextTaskConfig:
  """The sentiment files as a text task: 96 ground-truth rows, 128 weak-labelled."""
  return TextTaskConfig(
    **{
      "train_file": files[0],
      "test_file": files[1],
      "max_len": 24,
      "gt_examples": 96,
      "w2s_examples": 128,
      **changes,
    }
  )


def text_experiment(files, **changes) -> ExperimentConfig:
  """pico -> nano on the sentiment files (None: the testbed), pretrained briefly."""
  return ExperimentConfig(
    **{
      "name": "text-test",
      "text_task": text_task_cfg(files) if files else None,
      "head_input": "hidden",
      "weak_size": "pico",
      "strong_size": "nano",
      "pretrain": OptimConfig(steps=30, batch_size=16, lr=3e-3, warmup_frac=0.1),
      "finetune": OptimConfig(steps=10, batch_size=16, lr=1e-3, head_lr=1e-2),
      "losses": (Xent(),),
      "seeds": (0, 1),
      "eval_batch_size": 16,
      "bootstrap_resamples": 200,
      **changes,
    }
  )


def vocabulary() -> list[str]:
  """Every word of the sentiment files and of fake_tfds's rows."""
  return sorted(
    {w for ws in WORDS.values() for w in ws}
    | set(FILLER)
    | {"film", "quoted", "é", "passage", "is", "even", "review", '"'}
    | {str(i) for i in range(200)}
  )


def _word_level_tokenizer(folder, words):
  import tokenizers

  vocab = {w: i for i, w in enumerate(["<unk>", "<|endoftext|>", *words])}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.save(str(folder / "tokenizer.json"))
  return vocab


def tiny_gpt2(folder, n_layer: int, words=None) -> str:
  """A random GPT-2 of transformers, saved as safetensors, with a WordLevel tokenizer.json."""
  import torch
  import transformers

  folder.mkdir(parents=True)
  vocab = _word_level_tokenizer(folder, vocabulary() if words is None else words)
  torch.manual_seed(n_layer)
  eos = vocab["<|endoftext|>"]
  model = transformers.GPT2LMHeadModel(
    transformers.GPT2Config(
      vocab_size=len(vocab),
      n_embd=32,
      n_layer=n_layer,
      n_head=4,
      n_positions=32,
      bos_token_id=eos,
      eos_token_id=eos,
    )
  )
  model.save_pretrained(folder, safe_serialization=True)
  return str(folder)


def tiny_gpt_neox(folder, n_layer: int, words=None) -> str:
  """A random GPT-NeoX (Pythia's architecture), saved as safetensors, with a tokenizer.json."""
  import torch
  import transformers

  folder.mkdir(parents=True)
  vocab = _word_level_tokenizer(folder, vocabulary() if words is None else words)
  torch.manual_seed(n_layer)
  eos = vocab["<|endoftext|>"]
  model = transformers.GPTNeoXForCausalLM(
    transformers.GPTNeoXConfig(
      vocab_size=len(vocab),
      hidden_size=32,
      num_hidden_layers=n_layer,
      num_attention_heads=4,
      intermediate_size=64,
      max_position_embeddings=64,
      rotary_pct=0.25,
      bos_token_id=eos,
      eos_token_id=eos,
    )
  )
  model.save_pretrained(folder, safe_serialization=True)
  return str(folder)


def fake_tfds_rows(builder_name: str, examples: int = TFDS_EXAMPLES) -> list[dict]:
  """Examples shaped as real ArrayRecord files give them: bytes, lists, ints."""
  rows = []
  for i in range(examples):
    if builder_name == "glue":
      rows.append({"sentence": f'film {i} "quoted" é '.encode(), "label": i % 2, "idx": i})
    elif builder_name == "imdb_reviews":
      rows.append({"text": f"review {i}".encode(), "label": (i // 2) % 2})
    elif builder_name == "bool_q":
      rows.append(
        {
          "passage": f"passage {i}".encode(),
          "question": f"is {i} even".encode(),
          "answer": i % 2 == 0,
          "title": b"t",
        }
      )
    elif builder_name == "cosmos_qa":
      right = i % 4
      row = {
        "context": f"context {i}".encode(),
        "question": f"question {i}".encode(),
        "label": right,
        "id": str(i).encode(),
      }
      for k in range(4):
        row[f"answer{k}"] = (f"right {i}" if k == right else f"wrong {i}.{k}").encode()
      rows.append(row)
    elif builder_name == "hellaswag":
      right = i % 4
      rows.append(
        {
          "activity_label": b"Cooking",
          "context": f"context {i}".encode(),
          "endings": [
            (f"right {i}" if k == right else f"wrong {i}.{k}").encode() for k in range(4)
          ],
          "label": right,
          "source_id": b"s",
          "split_type": b"indomain",
        }
      )
    elif builder_name == "piqa":
      right = i % 2
      rows.append(
        {
          "goal": f"goal {i}".encode(),
          "id": b"x",
          "label": right,
          "sol1": (f"right {i}" if right == 0 else f"wrong {i}.0").encode(),
          "sol2": (f"right {i}" if right == 1 else f"wrong {i}.1").encode(),
        }
      )
    elif builder_name == "anli":
      rows.append(
        {
          "context": f"premise {i}".encode(),
          # A word that gives the class away, so a 3-class run can learn it.
          "hypothesis": f"hyp {i} {ANLI_CUES[i % 3]}".encode(),
          "label": i % 3,
          "uid": b"u",
        }
      )
    elif builder_name == "ag_news_subset":
      rows.append(
        {
          "title": f"headline {i}".encode(),
          "description": f"story {i} {['match goal', 'election', 'market', 'chip'][i % 4]}".encode(),
          "label": i % 4,
        }
      )
    else:
      raise AssertionError(f"fake_tfds has no rows for {builder_name!r}")
  return rows


@contextlib.contextmanager
def fake_tfds(examples: int = TFDS_EXAMPLES):
  """Every TFDS text task through tfds.data_source, offline: fake_tfds_rows
  for every split, under tfds.testing.mock_data."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.testing import mocking

  # tfds 4.9.10's mock binds its __getitems__ without `self`, so a batched read
  # (what load_task does, as ArrayRecord reads batches faster) raises TypeError.
  # This stands in for it with the same result: the mocked examples in order.
  original = mocking._getitems
  mocking._getitems = lambda record_keys, generator, serialized=False: [
    generator[k] for k in record_keys
  ]
  try:
    with tfds.testing.mock_data(
      as_data_source_fn=lambda builder, split, **kw: fake_tfds_rows(builder.name, examples)
    ):
      yield
  finally:
    mocking._getitems = original


# --- Tiny models and reference math ------------------------------------------------


def tiny_model_cfg(head_input="lm_probs", vocab_size=11, max_len=8, size="pico"):
  return model_config.decode_size(
    size, vocab_size=vocab_size, max_len=max_len, head_input=head_input
  )


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def built_once(tmp_path_factory, build):
  """case -> (model, folder): build(case, folder) saves a reference model
  into a fresh folder, once per case for the module's tests."""
  cache = {}

  def get(case):
    if case not in cache:
      folder = tmp_path_factory.mktemp(case)
      cache[case] = (build(case, folder), folder)
    return cache[case]

  return get


def finetune_setup():
  """A tiny classifier, 16 examples (half left-padded) and soft labels that
  differ per seed (3 seeds), and a 3-step fine-tune."""
  cfg = tiny_model_cfg(vocab_size=11, max_len=6)
  rng = np.random.default_rng(0)
  n = 16
  tokens = rng.integers(1, 11, size=(n, 6)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[::2, :3] = 0
  data = Dataset(tokens=tokens, mask=mask)
  p1 = rng.uniform(size=(3, n)).astype(np.float32)
  labels = np.stack([1 - p1, p1], -1)  # different soft labels per seed
  optim = OptimConfig(steps=3, batch_size=8, lr=1e-2, head_lr=1e-1, warmup_frac=0.0)
  return cfg, data, labels, optim
