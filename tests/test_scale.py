"""Scaling: data parallel and FSDP equal one device; accumulation, bf16, linear probe,
dropout; the largest model's per-device memory under FSDP over 8 devices."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.data.dataset import Dataset, shuffled_batches
from w2s_jax.infra import sharding
from w2s_jax.models import model_config, transformer
from w2s_jax.training import loop, objectives, train
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.objectives import Loss
from w2s_jax.training.train import OptimConfig

VOCAB, T, N = 13, 8, 64


def _data(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, size=(N, T)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[::3, :3] = 0  # some left padding
  p1 = rng.uniform(size=N).astype(np.float32)
  return Dataset(tokens=tokens, mask=mask, labels=np.stack([1 - p1, p1], -1))


# "tiny" (128 wide) has leaves above sharding.MIN_SHARDED_SIZE, so FSDP really splits them.
MODEL = model_config.decode_size("tiny", vocab_size=VOCAB, max_len=T)


def _train(mesh, *, steps=5, optim=None, model_cfg=MODEL, loss="xent"):
  optim = optim or OptimConfig(steps=steps, batch_size=16, lr=1e-3, head_lr=1e-2, warmup_frac=0.0)
  optimizer = train.make_optimizer(optim)
  key = jax.random.key(0)
  state = train.initial_state(
    lambda k: transformer.init_params(model_cfg, k),
    key,
    optimizer=optimizer,
    mesh=mesh,
    rng=jax.random.key_data(key),
  )
  initial_params = jax.device_get(state.params)  # before the step donates the state
  step = train.compile_train_step(
    loss_fn=objectives.classifier_objective(model_cfg, Loss.from_string(loss)),
    optimizer=optimizer,
    total_steps=optim.steps,
    mesh=mesh,
    state_sharding=train.sharding_of(state),
    accum_steps=optim.grad_accum_steps,
    linear_probe=optim.linear_probe,
  )
  batches = shuffled_batches(
    _data(), batch_size=optim.batch_size, seed=0, rows=sharding.process_rows(mesh, optim.batch_size)
  )
  state, metrics = loop.fit(
    state, step, batches, num_steps=optim.steps, mesh=mesh, desc="scale-test", progress=False
  )
  return state, metrics, initial_params


def _max_diff(a, b):
  return max(
    jax.tree.leaves(
      jax.tree.map(
        lambda x, y: float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()),
        a,
        b,
      )
    )
  )


@pytest.fixture(scope="module")
def single_device():
  state, metrics, _ = _train(sharding.make_mesh(1))
  return jax.device_get(state), metrics


@pytest.mark.parametrize(
  "devices,fsdp",
  [(8, 1), (8, 8), pytest.param(8, 2, marks=pytest.mark.slow)],
  ids=["data-parallel-8", "fsdp-8", "data4-fsdp2"],
)
def test_sharded_training_equals_single_device(single_device, devices, fsdp):
  mesh = sharding.make_mesh(devices, fsdp=fsdp)
  state, metrics, _ = _train(mesh)
  ref_state, ref_metrics = single_device
  assert _max_diff(jax.device_get(state.params), ref_state.params) <= 1e-5
  assert _max_diff(jax.device_get(state.opt_state), ref_state.opt_state) <= 1e-5
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], atol=1e-5)
  assert _max_diff(ref_state.params, transformer.init_params(MODEL, jax.random.key(0))) > 1e-4
  # Under FSDP the large params and their Adam moments really are split.
  kernel = state.params["block_0"]["mlp_in"]["kernel"]
  mu = state.opt_state[1].inner_states["body"].inner_state[0].mu["block_0"]["mlp_in"]["kernel"]
  for leaf in (kernel, mu):
    shard = leaf.sharding.shard_shape(leaf.shape)
    assert math.prod(shard) * fsdp == math.prod(leaf.shape), (leaf.sharding, fsdp)


def test_fsdp_spec_rule():
  spec = sharding.fsdp_spec
  assert spec((512, 1024), 8) == sharding.P(None, "fsdp")  # largest divisible dim
  assert spec((1024, 100), 8) == sharding.P("fsdp", None)
  assert spec((3, 1000, 24), 8, seed_axis=True) == sharding.P(None, "fsdp", None)
  assert spec((7, 4099), 8) == sharding.P()  # nothing divides
  assert spec((64,), 8) == sharding.P()  # too small to split
  assert spec((512, 1024), 1) == sharding.P()


def test_gradient_accumulation_equals_full_batch():
  mesh = sharding.make_mesh(4)
  base = dict(steps=4, batch_size=16, lr=1e-3, head_lr=1e-2, warmup_frac=0.0)
  full, m_full, _ = _train(mesh, optim=OptimConfig(**base))
  accum, m_accum, _ = _train(mesh, optim=OptimConfig(**base, grad_accum_steps=2))
  assert _max_diff(jax.device_get(full.params), jax.device_get(accum.params)) <= 1e-5
  np.testing.assert_allclose(m_full["loss"], m_accum["loss"], atol=1e-6)


def test_grad_accum_must_divide_batch():
  with pytest.raises(ValueError, match="grad_accum_steps=3"):
    OptimConfig(batch_size=16, grad_accum_steps=3)


def test_bf16_compute_keeps_float32_master_params():
  mesh = sharding.make_mesh(1)
  bf16 = model_config.ModelConfig(**{**MODEL.__dict__, "dtype": "bfloat16"})
  state, metrics, _ = _train(mesh, model_cfg=bf16, steps=3)
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  assert np.isfinite(metrics["loss"])
  fp32_state, _, _ = _train(mesh, steps=3)
  diff = _max_diff(jax.device_get(state.params), jax.device_get(fp32_state.params))
  assert 0 < diff < 5e-3  # bf16 rounding, not a different computation
  # The matmuls really run in bf16.
  model = transformer.Transformer(bf16)
  params = transformer.init_params(bf16, jax.random.key(0))
  hlo = (
    jax.jit(
      lambda p, t, m: model.apply({"params": p}, t, m, method=transformer.Transformer.class_logits)
    )
    .lower(params, np.ones((2, T), np.int32), np.ones((2, T), np.int32))
    .as_text()
  )
  assert "bf16" in hlo and "dot_general" in hlo


def test_linear_probe_trains_only_the_head():
  mesh = sharding.make_mesh(1)
  optim = OptimConfig(
    steps=3, batch_size=16, lr=1e-2, head_lr=1e-1, warmup_frac=0.0, linear_probe=True
  )
  state, _, init = _train(
    mesh,
    optim=optim,
    model_cfg=model_config.ModelConfig(**{**MODEL.__dict__, "head_input": "hidden"}),
  )
  params = jax.device_get(state.params)
  body = {k: v for k, v in params.items() if k != transformer.HEAD}
  assert _max_diff(body, {k: v for k, v in init.items() if k != transformer.HEAD}) == 0
  assert _max_diff(params[transformer.HEAD], init[transformer.HEAD]) > 1e-3


def test_dropout_follows_the_state_rng():
  mesh = sharding.make_mesh(1)
  dropout = model_config.ModelConfig(**{**MODEL.__dict__, "dropout": 0.1})
  a, _, _ = _train(mesh, model_cfg=dropout, steps=2)
  b, _, _ = _train(mesh, model_cfg=dropout, steps=2)
  plain, _, _ = _train(mesh, steps=2)
  assert _max_diff(jax.device_get(a.params), jax.device_get(b.params)) == 0  # reproducible
  assert _max_diff(jax.device_get(a.params), jax.device_get(plain.params)) > 1e-6  # and active


@pytest.mark.slow  # ahead-of-time compiles of the largest size
def test_largest_model_fsdp_memory_per_device_is_an_eighth():
  """The largest table size, compiled ahead of time (nothing allocated) with
  FSDP over 8 devices: each device holds about 1/8 of params and optimizer state."""
  mesh = sharding.make_mesh(8, fsdp=8)
  largest = max(
    model_config.SIZES, key=lambda s: model_config.decode_size(s, vocab_size=50257).num_params
  )
  cfg = model_config.decode_size(largest, vocab_size=50257, max_len=128, head_input="hidden")
  optim = OptimConfig(steps=10, batch_size=8)
  optimizer = train.make_optimizer(optim)
  abstract = jax.eval_shape(
    lambda k: train.init_state(transformer.init_params(cfg, k), optimizer, k), jax.random.key(0)
  )
  state_sharding = sharding.state_sharding(abstract, mesh)
  step = train.compile_train_step(
    loss_fn=objectives.classifier_objective(cfg, Xent()),
    optimizer=optimizer,
    total_steps=optim.steps,
    mesh=mesh,
    state_sharding=state_sharding,
  )
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {
    k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
    for k, shape, dtype in (
      ("tokens", (8, 128), jnp.int32),
      ("mask", (8, 128), jnp.int32),
      ("labels", (8, 2), jnp.float32),
    )
  }
  state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
  )
  memory = step.lower(state, batch).compile().memory_analysis()

  nbytes = lambda x: math.prod(x.shape) * x.dtype.itemsize
  param_bytes = sum(nbytes(x) for x in jax.tree.leaves(abstract.params))
  per_device_params = sum(
    math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
    for x, s in zip(jax.tree.leaves(abstract.params), jax.tree.leaves(state_sharding.params))
  )
  state_bytes = sum(nbytes(x) for x in jax.tree.leaves(abstract))
  print(
    f"{largest}: {transformer.count_params(abstract.params):,} params, {param_bytes / 1e9:.2f} GB; "
    f"per device params {per_device_params / 1e9:.3f} GB ({per_device_params / param_bytes:.4f}), "
    f"compiled arguments {memory.argument_size_in_bytes / 1e9:.3f} GB of state "
    f"{state_bytes / 1e9:.2f} GB ({memory.argument_size_in_bytes / state_bytes:.4f}), "
    f"temporaries {memory.temp_size_in_bytes / 1e9:.3f} GB"
  )
  assert transformer.count_params(abstract.params) > 1e9
  assert 1 / 8 <= per_device_params / param_bytes < 1 / 8 * 1.01
  assert 1 / 8 <= memory.argument_size_in_bytes / state_bytes < 1 / 8 * 1.01
  # The donated state is updated in place: outputs alias the arguments.
  assert memory.alias_size_in_bytes >= 0.99 * memory.argument_size_in_bytes - 4 * 8 * 128 * 2


@pytest.mark.parametrize(
  "devices,fsdp",
  [(1, 1), pytest.param(8, 2, marks=pytest.mark.slow)],
  ids=["onto-1-device", "onto-4x2"],
)
def test_resume_onto_another_mesh(single_device, tmp_path, devices, fsdp):
  """3 steps under FSDP over 8 devices, checkpointed; restored onto another
  mesh for the last 2: the same end as 5 uninterrupted steps."""
  from w2s_jax.infra import checkpoints

  optim = OptimConfig(steps=5, batch_size=16, lr=1e-3, head_lr=1e-2, warmup_frac=0.0)
  optimizer = train.make_optimizer(optim)
  loss_fn = objectives.classifier_objective(MODEL, Xent())

  def start(mesh):
    key = jax.random.key(0)
    state = train.initial_state(
      lambda k: transformer.init_params(MODEL, k),
      key,
      optimizer=optimizer,
      mesh=mesh,
      rng=jax.random.key_data(key),
    )
    ckpts = checkpoints.TrainCheckpoints(tmp_path / "ckpt", every=3, data={"seed": 0})
    state = ckpts.restore(state)
    step = train.compile_train_step(
      loss_fn=loss_fn,
      optimizer=optimizer,
      total_steps=5,
      mesh=mesh,
      state_sharding=train.sharding_of(state),
    )
    batches = shuffled_batches(_data(), batch_size=16, seed=0, start_step=loop.first_step(state))
    return state, step, batches, ckpts

  first = sharding.make_mesh(8, fsdp=8)
  state, step, batches, ckpts = start(first)
  state, _ = loop.fit(
    state, step, batches, num_steps=3, mesh=first, desc="part 1", progress=False, checkpoints=ckpts
  )
  ckpts.close()

  second = sharding.make_mesh(devices, fsdp=fsdp)
  state, step, batches, ckpts = start(second)
  assert loop.first_step(state) == 3
  assert {leaf.sharding.mesh for leaf in jax.tree.leaves(state.params)} == {second}
  state, _ = loop.fit(
    state, step, batches, num_steps=5, mesh=second, desc="part 2", progress=False, checkpoints=ckpts
  )
  ckpts.close()
  assert _max_diff(jax.device_get(state.params), single_device[0].params) <= 1e-5
  with pytest.raises(ValueError, match="refusing to resume on other data"):
    checkpoints.TrainCheckpoints(tmp_path / "ckpt", every=3, data={"seed": 1}).restore(state)
