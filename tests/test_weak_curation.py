"""Curating the weak model's generations: the scores by hand on constructed
inputs, against the sampler's own log-probs, the generative filter's
selection and kept accuracy, clear errors, the pool filter's token scores,
and a seconds-long filtered generative W2S run."""

import dataclasses
import math
import types

import jax
import numpy as np
import pytest

from w2s_jax.curation import pool, scores, selection, weak_curation
from w2s_jax.curation.selection import FilterConfig
from w2s_jax.data.dataset import Dataset
from w2s_jax.infra import configs
from w2s_jax.infra.store import Store
from w2s_jax.models import model_config, sampling, scoring, transformer
from w2s_jax.models.sampling import SamplingConfig
from w2s_jax.tasks import generation, layout
from w2s_jax.tasks.generation import GenerationConfig
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.generative_losses import Sft
from w2s_jax.w2s import grid as sweep_grid
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s import stages
from w2s_jax.w2s.experiment import ExperimentConfig

TINY = "configs/generative_curation.py:tiny,seeds=2"


# --- The scores by hand --------------------------------------------------------


def test_mean_logprob_and_min_prob_hand_computed():
  logprobs = np.log(
    np.array([[0.5, 0.25, 0.9, 0.1], [0.8, 0.05, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3]], np.float32)
  )
  mask = np.array([[1, 1, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_allclose(
    scoring.mean_logprob(logprobs=logprobs, mask=mask),
    [np.log(0.5 * 0.25 * 0.1) / 3, np.log(0.8 * 0.5) / 2, 0.0],
    rtol=1e-6,
  )
  # Masked tokens never count (0.05 in row 1 is masked); an empty mask scores 1.
  np.testing.assert_allclose(
    scoring.min_prob(logprobs=logprobs, mask=mask), [0.1, 0.5, 1.0], rtol=1e-6
  )


def test_ifd_hand_computed_and_the_ifd_above_one_rule():
  # Mean log-probs with and without the prompt: IFD = exp(NLL(r|p) - NLL(r)).
  given = np.array([-1.0, -2.0, -0.5], np.float32)
  alone = np.array([-2.0, -1.0, -0.5], np.float32)
  np.testing.assert_allclose(
    scores.ifd(conditional_logprob=given, unconditional_logprob=alone),
    [math.exp(-1.0), math.exp(1.0), 1.0],
    rtol=1e-6,
  )
  # Superfiltering keeps the highest IFD, except IFD > 1, discarded: ranked below all <= 1.
  ifd = np.array([0.3, 0.9, 1.5, 0.6, 3.0, 1.0])
  keep = lambda frac: list(
    selection.top_fraction(scores=np.asarray(scores.ifd_selection(ifd=ifd)), keep_frac=frac)
  )
  assert keep(1 / 3) == [1, 5]  # 1.0 and 0.9: high IFD, at most 1
  assert keep(4 / 6) == [0, 1, 3, 5]  # then 0.6, 0.3; neither 1.5 nor 3.0
  assert keep(5 / 6) == [0, 1, 2, 3, 5]  # only when short: the nearest to 1 first


def test_self_consistency_on_constructed_answers():
  # One prompt, 4 samples, fields (city, region); -1: no answer given.
  answers = np.array([[[5, 1], [5, 1], [5, 2], [7, 2]], [[4, -1], [4, -1], [-1, 0], [9, 0]]])
  expected = [
    [(2 / 3 + 1 / 3) / 2, (2 / 3 + 1 / 3) / 2, (2 / 3 + 1 / 3) / 2, (0 + 1 / 3) / 2],
    # A missing answer agrees with nothing, not even another missing one.
    [(1 / 3 + 0) / 2, (1 / 3 + 0) / 2, (0 + 1 / 3) / 2, (0 + 1 / 3) / 2],
  ]
  got = np.asarray(scores.self_consistency(answers=answers))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # Invariant under reordering the samples (the scores move with them).
  perm = np.array([3, 1, 0, 2])
  np.testing.assert_allclose(
    scores.self_consistency(answers=answers[:, perm]), got[:, perm], rtol=1e-6
  )
  with pytest.raises(ValueError, match="1 sample per prompt; expected >= 2"):
    scores.self_consistency(answers=answers[:, :1])


def test_answer_fields_read_the_field_columns_without_the_truth():
  tokens = np.array([[5, 1, 2, 7, 9], [6, 1, 2, 8, 0]])
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  got = generation.answer_fields(tokens, mask, fields={"{city}": 0, "{region}": 3})
  np.testing.assert_array_equal(got, [[5, 7], [6, -1]])
  # A field past the generation's end is not given.
  assert (generation.answer_fields(tokens[:, :2], mask[:, :2], fields={"{region}": 3}) == -1).all()


# --- Against the model and the sampler -----------------------------------------

VOCAB, EOS = 23, 3  # EOS: the constructed responses' end


def _model():
  """Larger weights than init: decisive, varied tokens, and some early EOS."""
  cfg = model_config.decode_size("pico", vocab_size=VOCAB, max_len=16)
  params = transformer.init_params(cfg, jax.random.key(0))
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  keys = jax.random.split(jax.random.key(1), len(leaves))
  noisy = [
    (1.0 if "scale" in jax.tree_util.keystr(path) else 0.0) + 0.5 * jax.random.normal(k, x.shape)
    for (path, x), k in zip(leaves, keys)
  ]
  return cfg, jax.tree.unflatten(jax.tree.structure(params), noisy)


def _prompts(lengths, width=5, seed=0):
  rng = np.random.default_rng(seed)
  prompt = np.zeros((len(lengths), width), np.int32)
  mask = np.zeros_like(prompt)
  for i, n in enumerate(lengths):
    prompt[i, width - n :] = rng.integers(4, VOCAB, n)
    mask[i, width - n :] = 1
  return Dataset(prompt=prompt, prompt_mask=mask)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mean_logprob_equals_the_samplers_own_logprobs(mesh4, temperature):
  """Teacher-forced on its own response, the model gives each token the
  log-prob the sampler recorded (temperature 1, unfiltered): the mean is the
  sampler's mean, the min its min, whatever the padding of the batch."""
  cfg, params = _model()
  data = _prompts([5, 3, 1, 4, 2, 5, 3, 1])
  run = lambda eos, t: sampling.generate(
    params,
    cfg,
    data,
    cfg=SamplingConfig(max_new_tokens=8, eos_id=eos, temperature=t),
    mesh=mesh4,
    batch_size=4,
  )
  # An EOS the model emits at several steps: its second commonest greedy token.
  eos = int(np.argsort(-np.bincount(run(None, 0.0)[0].ravel()), kind="stable")[1])
  tokens, mask, logprobs = run(eos, temperature)
  assert len(set(mask.sum(1))) > 1  # responses of several lengths: not vacuous
  got = scoring.token_scores(
    params, cfg, layout.sequences(data, tokens, mask), batch_size=4, mesh=mesh4
  )
  np.testing.assert_allclose(got["mean_logprob"], logprobs.sum(1) / mask.sum(1), atol=1e-4)
  np.testing.assert_allclose(
    got["min_prob"], np.exp(np.where(mask > 0, logprobs, 0).min(1)), rtol=1e-3
  )


def test_ifd_scores_the_response_after_the_prompts_first_token(mesh4):
  cfg, params = _model()
  data = _prompts([5, 3, 1, 4])
  response = np.array([[7, 8, 9], [10, 3, 0], [11, 12, 3], [4, 0, 0]], np.int32)
  rmask = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
  alone = weak_curation.response_alone(data["prompt"], data["prompt_mask"], response, rmask)
  first = [data["prompt"][i][data["prompt_mask"][i] > 0][0] for i in range(4)]
  np.testing.assert_array_equal(alone["tokens"][:, 0], first)
  got = scoring.token_scores(params, cfg, alone, batch_size=4, mesh=mesh4)["mean_logprob"]
  apply = lambda t: jax.nn.log_softmax(
    transformer.Transformer(cfg).apply(
      {"params": params}, t[None], np.ones((1, len(t))), method=transformer.Transformer.lm_logits
    )[0]
  )
  for i in range(4):
    seq = np.concatenate([[first[i]], response[i][rmask[i] > 0]])
    logp = apply(seq)
    by_hand = np.mean([logp[j, seq[j + 1]] for j in range(len(seq) - 1)])  # every response token
    np.testing.assert_allclose(got[i], by_hand, atol=1e-5)


# --- The generative filter -------------------------------------------------------


def _weak(**extra):
  """2 seeds x 8 responses (4 prompts x 2 samples), with known scores."""
  return {
    "score_mean_logprob": np.array(
      [
        [-1.0, -3.0, -2.0, -0.5, -4.0, -0.1, -6.0, -5.0],
        [-9.0, -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0],
      ]
    ),
    "score_ifd": np.array([[0.2, 0.8, 1.7, 0.5, 0.9, 2.0, 0.1, 0.3]] * 2),
    "response_correct": np.array(
      [[1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5]]
    ),
    "response_class": np.array([[0, 0, 0, 0, 1, 1, 1, 1]] * 2),
    **extra,
  }


def test_generative_filter_picks_the_right_responses_and_their_accuracy():
  weak = _weak()
  plain = weak_curation.filter_subsets(
    weak, FilterConfig("mean_logprob", 0.5, stratified=False), generative=True
  )
  np.testing.assert_array_equal(plain[0], [0, 2, 3, 5])  # -0.1, -0.5, -1, -2
  np.testing.assert_array_equal(plain[1], [4, 5, 6, 7])  # each seed its own scores
  np.testing.assert_allclose(
    weak_curation.kept_label_accuracy(weak, plain, generative=True),
    [(1 + 0.5 + 1 + 1) / 4, (1 + 1 + 1 + 0.5) / 4],
  )
  # Stratified by the response's class field: 2 of each class.
  strat = weak_curation.filter_subsets(weak, FilterConfig("mean_logprob", 0.5), generative=True)
  np.testing.assert_array_equal(strat[0], [0, 3, 4, 5])
  np.testing.assert_array_equal(strat[1], [2, 3, 6, 7])
  # No class field (a text task): stratification is off.
  no_class = {k: v for k, v in weak.items() if k != "response_class"}
  np.testing.assert_array_equal(
    weak_curation.filter_subsets(no_class, FilterConfig("mean_logprob", 0.5), generative=True)[0],
    plain[0],
  )
  # IFD: highest <= 1 first (0.9, 0.8, 0.5, 0.3); 1.7 and 2.0 discarded.
  ifd = weak_curation.filter_subsets(
    weak, FilterConfig("ifd", 0.5, stratified=False), generative=True
  )
  np.testing.assert_array_equal(ifd[0], [1, 3, 4, 7])


def test_criteria_of_the_other_kind_and_missing_samples_are_clear_errors():
  weak = _weak()
  with pytest.raises(
    ValueError, match="'confidence' does not apply to the weak supervision of a generative task"
  ):
    weak_curation.filter_scores(weak, "confidence", generative=True)
  labels = {"labels": np.full((2, 4, 2), 0.5), "likelihood": np.zeros(4)}
  with pytest.raises(
    ValueError, match="'min_prob' does not apply to the weak supervision of a classification task"
  ):
    weak_curation.filter_scores(labels, "min_prob", generative=False)
  with pytest.raises(ValueError, match="does not apply"):
    weak_curation.filter_scores(labels, "likelihood_ratio", generative=False)
  with pytest.raises(ValueError, match="weak_samples >= 2"):
    weak_curation.filter_scores(weak, "self_consistency", generative=True)
  with pytest.raises(ValueError, match="weak_samples=1; expected >= 2"):
    weak_curation.check_filter(
      FilterConfig("self_consistency", 0.5), generative=True, weak_samples=1
    )
  # A sweep refuses them at construction, before any compute.
  base = configs.load(TINY)
  one_sample = dataclasses.replace(base, generation=GenerationConfig())
  for cfg, flt, needle in (
    (one_sample, FilterConfig("self_consistency", 0.5), "weak_samples=1"),
    (base, FilterConfig("margin", 0.5), "generative task"),
    (ExperimentConfig(), FilterConfig("ifd", 0.5), "classification task"),
  ):
    loss = Sft() if cfg.generative else Xent()
    with pytest.raises(ValueError, match=f"Cell.filter in .*{needle}"):
      sweep_grid.SweepConfig(cfg, (sweep_grid.Cell("pico", "micro", loss, filter=flt),))


def test_stored_weak_stage_without_the_scores_is_recomputed(tmp_path):
  parts = types.SimpleNamespace(
    generative=True,
    task=types.SimpleNamespace(answers=lambda t, m: t, answer_class=1, eval_splits=("test",)),
    cfg=configs.load(TINY),
    evaluator=types.SimpleNamespace(eval_keys=("test",), curve_names=lambda agreement: ()),
  )
  fields = stages.WeakStage.fields(parts)
  assert {
    "response_correct",
    "score_mean_logprob",
    "score_min_prob",
    "score_ifd",
    "score_self_consistency",
    "response_class",
  } <= set(fields)
  old = {
    k: np.zeros((2, 3))
    for k in ("responses", "response_mask", "logprobs", "label_accuracy", "eval:test")
  }
  store = Store(tmp_path)
  store.save_arrays("weak.npz", old, identity={"stage": "weak"})
  with pytest.warns(UserWarning, match="written without"):
    assert store.load_arrays("weak.npz", identity={"stage": "weak"}, fields=fields) is None


# --- The pool filter ---------------------------------------------------------------


def test_pool_filter_scores_documents_with_the_same_token_scores(mesh4):
  cfg, params = _model()
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, VOCAB, (6, 7)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[1, 4:] = 0
  mask[4, 2:] = 0
  got = pool.pool_scores(
    params=params, model_cfg=cfg, pool=Dataset(tokens=tokens, mask=mask), batch_size=4, mesh=mesh4
  )
  for i in range(6):
    seq = tokens[i][mask[i] > 0]
    logp = jax.nn.log_softmax(
      transformer.Transformer(cfg).apply(
        {"params": params},
        seq[None],
        np.ones((1, len(seq))),
        method=transformer.Transformer.lm_logits,
      )[0]
    )
    target = np.array([logp[j, seq[j + 1]] for j in range(len(seq) - 1)])
    np.testing.assert_allclose(got["likelihood"][i], target.mean(), atol=1e-5)
    np.testing.assert_allclose(got["min_prob"][i], np.exp(target.min()), rtol=1e-4)
  kind = np.array([-1, 0, -1, 1, -1, 2])
  rows = pool.removal_table(kind, {"min_prob": got["min_prob"]}, (0.5,))
  kept = np.zeros(6, bool)
  kept[np.argsort(-got["min_prob"], kind="stable")[:3]] = True
  assert rows[0]["bad_removed"] == pytest.approx(np.mean(~kept[kind >= 0]))
  assert pool.pool_criterion("mean_logprob") == "likelihood"
  assert pool.pool_criterion("min_prob") == "min_prob"
  with pytest.raises(ValueError, match="pool criterion 'ifd'"):
    pool.pool_criterion("ifd")


# --- End to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_weak(tmp_path_factory):
  cfg = configs.load(TINY)
  parts = parts_lib.build(cfg, cache_dir=tmp_path_factory.mktemp("curation"), progress=False)
  weak = stages.weak_stage(parts, cfg.weak_size)
  return parts, weak, weak.arrays()


def test_weak_stage_scores_every_response(tiny_weak):
  ctx, _, weak = tiny_weak
  n = ctx.cfg.generation.weak_samples
  rows = len(ctx.task.splits["train_w2s"]) * n
  for field in stages.WeakStage.fields(ctx):
    assert field in weak, field
  for field in weak_curation.response_fields(ctx.task, ctx.cfg.generation):
    assert weak[field].shape == (2, rows), field
  np.testing.assert_allclose(weak["label_accuracy"], weak["response_correct"].mean(1))
  lp, mask = weak["logprobs"], weak["response_mask"]
  np.testing.assert_allclose(weak["score_mean_logprob"], lp.sum(-1) / mask.sum(-1), atol=1e-4)
  np.testing.assert_allclose(
    weak["score_min_prob"], np.exp(np.where(mask > 0, lp, 0).min(-1)), rtol=1e-3
  )
  # Self-consistency by hand from the responses' (city, region) columns.
  for s in range(2):
    cols = np.where(mask[s][:, [0, 3]] > 0, weak["responses"][s][:, [0, 3]], -1)
    for r in range(0, rows, 7):
      group = cols[r - r % n : r - r % n + n]
      others = [k for k in range(n) if k != r % n]
      want = np.mean(
        [
          np.mean([(group[k, f] == cols[r, f]) & (cols[r, f] >= 0) for k in others])
          for f in range(2)
        ]
      )
      assert weak["score_self_consistency"][s, r] == pytest.approx(want)
    np.testing.assert_array_equal(weak["response_class"][s], cols[:, 1])
  assert np.all((weak["score_ifd"] > 0) & np.isfinite(weak["score_ifd"]))


def test_filtered_generative_w2s_trains_on_the_kept_responses_only(tiny_weak, monkeypatch):
  ctx, stage, weak = tiny_weak
  flt = FilterConfig("self_consistency", 0.25)
  seen = {}
  tune = ctx.trainer.tune

  def spy(size, per_seed, *args, **kwargs):
    seen["per_seed"] = per_seed
    return tune(size, per_seed, *args, **kwargs)

  monkeypatch.setattr(ctx.trainer, "tune", spy)
  out = stages.w2s_stage(ctx, ctx.cfg.strong_size, stage, Sft(), filter_cfg=flt)
  subsets = weak_curation.filter_subsets(weak, flt, generative=True)
  width = ctx.task.splits["train_w2s"]["prompt"].shape[1]
  for s, idx in enumerate(subsets):
    assert len(idx) == round(0.25 * weak["responses"].shape[1])
    np.testing.assert_array_equal(
      seen["per_seed"][s]["tokens"][:, width:], weak["responses"][s][idx]
    )
    assert out.kept_label_accuracy[s] == pytest.approx(weak["response_correct"][s][idx].mean())
  assert set(ctx.evaluator.eval_keys) <= set(out.scores)
  with pytest.raises(ValueError, match="'confidence' does not apply"):
    stages.w2s_stage(
      ctx, ctx.cfg.strong_size, stage, Sft(), filter_cfg=FilterConfig("confidence", 0.5)
    )


def test_parsed_answers_keep_their_ids_across_calls():
  """A text task's answers are compared across models and runs: the same text,
  the same id, whatever else the call parsed (ids from a hash, not an enumeration)."""
  ids = [generation.stable_id(t) for t in ("42", "17", "42")]
  assert ids[0] == ids[2] != ids[1] and all(0 <= i < 2**62 for i in ids)
  assert generation.stable_id("42") == ids[0]  # another call, the same id
