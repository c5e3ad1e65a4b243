"""The offline testbed: entity-disjoint splits, balanced labels, well-formed corpus."""

import dataclasses
import functools
import re

import numpy as np
import pytest

from w2s_jax.data import testbed
from w2s_jax.data.testbed import WorldConfig
from w2s_jax.infra.fingerprint import fingerprint


@functools.cache
def _world(**kwargs):
  return testbed.make_world(WorldConfig(**kwargs))


def test_splits_are_entity_disjoint():
  world = _world()
  n = world.cfg.entities_per_split
  sets = {name: set(ents.tolist()) for name, ents in world.split_entities.items()}
  assert set(sets) == set(testbed.SPLITS)
  for name, ents in sets.items():
    assert len(ents) == n, name
    assert all(0 <= e < world.cfg.num_entities for e in ents)
  names = list(sets)
  for i in range(len(names)):
    for j in range(i + 1, len(names)):
      assert not sets[names[i]] & sets[names[j]], (names[i], names[j])


def test_entity_names_are_unique_two_token_names():
  world = _world()
  assert world.name_tokens.shape == (world.cfg.num_entities, 2)
  assert len({tuple(r) for r in world.name_tokens.tolist()}) == world.cfg.num_entities
  for first, last in world.name_tokens[:50]:
    assert re.fullmatch(r"a\d+", world.vocab[first])
    assert re.fullmatch(r"b\d+", world.vocab[last])


def test_labels_roughly_balanced():
  world = _world()
  # Cities are split evenly between the two regions.
  assert np.bincount(world.region_of, minlength=2).tolist() == [5, 5]
  for name, split in testbed.task_splits(world).items():
    frac = split["labels"].mean()
    assert 0.35 <= frac <= 0.65, (name, frac)
    assert set(np.unique(split["labels"]).tolist()) == {0, 1}


def test_question_form_and_labels():
  world = _world()
  splits = testbed.task_splits(world)
  bos, lives, works = world.token("<bos>"), world.token("lives"), world.token("works")
  for name in testbed.SPLITS:
    ents = world.split_entities[name]
    q = splits[name]
    assert q["tokens"].shape == (len(ents), 4)
    assert (q["mask"] == 1).all()
    np.testing.assert_array_equal(q["tokens"][:, 0], bos)
    np.testing.assert_array_equal(q["tokens"][:, 1:3], world.name_tokens[ents])
    np.testing.assert_array_equal(q["tokens"][:, 3], lives)
    # label = region of the entity's home city, computed directly
    expected = [world.region_of[world.city_of[0, e]] for e in ents]
    np.testing.assert_array_equal(q["labels"], expected)
  text = world.decode(splits["train_gt"]["tokens"][0])
  assert re.fullmatch(r"<bos> a\d+ b\d+ lives", text), text
  # heldout asks the other relation of the test entities
  held = splits["heldout"]
  np.testing.assert_array_equal(
    held["tokens"][:, 1:3], world.name_tokens[world.split_entities["test"]]
  )
  np.testing.assert_array_equal(held["tokens"][:, 3], works)
  np.testing.assert_array_equal(
    held["labels"], world.region_of[world.city_of[1, world.split_entities["test"]]]
  )


def test_corpus_rows_start_with_bos_and_masks_are_contiguous():
  world = _world(num_entities=60, entities_per_split=20, corpus_docs=60, syllables=8)
  corpus = testbed.pretraining_corpus(world)
  tokens, mask = corpus["tokens"], corpus["mask"]
  assert tokens.shape == (60, world.cfg.doc_len)
  bos, pad = world.token("<bos>"), world.token("<pad>")
  np.testing.assert_array_equal(tokens[:, 0], bos)
  for row_t, row_m in zip(tokens, mask):
    k = int(row_m.sum())
    assert k > 1
    np.testing.assert_array_equal(row_m[:k], 1)  # contiguous: ones then zeros
    np.testing.assert_array_equal(row_m[k:], 0)
    np.testing.assert_array_equal(row_t[k:], pad)
    assert (row_t[1:k] != bos).all()


def test_corpus_states_only_true_facts():
  world = _world(num_entities=60, entities_per_split=20, corpus_docs=40, syllables=8)
  corpus = testbed.pretraining_corpus(world)
  by_name = {tuple(n): e for e, n in enumerate(world.name_tokens.tolist())}
  dot, in_, is_ = world.token("."), world.token("in"), world.token("is")
  rel_of = {world.token(r): i for i, r in enumerate(testbed.RELATIONS)}
  counts = {"entity": 0, "city": 0}
  for row_t, row_m in zip(corpus["tokens"], corpus["mask"]):
    words = row_t[1 : int(row_m.sum())].tolist()
    assert len(words) % testbed.SENTENCE_LEN == 0
    for i in range(0, len(words), testbed.SENTENCE_LEN):
      sentence = words[i : i + testbed.SENTENCE_LEN]
      assert sentence[-1] == dot
      if world.vocab[sentence[0]].startswith("c"):  # "c3 is in r1 ."
        city = int(world.vocab[sentence[0]][1:])
        assert sentence[1:3] == [is_, in_]
        assert world.vocab[sentence[3]] == f"r{world.region_of[city]}"
        counts["city"] += 1
      else:  # "a3 b17 lives c3 ."
        e = by_name[(sentence[0], sentence[1])]
        rel = rel_of[sentence[2]]
        assert world.vocab[sentence[3]] == f"c{world.city_of[rel, e]}"
        counts["entity"] += 1
  assert counts["entity"] > 0 and counts["city"] > 0


