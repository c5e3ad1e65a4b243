"""The weak model as a live supervisor (Live(), live.py): lambda = 0
is token-level KD, the documented weighting, zero at student = teacher, the
student's samples a pure function of (params, step, seed), resume equals an
uninterrupted run, the teacher frozen and outside the state, end to end
through the stages, and bad input refused."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.data.dataset import Dataset, shuffled_batches
from w2s_jax.infra import checkpoints, configs, sharding
from w2s_jax.models import model_config, sampling, transformer
from w2s_jax.models.sampling import SamplingConfig
from w2s_jax.tasks import layout
from w2s_jax.training import finetune, live, loop, losses, train
from w2s_jax.training.generative_losses import DIVERGENCES, ReverseKl, Sft
from w2s_jax.training.live import Live
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s import stages

VOCAB, EOS, PAD = 13, 2, 0
PROMPT, RESPONSE = 3, 5
STUDENT = model_config.decode_size("pico", vocab_size=VOCAB, max_len=PROMPT + RESPONSE)
TEACHER = model_config.decode_size("nano", vocab_size=VOCAB, max_len=PROMPT + RESPONSE)
SAMPLING = SamplingConfig(max_new_tokens=RESPONSE, eos_id=EOS, pad_id=PAD)


@functools.cache
def _params(cfg, seed):
  """Random weights large enough for decisive, varied next-token distributions
  (a jitted init, noise added on the host: eager init op by op takes seconds)."""
  params = jax.device_get(
    jax.jit(transformer.init_params, static_argnums=0)(cfg, jax.random.key(seed))
  )
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda x: jnp.asarray(x + 0.3 * rng.normal(size=x.shape), jnp.float32), params
  )


def _data(n=16, seed=0) -> Dataset:
  """Left-padded prompts of 1-3 tokens, right-padded responses of 1-5 ending in EOS."""
  rng = np.random.default_rng(seed)
  prompt, prompt_mask = np.zeros((n, PROMPT), np.int32), np.zeros((n, PROMPT), np.int32)
  response, response_mask = np.full((n, RESPONSE), PAD, np.int32), np.zeros((n, RESPONSE), np.int32)
  for i in range(n):
    p, r = rng.integers(1, PROMPT + 1), rng.integers(1, RESPONSE + 1)
    prompt[i, PROMPT - p :], prompt_mask[i, PROMPT - p :] = rng.integers(3, VOCAB, p), 1
    response[i, :r], response_mask[i, :r] = rng.integers(3, VOCAB, r), 1
    response[i, r - 1] = EOS
  return layout.sequences(
    Dataset(prompt=prompt, prompt_mask=prompt_mask, response=response, response_mask=response_mask)
  )


def _loss_fn(fraction, divergence="reverse_kl", teacher_cfg=TEACHER, **kw):
  cfg = Live(live_fraction=fraction, live_divergence=divergence, **kw)
  return cfg.objective(STUDENT, generative=True, teacher_cfg=teacher_cfg, sampling_cfg=SAMPLING)


def _value_and_grad(loss_fn, params, batch, key, teacher):
  return jax.jit(jax.value_and_grad(lambda p: loss_fn(p, batch, 0.0, key, teacher)[0]))(params)


def test_layout_is_strided_and_static():
  assert live.live_layout(32, 0.5) == (2, 1)  # every other row
  assert live.live_layout(32, 0.25) == (4, 1)
  assert live.live_layout(32, 0.0) == (1, 0)
  assert live.live_layout(32, 1.0) == (1, 1)
  assert live.live_layout(8, 0.3) == (4, 1)  # round(2.4) = 2 of 8
  assert live.live_layout(10, 0.3) == (10, 3)


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd", "forward_kl"])
def test_fraction_zero_is_token_kd_exactly(divergence):
  params, teacher = _params(STUDENT, 0), _params(TEACHER, 1)
  batch, key = {k: jnp.asarray(v) for k, v in _data().items()}, jax.random.key(5)
  kd = DIVERGENCES[divergence]().objective(STUDENT, generative=True, teacher_cfg=TEACHER)
  want_loss, want_grads = _value_and_grad(kd, params, batch, key, teacher)
  got_loss, got_grads = _value_and_grad(_loss_fn(0.0, divergence), params, batch, key, teacher)
  np.testing.assert_array_equal(got_loss, want_loss)
  jax.tree.map(np.testing.assert_array_equal, got_grads, want_grads)
  if divergence == "reverse_kl":
    half_loss, _ = _value_and_grad(_loss_fn(0.5, divergence), params, batch, key, teacher)
    assert abs(float(half_loss) - float(want_loss)) > 1e-4  # sampling changes the loss


def test_loss_is_the_share_weighted_mean_of_both_groups():
  """loss = w * D(sampled rows) + (1 - w) * D(weak rows), each a per-token mean."""
  params, teacher = _params(STUDENT, 0), _params(TEACHER, 1)
  batch, key = {k: jnp.asarray(v) for k, v in _data().items()}, jax.random.key(5)
  loss, aux = jax.jit(_loss_fn(0.25))(params, batch, 0.0, key, teacher)
  sample_key, _ = jax.random.split(key)
  seqs, is_live, lengths = jax.jit(
    functools.partial(
      live.sample_rows,
      model_cfg=STUDENT,
      fraction=0.25,
      sampling_cfg=dataclasses.replace(SAMPLING, temperature=1.0),
    )
  )(params, batch, sample_key)
  np.testing.assert_array_equal(is_live, np.tile([1, 0, 0, 0], 4))
  logits = transformer.Transformer(STUDENT).apply(
    {"params": params}, seqs["tokens"], seqs["mask"], method=transformer.Transformer.lm_logits
  )
  t_logits = transformer.Transformer(TEACHER).apply(
    {"params": teacher}, seqs["tokens"], seqs["mask"], method=transformer.Transformer.lm_logits
  )
  part = lambda rows: losses.reverse_kl(
    logits=logits[rows], teacher_logits=t_logits[rows], loss_mask=seqs["loss_mask"][rows]
  )
  rows = np.asarray(is_live) > 0
  np.testing.assert_allclose(loss, 0.25 * part(rows) + 0.75 * part(~rows), rtol=1e-5)
  np.testing.assert_allclose(aux["live_response_len"], np.mean(lengths))
  assert 0 <= float(aux["token_agreement"]) <= 1


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_student_equal_to_teacher_gives_zero_loss_and_gradient(fraction):
  params = _params(STUDENT, 0)
  batch, key = {k: jnp.asarray(v) for k, v in _data().items()}, jax.random.key(5)
  for divergence in ("reverse_kl", "jsd") if fraction == 1 else ("forward_kl",):
    loss, grads = _value_and_grad(
      _loss_fn(fraction, divergence, teacher_cfg=STUDENT), params, batch, key, params
    )
    assert abs(float(loss)) < 1e-6
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-6
  # Not vacuous: another teacher gives a loss and a gradient.
  loss, grads = _value_and_grad(_loss_fn(fraction), params, batch, key, _params(TEACHER, 1))
  assert float(loss) > 1e-3 and float(optax_norm(grads)) > 1e-3


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def test_samples_are_the_students_own_written_where_the_response_was():
  params = _params(STUDENT, 0)
  data = _data()
  batch, key = {k: jnp.asarray(v) for k, v in data.items()}, jax.random.key(3)
  seqs, is_live, _ = jax.jit(
    functools.partial(live.sample_rows, model_cfg=STUDENT, sampling_cfg=SAMPLING, fraction=0.5)
  )(params, batch, key)
  rows = np.asarray(is_live) > 0
  np.testing.assert_array_equal(rows, np.arange(16) % 2 == 0)
  for name in ("tokens", "mask", "loss_mask"):  # the weak rows are untouched
    np.testing.assert_array_equal(np.asarray(seqs[name])[~rows], data[name][~rows])
  # The sampled rows: their prompt, then exactly what the sampler writes for it.
  want, mask, _ = jax.jit(functools.partial(sampling.sample, model_cfg=STUDENT, cfg=SAMPLING))(
    params, data["prompt"][rows], data["prompt_mask"][rows], data["example_id"][rows], key
  )
  tokens = np.asarray(seqs["tokens"])[rows]
  np.testing.assert_array_equal(tokens[:, :PROMPT], data["prompt"][rows])
  np.testing.assert_array_equal(tokens[:, PROMPT:], want)
  np.testing.assert_array_equal(np.asarray(seqs["loss_mask"])[rows][:, PROMPT:], mask)
  np.testing.assert_array_equal(np.asarray(seqs["loss_mask"])[rows][:, :PROMPT], 0)
  assert (tokens[:, PROMPT:] != data["tokens"][rows][:, PROMPT:]).any()


def _state(seed, optimizer, mesh, params=None):
  params = _params(STUDENT, 0) if params is None else params
  return train.initial_state(
    train.from_params,
    params,
    optimizer=optimizer,
    mesh=mesh,
    rng=jax.random.key_data(jax.random.key(seed)),
  )


def test_samples_are_a_pure_function_of_params_step_and_seed(mesh4):
  params, teacher = _params(STUDENT, 0), _params(TEACHER, 1)
  batch = sharding.put_batch(_data(), mesh4)
  sample_rows = jax.jit(
    functools.partial(
      live.sample_rows,
      model_cfg=STUDENT,
      fraction=0.5,
      sampling_cfg=dataclasses.replace(SAMPLING, temperature=1.0),
    )
  )
  sample = lambda key: np.asarray(sample_rows(params, batch, key)[0]["tokens"])
  np.testing.assert_array_equal(sample(jax.random.key(1)), sample(jax.random.key(1)))
  assert (sample(jax.random.key(1)) != sample(jax.random.key(2))).any()

  # Through the train step: its samples follow the state's rng, so the loss does.
  optimizer = train.make_optimizer(OptimConfig(steps=4, batch_size=16))
  state = _state(0, optimizer, mesh4)
  step = train.compile_train_step(
    loss_fn=_loss_fn(1.0),
    optimizer=optimizer,
    total_steps=4,
    mesh=mesh4,
    state_sharding=train.sharding_of(state),
    teacher_sharding=sharding.state_sharding(teacher, mesh4),
  )
  loss = lambda s: float(step(s, batch, teacher)[1]["loss"])
  first = loss(_state(0, optimizer, mesh4))
  assert loss(_state(0, optimizer, mesh4)) == first  # same state, same samples
  assert loss(_state(1, optimizer, mesh4)) != first  # another seed
  stepped, _ = step(_state(0, optimizer, mesh4), batch, teacher)  # the next step's rng ...
  later = stepped.replace(params=_state(0, optimizer, mesh4).params)
  assert loss(later) != first  # ... with the same params


def _stream(data, seeds, batch_size, start):
  streams = [shuffled_batches(data, batch_size=batch_size, seed=s, start_step=start) for s in seeds]
  while True:
    parts = [next(s) for s in streams]
    yield {k: np.stack([p[k] for p in parts]) for k in parts[0]}


def test_resume_equals_uninterrupted_and_the_teacher_stays_out(mesh4, tmp_path):
  """The compiled step of a stage (seeds vmapped, teacher sharded): killed
  after 3 of 6 steps and resumed from its checkpoint, it ends where an
  uninterrupted run does. The teacher is neither donated nor in the state."""
  seeds, optim = (0, 1), OptimConfig(steps=6, batch_size=8, lr=3e-3)
  loss_cfg = Live(live_fraction=0.5)
  optimizer, step, teacher_sharding = finetune.finetune_step(
    STUDENT, loss_cfg, optim, mesh4, len(seeds), True, TEACHER, SAMPLING
  )
  teacher = jax.device_put(
    jax.tree.map(lambda x: jnp.stack([x, x * 0.9]), _params(TEACHER, 1)), teacher_sharding
  )
  params = jax.tree.map(lambda x: jnp.stack([x, x]), _params(STUDENT, 0))
  data = _data(24)

  def run(until, ckpts=None):
    state = train.initial_state(
      train.from_params,
      params,
      optimizer=optimizer,
      mesh=mesh4,
      rng=train.seed_keys(seeds),
      per_seed=True,
    )
    structure = jax.tree.structure(state)
    if ckpts is not None:
      state = ckpts.restore(state)
    start = loop.first_step(state)
    state, metrics = loop.fit(
      state,
      lambda s, b: step(s, b, teacher),
      _stream(data, seeds, optim.batch_size, start),
      num_steps=until,
      mesh=mesh4,
      desc="live",
      progress=False,
      checkpoints=ckpts,
    )
    assert jax.tree.structure(state) == structure  # no teacher in the state
    return start, state, metrics

  _, whole, metrics = run(6)
  assert np.all(metrics["live_response_len"] > 0)
  ckpts = checkpoints.TrainCheckpoints(tmp_path / "ckpt", every=3, data={"seeds": seeds})
  assert run(3, ckpts)[0] == 0
  ckpts.close()
  ckpts = checkpoints.TrainCheckpoints(tmp_path / "ckpt", every=3, data={"seeds": seeds})
  start, resumed, _ = run(6, ckpts)
  ckpts.close()
  assert start == 3
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(whole.params)
  )
  assert not any(x.is_deleted() for x in jax.tree.leaves(teacher))
  # The checkpoint holds the student's state only: it restores onto that state.
  saved = checkpoints.TrainCheckpoints(tmp_path / "ckpt", every=3, data={"seeds": seeds})
  assert jax.tree.structure(saved.restore(resumed)) == jax.tree.structure(resumed)
  saved.close()
  # Another seed pair's teacher changes the result: the teacher is really read.
  other = jax.device_put(jax.tree.map(lambda x: x * 1.5, teacher), teacher_sharding)
  state = train.initial_state(
    train.from_params,
    params,
    optimizer=optimizer,
    mesh=mesh4,
    rng=train.seed_keys(seeds),
    per_seed=True,
  )
  batch = sharding.put_batch(next(_stream(data, seeds, 8, 0)), mesh4, seed_axis=True)
  _, m1 = step(state, batch, other)
  state = train.initial_state(
    train.from_params,
    params,
    optimizer=optimizer,
    mesh=mesh4,
    rng=train.seed_keys(seeds),
    per_seed=True,
  )
  _, m2 = step(state, batch, teacher)
  assert (np.asarray(m1["loss"]) != np.asarray(m2["loss"])).all()


# --- End to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def weak_stage(tmp_path_factory):
  cfg = configs.load("configs/generative.py:small,seeds=2")
  ctx = parts_lib.build(cfg, cache_dir=tmp_path_factory.mktemp("live") / "cache", progress=False)
  return ctx, stages.weak_stage(ctx, cfg.weak_size)


# Minutes: three live fine-tunes through the stages. Default-suite coverage of
# the same: test_fraction_zero_is_token_kd_exactly (the loss), and the live
# cells of configs/generative_sweep.py:tiny (the stages, the documented command).
@pytest.mark.slow
def test_live_through_the_stages(weak_stage):
  """w2s_stage with live at lambda = 0.5 (seeds vmapped, the weak model as a
  sharded teacher); at lambda = 0 the same results as reverse_kl; with grad
  accumulation and a ground-truth share, it runs too."""
  ctx, weak = weak_stage
  strong, weak_size = ctx.cfg.strong_size, ctx.cfg.weak_size
  run = lambda loss, ft=None: stages.w2s_stage(ctx, strong, weak, loss, ft, weak_size=weak_size)
  half = run(Live(live_fraction=0.5))
  kd = run(ReverseKl())
  zero = run(Live(live_fraction=0.0))
  half, kd, zero = half.scores, kd.scores, zero.scores
  for key in ctx.evaluator.eval_keys:
    assert half[key].shape == kd[key].shape == (2, len(ctx.task.splits[key.split(":")[0]]))
    assert np.isfinite(half[key]).all()
    np.testing.assert_array_equal(zero[key], kd[key])
  assert any((half[k] != kd[k]).any() for k in ctx.evaluator.eval_keys)
  accum = dataclasses.replace(ctx.cfg.finetune, grad_accum_steps=2)
  mixed = run(Live(live_fraction=0.5, live_gt_weight=0.5, gt_examples=8), accum).scores
  assert all(np.isfinite(mixed[k]).all() for k in ctx.evaluator.eval_keys)


# --- Bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
  "fields,match",
  [
    (dict(live_fraction=1.5), "Live.live_fraction=1.5: expected in \\[0, 1\\]"),
    (dict(live_fraction=-0.1), "Live.live_fraction=-0.1"),
    (dict(live_divergence="kl"), "Live.live_divergence='kl': expected one of"),
    (dict(live_temperature=-1.0), "Live.live_temperature=-1.0: expected >= 0"),
    (dict(live_gt_weight=2.0), "Live.live_gt_weight=2.0: expected in \\[0, 1\\]"),
  ],
)
def test_bad_live_fields_are_refused(fields, match):
  with pytest.raises(ValueError, match=match):
    Live(**fields)


def test_live_fields_on_another_loss_and_missing_inputs_are_refused():
  # Each loss has only its own hyperparameters: the live ones do not exist on others.
  with pytest.raises(TypeError, match="live_fraction"):
    Sft(live_fraction=0.3)
  with pytest.raises(TypeError, match="live_gt_weight"):
    ReverseKl(live_gt_weight=0.5)
  with pytest.raises(ValueError, match="needs the teacher's model config"):
    Live().objective(STUDENT, generative=True, sampling_cfg=SAMPLING)
  with pytest.raises(ValueError, match="needs the task's SamplingConfig"):
    Live().objective(STUDENT, generative=True, teacher_cfg=TEACHER)
  with pytest.raises(ValueError, match="does not apply to a classification task"):
    Live().check_kind(False)
  params, teacher = _params(STUDENT, 0), _params(TEACHER, 1)
  data = _data()
  bare = {k: data[k] for k in ("tokens", "mask", "loss_mask")}
  with pytest.raises(
    ValueError, match="the batch has no \\['prompt', 'prompt_mask', 'example_id'\\]"
  ):
    _loss_fn(0.5)(params, bare, 0.0, jax.random.key(0), teacher)
  long = dataclasses.replace(SAMPLING, max_new_tokens=RESPONSE + 1)
  loss_fn = Live().objective(STUDENT, generative=True, teacher_cfg=TEACHER, sampling_cfg=long)
  with pytest.raises(ValueError, match="max_new_tokens=6 exceeds the batch's response width 5"):
    loss_fn(params, dict(data), 0.0, jax.random.key(0), teacher)
  with pytest.raises(ValueError, match="gt_data is needed by the combined loss and live with"):
    finetune.finetune(
      params,
      STUDENT,
      [data],
      loss_cfg=Live(live_gt_weight=0.5),
      optim_cfg=OptimConfig(steps=1, batch_size=8),
      seeds=(0,),
      mesh=None,
      desc="x",
      generative=True,
      teacher=(TEACHER, teacher),
    )
