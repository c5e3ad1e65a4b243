"""The cue world's point: a model that does not know a fact guesses by the name's cue."""

import dataclasses

import numpy as np

from w2s_jax.data import testbed
from w2s_jax.models import inference
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s.experiment import ExperimentConfig

import common


def test_a_small_models_wrong_answers_follow_the_cue(tmp_path):
  # A world too big for pico to memorise, where 60% of names are moved to
  # their cue region (80% follow the cue in all). Pico's wrong cities should
  # lie in the cue's region far more often than its right ones' share says.
  world = dataclasses.replace(
    common.SMALL_WORLD,
    num_entities=300,
    entities_per_split=60,
    corpus_docs=1000,
    syllables=20,
    cue=0.6,
  )
  cfg = ExperimentConfig(
    world=world,
    pretrain=dataclasses.replace(common.SMALL_PRETRAIN, steps=600),
    weak_size="pico",
    strong_size="micro",
    seeds=(0,),
  )
  ctx = parts_lib.build(cfg, cache_dir=tmp_path, progress=False)
  params, model_cfg, _ = ctx.models.get("pico")
  w = ctx.task.world
  prompts, answers = testbed.fact_probe(w)
  probs = inference.next_token_probs(params, model_cfg, prompts, mesh=ctx.mesh)
  predicted = w.city_tokens[np.argmax(probs[:, w.city_tokens], axis=-1)]
  wrong = predicted != answers
  first = np.tile(w.name_tokens[:, 0] - w.token("a0"), 2)
  cue = testbed.cue_region(w.cfg, first)
  predicted_region = w.region_of[np.searchsorted(w.city_tokens, predicted)]
  assert 0.2 < wrong.mean() < 0.95, wrong.mean()  # it knows some facts, not all
  follows_when_wrong = (predicted_region == cue)[wrong].mean()
  # A wrong city drawn uniformly from the other 9 would lie in the cue region
  # with probability (cities there, minus the true one if it is there) / 9.
  true_region = w.region_of[np.searchsorted(w.city_tokens, answers)]
  cue_cities = np.array([np.sum(w.region_of == r) for r in cue])
  uniform = ((cue_cities - (true_region == cue)) / (w.cfg.num_cities - 1))[wrong].mean()
  # Measured: 0.70 against 0.47 for uniform guesses.
  assert follows_when_wrong > uniform + 0.15, (follows_when_wrong, uniform)
