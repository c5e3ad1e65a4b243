"""Generative W2S end to end: the testbed's generative task and its scoring,
the pipeline on it (seconds-long), text tasks from JSONL and TFDS mock data,
and the bad input refused before any compute."""

import contextlib
import dataclasses
import importlib.util
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from w2s_jax.data import testbed
from w2s_jax.infra import configs
from w2s_jax.tasks import generation, layout, testbed_formats
from w2s_jax.tasks.generation import GenerationConfig, GenTextTaskConfig
from w2s_jax.training.classifier_losses import LogConf, Xent
from w2s_jax.training.combined import Combined
from w2s_jax.training.generative_losses import Sft
from w2s_jax.training.objectives import Loss
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import engine, stages, tables
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s.experiment import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = "configs/generative.py:small,seeds=3"


def test_testbed_split_states_the_facts_in_the_format():
  world = testbed.make_world(testbed.WorldConfig())
  entities = world.split_entities["test"][:5]
  for relation in (0, 1):
    data, fields = testbed_formats.testbed_split(
      world, testbed_formats.FORMATS["city_region"], entities, relation
    )
    assert fields == {"{city}": 0, "{region}": 3}
    for e, prompt, response in zip(entities, data["prompt"], data["response"]):
      city = world.city_of[relation, e]
      name = world.decode(world.name_tokens[e])
      assert world.decode(prompt) == f"<bos> {name} {testbed.RELATIONS[relation]}"
      assert world.decode(response) == f"c{city} is in r{world.region_of[city]} ."
  data, fields = testbed_formats.testbed_split(
    world, testbed_formats.FORMATS["two_facts"], entities[:1]
  )
  e = entities[0]
  assert world.decode(data["response"][0]) == (
    f"c{world.city_of[0, e]} . {world.decode(world.name_tokens[e])} works c{world.city_of[1, e]} ."
  )
  assert fields == {"{city}": 0, "{other_city}": 5}


def test_score_fields_hand_made():
  truth = np.array([[5, 1, 2, 7, 9], [6, 1, 2, 8, 9], [5, 1, 2, 7, 9], [5, 1, 2, 7, 9]])
  fields = {"{city}": 0, "{region}": 3}
  tokens = np.array(
    [
      [5, 1, 2, 7, 9, 0],  # all right
      [6, 1, 2, 7, 9, 0],  # city right, region wrong
      [5, 1, 2, 7, 4, 4],  # both fields, but no EOS where it belongs
      [4, 1, 2, 7, 9, 0],
    ]
  )  # region only
  mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
  scores = generation.score_fields(tokens=tokens, mask=mask, truth=truth, fields=fields)
  np.testing.assert_array_equal(scores["fields"], [1.0, 0.5, 1.0, 0.5])
  np.testing.assert_array_equal(scores["exact"], [1.0, 0.0, 0.0, 0.0])
  # A masked-out token never counts, even if it equals the truth.
  short = generation.score_fields(
    tokens=tokens[:1], mask=np.array([[1, 1, 1, 0, 0, 0]]), truth=truth[:1], fields=fields
  )
  assert short["fields"][0] == 0.5 and short["exact"][0] == 0.0


