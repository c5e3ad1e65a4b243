"""Scores and selection rules on constructed inputs; likelihood filtering on the testbed."""

import jax
import numpy as np
import pytest

from w2s_jax.curation import pool as pool_lib
from w2s_jax.curation import scores, selection, weak_curation
from w2s_jax.curation.selection import EmptySelectionError, FilterConfig
from w2s_jax.data import testbed
from w2s_jax.data.dataset import Dataset
from w2s_jax.models import model_config, scoring, transformer
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s.experiment import ExperimentConfig


def test_classifier_scores_hand_computed():
  probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.6, 0.4]], np.float32)
  np.testing.assert_allclose(scores.confidence(probs=probs), [0.9, 0.5, 0.8, 0.6], atol=1e-6)
  np.testing.assert_allclose(scores.margin(probs=probs), [0.8, 0.0, 0.6, 0.2], atol=1e-6)
  ent = -np.sum(probs * np.log(probs), axis=-1)
  np.testing.assert_allclose(scores.neg_entropy(probs=probs), -ent, atol=1e-6)
  # One-hot: 0 log 0 = 0, the highest possible score.
  assert float(scores.neg_entropy(probs=np.array([[1.0, 0.0]]))[0]) == 0.0
  # Known ordering: confidence ranks 0 > 2 > 3 > 1.
  assert list(np.argsort(-np.asarray(scores.confidence(probs=probs)))) == [0, 2, 3, 1]


def test_agreement_counts_models_agreeing_with_the_ensemble():
  # 3 models x 3 examples: all agree; 2 of 3; ensemble argmax decided by mean probs.
  probs = np.array(
    [
      [[0.9, 0.1], [0.6, 0.4], [0.45, 0.55]],
      [[0.8, 0.2], [0.7, 0.3], [0.9, 0.1]],
      [[0.7, 0.3], [0.4, 0.6], [0.4, 0.6]],
    ],
    np.float32,
  )
  # example 2: mean p0 = 0.583 -> ensemble class 0; only model 1 votes 0.
  np.testing.assert_allclose(scores.agreement(probs=probs), [1.0, 2 / 3, 1 / 3], atol=1e-6)


def test_likelihood_ratio():
  np.testing.assert_allclose(
    scores.log_likelihood_ratio(
      log_likelihood=np.array([-1.0, -2.0]), reference_log_likelihood=np.array([-1.5, -1.0])
    ),
    [0.5, -1.0],
  )


def test_top_fraction_known_order_and_deterministic_ties():
  s = np.array([0.3, 0.9, 0.3, 0.5, 0.3, 0.1])
  # 0.9 (1), 0.5 (3), then the first of the 0.3 ties (0).
  np.testing.assert_array_equal(selection.top_fraction(scores=s, keep_frac=0.5), [0, 1, 3])
  # Ties at 0.3 (indices 0, 2, 4): the lower index wins, every time, in any input order.
  np.testing.assert_array_equal(selection.top_fraction(scores=s, keep_frac=2 / 3), [0, 1, 2, 3])
  perm = np.array([5, 3, 1, 4, 0, 2])
  kept = selection.top_fraction(scores=s[perm], keep_frac=2 / 3)
  np.testing.assert_array_equal(np.sort(perm[kept]), [0, 1, 3, 4])  # ties by position in input
  np.testing.assert_array_equal(selection.top_fraction(scores=s, keep_frac=1.0), np.arange(6))


def test_stratified_selection_keeps_class_balance():
  rng = np.random.default_rng(0)
  labels = np.array([0] * 60 + [1] * 40)
  # Class 1 scores all higher: unstratified selection would take only class 1.
  s = np.where(labels == 1, 10 + rng.random(100), rng.random(100))
  plain = selection.top_fraction(scores=s, keep_frac=0.4)
  assert set(labels[plain]) == {1}
  kept = selection.top_fraction(scores=s, keep_frac=0.4, labels=labels)
  assert np.sum(labels[kept] == 0) == 24 and np.sum(labels[kept] == 1) == 16
  # Quotas that do not round cleanly still add up to round(keep_frac * n).
  odd = np.array([0, 0, 0, 1, 1, 1, 1])
  assert len(selection.top_fraction(scores=np.arange(7.0), keep_frac=0.5, labels=odd)) == 4
  # Within each class, the best are kept.
  for c in (0, 1):
    in_class = np.flatnonzero(labels == c)
    best = in_class[np.argsort(-s[in_class], kind="stable")][: np.sum(labels[kept] == c)]
    np.testing.assert_array_equal(np.sort(best), kept[labels[kept] == c])


def test_threshold_selection_and_its_stratified_form():
  s = np.array([0.1, 0.7, 0.4, 0.9, 0.6, 0.2])
  np.testing.assert_array_equal(selection.by_threshold(scores=s, threshold=0.5), [1, 3, 4])
  labels = np.array([0, 0, 0, 1, 1, 1])
  kept = selection.by_threshold(scores=s, threshold=0.5, labels=labels)
  # The same count as the plain threshold (3), split 2 + 1 (1.5 each; the tie
  # goes to the earlier class), each class's best: 0.7, 0.4 and 0.9.
  np.testing.assert_array_equal(kept, [1, 2, 3])