def test_fact_probe_and_frequency():
  world = _world(num_entities=60, entities_per_split=20, syllables=8, zipf=1.5)
  prompts, answers = testbed.fact_probe(world)
  assert len(prompts) == len(answers) == 2 * 60
  np.testing.assert_array_equal(answers[:60], world.city_tokens[world.city_of[0]])
  np.testing.assert_array_equal(answers[60:], world.city_tokens[world.city_of[1]])
  f = world.entity_frequency
  assert f.sum() == pytest.approx(1.0)
  order = np.argsort(world.frequency_rank)
  assert (np.diff(f[order]) < 0).all()  # falls with rank when zipf > 0
  flat = _world(num_entities=60, entities_per_split=20, syllables=8, zipf=0.0).entity_frequency
  np.testing.assert_allclose(flat, 1 / 60)


def test_no_cue_is_the_world_from_before_the_cue():
  # cue=0 draws nothing extra: the same facts, and the same cache fingerprint
  # (corpus_fields without "cue") as before the field existed.
  old, new = _world(), _world(cue=0.0)
  np.testing.assert_array_equal(old.city_of, new.city_of)
  assert "cue" not in WorldConfig().corpus_fields()
  assert WorldConfig(cue=0.4).corpus_fields()["cue"] == 0.4


@pytest.mark.parametrize("cue", [0.0, 0.4, 1.0])
def test_cue_share_of_entities_follow_their_first_syllable(cue):
  world = _world(num_entities=1600, cue=cue)
  first = world.name_tokens[:, 0] - world.token("a0")
  suggested = testbed.cue_region(world.cfg, first)
  for relation in range(len(testbed.RELATIONS)):
    follows = world.region_of[world.city_of[relation]] == suggested
    # cue of them are moved into the cue region; the rest land there by chance, half the time.
    expected = cue + (1 - cue) / world.cfg.num_regions
    assert abs(follows.mean() - expected) < 0.04, (relation, follows.mean(), expected)
  # The cue regions are balanced over syllables, so the labels stay balanced.
  labels = world.region_of[world.city_of[0]]
  assert abs(labels.mean() - 0.5) < 0.05


def test_cue_world_corpus_states_the_moved_facts():
  world = _world(num_entities=400, entities_per_split=100, corpus_docs=300, cue=0.5)
  corpus = testbed.pretraining_corpus(world)
  lives = world.token("lives")
  tokens = corpus["tokens"]
  for row in tokens[:50]:
    for i in np.flatnonzero(row == lives):
      entity = np.flatnonzero((world.name_tokens == row[i - 2 : i]).all(axis=1))
      assert row[i + 1] == world.city_tokens[world.city_of[0, entity[0]]]


def test_cue_out_of_range_is_rejected():
  with pytest.raises(ValueError, match=r"WorldConfig.cue=1.5: expected in \[0, 1\]"):
    WorldConfig(cue=1.5)


def test_the_frequency_shift_splits_easy_to_hard_and_keeps_the_world():
  """Issue 33: split_by="frequency" puts the n entities the corpus mentions
  least in test and a seeded split of the 2n it mentions most in train_gt and
  train_w2s: disjoint, as specified; the world, its corpus (the pretraining
  cache's key) and the default split's keys stay as they were."""
  cfg = testbed.WorldConfig(
    num_entities=100, entities_per_split=30, corpus_docs=50, syllables=10, split_by="frequency"
  )
  random_cfg = dataclasses.replace(cfg, split_by="random")
  shifted, plain = testbed.make_world(cfg), testbed.make_world(random_cfg)
  n = cfg.entities_per_split
  ids = {k: set(v.tolist()) for k, v in shifted.split_entities.items()}
  assert all(len(v) == n for v in ids.values())
  assert not (
    ids["train_gt"] & ids["train_w2s"] or ids["test"] & (ids["train_gt"] | ids["train_w2s"])
  )
  rank = shifted.frequency_rank
  assert sorted(rank[list(ids["test"])]) == list(range(cfg.num_entities - n, cfg.num_entities))
  assert sorted(rank[list(ids["train_gt"] | ids["train_w2s"])]) == list(range(2 * n))
  for field in ("name_tokens", "frequency_rank", "city_of", "region_of"):
    np.testing.assert_array_equal(getattr(shifted, field), getattr(plain, field))
  assert cfg.corpus_fields() == random_cfg.corpus_fields()
  assert fingerprint(random_cfg) == fingerprint(dataclasses.replace(random_cfg))
  assert "split_by" not in fingerprint(random_cfg) and fingerprint(cfg)["split_by"] == "frequency"
  with pytest.raises(ValueError, match="WorldConfig.split_by='rare'"):
    dataclasses.replace(cfg, split_by="rare")
