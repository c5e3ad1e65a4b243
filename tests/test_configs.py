"""Bad inputs fail at construction, naming the field and the value, before any compute."""

import dataclasses
from pathlib import Path

import pytest

from w2s_jax.data import testbed
from w2s_jax.data.testbed import WorldConfig
from w2s_jax.infra import configs, sharding
from w2s_jax.models import model_config
from w2s_jax.training.classifier_losses import LogConf, Xent
from w2s_jax.training.objectives import Loss
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import engine
from w2s_jax.w2s.experiment import ExperimentConfig

import common

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.py"


def _message(excinfo):
  return str(excinfo.value)


def test_model_config_width_not_divisible_by_heads():
  with pytest.raises(ValueError) as e:
    model_config.ModelConfig(vocab_size=10, width=30, depth=1, heads=4)
  assert "width=30" in _message(e) and "heads=4" in _message(e)


@pytest.mark.parametrize(
  "kwargs,needle",
  [
    (dict(vocab_size=0, width=32, depth=1, heads=2), "vocab_size=0"),
    (dict(vocab_size=10, width=32, depth=-1, heads=2), "depth=-1"),
    (dict(vocab_size=10, width=32, depth=1, heads=2, head_input="cls"), "head_input='cls'"),
    (dict(vocab_size=10, width=32, depth=1, heads=2, num_classes=0), "num_classes=0"),
    (dict(vocab_size=10, width=32, depth=1, heads=2, dtype="float16"), "dtype='float16'"),
  ],
)
def test_model_config_other_fields(kwargs, needle):
  with pytest.raises(ValueError, match="ModelConfig") as e:
    model_config.ModelConfig(**kwargs)
  assert needle in _message(e)


def test_decode_size_unknown_name():
  with pytest.raises(ValueError) as e:
    model_config.decode_size("huge", vocab_size=10)
  assert "'huge'" in _message(e)
  assert "WIDTHxDEPTH" in _message(e)


def test_world_config_too_few_entities():
  with pytest.raises(ValueError) as e:
    WorldConfig(num_entities=10, entities_per_split=200)
  assert "num_entities=10" in _message(e)
  assert "600" in _message(e)  # 3 splits of 200


@pytest.mark.parametrize(
  "kwargs,needle",
  [
    (dict(num_regions=1), "num_regions=1"),
    (dict(syllables=5), "syllables=5"),
    (dict(zipf=-1.0), "zipf=-1.0"),
    (dict(doc_len=4), "doc_len=4"),
    (dict(corpus_docs=0), "corpus_docs=0"),
  ],
)
def test_world_config_other_fields(kwargs, needle):
  with pytest.raises(ValueError, match="WorldConfig") as e:
    WorldConfig(**kwargs)
  assert needle in _message(e)


def test_optim_config():
  with pytest.raises(ValueError) as e:
    OptimConfig(steps=0)
  assert "OptimConfig.steps=0" in _message(e)
  with pytest.raises(ValueError, match="OptimConfig.batch_size=0"):
    OptimConfig(batch_size=0)
  with pytest.raises(ValueError, match="OptimConfig.head_lr=-1"):
    OptimConfig(head_lr=-1.0)
  with pytest.raises(ValueError, match="OptimConfig.warmup_frac=1"):
    OptimConfig(warmup_frac=1.0)


def test_loss_config():
  with pytest.raises(ValueError) as e:
    Loss.from_string("nope")
  assert "loss 'nope': expected one of" in _message(e)
  with pytest.raises(ValueError, match="temperature=0"):
    Xent(temperature=0)
  with pytest.raises(ValueError, match="aux_coef=1.5"):
    LogConf(aux_coef=1.5)


