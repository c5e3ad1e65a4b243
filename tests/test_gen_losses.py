"""Token-level losses for generation: hand-computed values, masking, limits,
no gradient into the teacher; the teacher as a frozen argument of the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.infra import sharding
from w2s_jax.models import model_config, transformer
from w2s_jax.training import losses, train
from w2s_jax.training.classifier_losses import LogConf
from w2s_jax.training.combined import Combined
from w2s_jax.training.generative_losses import ForwardKl, Sft
from w2s_jax.training.objectives import Loss
from w2s_jax.training.train import OptimConfig

from fakes import np_log_softmax

LOG = np.log


def _logits(*rows):
  """Logits whose softmax is each given distribution (log-probabilities)."""
  return jnp.asarray(np.log(np.array(rows, np.float64)), jnp.float32)


# One sequence of 3 tokens; loss_mask [0, 1, 1]: positions 0 and 1 predict the
# two response tokens, position 2 predicts nothing.
TOKENS = jnp.array([[0, 1, 2]])
MASK = jnp.array([[0, 1, 1]])
STUDENT = _logits([1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25], [0.9, 0.05, 0.05])[None]
TEACHER = _logits([0.5, 0.25, 0.25], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8])[None]


def np_kl(p, q):
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  return float(np.sum(p * np.log(p / q)))


def test_response_xent_hand_computed():
  # -(log p0[token 1] + log p1[token 2]) / 2 = -(log 1/3 + log 0.25) / 2
  expected = -(LOG(1 / 3) + LOG(0.25)) / 2
  got = losses.response_xent(logits=STUDENT, tokens=TOKENS, loss_mask=MASK)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_forward_and_reverse_kl_hand_computed():
  # Position 0: KL([.5,.25,.25] || uniform) = .5 log 1.5 + .5 log .75 = 0.0588915.
  assert np_kl([0.5, 0.25, 0.25], [1 / 3] * 3) == pytest.approx(0.0588915, abs=1e-7)
  forward = (np_kl([0.5, 0.25, 0.25], [1 / 3] * 3) + np_kl([0.8, 0.1, 0.1], [0.5, 0.25, 0.25])) / 2
  reverse = (np_kl([1 / 3] * 3, [0.5, 0.25, 0.25]) + np_kl([0.5, 0.25, 0.25], [0.8, 0.1, 0.1])) / 2
  assert abs(forward - reverse) > 1e-3  # the two directions really differ here
  kw = dict(logits=STUDENT, teacher_logits=TEACHER, loss_mask=MASK)
  np.testing.assert_allclose(losses.forward_kl(**kw), forward, rtol=1e-5)
  np.testing.assert_allclose(losses.reverse_kl(**kw), reverse, rtol=1e-5)


def test_jsd_hand_computed_and_both_limits():
  s = [[1 / 3] * 3, [0.5, 0.25, 0.25]]
  t = [[0.5, 0.25, 0.25], [0.8, 0.1, 0.1]]
  beta = 0.3
  expected = 0
  for sp, tp in zip(s, t):
    m = beta * np.array(tp) + (1 - beta) * np.array(sp)
    expected += beta * np_kl(tp, m) + (1 - beta) * np_kl(sp, m)
  kw = dict(logits=STUDENT, teacher_logits=TEACHER, loss_mask=MASK)
  np.testing.assert_allclose(losses.generalized_jsd(**kw, beta=beta), expected / 2, rtol=1e-5)
  # Near beta = 0 JSD/beta is the forward KL; near beta = 1, JSD/(1 - beta) the reverse.
  small = 1e-3
  np.testing.assert_allclose(
    losses.generalized_jsd(**kw, beta=small) / small, losses.forward_kl(**kw), rtol=2e-3
  )
  np.testing.assert_allclose(
    losses.generalized_jsd(**kw, beta=1 - small) / small, losses.reverse_kl(**kw), rtol=2e-3
  )
  for beta in (0.0, 1.0):
    with pytest.raises(ValueError, match="expected in \\(0, 1\\)"):
      losses.generalized_jsd(**kw, beta=beta)


def _all_losses(student, teacher, tokens, mask):
  kw = dict(logits=student, teacher_logits=teacher, loss_mask=mask)
  return [
    losses.response_xent(logits=student, tokens=tokens, loss_mask=mask),
    losses.forward_kl(**kw),
    losses.reverse_kl(**kw),
    losses.generalized_jsd(**kw, beta=0.5),
    losses.forward_kl(**kw, temperature=2.0),
  ]


def test_prompt_and_padding_positions_contribute_nothing():
  rng = np.random.default_rng(0)
  b, t, v = 2, 7, 5
  student = jnp.asarray(rng.normal(size=(b, t, v)), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(b, t, v)), jnp.float32)
  tokens = jnp.asarray(rng.integers(v, size=(b, t)))
  # Prompt of 3, response of 3 then padding (row 0); prompt 2, response 2 (row 1).
  mask = jnp.array([[0, 0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0]])
  counted = np.zeros((b, t), bool)  # positions whose next token is a response token
  counted[:, :-1] = np.asarray(mask[:, 1:]) > 0
  noise = jnp.asarray(np.where(counted[..., None], 0.0, rng.normal(size=(b, t, v)) * 5))
  other_tokens = jnp.where(jnp.asarray(mask) > 0, tokens, (tokens + 1) % v)
  before = _all_losses(student, teacher, tokens, mask)
  after = _all_losses(student + noise, teacher - noise, other_tokens, mask)
  np.testing.assert_allclose(before, after, rtol=1e-6)
  assert all(float(x) > 0 for x in before)


def test_student_equal_to_teacher_gives_zero_and_zero_gradient():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 6)), jnp.float32)
  mask = jnp.array([[0, 1, 1, 1, 1], [0, 0, 1, 1, 0]])
  for loss in (
    losses.forward_kl,
    losses.reverse_kl,
    lambda **kw: losses.generalized_jsd(**kw, beta=0.5),
  ):
    value, grad = jax.value_and_grad(
      lambda s: loss(logits=s, teacher_logits=logits, loss_mask=mask)
    )(logits)
    assert abs(float(value)) < 1e-6
    assert float(jnp.abs(grad).max()) < 1e-6


def test_no_gradient_reaches_the_teacher():
  for loss in (
    losses.forward_kl,
    losses.reverse_kl,
    lambda **kw: losses.generalized_jsd(**kw, beta=0.5),
  ):
    grad_teacher = jax.grad(lambda t: loss(logits=STUDENT, teacher_logits=t, loss_mask=MASK))(
      TEACHER
    )
    grad_student = jax.grad(lambda s: loss(logits=s, teacher_logits=TEACHER, loss_mask=MASK))(
      STUDENT
    )
    assert float(jnp.abs(grad_teacher).max()) == 0.0
    assert float(jnp.abs(grad_student).max()) > 1e-3


def test_temperature_softens_both_distributions():
  kw = dict(loss_mask=MASK)
  np.testing.assert_allclose(
    losses.forward_kl(logits=STUDENT, teacher_logits=TEACHER, temperature=2.0, **kw),
    losses.forward_kl(logits=STUDENT / 2, teacher_logits=TEACHER / 2, **kw),
    rtol=1e-6,
  )


def test_unknown_and_misplaced_objective_names_are_refused():
  with pytest.raises(ValueError, match="loss 'kd': expected one of"):
    Loss.from_string("kd")
  with pytest.raises(ValueError, match="does not apply to a generative task"):
    LogConf().check_kind(True)
  with pytest.raises(ValueError, match="does not apply to a classification task"):
    Sft().check_kind(False)
  cfg = model_config.decode_size("pico", vocab_size=11, max_len=8)
  with pytest.raises(ValueError, match="teacher vocab_size=12 != student vocab_size=11"):
    ForwardKl().objective(
      cfg, generative=True, teacher_cfg=model_config.decode_size("pico", vocab_size=12, max_len=8)
    )


def _sequence_batch(rng, n, t, v):
  tokens = rng.integers(1, v, size=(n, t)).astype(np.int32)
  loss_mask = np.zeros((n, t), np.int32)
  loss_mask[:, t // 2 :] = 1
  return {"tokens": tokens, "mask": np.ones((n, t), np.int32), "loss_mask": loss_mask}


def test_teacher_is_a_frozen_argument_of_the_train_step(mesh4):
  """Passed to the jitted step, it is not donated, not differentiated, and
  never part of the state; a teacher equal to the student gives zero gradient."""
  cfg = model_config.decode_size("pico", vocab_size=13, max_len=8)
  teacher_cfg = model_config.decode_size("nano", vocab_size=13, max_len=8)
  optimizer = train.make_optimizer(OptimConfig(steps=4, batch_size=8))
  rng = np.random.default_rng(0)
  batch = sharding.put_batch(_sequence_batch(rng, 8, 8, 13), mesh4)

  def step_with(teacher_cfg, teacher):
    state = train.initial_state(
      lambda k: transformer.init_params(cfg, k), jax.random.key(0), optimizer=optimizer, mesh=mesh4
    )
    loss_fn = ForwardKl().objective(cfg, generative=True, teacher_cfg=teacher_cfg)
    step = train.compile_train_step(
      loss_fn=loss_fn,
      optimizer=optimizer,
      total_steps=4,
      mesh=mesh4,
      state_sharding=train.sharding_of(state),
      teacher_sharding=sharding.state_sharding(teacher, mesh4),
    )
    teacher = jax.device_put(teacher, sharding.state_sharding(teacher, mesh4))
    structure = jax.tree.structure(state)
    new_state, metrics = step(state, batch, teacher)
    assert not any(x.is_deleted() for x in jax.tree.leaves(teacher))
    assert all(x.is_deleted() for x in jax.tree.leaves(state.params))  # the state is donated
    assert jax.tree.structure(new_state) == structure
    return metrics

  other = transformer.init_params(teacher_cfg, jax.random.key(3))
  assert float(step_with(teacher_cfg, other)["grad_norm"]) > 1e-4
  same = transformer.init_params(cfg, jax.random.key(0))  # the student's own init
  assert float(step_with(cfg, same)["grad_norm"]) < 1e-6


def test_combined_with_alpha_one_is_sft_and_alpha_zero_is_ground_truth():
  cfg = model_config.decode_size("pico", vocab_size=13, max_len=8)
  params = transformer.init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  weak, gt = _sequence_batch(rng, 4, 8, 13), _sequence_batch(rng, 4, 8, 13)
  batch = {**{f"weak_{k}": v for k, v in weak.items()}, **{f"gt_{k}": v for k, v in gt.items()}}
  sft = Sft().objective(cfg, generative=True)
  key = jax.random.key(0)
  for alpha, part in ((1.0, weak), (0.0, gt)):
    combined = Combined(kd_weight=alpha).objective(cfg, generative=True)
    np.testing.assert_allclose(
      combined(params, batch, 0.0, key)[0], sft(params, part, 0.0, key)[0], rtol=1e-6
    )
  half = Combined(kd_weight=0.5).objective(cfg, generative=True)
  np.testing.assert_allclose(
    half(params, batch, 0.0, key)[0],
    0.5 * sft(params, weak, 0.0, key)[0] + 0.5 * sft(params, gt, 0.0, key)[0],
    rtol=1e-6,
  )


def test_sft_objective_matches_a_float64_reference():
  cfg = model_config.decode_size("pico", vocab_size=13, max_len=8)
  params = transformer.init_params(cfg, jax.random.key(1))
  batch = _sequence_batch(np.random.default_rng(2), 3, 8, 13)
  loss, _ = Sft().objective(cfg, generative=True)(params, batch, 0.0, jax.random.key(0))
  logits = transformer.Transformer(cfg).apply(
    {"params": params}, batch["tokens"], batch["mask"], method=transformer.Transformer.lm_logits
  )
  logp = np_log_softmax(np.asarray(logits))[:, :-1]
  target = np.take_along_axis(logp, batch["tokens"][:, 1:, None], -1)[..., 0]
  weight = batch["loss_mask"][:, 1:]
  np.testing.assert_allclose(loss, -(target * weight).sum() / weight.sum(), rtol=1e-5)