def test_sequences_lay_prompt_and_response_end_to_end():
  data = {
    "prompt": np.array([[0, 0, 3, 4], [2, 3, 4, 5]]),
    "prompt_mask": np.array([[0, 0, 1, 1], [1, 1, 1, 1]]),
    "response": np.array([[7, 8, 0], [9, 0, 0]]),
    "response_mask": np.array([[1, 1, 0], [1, 0, 0]]),
  }
  seq = layout.sequences(data)
  np.testing.assert_array_equal(seq["tokens"], [[0, 0, 3, 4, 7, 8, 0], [2, 3, 4, 5, 9, 0, 0]])
  np.testing.assert_array_equal(seq["mask"], [[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(seq["loss_mask"], [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 0, 0]])
  other = layout.sequences(data, np.array([[1, 1, 1], [2, 2, 2]]), np.ones((2, 3)))
  np.testing.assert_array_equal(other["loss_mask"][:, 4:], np.ones((2, 3)))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("generative")
  cfg = configs.load(SMALL)
  # Through the documented command, experiments/w2s.py.
  spec = importlib.util.spec_from_file_location("w2s_entry", ROOT / "experiments/w2s.py")
  entry = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(entry)
  with contextlib.redirect_stdout(io.StringIO()):
    entry.main(
      [
        "--config",
        str(ROOT / SMALL.split(":")[0]) + ":" + SMALL.split(":")[1],
        "--out",
        str(root / "out"),
        "--cache",
        str(root / "cache"),
        "--xla-cache",
        "",
        "--no-progress",
      ]
    )
  results = json.loads((root / "out" / "results.json").read_text())
  return cfg, results, root


def test_generative_pipeline_end_to_end(small_run):
  cfg, results, root = small_run
  on_disk = json.loads((root / "out" / "results.json").read_text())
  assert on_disk["task"]["eval_keys"] == ["test", "heldout", "test:exact", "heldout:exact"]
  assert [c["label"] for c in on_disk["cells"]] == [loss.tag for loss in cfg.losses]
  per_seed = results["cells"][0]["per_seed"]["test"]
  # The run measures something: weak and ceiling differ, seeds differ.
  assert np.mean(per_seed["ceiling"]) > np.mean(per_seed["weak"]) + 0.1
  assert len(set(per_seed["weak"])) > 1
  acc = results["cells"][0]["weak_label_accuracy"]
  assert len(acc) == 3 and all(0 < a < 1 for a in acc)
  assert "facts known" in tables.format_results(results)
  # Imitation by answer, field by field; curves of the teacher-forced response scores.
  cell = results["cells"][0]
  answers = cell["summary"]["test"]["imitation"]["answers"]
  assert list(answers["w2s"]["fields"]) == ["{city}", "{region}"]
  assert 0 <= answers["w2s"]["all"]["agreement_weak_wrong"] <= 1
  assert "answers" not in cell["summary"]["test:exact"]["imitation"]  # one per split
  curve = cell["curves"]["w2s"]
  assert curve["step"][-1] == cfg.finetune.steps and "test/token_accuracy" in curve
  assert "copied errors per field" in tables.format_results(results)


def test_combined_at_alpha_one_reproduces_sft_exactly(small_run):
  cfg, _, root = small_run
  ctx = parts_lib.build(cfg, cache_dir=root / "cache", progress=False)
  weak = stages.weak_stage(ctx, cfg.weak_size)
  # The weak model writes responses: decode one and check its form.
  row = weak.responses[0][0][weak.response_mask[0][0] > 0]
  assert len(row) <= ctx.evaluator.sampling.max_new_tokens
  sft = stages.w2s_stage(ctx, cfg.strong_size, weak, Sft())
  alpha1 = stages.w2s_stage(ctx, cfg.strong_size, weak, Combined(kd_weight=1.0, gt_examples=8))
  alpha0 = stages.w2s_stage(ctx, cfg.strong_size, weak, Combined(kd_weight=0.0, gt_examples=8))
  for key in ctx.evaluator.eval_keys:
    np.testing.assert_array_equal(alpha1.scores[key], sft.scores[key])
  assert any((alpha0.scores[k] != sft.scores[k]).any() for k in ctx.evaluator.eval_keys)


def test_generation_too_long_for_the_context_fails_before_compute(tmp_path):
  cfg = configs.load(SMALL)
  cfg = dataclasses.replace(cfg, generation=GenerationConfig(max_new_tokens=30))
  start = time.perf_counter()
  with pytest.raises(ValueError, match="model 'pico': SamplingConfig.max_new_tokens=30"):
    engine.run_experiment(
      cfg, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False
    )
  assert time.perf_counter() - start < 5
  assert not (tmp_path / "cache").exists()  # nothing was pretrained


def test_experiment_config_refuses_mismatched_kinds():
  with pytest.raises(
    ValueError,
    match=r"losses\[0\]='logconf' does not apply to a "
    "generative task",
  ):
    ExperimentConfig(generation=GenerationConfig(), losses=(LogConf(),))
  with pytest.raises(
    ValueError,
    match=r"losses\[1\]='sft' does not apply to a "
    "classification task",
  ):
    ExperimentConfig(losses=(Xent(), Sft()))
  with pytest.raises(ValueError, match="generation=None"):
    ExperimentConfig(text_task=GenTextTaskConfig(tfds_name="squad"))
  with pytest.raises(ValueError, match="GenerationConfig.format='prose'"):
    GenerationConfig(format="prose")
  with pytest.raises(ValueError, match="tfds_name='gsm9k'|generative task 'gsm9k'"):
    GenTextTaskConfig(tfds_name="gsm9k")


# --- Real-text tasks: JSONL files and TFDS (mock data) -------------------------


def _text_experiment(task_cfg, losses=("sft",)):
  return ExperimentConfig(
    name="gen-text",
    text_task=task_cfg,
    generation=GenerationConfig(),
    weak_size="pico",
    strong_size="nano",
    use_pretraining=False,
    seeds=(0, 1),
    finetune=OptimConfig(steps=4, batch_size=8, lr=1e-3),
    losses=tuple(Loss.from_string(name) for name in losses),
    eval_batch_size=8,
    bootstrap_resamples=100,
  )


def _write_arithmetic(path, n, seed):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(n):
      a, b = rng.integers(1, 9, 2)
      f.write(json.dumps({"question": f"{a}+{b}?", "answer": f"#### {a + b}"}) + "\n")
  return str(path)


def test_jsonl_generative_task_through_the_pipeline(tmp_path):
  task_cfg = GenTextTaskConfig(
    train_file=_write_arithmetic(tmp_path / "train.jsonl", 80, 0),
    test_file=_write_arithmetic(tmp_path / "test.jsonl", 16, 1),
    metric="gsm8k",
    prompt_field="question",
    response_field="answer",
    max_prompt_len=12,
    max_response_len=8,
    gt_examples=32,
    w2s_examples=40,
    test_examples=None,
  )
  results = engine.run_experiment(
    _text_experiment(task_cfg),
    out_dir=tmp_path / "out",
    cache_dir=tmp_path / "cache",
    progress=False,
  )
  assert results["task"]["eval_keys"] == ["test", "test:exact_match"]
  (cell,) = results["cells"]
  for key in ("test", "test:exact_match"):
    stats = cell["summary"][key]
    assert 0 <= stats["w2s"]["mean"] <= 1 and 0 <= stats["weak"]["mean"] <= 1
  assert results["task"]["encoding"]["test"]["examples"] == 16


@pytest.mark.slow  # a minute; the TFDS path itself: tests/test_gen_text.py
def test_squad_under_mock_data_through_the_pipeline(tmp_path, monkeypatch):
  from tensorflow_datasets.testing import mocking

  # tfds 4.9.10's mock binds __getitems__ without self (see test_text_tasks.py).
  monkeypatch.setattr(
    mocking,
    "_getitems",
    lambda record_keys, generator, serialized=False: [generator[k] for k in record_keys],
    raising=False,
  )
  task_cfg = GenTextTaskConfig(
    tfds_name="squad",
    max_prompt_len=24,
    max_response_len=8,
    gt_examples=16,
    w2s_examples=16,
    test_examples=8,
  )
  with tfds.testing.mock_data(num_examples=40):
    results = engine.run_experiment(
      _text_experiment(task_cfg, ("sft", "forward_kl")),
      out_dir=tmp_path / "out",
      cache_dir=tmp_path / "cache",
      progress=False,
    )
  assert results["task"]["eval_keys"] == ["test", "test:exact_match"]  # token F1, then EM
  assert [c["label"] for c in results["cells"]] == ["sft", "forward_kl"]
  assert results["task"]["encoding"]["train_gt"]["prompt_truncated"] > 0  # mock contexts long