def test_experiment_config():
  with pytest.raises(ValueError) as e:
    ExperimentConfig(weak_size="bogus")
  assert "weak_size" in _message(e) and "'bogus'" in _message(e)
  with pytest.raises(ValueError, match="strong_size"):
    ExperimentConfig(strong_size="7")
  with pytest.raises(ValueError, match="seeds"):
    ExperimentConfig(seeds=(0, 0))
  with pytest.raises(ValueError, match="seeds"):
    ExperimentConfig(seeds=())
  with pytest.raises(ValueError, match="losses"):
    ExperimentConfig(losses=(Xent(), Xent()))
  with pytest.raises(ValueError, match="bootstrap_resamples=10"):
    ExperimentConfig(bootstrap_resamples=10)


def test_parse_arg():
  with pytest.raises(ValueError) as e:
    configs.parse_arg("bogus", small=False)
  assert "'bogus'" in _message(e)
  ns = configs.parse_arg("small,seeds=3", small=False, scratch=False, seeds=5)
  assert (ns.small, ns.scratch, ns.seeds) == (True, False, 3)
  assert configs.parse_arg(None, small=False).small is False
  assert configs.parse_arg("small=false", small=True).small is False
  with pytest.raises(ValueError, match="seeds='x'"):
    configs.parse_arg("seeds=x", seeds=5)
  with pytest.raises(ValueError, match="small='maybe'"):
    configs.parse_arg("small=maybe", small=False)
  with pytest.raises(ValueError, match="'seeds' needs a value"):
    configs.parse_arg("seeds", seeds=5)


def test_load_config_files():
  cfg = configs.load(f"{DEFAULT}:small,seeds=3")
  assert cfg.name == "default-small"
  assert cfg.seeds == (0, 1, 2)
  assert (cfg.weak_size, cfg.strong_size) == ("pico", "micro")
  assert [l.name for l in cfg.losses] == ["xent", "logconf"]
  full = configs.load(str(DEFAULT))
  assert full.seeds == (0, 1, 2, 3, 4) and full.name == "default"
  assert full.world == testbed.CUE_WORLD and full.finetune == common.CUE_FINETUNE
  # The world from before the cue, with the fine-tuning its tables were measured with.
  facts = configs.load(f"{DEFAULT}:facts")
  assert facts.world == testbed.WorldConfig() and facts.name == "default-facts"
  assert facts.finetune == ExperimentConfig().finetune
  scratch = configs.load(f"{DEFAULT}:scratch")
  assert scratch.use_pretraining is False and scratch.name == "default-scratch"
  with pytest.raises(FileNotFoundError, match="nope.py"):
    configs.load("configs/nope.py")
  with pytest.raises(ValueError, match="'bogus'"):
    configs.load(f"{DEFAULT}:bogus")
  # config dataclasses are frozen
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.seeds = (0,)


def test_generative_config_files():
  gen = configs.load(str(ROOT / "configs" / "generative.py"))
  assert gen.generative and gen.generation.format == "city_region"
  assert [l.name for l in gen.losses] == [
    "sft",
    "forward_kl",
    "reverse_kl",
    "jsd",
    "combined",
    "live",
  ]
  ablation = configs.load(f"{ROOT / 'configs' / 'generative.py'}:format=new_token,losses=sft")
  assert ablation.name == "generative-new_token" and [l.name for l in ablation.losses] == ["sft"]
  grid = configs.load_sweep(str(ROOT / "configs" / "generative.py"))
  weights = sorted({c.loss.kd_weight for c in grid.cells if c.loss.name == "combined"})
  assert weights == [0.0, 0.25, 0.5, 0.75, 1.0] and len(grid.cells) == 11
  gsm8k = configs.load(f"{ROOT / 'configs' / 'gpt2_gsm8k.py'}:models=/m,files=/d")
  assert gsm8k.text_task.train_file == "/d/train.jsonl" and gsm8k.text_task.metric == "gsm8k"
  assert (
    configs.load(f"{ROOT / 'configs' / 'gpt2_gsm8k.py'}:models=/m").text_task.tfds_name == "gsm8k"
  )
  with pytest.raises(ValueError, match="needs models=DIR"):
    configs.load(str(ROOT / "configs" / "gpt2_gsm8k.py"))


