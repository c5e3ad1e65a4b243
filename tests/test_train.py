"""Train step: NaN detection, sharded == unsharded, one trace, separate head rate."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.data.dataset import Dataset, shuffled_batches
from w2s_jax.infra import sharding
from w2s_jax.models import transformer
from w2s_jax.training import loop, objectives, train
from w2s_jax.training.classifier_losses import LogConf, Xent
from w2s_jax.training.train import OptimConfig

from fakes import tiny_model_cfg

# ---------------------------------------------------------------- NaN loss


def _quadratic_params():
  return {
    "body": {"w": np.array([[0.5, -0.3], [0.2, 0.1], [-0.4, 0.7]], np.float32)},
    "cls_head": {"kernel": np.array([[1.0, -1.0], [0.5, 0.25]], np.float32)},
  }


def _quadratic_loss(params, batch, step_frac, rng):
  del step_frac, rng
  h = batch["x"] @ params["body"]["w"]
  out = h @ params["cls_head"]["kernel"]
  loss = jnp.mean((out - batch["y"]) ** 2)  # NaN as soon as x has a NaN
  return loss, {"h_mean": jnp.mean(h)}


def _nan_stream(bad_step, batch_size=4):
  rng = np.random.default_rng(0)
  step = 0
  while True:
    x = rng.normal(size=(batch_size, 3)).astype(np.float32)
    if step == bad_step:
      x[1, 2] = np.nan
    yield {"x": x, "y": rng.normal(size=(batch_size, 2)).astype(np.float32)}
    step += 1


def _run_with_nan(mesh, num_steps, bad_step=7, check_every=100):
  cfg = OptimConfig(steps=20, batch_size=4, lr=1e-2)
  optimizer = train.make_optimizer(cfg)
  state = train.initial_state(
    train.from_params, _quadratic_params(), optimizer=optimizer, mesh=mesh
  )
  compiled = train.compile_train_step(
    loss_fn=_quadratic_loss,
    optimizer=optimizer,
    total_steps=cfg.steps,
    mesh=mesh,
    state_sharding=train.sharding_of(state),
  )
  history = []  # host copies of params after each step (the state is donated)

  def recording_step(state, batch):
    state, metrics = compiled(state, batch)
    history.append(jax.device_get(state.params))
    return state, metrics

  with pytest.raises(loop.NonFiniteLossError) as err:
    loop.fit(
      state,
      recording_step,
      _nan_stream(bad_step),
      num_steps=num_steps,
      mesh=mesh,
      desc="nan-test",
      check_every=check_every,
      progress=False,
    )
  return history, str(err.value)


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _assert_trees_differ(a, b):
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b))
  assert max(diffs) > 1e-6


def test_nan_loss_raises_naming_step_and_keeps_params(mesh4):
  # The 8th batch (step 7) is NaN and is the last step run.
  history, message = _run_with_nan(mesh4, num_steps=8)
  assert "step 7" in message
  assert "nan-test" in message
  assert len(history) == 8
  before = history[6]  # params after step 6 = before step 7
  for leaf in jax.tree.leaves(history[-1]):
    assert np.all(np.isfinite(leaf))
  _assert_trees_equal(history[7], before)
  _assert_trees_differ(history[6], history[5])  # steps before did update


def test_nan_loss_stops_training(mesh4):
  """Steps after the NaN one (before the next host check) must not move the params:
  the error says 'training stopped (params are those from before step 7)'."""
  history, message = _run_with_nan(mesh4, num_steps=10)
  assert "step 7" in message
  for leaf in jax.tree.leaves(history[-1]):
    assert np.all(np.isfinite(leaf))
  _assert_trees_equal(history[-1], history[6])


def test_nan_loss_detected_at_check_every(mesh4):
  # check_every=2: the NaN at step 7 is found at the check after step 8 (i + 1 = 8).
  history, message = _run_with_nan(mesh4, num_steps=12, check_every=2)
  assert "step 7" in message
  assert len(history) == 8


# ---------------------------------------------------------------- sharded vs unsharded

VOCAB, T = 11, 6


def _classifier_setup(seed=0, n=32):
  cfg = tiny_model_cfg(vocab_size=VOCAB, max_len=T)
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, size=(n, T)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[::3, :2] = 0  # some left padding
  p1 = rng.uniform(size=n).astype(np.float32)
  data = Dataset(tokens=tokens, mask=mask, labels=np.stack([1 - p1, p1], -1))
  params = jax.device_get(transformer.init_params(cfg, jax.random.key(seed)))
  return cfg, data, params


def _finetune_flat(mesh, cfg, data, params, steps=5):
  optim = OptimConfig(steps=steps, batch_size=8, lr=1e-2, head_lr=1e-1, warmup_frac=0.0)
  optimizer = train.make_optimizer(optim)
  state = train.initial_state(train.from_params, params, optimizer=optimizer, mesh=mesh)
  step = train.compile_train_step(
    loss_fn=objectives.classifier_objective(cfg, Xent()),
    optimizer=optimizer,
    total_steps=optim.steps,
    mesh=mesh,
    state_sharding=train.sharding_of(state),
  )
  state, metrics = loop.fit(
    state,
    step,
    shuffled_batches(data, batch_size=8, seed=0),
    num_steps=steps,
    mesh=mesh,
    desc="flat",
    progress=False,
  )
  assert int(state.step) == steps
  return jax.device_get(state.params), metrics


def test_sharded_equals_unsharded(mesh4, mesh1):
  cfg, data, params = _classifier_setup()
  p4, m4 = _finetune_flat(mesh4, cfg, data, params)
  p1, m1 = _finetune_flat(mesh1, cfg, data, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p4, p1)
  np.testing.assert_allclose(m4["loss"], m1["loss"], atol=1e-5)
  # training moved both the body and the head
  _assert_trees_differ(p4["cls_head"], params["cls_head"])
  _assert_trees_differ(p4["block_0"], params["block_0"])


def test_train_step_outputs_replicated_on_mesh(mesh4):
  cfg, data, params = _classifier_setup(n=8)
  optim = OptimConfig(steps=2, batch_size=8)
  optimizer = train.make_optimizer(optim)
  state = train.initial_state(train.from_params, params, optimizer=optimizer, mesh=mesh4)
  step = train.compile_train_step(
    loss_fn=objectives.classifier_objective(cfg, Xent()),
    optimizer=optimizer,
    total_steps=2,
    mesh=mesh4,
    state_sharding=train.sharding_of(state),
  )
  batch = sharding.put_batch(dict(data), mesh4)
  assert len(batch["tokens"].sharding.device_set) == 4
  state, _ = step(state, batch)
  for leaf in jax.tree.leaves(state.params):
    assert leaf.sharding.is_fully_replicated


# ---------------------------------------------------------------- tracing


@pytest.mark.parametrize("vmap_seeds", [False, True])
def test_train_step_traces_once(mesh4, vmap_seeds):
  """The state fit starts from (train.initial_state) and the states it returns must hit
  the same trace: one trace, hence one compile, per compiled train step."""
  chex.clear_trace_counter()  # the counter is keyed by source: parametrized runs share it
  cfg, data, params = _classifier_setup(n=16)
  optim = OptimConfig(steps=4, batch_size=8)
  optimizer = train.make_optimizer(optim)
  base_loss = objectives.classifier_objective(cfg, LogConf())
  loss_fn = chex.assert_max_traces(lambda p, b, f, r: base_loss(p, b, f, r), n=1)
  if vmap_seeds:
    stacked = jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * 2), params)
    state = train.initial_state(
      train.from_params,
      stacked,
      optimizer=optimizer,
      mesh=mesh4,
      rng=train.seed_keys([0, 1]),
      per_seed=True,
    )

    def batches():
      a = shuffled_batches(data, batch_size=8, seed=0)
      b = shuffled_batches(data, batch_size=8, seed=1)
      while True:
        x, y = next(a), next(b)
        yield {k: np.stack([x[k], y[k]]) for k in x}

    stream = batches()
  else:
    state = train.initial_state(train.from_params, params, optimizer=optimizer, mesh=mesh4)
    stream = shuffled_batches(data, batch_size=8, seed=0)
  step = train.compile_train_step(
    loss_fn=loss_fn,
    optimizer=optimizer,
    total_steps=optim.steps,
    mesh=mesh4,
    state_sharding=train.sharding_of(state),
    vmap_seeds=vmap_seeds,
  )
  state, _ = loop.fit(
    state, step, stream, num_steps=4, mesh=mesh4, desc="trace", check_every=1, progress=False
  )
  np.testing.assert_array_equal(np.asarray(state.step), 4)


def test_jitted_train_step_traces_once(mesh1):
  chex.clear_trace_counter()
  optimizer = train.make_optimizer(OptimConfig(steps=5, batch_size=4))
  step = jax.jit(
    chex.assert_max_traces(
      lambda s, b: train.train_step(
        s, b, loss_fn=_quadratic_loss, optimizer=optimizer, total_steps=5
      ),
      n=1,
    )
  )
  state = train.init_state(jax.tree.map(jnp.asarray, _quadratic_params()), optimizer)
  stream = _nan_stream(bad_step=-1)
  for _ in range(5):
    state, metrics = step(state, next(stream))
  assert int(state.step) == 5 and int(state.bad_step) == -1


# ---------------------------------------------------------------- optimizer


def test_head_has_its_own_learning_rate(mesh1):
  lr, head_lr, steps = 1e-4, 1e-1, 3
  optimizer = train.make_optimizer(
    OptimConfig(steps=100, batch_size=4, lr=lr, head_lr=head_lr, warmup_frac=0.0, weight_decay=0.0)
  )
  p0 = _quadratic_params()
  state = train.init_state(jax.tree.map(jnp.asarray, p0), optimizer)
  step = jax.jit(
    lambda s, b: train.train_step(
      s, b, loss_fn=_quadratic_loss, optimizer=optimizer, total_steps=100
    )
  )
  stream = _nan_stream(bad_step=-1)
  for _ in range(steps):
    state, _ = step(state, next(stream))
  body_move = np.abs(np.asarray(state.params["body"]["w"]) - p0["body"]["w"]).max()
  head_move = np.abs(
    np.asarray(state.params["cls_head"]["kernel"]) - p0["cls_head"]["kernel"]
  ).max()
  # Adam moves each parameter by about lr per step.
  assert 0 < body_move < 5 * lr * steps
  assert head_move > 0.1 * head_lr
