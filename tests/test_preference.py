"""Preference tasks and reward models (issue 34): the Bradley-Terry loss by
hand, the two formats, swaps, KD on hard targets, and the pipeline on the
tiny testbed and on JSONL pairs."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.data import testbed
from w2s_jax.infra import configs
from w2s_jax.models.model_config import decode_size
from w2s_jax.models.transformer import Transformer, init_params
from w2s_jax.plans import programs
from w2s_jax.tasks import preference
from w2s_jax.tasks.preference import PreferenceConfig, PreferenceTextConfig
from w2s_jax.training import losses
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.w2s import best_of_n
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s.experiment import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = str(ROOT / "configs/reward.py") + ":small"
SMALL_BON = SMALL + ",seeds=2"


def test_bradley_terry_loss_by_hand():
  """Pointwise logits are the two rewards, so cross-entropy on the preferred
  one is -log sigma(r_chosen - r_rejected): r = (1.0, -0.5) chosen A gives
  log(1 + e^-1.5) = 0.201413; chosen B gives log(1 + e^1.5) = 1.701413."""
  logits = jnp.array([[1.0, -0.5], [1.0, -0.5]])
  per_row = [
    float(losses.xent(logits=logits[i : i + 1], labels=jnp.eye(2)[i][None])) for i in range(2)
  ]
  np.testing.assert_allclose(per_row, [0.201413, 1.701413], atol=1e-6)


def test_kd_against_a_soft_preference_and_on_hard_targets():
  """KD against a soft target t is -[t log sigma(d) + (1 - t) log sigma(-d)],
  d = r_A - r_B; with t in {0, 1} it is the Bradley-Terry loss."""
  rng = np.random.default_rng(0)
  r = rng.normal(size=(64, 2)).astype(np.float32)
  t = rng.random(64).astype(np.float32)
  t[:16] = np.round(t[:16])
  d = r[:, 0] - r[:, 1]
  log_sigmoid = lambda x: -np.logaddexp(0.0, -x)
  by_hand = -(t * log_sigmoid(d) + (1 - t) * log_sigmoid(-d))
  ours = [
    float(Xent().loss(logits=r[i : i + 1], labels=np.array([[t[i], 1 - t[i]]]), step_frac=0.0))
    for i in range(64)
  ]
  np.testing.assert_allclose(ours, by_hand, rtol=1e-5, atol=1e-6)


def _reward_model(seed=0):
  cfg = dataclasses.replace(
    decode_size("pico", vocab_size=40, max_len=12, head_input="hidden"), num_classes=1
  )
  params = init_params(cfg, jax.random.key(seed))
  # The head starts at zero (every reward 0): give it weights to rank with.
  head = params["cls_head"]
  params["cls_head"] = {
    "kernel": jax.random.normal(jax.random.key(seed + 1), head["kernel"].shape),
    "bias": head["bias"],
  }
  return cfg, params


def test_a_pointwise_swap_flips_the_preference_exactly():
  cfg, params = _reward_model()
  rng = np.random.default_rng(1)
  tokens = rng.integers(1, 40, (16, 2, 12)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[:, 1, 9:] = 0  # B shorter than A: padding is per choice
  model = Transformer(cfg)
  prob = lambda t, m: jax.nn.softmax(
    model.apply({"params": params}, t, m, method=Transformer.class_logits)
  )
  p, swapped = prob(tokens, mask), prob(tokens[:, ::-1], mask[:, ::-1])
  np.testing.assert_array_equal(np.asarray(swapped), np.asarray(p)[:, ::-1])
  assert np.ptp(np.asarray(p[:, 0])) > 0.01  # the rewards rank: not a constant model
  # The rewards are the scalar head on each sequence alone.
  r = model.apply({"params": params}, tokens[:, 0], mask[:, 0], method=Transformer.class_logits)
  logits = model.apply({"params": params}, tokens, mask, method=Transformer.class_logits)
  np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(r[:, 0]), rtol=1e-5, atol=1e-6)


def test_a_two_way_head_refuses_one_sequence_per_choice():
  cfg = decode_size("pico", vocab_size=40, max_len=12, head_input="hidden")
  params = init_params(cfg, jax.random.key(0))
  tokens = jnp.ones((2, 2, 12), jnp.int32)
  with pytest.raises(ValueError, match="needs a scalar score head"):
    Transformer(cfg).apply({"params": params}, tokens, tokens, method=Transformer.class_logits)


def _world():
  return testbed.make_world(
    testbed.WorldConfig(num_entities=60, entities_per_split=20, syllables=8)
  )


@pytest.mark.parametrize("rejected", testbed.REJECTED)
def test_testbed_pairs_label_the_true_fact_in_both_formats(rejected):
  """The label is the position of the true city, in either format; the two
  formats hold the same pairs in the same order; the false city is graded
  as asked; both labels occur."""
  world = _world()
  entities = world.split_entities["train_gt"]
  truth = world.city_of[0, entities]
  point, pair = (
    preference.testbed_pair_split(
      world, entities, PreferenceConfig(format=f, rejected=rejected), relation=0, split="train_gt"
    )
    for f in preference.FORMATS
  )
  assert np.array_equal(point["labels"], pair["labels"]) and 0 < point["labels"].mean() < 1
  assert point["tokens"].shape == (20, 2, 6) and pair["tokens"].shape == (20, 11)
  cities = {int(t): c for c, t in enumerate(world.city_tokens)}
  city = lambda tok: np.array([cities[int(x)] for x in tok])
  a, b = city(point["tokens"][:, 0, 4]), city(point["tokens"][:, 1, 4])
  chosen = np.where(point["labels"] == 0, a, b)
  rejected_city = np.where(point["labels"] == 0, b, a)
  assert np.array_equal(chosen, truth) and np.all(rejected_city != truth)
  same = world.region_of[rejected_city] == world.region_of[truth]
  assert {"same_region": same.all(), "other_region": (~same).all(), "any": True}[rejected]
  # pairwise: '<bos> aX bY lives cA . aX bY lives cB .', the same A and B.
  np.testing.assert_array_equal(pair["tokens"][:, :6], point["tokens"][:, 0])
  np.testing.assert_array_equal(pair["tokens"][:, 6:], point["tokens"][:, 1, 1:])


def _write_pairs(path, n, seed):
  """Pairs whose preferred response says 'good' and the other 'bad' (learnable)."""
  rng = np.random.default_rng(seed)
  words = ["film", "plot", "cast", "story", "score", "ending"]
  with open(path, "w") as f:
    for i in range(n):
      w = words[rng.integers(len(words))]
      row = {
        "q": "Which is more positive?",
        "yes": f"the {w} was good {i}",
        "no": f"the {w} was bad {i}",
      }
      f.write(json.dumps(row) + "\n")


def test_jsonl_pairs_in_both_formats_and_named_errors(tmp_path):
  _write_pairs(tmp_path / "train.jsonl", 40, 0)
  _write_pairs(tmp_path / "test.jsonl", 10, 1)
  text = PreferenceTextConfig(
    train_file=str(tmp_path / "train.jsonl"),
    test_file=str(tmp_path / "test.jsonl"),
    prompt_field="q",
    chosen_field="yes",
    rejected_field="no",
    max_len=48,
    gt_examples=20,
    w2s_examples=20,
  )
  point = preference.text_preference_task(text, PreferenceConfig("pointwise"))
  pair = preference.text_preference_task(text, PreferenceConfig("pairwise"))
  assert point.per_choice and not pair.per_choice and point.label_names == ("A", "B")
  for split in ("train_gt", "train_w2s", "test"):
    assert point.splits[split]["tokens"].ndim == 3 and pair.splits[split]["tokens"].ndim == 2
    assert np.array_equal(point.splits[split]["labels"], pair.splits[split]["labels"])
  pairs = preference.read_pairs(text.test_file, text)
  flip = point.splits["test"]["labels"]
  texts = preference.pair_texts(pairs, flip, per_choice=False)
  for t, f, c in zip(texts, flip, pairs.chosen):
    shown = t.split("\nA: ")[1].split("\nB: ")
    assert shown[int(f)] == c  # the label names where the chosen response is shown
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"q": "p", "yes": "a", "no": "b"}\n{"q": "p", "yes": "a"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'no'"):
    preference.read_pairs(bad, dataclasses.replace(text, train_file=str(bad)))
  bad.write_text('{"q": "p", "yes": "", "no": "b"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'yes'='': expected a non-empty string"):
    preference.read_pairs(bad, dataclasses.replace(text, train_file=str(bad)))


def test_preference_config_errors_name_the_field():
  with pytest.raises(ValueError, match="PreferenceConfig.format='listwise'"):
    PreferenceConfig(format="listwise")
  with pytest.raises(ValueError, match="PreferenceConfig.rejected='nearby'"):
    PreferenceConfig(rejected="nearby")
  text = PreferenceTextConfig(train_file="a.jsonl", test_file="b.jsonl")
  with pytest.raises(ValueError, match="preference=None: expected a PreferenceConfig"):
    ExperimentConfig(text_task=text)
  with pytest.raises(ValueError, match="a preference run's pairs are not planned yet"):
    programs.task_shape(configs.load(SMALL))


def test_kd_on_hard_targets_trains_as_ground_truth(tmp_path):
  """The strong RM on one-hot targets of the ground truth is trained exactly
  as on the ground truth itself: the same params, bit for bit."""
  cfg = configs.load(SMALL)
  parts = parts_lib.build(cfg, cache_dir=tmp_path, progress=False)
  trainer = parts.trainer
  labels = parts.task.splits["train_gt"]["labels"]
  hard = np.eye(2, dtype=np.float32)[labels][None].repeat(len(parts.seeds), 0)
  a, _ = trainer.tune("micro", trainer.supervised("train_gt", size="micro"), Xent(), "gt")
  b, _ = trainer.tune("micro", trainer.supervised("train_gt", hard, size="micro"), Xent(), "kd")
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


# ------------------------------------------------------------- best-of-n


def test_best_of_n_picks_by_hand_and_their_limits():
  """Two prompts, three candidates: the first prompt's best reward is on its
  right candidate, the second's on a wrong one; ties go to the earliest (the
  greedy response). n = 1 is the greedy response for every picker; the
  oracle bounds every pick at every n."""
  rewards = np.array([[[0.1, 0.9, 0.3], [0.5, 0.5, 2.0]]])
  correct = np.array([[[0, 1, 0], [1, 1, 0]]])
  assert best_of_n.picked_correct(rewards=rewards, correct=correct, n=3).tolist() == [[1, 0]]
  assert best_of_n.picked_correct(rewards=rewards, correct=correct, n=2).tolist() == [[1, 1]]
  assert best_of_n.oracle_correct(correct=correct, n=3).tolist() == [[1, 1]]
  np.testing.assert_allclose(best_of_n.random_correct(correct=correct, n=3), [[1 / 3, 2 / 3]])
  rng = np.random.default_rng(0)
  correct = rng.integers(0, 2, (4, 50, 16))
  rewards = {name: rng.normal(size=(4, 50, 16)) for name in ("weak RM", "W2S RM")}
  table = best_of_n.curves(rewards=rewards, correct=correct, ns=(1, 2, 4, 16), num_resamples=200)
  greedy = correct[..., 0].mean()
  for name in (*rewards, "oracle", "random"):
    assert table[name][1]["mean"] == pytest.approx(greedy)
  for n in (1, 2, 4, 16):
    for name in rewards:
      assert (
        best_of_n.picked_correct(rewards=rewards[name], correct=correct, n=n)
        <= best_of_n.oracle_correct(correct=correct, n=n)
      ).all()
      assert table[name][n]["mean"] <= table["oracle"][n]["mean"]


def test_best_of_n_config_is_checked():
  reward = configs.load(SMALL)
  with pytest.raises(ValueError, match="expected a pointwise preference experiment"):
    best_of_n.BestOfNConfig(dataclasses.replace(reward, preference=PreferenceConfig("pairwise")))
  with pytest.raises(ValueError, match=r"BestOfNConfig.ns=\(2, 1\): expected increasing"):
    best_of_n.BestOfNConfig(reward, ns=(2, 1))
  with pytest.raises(ValueError, match="BestOfNConfig.temperature=0"):
    best_of_n.BestOfNConfig(reward, temperature=0)


def test_best_of_n_runs_and_its_greedy_column_is_the_policy_s_accuracy(tmp_path):
  """The small run end to end: at n = 1 every picker scores the policy's
  greedy accuracy; the oracle is never below any pick; results and chart written."""
  cfg = dataclasses.replace(configs.load(SMALL_BON, "best_of_n"), ns=(1, 2, 4))
  results = best_of_n.run(
    cfg, out_dir=tmp_path / "bon", cache_dir=tmp_path / "cache", progress=False
  )
  first = {name: c["1"]["mean"] for name, c in results["curves"].items()}
  assert len(set(first.values())) == 1, first
  for n in ("1", "2", "4"):
    for name in ("weak RM", "W2S RM", "ceiling RM", "random"):
      assert results["curves"][name][n]["mean"] <= results["curves"]["oracle"][n]["mean"]
  assert (tmp_path / "bon" / "best_of_n.json").exists()
  assert (tmp_path / "bon" / "best_of_n.png").exists()
  assert "weak RM" in best_of_n.format_results(results)