def test_empty_selection_is_a_clear_error():
  with pytest.raises(EmptySelectionError, match="kept 0 of 3 examples"):
    selection.top_fraction(scores=np.array([1.0, 2.0, 3.0]), keep_frac=0.1)
  with pytest.raises(EmptySelectionError, match="none scores >= 5"):
    selection.by_threshold(scores=np.array([1.0, 2.0]), threshold=5)
  with pytest.raises(ValueError, match="keep_frac=0"):
    selection.top_fraction(scores=np.array([1.0]), keep_frac=0)
  with pytest.raises(ValueError, match="NaN"):
    selection.top_fraction(scores=np.array([1.0, np.nan]), keep_frac=0.5)
  with pytest.raises(ValueError, match="FilterConfig.criterion='bogus'"):
    FilterConfig("bogus")


def _padded(tokens_list, length, side, pad_id):
  tokens = np.full((len(tokens_list), length), pad_id, np.int32)
  mask = np.zeros_like(tokens)
  for i, t in enumerate(tokens_list):
    if side == "right":
      tokens[i, : len(t)], mask[i, : len(t)] = t, 1
    else:
      tokens[i, length - len(t) :], mask[i, length - len(t) :] = t, 1
  return Dataset(tokens=tokens, mask=mask)


@pytest.mark.parametrize("side", ["right", "left"])
def test_likelihood_of_a_batch_equals_one_at_a_time_whatever_the_padding(mesh4, mesh1, side):
  cfg = model_config.decode_size("pico", vocab_size=13, max_len=12)
  params = transformer.init_params(cfg, jax.random.key(3))
  rng = np.random.default_rng(1)
  texts = [rng.integers(1, 13, size=n) for n in (3, 7, 12, 5, 9, 2, 4)]
  batch = scoring.sequence_log_likelihood(
    params, cfg, _padded(texts, 12, side, pad_id=5), batch_size=4, mesh=mesh4
  )
  assert batch.shape == (len(texts),)
  for i, t in enumerate(texts):
    alone = scoring.sequence_log_likelihood(
      params, cfg, _padded([t], len(t), "right", 0), batch_size=1, mesh=mesh1
    )
    np.testing.assert_allclose(batch[i], alone[0], atol=1e-5)
  # By hand for one text: mean over its next tokens of log softmax at the previous position.
  t = texts[1]
  logits = transformer.Transformer(cfg).apply(
    {"params": params}, t[None], np.ones((1, len(t))), method=transformer.Transformer.lm_logits
  )[0]
  logp = jax.nn.log_softmax(logits, -1)
  expected = np.mean([logp[j, t[j + 1]] for j in range(len(t) - 1)])
  np.testing.assert_allclose(batch[1], expected, atol=1e-5)


def test_filter_subsets_per_seed_are_stratified_and_sized():
  rng = np.random.default_rng(0)
  p1 = rng.random((2, 40, 1))
  weak = {"labels": np.concatenate([1 - p1, p1], -1), "likelihood": rng.random(40)}
  for criterion in ("confidence", "margin", "neg_entropy", "agreement", "likelihood"):
    subsets = weak_curation.filter_subsets(weak, FilterConfig(criterion, 0.5), generative=False)
    assert len(subsets) == 2
    for i, idx in enumerate(subsets):
      hard = weak["labels"][i].argmax(-1)
      for c in (0, 1):
        assert abs(np.sum(hard[idx] == c) - 0.5 * np.sum(hard == c)) <= 0.5
  with pytest.raises(ValueError, match="does not apply"):
    weak_curation.filter_scores(weak, "likelihood_ratio", generative=False)


def test_likelihood_filtering_removes_planted_bad_documents(tmp_path):
  """20% planted bad documents: the weak LM's likelihood at keep 0.8 removes >= 80% of them."""
  world = testbed.make_world(
    testbed.WorldConfig(num_entities=60, entities_per_split=20, corpus_docs=2000, syllables=8)
  )
  cfg = ExperimentConfig(
    world=world.cfg,
    weak_size="pico",
    strong_size="nano",
    eval_batch_size=200,
    pretrain=OptimConfig(steps=600, batch_size=32, lr=3e-3, warmup_frac=0.02, weight_decay=0.0),
  )
  ctx = parts_lib.build(cfg, cache_dir=tmp_path, progress=False)
  pool, kind = testbed.corrupted_pool(ctx.task.world, ctx.task.corpus, bad_frac=0.2)
  assert np.isclose(np.mean(kind >= 0), 0.2, atol=0.001)
  ll = scoring.sequence_log_likelihood(
    *ctx.models.get("pico")[:2], pool, batch_size=200, mesh=ctx.mesh
  )
  kept = selection.top_fraction(scores=ll, keep_frac=0.8)
  removed = 1 - np.isin(np.flatnonzero(kind >= 0), kept).mean()
  assert removed >= 0.8, f"removed only {removed:.1%} of the bad documents"
  # The pool filter's scores come from the same token scores as the weak responses'.
  params, model_cfg, _ = ctx.models.get("pico")
  criteria = pool_lib.pool_scores(
    params=params, model_cfg=model_cfg, pool=pool, batch_size=cfg.eval_batch_size, mesh=ctx.mesh
  )
  np.testing.assert_allclose(criteria["likelihood"], ll, atol=1e-6)
  rows = {r["criterion"]: r for r in pool_lib.removal_table(kind, criteria, (0.8,))}
  # min_prob too (measured: 95% removed; likelihood 99%, random 21%).
  assert rows["min_prob"]["bad_removed"] >= 0.8, rows["min_prob"]
  assert rows["random"]["bad_removed"] < 0.3
