"""Optimizer, pure train step, and the loop that runs it.

`train_step(state, batch) -> (state, metrics)` is pure; `compile_train_step`
is the one place it is jitted, sharded and donated. LM pretraining and
classifier fine-tuning differ only in the loss function they pass in.
"""

import collections
import dataclasses
import functools
from collections.abc import Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from w2s_jax import sharding as shd

HEAD = "cls_head"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  steps: int = 200
  batch_size: int = 32
  lr: float = 1e-3               # body
  head_lr: float | None = None   # classification head; None means lr
  warmup_frac: float = 0.05
  weight_decay: float = 0.01
  clip_norm: float = 1.0
  end_lr_frac: float = 0.1

  def __post_init__(self):
    if not isinstance(self.steps, int) or self.steps < 1:
      raise ValueError(f"OptimConfig.steps={self.steps!r}: expected an int >= 1")
    if not isinstance(self.batch_size, int) or self.batch_size < 1:
      raise ValueError(f"OptimConfig.batch_size={self.batch_size!r}: expected an int >= 1")
    for name in ("lr", "head_lr"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"OptimConfig.{name}={value!r}: expected > 0")
    if not 0 <= self.warmup_frac < 1:
      raise ValueError(f"OptimConfig.warmup_frac={self.warmup_frac}: expected in [0, 1)")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  # First step whose loss was NaN/inf, or -1. Kept on device so the loop needs
  # no per-step host sync; the step it names never updated the params.
  bad_step: jax.Array


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  """AdamW with linear warmup then cosine decay; separate rates for the head.

  One rate for body and head either destroys pretrained knowledge or leaves a
  fresh head unmoved, so the head gets its own.
  """
  def adamw(peak):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, peak, max(1, int(cfg.warmup_frac * cfg.steps)), cfg.steps,
        end_value=peak * cfg.end_lr_frac)
    return optax.adamw(schedule, weight_decay=cfg.weight_decay)

  def labels(params):
    return {k: jax.tree.map(lambda _: "head" if k == HEAD else "body", v)
            for k, v in params.items()}

  return optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm),
      optax.multi_transform({"body": adamw(cfg.lr), "head": adamw(cfg.head_lr or cfg.lr)},
                            labels))


def init_state(params, optimizer) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), bad_step=-jnp.ones((), jnp.int32))


def initial_state(params, optimizer, *, mesh, per_seed: bool = False) -> TrainState:
  """init_state, jitted with the state's shardings, so the state is born on the
  mesh the train step uses (and the step compiles once). per_seed: params
  carry a leading seed axis, and so does the state."""
  init = functools.partial(init_state, optimizer=optimizer)
  if per_seed:
    init = jax.vmap(init)
  params = jax.device_put(params, shd.replicated(mesh))
  return jax.jit(init, out_shardings=shd.replicated(mesh))(params)


# loss_fn(params, batch, step_frac) -> (loss, aux dict of scalars)
LossFn = Callable[[dict, dict, jax.Array], tuple[jax.Array, dict]]


def train_step(state: TrainState, batch: dict, *, loss_fn: LossFn,
               optimizer: optax.GradientTransformation, total_steps: int):
  step_frac = state.step.astype(jnp.float32) / total_steps
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch, step_frac)
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
      bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step))
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
  return new_state, metrics


def compile_train_step(*, loss_fn: LossFn, optimizer, total_steps: int, mesh,
                       vmap_seeds: bool = False):
  """The one place the train step is jitted: sharded batch, donated state.

  With vmap_seeds, state and batch carry a leading seed axis and all seeds
  train as one program.
  """
  step = functools.partial(train_step, loss_fn=loss_fn, optimizer=optimizer,
                           total_steps=total_steps)
  if vmap_seeds:
    step = jax.vmap(step)
  return jax.jit(step,
                 in_shardings=(shd.replicated(mesh), shd.batch_sharding(mesh, seed_axis=vmap_seeds)),
                 out_shardings=(shd.replicated(mesh), shd.replicated(mesh)),
                 donate_argnums=0)


class NonFiniteLossError(FloatingPointError):
  pass


def _check_finite(state: TrainState, what: str):
  bad = np.asarray(jax.device_get(state.bad_step))
  if (bad >= 0).any():
    step = int(bad[bad >= 0].min())
    raise NonFiniteLossError(
        f"{what}: loss became NaN or infinite at step {step}; training stopped "
        f"(params are those from before step {step})")


def fit(state: TrainState, step_fn, batches: Iterator[dict], *, num_steps: int, mesh,
        desc: str, check_every: int = 100, progress: bool = True,
        max_in_flight: int = 8) -> tuple[TrainState, dict]:
  """Runs num_steps of step_fn. Host syncs only every check_every steps.

  At most max_in_flight steps are dispatched ahead of the device: an unbounded
  queue buys nothing once the device is busy, and on XLA:CPU with several
  (simulated) devices on few cores, a deep queue of collectives was measured
  to starve an all-reduce rendezvous into a deadlock abort.
  """
  metrics = {}
  seed_axis = state.step.ndim > 0
  # A no-op for a state from initial_state; otherwise the first step's output
  # sharding would differ from its input's and the step would compile twice.
  state = jax.device_put(state, shd.replicated(mesh))
  in_flight = collections.deque()
  with tqdm(total=num_steps, desc=desc, unit="step", disable=not progress,
            leave=False, dynamic_ncols=True) as bar:
    for i in range(num_steps):
      state, metrics = step_fn(state, shd.put_batch(next(batches), mesh, seed_axis=seed_axis))
      in_flight.append(metrics["loss"])
      if len(in_flight) > max_in_flight:
        in_flight.popleft().block_until_ready()
      bar.update(1)
      if (i + 1) % check_every == 0 or i + 1 == num_steps:
        _check_finite(state, desc)
        bar.set_postfix(loss=f"{float(np.mean(jax.device_get(metrics['loss']))):.4f}")
  return state, jax.device_get(metrics)