def test_check_batch_size(mesh4):
  with pytest.raises(ValueError) as e:
    sharding.check_batch_size(6, mesh4)
  assert "batch_size=6" in _message(e) and "4" in _message(e)
  sharding.check_batch_size(8, mesh4)  # no error
  with pytest.raises(ValueError, match="num_devices=9"):
    sharding.make_mesh(9)
  with pytest.raises(ValueError, match="fsdp=3"):
    sharding.make_mesh(8, fsdp=3)
  with pytest.raises(ValueError, match="MeshConfig.fsdp=0"):
    sharding.MeshConfig(fsdp=0)


@pytest.mark.parametrize(
  "field,change",
  [
    ("finetune.batch_size", dict(finetune=OptimConfig(steps=1, batch_size=6))),
    ("pretrain.batch_size", dict(pretrain=OptimConfig(steps=1, batch_size=10))),
    ("eval_batch_size", dict(eval_batch_size=6)),
  ],
)
def test_pipeline_rejects_bad_batch_size_before_compute(tmp_path, monkeypatch, field, change):
  cfg = dataclasses.replace(configs.load(f"{DEFAULT}:small"), **change)

  def no_compute(*args, **kwargs):
    raise AssertionError("the pipeline started computing before validating its config")

  monkeypatch.setattr(testbed, "make_world", no_compute)
  with pytest.raises(ValueError) as e:
    engine.run_experiment(
      cfg, out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False
    )
  assert f"{field}=" in _message(e)
  assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_explicit_args_win_over_the_small_preset():
  """Issue 28: `small` silently replaced what the user asked for (the run was
  even named after the ignored lr). An explicit arg now wins; two presets
  that set the same thing are an error naming both."""
  load = lambda spec: configs.load(str(ROOT / "configs" / spec))
  gen = load("generative.py:small,lr=1e9")
  assert gen.finetune.lr == 1e9 and gen.name == "generative-lr1e+09-small"
  assert load("generative.py:small").finetune.lr == 3e-3  # the preset, when not overridden
  assert load("generative.py:small,losses=sft").losses == (Loss.from_string("sft"),)
  for spec in ("generative.py:small,scratch", "default.py:small,scratch"):
    with pytest.raises(ValueError, match="small and scratch each set the fine-tuning schedule"):
      load(spec)
  text = load(
    "text.py:train=a.csv,test=b.csv,small,tokenizer=bpe:300,max_len=48,weak=nano,"
    "strong=micro,pretrain_steps=7,finetune_steps=3"
  )
  assert (text.text_task.tokenizer, text.text_task.max_len) == ("bpe:300", 48)
  assert (text.weak_size, text.strong_size) == ("nano", "micro")
  assert (text.pretrain.steps, text.finetune.steps) == (7, 3)
  preset = load("text.py:train=a.csv,test=b.csv,small")
  assert (preset.text_task.tokenizer, preset.text_task.max_len) == ("bytes", 32)
  assert (preset.weak_size, preset.strong_size, preset.pretrain.steps) == ("pico", "nano", 30)
  sst2 = load("sst2.py:small,gt=100,strong=micro,finetune_steps=5")
  assert (sst2.text_task.gt_examples, sst2.strong_size, sst2.finetune.steps) == (100, "micro", 5)
  minilm = load("sst2_minilm.py:small,steps=9,gt=70")
  assert (minilm.finetune.steps, minilm.text_task.gt_examples) == (9, 70)


