"""Optimizer, train state and the pure train step.

`train_step(state, batch) -> (state, metrics)` is pure; `compile_train_step`
is the one place it is jitted, sharded and donated. LM pretraining and
classifier fine-tuning differ only in the loss function they pass in. The
loop that runs a compiled step is loop.py.
"""

import dataclasses
import functools
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from w2s_jax.infra import sharding as shd
from w2s_jax.infra.fingerprint import WHEN_SET
from w2s_jax.models.transformer import HEAD
from w2s_jax.training import lora


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  steps: int = 200
  batch_size: int = 32
  lr: float = 1e-3  # body
  head_lr: float | None = None  # classification head; None means lr
  warmup_frac: float = 0.05
  weight_decay: float = 0.01
  clip_norm: float = 1.0
  end_lr_frac: float = 0.1
  grad_accum_steps: int = 1  # micro-batches per step: same update, less activation memory
  # Seeds fine-tuned together (one vmapped program); the groups run one
  # after another, each start to end. 0: every seed together, fastest for
  # small models. Only one group's state (params, optimizer moments) and
  # step scratch are resident, beside the finished groups' params: for
  # models whose matrix products fill the cores alone (all-MiniLM-L6-v2),
  # 1 is the lean choice (docs/performance.md). Each seed's run is the same.
  seeds_per_pass: int = dataclasses.field(default=0, metadata=WHEN_SET)
  linear_probe: bool = False  # train the classification head only; the body stays frozen
  # LoRA (lora.py): rank > 0 trains low-rank adapters on lora_targets and the
  # head; the base stays frozen. The update of an adapter is scaled by alpha / rank.
  lora_rank: int = dataclasses.field(default=0, metadata=WHEN_SET)
  lora_alpha: float = dataclasses.field(default=16.0, metadata=WHEN_SET)
  lora_targets: tuple[str, ...] = dataclasses.field(default=("q", "v"), metadata=WHEN_SET)

  def __post_init__(self):
    if not isinstance(self.seeds_per_pass, int) or self.seeds_per_pass < 0:
      raise ValueError(
        f"OptimConfig.seeds_per_pass={self.seeds_per_pass!r}: expected an int >= 0 "
        "(0: every seed in one pass)"
      )
    for name in ("steps", "batch_size", "grad_accum_steps"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"OptimConfig.{name}={value!r}: expected an int >= 1")
    for name in ("lr", "head_lr"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"OptimConfig.{name}={value!r}: expected > 0")
    if not 0 <= self.warmup_frac < 1:
      raise ValueError(f"OptimConfig.warmup_frac={self.warmup_frac}: expected in [0, 1)")
    if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
      raise ValueError(
        f"OptimConfig.lora_rank={self.lora_rank!r}: expected an int >= 0 (0: full fine-tuning)"
      )
    if self.lora_rank:
      lora.check_targets(self.lora_targets)
      if self.linear_probe:
        raise ValueError("OptimConfig.lora_rank > 0 with linear_probe=True: expected one of them")
    if self.batch_size % self.grad_accum_steps:
      raise ValueError(
        f"OptimConfig.grad_accum_steps={self.grad_accum_steps}: expected a "
        f"divisor of batch_size={self.batch_size}"
      )


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array  # raw key data (uint32), so checkpoints hold plain arrays
  # First step whose loss was NaN/inf, or -1. Kept on device so the loop needs
  # no per-step host sync; the step it names never updated the params.
  bad_step: jax.Array


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  """AdamW with linear warmup then cosine decay; separate rates for the head.

  One rate for body and head either destroys pretrained knowledge or leaves a
  fresh head unmoved, so the head gets its own. A linear probe never updates
  the body (nor decays it).
  """

  def adamw(peak):
    schedule = optax.warmup_cosine_decay_schedule(
      0.0,
      peak,
      max(1, int(cfg.warmup_frac * cfg.steps)),
      cfg.steps,
      end_value=peak * cfg.end_lr_frac,
    )
    return optax.adamw(schedule, weight_decay=cfg.weight_decay)

  def labels(params):
    return {
      k: jax.tree.map(lambda _: "head" if k == HEAD else "body", v) for k, v in params.items()
    }

  body = optax.set_to_zero() if cfg.linear_probe else adamw(cfg.lr)
  return optax.chain(
    optax.clip_by_global_norm(cfg.clip_norm),
    optax.multi_transform({"body": body, "head": adamw(cfg.head_lr or cfg.lr)}, labels),
  )


def init_state(params, optimizer, rng=None) -> TrainState:
  """rng: a key, or raw key data; None means key 0."""
  rng = jax.random.key(0) if rng is None else rng
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    rng=jnp.asarray(rng, jnp.uint32),
    bad_step=-jnp.ones((), jnp.int32),
  )


def seed_keys(seeds) -> np.ndarray:
  """Raw key data, one row per seed: the rng of a seed-stacked state."""
  return np.stack([np.asarray(jax.random.key_data(jax.random.key(s))) for s in seeds])


