"""Every stored file knows what it is: cache and stage keys hash the contents
of the files a run reads, not their paths, and a stored artefact of another
identity is rebuilt, not used."""

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np

from w2s_jax.infra import fingerprint as fp
from w2s_jax.tasks.classification import TextTaskConfig
from w2s_jax.tasks.generation import GenTextTaskConfig
from w2s_jax.w2s.experiment import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]


def _write(path, text):
  path.write_text(text)
  return str(path)


def _text_cfg(d, **kw):
  return TextTaskConfig(
    train_file=str(d / "train.csv"), test_file=str(d / "test.csv"), tokenizer="bpe:300", **kw
  )


def test_a_data_file_edited_in_place_gets_a_new_key(tmp_path):
  _write(tmp_path / "train.csv", "text,label\ngood film,1\nbad film,0\n")
  _write(tmp_path / "test.csv", "text,label\nfine,1\n")
  cfg = _text_cfg(tmp_path)
  before_corpus = fp.digest(cfg.corpus_fields())
  before_stage = fp.digest(ExperimentConfig(text_task=cfg))
  # Same size, so only the bytes differ (the probe of issue 28: rewrite train.csv, run again).
  _write(tmp_path / "train.csv", "text,label\ngood play,1\nbad play,0\n")
  os.utime(tmp_path / "train.csv", ns=(1, 1))  # even an mtime set back does not hide it
  assert fp.digest(cfg.corpus_fields()) != before_corpus  # the pretrained cache's key
  assert fp.digest(ExperimentConfig(text_task=cfg)) != before_stage  # every stage's key


def test_a_moved_file_keeps_its_key_and_its_path_is_not_in_it(tmp_path):
  for d in (tmp_path / "a", tmp_path / "b"):
    d.mkdir()
    _write(d / "train.csv", "text,label\ngood film,1\nbad film,0\n")
    _write(d / "test.csv", "text,label\nfine,1\n")
  a, b = _text_cfg(tmp_path / "a"), _text_cfg(tmp_path / "b")
  assert fp.digest(a.corpus_fields()) == fp.digest(b.corpus_fields())
  assert str(tmp_path) not in str(a.corpus_fields())
  assert a.corpus_fields()["train_file"] == {
    "contents": fp.contents_digest(tmp_path / "a" / "train.csv")
  }


def test_tfds_tasks_and_specs_keep_their_keys():
  # No file named: the key is what it was before contents were hashed.
  cfg = TextTaskConfig(tfds_name="glue/sst2", tokenizer="bpe:4096")
  fields = cfg.corpus_fields()
  assert fields["tokenizer"] == "bpe:4096" and fields["train_file"] is None
  assert "type" not in fields
  gen = GenTextTaskConfig(tfds_name="gsm8k")
  assert gen.corpus_fields()["tokenizer"] == "bytes"


def test_a_tokenizer_file_and_an_imported_model_folder_are_keyed_by_contents(tmp_path):
  _write(tmp_path / "train.jsonl", '{"prompt": "1+1", "response": "2"}\n')
  _write(tmp_path / "test.jsonl", '{"prompt": "2+2", "response": "4"}\n')
  tok = _write(tmp_path / "tokenizer.json", '{"model": {"vocab": {"a": 0}}}')
  gen = GenTextTaskConfig(
    train_file=str(tmp_path / "train.jsonl"), test_file=str(tmp_path / "test.jsonl"), tokenizer=tok
  )
  before = fp.digest(gen.corpus_fields())
  _write(tmp_path / "tokenizer.json", '{"model": {"vocab": {"b": 0}}}')
  assert fp.digest(gen.corpus_fields()) != before

  model = tmp_path / "model"
  model.mkdir()
  _write(model / "config.json", '{"hidden_size": 8}')
  (model / "model.safetensors").write_bytes(b"\0" * 64)
  cfg = ExperimentConfig(weak_size="weak", pretrained_dirs=(("weak", str(model)),))
  before = fp.digest(cfg)
  (model / ".model.safetensors.lock").write_text("")  # our own lock files are not contents
  assert fp.digest(cfg) == before
  (model / "model.safetensors").write_bytes(b"\1" + b"\0" * 63)
  assert fp.digest(cfg) != before
  copy = tmp_path / "copy"
  shutil.copytree(model, copy)
  assert fp.digest(ExperimentConfig(weak_size="weak", pretrained_dirs=(("weak", str(copy)),))) == (
    fp.digest(cfg)
  )


def test_each_file_is_read_once_while_it_is_unchanged(tmp_path, monkeypatch):
  path = tmp_path / "big.csv"
  path.write_bytes(b"x" * (3 << 22))
  reads = []
  real_open = open

  def counting_open(p, *a, **kw):
    if str(p) == str(path):
      reads.append(p)
    return real_open(p, *a, **kw)

  monkeypatch.setattr(fp, "open", counting_open, raising=False)
  first = fp.contents_digest(path)
  assert fp.contents_digest(path) == first and len(reads) == 1
  import hashlib

  assert first == hashlib.sha256(b"x" * (3 << 22)).hexdigest()


def test_the_rerun_after_editing_the_train_file_pretrains_again(tmp_path):
  """Issue 28's probe as written: configs/text.py on two small files, the train
  file rewritten with other text, the same command again: no stale cache hit."""
  from w2s_jax.infra import configs
  from w2s_jax.infra.sharding import MeshConfig
  from w2s_jax.w2s import parts as parts_lib

  rng = np.random.default_rng(0)
  words = ["good", "bad", "film", "play", "plot", "cast", "dull", "fine"]

  def write(name, rows, shift):
    lines = ["text,label"] + [
      " ".join(words[(i + shift + j) % len(words)] for j in range(5)) + f",{int(rng.integers(2))}"
      for i in range(rows)
    ]
    (tmp_path / name).write_text("\n".join(lines) + "\n")

  write("train.csv", 64, 0)
  write("test.csv", 16, 3)
  spec = (
    f"{ROOT / 'configs/text.py'}:train={tmp_path / 'train.csv'},test={tmp_path / 'test.csv'},"
    "weak=pico,strong=nano,tokenizer=bpe:300,pretrain_steps=30,finetune_steps=10,seeds=1,max_len=32"
  )
  pico = lambda: parts_lib.build(
    dataclasses.replace(configs.load(spec), mesh=MeshConfig(devices=1)),
    cache_dir=tmp_path / "cache",
    progress=False,
  ).models.get("pico")
  first = pico()
  assert not first.info["cached"] and pico().info["cached"]
  write("train.csv", 64, 5)  # other text, same path
  again = pico()
  assert not again.info["cached"]
  assert again.info["test_lm_xent"] != first.info["test_lm_xent"]
  assert len(list((tmp_path / "cache").glob("pico-*"))) == 2  # the old entry stays, unused