def test_every_config_takes_the_basic_args(tmp_path):
  """Issue 32: weak=, strong=, losses=, seeds= (a sweep's sizes= and weak=)
  mean the same on every config where they make sense; other sizes name the
  run, so it never shares a folder with the config's own pair."""
  load = lambda spec: configs.load(str(ROOT / "configs" / spec))
  sweep = lambda spec: configs.load_sweep(str(ROOT / "configs" / spec))
  cfg = load("default.py:weak=micro,strong=96x2,losses=xent,product,seeds=2")
  assert (cfg.weak_size, cfg.strong_size, cfg.seeds) == ("micro", "96x2", (0, 1))
  assert [l.name for l in cfg.losses] == ["xent", "product"]
  assert cfg.name == "default-micro-96x2" and load("default.py:weak=pico").name == "default"
  small = load("default.py:small,strong=mini")  # an explicit arg wins over the preset
  assert (small.weak_size, small.strong_size, small.name) == (
    "pico",
    "mini",
    "default-small-pico-mini",
  )
  gen = load("generative.py:small,weak=nano,losses=sft,forward_kl")
  assert gen.weak_size == "nano" and [l.name for l in gen.losses] == ["sft", "forward_kl"]
  for spec in ("sst2.py", "sst2_minilm.py", "text.py:train=a.csv,test=b.csv"):
    assert [
      l.name for l in load(f"{spec},losses=kl" if ":" in spec else f"{spec}:losses=kl").losses
    ] == ["kl"]
  # Sweeps: sizes=, weak= (the weak sizes), losses=, seeds=.
  grid = sweep("sweep.py:sizes=pico,mini,96x2,losses=xent,seeds=2")
  assert {(c.weak, c.strong) for c in grid.cells} == {("pico", "mini"), ("pico", "96x2")}
  assert {c.loss.name for c in grid.cells} == {"xent"} and grid.base.seeds == (0, 1)
  grid = sweep("sweep.py:sizes=pico,micro,mini,weak=micro")
  assert {(c.weak, c.strong) for c in grid.cells} == {("micro", "mini")}
  grid = sweep("generative_sweep.py:sizes=pico,mini,losses=sft")
  assert [(c.weak, c.strong, c.loss.name) for c in grid.cells] == [("pico", "mini", "sft")]
  for spec in ("combined.py:weak=nano,strong=96x2", "filtering.py:weak=nano,strong=96x2"):
    assert {(c.weak, c.strong) for c in sweep(spec).cells} == {("nano", "96x2")}
  casc = load("cascade.py:weak=pico,strong=96x2,seeds=2")
  assert (casc.weak_sizes, casc.strong_size, casc.name) == (("pico",), "96x2", "cascade-pico-96x2")
  assert casc.classification.seeds == (0, 1)
  # Named errors, before any compute.
  with pytest.raises(ValueError, match="strong_size: model size 'bogus'"):
    load("default.py:strong=bogus")
  with pytest.raises(ValueError, match="loss 'nope'"):
    load("default.py:losses=nope")
  with pytest.raises(ValueError, match=r"weak_sizes \['micro'\]: expected a subset"):
    sweep("sweep.py:sizes=pico,mini,weak=micro")
  with pytest.raises(ValueError, match="sizes=pico,mini weak=mini: no weak size is smaller"):
    sweep("sweep.py:sizes=pico,mini,weak=mini")
  with pytest.raises(ValueError, match="'xent' does not apply to a generative task"):
    sweep("generative_sweep.py:losses=xent")


def test_quick_with_minilm_keeps_minilms_rates(tmp_path):
  """`quick` sets from-scratch rates (1e-3); MiniLM's body keeps its own
  (3e-5), with a few epochs instead of quick's 20, and the note says so."""
  train = tmp_path / "train.csv"
  train.write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(600)))
  spec = f"{ROOT / 'configs/text.py'}:train={train},test={train},quick"
  scratch, minilm = configs.load(spec), configs.load(spec + ",strong=minilm")
  assert scratch.finetune.lr == 1e-3 and minilm.finetune.lr == 3e-5
  assert minilm.weak_finetune.lr == 1e-3  # the from-scratch weak model: quick's rate
  assert minilm.finetune.steps == 57  # 3 epochs of the 300-row split at batch 16
  assert "strong=minilm" in minilm.note and "strong=minilm" not in scratch.note