def initial_state(
  init_params: Callable, *args, optimizer, mesh, rng=None, per_seed: bool = False
) -> TrainState:
  """The train state built by init_params(*args), born sharded on the mesh.

  Shapes come from eval_shape, shardings from the shapes, and the state is
  then built by one jit with those out_shardings: a large model is never
  materialised on a single device. Pass `from_params` to start from params
  you already have (pretrained ones). per_seed: init_params(*args) has a
  leading seed axis, and rng is one row of key data per seed.
  """
  build = lambda rng, *a: init_state(init_params(*a), optimizer, rng)
  if per_seed:
    build = jax.vmap(build)
  if rng is None:
    if per_seed:
      raise ValueError("initial_state(per_seed=True): pass rng, one row per seed (seed_keys)")
    rng = jax.random.key_data(jax.random.key(0))
  abstract = jax.eval_shape(build, rng, *args)
  sharding = shd.state_sharding(abstract, mesh, seed_axis=per_seed)
  return jax.jit(build, out_shardings=sharding)(rng, *args)


def from_params(params):
  return params


def sharding_of(state):
  return jax.tree.map(lambda x: x.sharding, state)


# loss_fn(params, batch, step_frac, rng[, teacher]) -> (loss, aux dict of scalars)
LossFn = Callable[..., tuple[jax.Array, dict]]


def _loss_and_grads(loss_fn, params, batch, step_frac, rng, accum_steps, frozen=()):
  """Mean loss, aux and gradients over accum_steps micro-batches.

  Micro-batch i holds rows i, i + accum_steps, ...: each device's rows split
  among the micro-batches, so no example crosses devices. For losses that
  are means over examples, the result equals one pass over the whole batch.
  frozen: further arguments of loss_fn (a teacher's params), not differentiated.
  """
  grad_fn = jax.value_and_grad(lambda p, *a: loss_fn(p, *a, *frozen), has_aux=True)
  if accum_steps == 1:
    (loss, aux), grads = grad_fn(params, batch, step_frac, rng)
    return loss, aux, grads
  micro = jax.tree.map(
    lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1), batch
  )

  def add_micro(total, xs):
    i, mb = xs
    (loss, aux), grads = grad_fn(params, mb, step_frac, jax.random.fold_in(rng, i))
    return jax.tree.map(jnp.add, total, (loss, aux, grads)), None

  first = jax.tree.map(lambda x: x[0], micro)
  shapes = jax.eval_shape(
    lambda: (lambda o: (o[0][0], o[0][1], o[1]))(grad_fn(params, first, step_frac, rng))
  )
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  total, _ = jax.lax.scan(add_micro, zeros, (jnp.arange(accum_steps), micro))
  return jax.tree.map(lambda x: x / accum_steps, total)


def train_step(
  state: TrainState,
  batch: dict,
  *frozen,
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  total_steps: int,
  accum_steps: int = 1,
  linear_probe: bool = False,
):
  """One update. frozen: further arguments of loss_fn after (params, batch,
  step_frac, rng): a LoRA base's params, a frozen teacher's; never
  differentiated, never part of the state."""
  step_frac = state.step.astype(jnp.float32) / total_steps
  key, step_key = jax.random.split(jax.random.wrap_key_data(state.rng))
  if linear_probe:  # no gradient reaches the body, so XLA drops its backward pass
    probe_loss = loss_fn
    loss_fn = lambda p, *a: probe_loss(
      {k: v if k == HEAD else jax.lax.stop_gradient(v) for k, v in p.items()}, *a
    )
  frozen = tuple(jax.lax.stop_gradient(f) for f in frozen)
  loss, aux, grads = _loss_and_grads(
    loss_fn, state.params, batch, step_frac, step_key, accum_steps, frozen
  )
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss)
  # After the first non-finite loss, nothing updates again: the state the
  # error reports is the one from before that step, however late it is checked.
  ok = finite & (state.bad_step < 0)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = TrainState(
    step=state.step + 1,
    params=keep(params, state.params),
    opt_state=keep(opt_state, state.opt_state),
    rng=jax.random.key_data(key),
    bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step),
  )
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
  return new_state, metrics


def compile_train_step(
  *,
  loss_fn: LossFn,
  optimizer,
  total_steps: int,
  mesh,
  state_sharding,
  vmap_seeds: bool = False,
  accum_steps: int = 1,
  linear_probe: bool = False,
  teacher_sharding=None,
  base_sharding=None,
):
  """The one place the train step is jitted: sharded state and batch, donated state.

  state_sharding: the state's shardings (`sharding_of(state)` of a state from
  `initial_state`). With vmap_seeds, state and batch carry a leading seed
  axis and all seeds train as one program. teacher_sharding: the shardings
  of a frozen teacher's params (e.g. FSDP, `sharding.state_sharding`); the
  step is then step(state, batch, teacher), with the teacher neither
  differentiated nor donated (with vmap_seeds, one teacher per seed).
  base_sharding: a LoRA run's frozen base params, shared by every seed; the
  step is then step(state, batch, base[, teacher]).
  """
  step = functools.partial(
    train_step,
    loss_fn=loss_fn,
    optimizer=optimizer,
    total_steps=total_steps,
    accum_steps=accum_steps,
    linear_probe=linear_probe,
  )
  frozen = [(base_sharding, None), (teacher_sharding, 0)]  # (sharding, seed axis)
  frozen = [(sharding, axis) for sharding, axis in frozen if sharding is not None]
  if vmap_seeds:
    step = jax.vmap(step, in_axes=(0, 0, *[axis for _, axis in frozen]))
  in_shardings = (
    state_sharding,
    shd.batch_sharding(mesh, seed_axis=vmap_seeds),
    *(sharding for sharding, _ in frozen),
  )
  return jax.jit(
    shd.under_mesh(step, mesh),
    in_shardings=in_shardings,
    out_shardings=(state_sharding, shd.replicated(mesh)),
    donate_argnums=0,
  )
