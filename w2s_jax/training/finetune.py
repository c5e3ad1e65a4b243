"""Fine-tuning one copy of a model per seed, all seeds in one vmapped,
sharded program: the batches (each seed its own data and order), the
compiled step (one per model, loss, optimizer, mesh and teacher), and the
loop. The stages (stages.py) call `finetune`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.data.dataset import Dataset, shuffled_batches
from w2s_jax.infra import sharding as shd
from w2s_jax.models import transformer
from w2s_jax.training import loop, lora, train
from w2s_jax.training.objectives import Loss
from w2s_jax.training.train import OptimConfig


def seed_stream(
  per_seed: list[Dataset], *, batch_size, seeds, rows, gt_data: Dataset | None = None
):
  """Batches with a leading seed axis; each seed has its own data and order.

  With gt_data, each batch also carries a ground-truth batch under gt_* keys
  (and the weak-supervised one under weak_*), for the combined objective.
  """

  def stacked(streams):
    while True:
      parts = [next(s) for s in streams]
      yield {k: np.stack([p[k] for p in parts]) for k in parts[0]}

  weak = stacked(
    [
      shuffled_batches(data, batch_size=batch_size, seed=s, rows=rows)
      for data, s in zip(per_seed, seeds)
    ]
  )
  if gt_data is None:
    yield from weak
    return
  # Another seed stream than the weak one's, so the two orders are independent.
  gt = stacked(
    [shuffled_batches(gt_data, batch_size=batch_size, seed=s + 7919, rows=rows) for s in seeds]
  )
  while True:
    yield {
      **{f"weak_{k}": v for k, v in next(weak).items()},
      **{f"gt_{k}": v for k, v in next(gt).items()},
    }


def seed_stacked_abstract(cfg, num_seeds):
  """Shapes of one params copy per seed."""
  return jax.eval_shape(
    lambda: jax.vmap(lambda k: transformer.init_params(cfg, k))(
      jax.random.split(jax.random.key(0), num_seeds)
    )
  )


def abstract_state(model_cfg, optim_cfg, num_seeds):
  """Shapes of the seed-stacked train state a fine-tune holds, and of a LoRA
  run's frozen base params (None for full fine-tuning): nothing allocated."""
  optimizer = train.make_optimizer(optim_cfg)
  trainable = lambda k: transformer.init_params(model_cfg, k)
  base = None
  if optim_cfg.lora_rank:  # the state holds the adapters and the head; the base is frozen
    base = jax.eval_shape(lambda: transformer.init_params(model_cfg, jax.random.key(0)))
    trainable = lambda k: lora.trainable_params(
      transformer.init_params(model_cfg, k),
      model_cfg,
      rank=optim_cfg.lora_rank,
      targets=optim_cfg.lora_targets,
      rng=k,
    )
  abstract = jax.eval_shape(
    lambda: jax.vmap(lambda k: train.init_state(trainable(k), optimizer, k))(
      jax.random.split(jax.random.key(0), num_seeds)
    )
  )
  return abstract, base


@functools.lru_cache(maxsize=64)
def finetune_step(
  model_cfg,
  loss_cfg,
  optim_cfg,
  mesh,
  num_seeds,
  generative=False,
  teacher_cfg=None,
  sampling_cfg=None,
):
  """One compiled step per (model, loss, optimizer, mesh, seeds, teacher,
  sampling config of the live loss): sweep cells that share a strong size
  and a loss reuse it."""
  optimizer = train.make_optimizer(optim_cfg)
  abstract, base = abstract_state(model_cfg, optim_cfg, num_seeds)
  base_sharding = None if base is None else shd.state_sharding(base, mesh)
  teacher_sharding = None
  if teacher_cfg is not None:
    teacher_sharding = shd.state_sharding(
      seed_stacked_abstract(teacher_cfg, num_seeds), mesh, seed_axis=True
    )
  loss_fn = loss_cfg.objective(
    model_cfg, generative=generative, teacher_cfg=teacher_cfg, sampling_cfg=sampling_cfg
  )
  if optim_cfg.lora_rank:
    loss_fn = lora.lora_loss(loss_fn, model_cfg, optim_cfg.lora_alpha)
  step = train.compile_train_step(
    loss_fn=loss_fn,
    optimizer=optimizer,
    total_steps=optim_cfg.steps,
    mesh=mesh,
    state_sharding=shd.state_sharding(abstract, mesh, seed_axis=True),
    vmap_seeds=True,
    accum_steps=optim_cfg.grad_accum_steps,
    linear_probe=optim_cfg.linear_probe,
    teacher_sharding=teacher_sharding,
    base_sharding=base_sharding,
  )
  return optimizer, step, teacher_sharding


def finetune(
  params,
  model_cfg,
  per_seed: list[Dataset],
  *,
  loss_cfg: Loss,
  optim_cfg: OptimConfig,
  seeds,
  mesh,
  desc,
  progress=True,
  params_per_seed: bool = False,
  gt_data: Dataset | None = None,
  generative: bool = False,
  teacher=None,
  sampling_cfg=None,
  measure=None,
  measure_every: int = 0,
):
  """Fine-tunes one copy of `params` per seed: all seeds in one vmapped
  program, or (OptimConfig.seeds_per_pass) groups of seeds one after another.

  Args:
    params: one shared starting point, or (params_per_seed) one per seed,
      stacked on a leading axis.
    model_cfg: the model's config.
    per_seed: each seed's training examples (classification: tokens, mask
      and soft labels; generation: tasks.layout.sequences).
    loss_cfg: the loss (objectives.Loss).
    optim_cfg: steps, batch, learning rates, LoRA or linear probe.
    seeds: one int per seed: its data order, dropout and init of new heads.
    mesh: the device mesh; batches split over it, state sharded (FSDP).
    desc, progress: the progress bar.
    gt_data: the ground-truth set of a loss that asks for one (needs_gt_data).
    generative: the task kind the loss trains for.
    teacher: (model_cfg, params stacked per seed), for a loss that reads the
      frozen weak model (needs_teacher); an undonated argument of the step.
    sampling_cfg: the task's, for the live loss's samples.
    measure: (params stacked per seed) -> {name: device array [seeds]}, the
      training curve's evaluation (LoRA adapters merged first); with
      measure_every, taken every that many steps and after the last
      (loop.Watch: no host sync in the loop).

  Returns:
    (params, curve): the fine-tuned params, stacked per seed (device arrays),
    and the curve's points (loop.curve_points; [] without measure).
  """
  num_seeds = len(seeds)
  if len(per_seed) != num_seeds:
    raise ValueError(f"finetune: data for {len(per_seed)} seeds, expected {num_seeds}")
  if optim_cfg.seeds_per_pass and num_seeds % optim_cfg.seeds_per_pass:
    raise ValueError(
      f"OptimConfig.seeds_per_pass={optim_cfg.seeds_per_pass}: expected a divisor of the "
      f"{num_seeds} seeds"
    )
  if loss_cfg.needs_gt_data != (gt_data is not None):
    raise ValueError(
      f"finetune: gt_data is needed by the combined loss and live with "
      f"live_gt_weight > 0 only, got loss {loss_cfg.tag!r} with "
      f"gt_data={'set' if gt_data is not None else None}"
    )
  if loss_cfg.needs_teacher != (teacher is not None):
    raise ValueError(
      f"finetune: a teacher is needed by token-level KD and live only, got loss "
      f"{loss_cfg.name!r} with teacher={'set' if teacher is not None else None}"
    )
  if (measure is None) != (measure_every == 0):
    raise ValueError(
      f"finetune: measure and measure_every go together, got measure="
      f"{'set' if measure is not None else None} with measure_every={measure_every}"
    )
  if loss_cfg.name != "live":
    sampling_cfg = None  # one compiled step per loss, whatever the caller passed
  if optim_cfg.lora_rank and params_per_seed:
    raise ValueError(
      "finetune: OptimConfig.lora_rank > 0 adapts one shared base, got params_per_seed=True"
    )
  # Groups of seeds one after another (seeds_per_pass; 0: one group), each
  # trained start to end: only one group's train state (params, optimizer
  # moments) and step scratch are resident, beside the finished groups'
  # params. Every seed's data, order, keys and updates are its own, so the
  # result is the all-at-once one.
  group = optim_cfg.seeds_per_pass or num_seeds
  pick = lambda tree, part: tree if group == num_seeds else jax.tree.map(lambda x: x[part], tree)
  parts, curves = [], []
  for first in range(0, num_seeds, group):
    part = slice(first, first + group)
    part_params, curve = _finetune_group(
      pick(params, part) if params_per_seed else params,
      model_cfg,
      per_seed[part],
      loss_cfg=loss_cfg,
      optim_cfg=optim_cfg,
      seeds=tuple(seeds[part]),
      mesh=mesh,
      desc=desc
      if group == num_seeds
      else f"{desc} [seeds {first + 1}-{first + group} of {num_seeds}]",
      progress=progress,
      params_per_seed=params_per_seed,
      gt_data=gt_data,
      generative=generative,
      teacher=None if teacher is None else (teacher[0], pick(teacher[1], part)),
      sampling_cfg=sampling_cfg,
      measure=measure,
      measure_every=measure_every,
    )
    parts.append(part_params)
    curves.append(curve)
  if len(parts) == 1:
    return parts[0], curves[0]
  return _concat_seeds(parts, model_cfg, mesh, num_seeds), _concat_curves(curves)


def _concat_seeds(parts, model_cfg, mesh, num_seeds):
  """Groups' params (stacked per seed) -> one stack, sharded as a fine-tune's output."""
  return _seed_concatenation(model_cfg, mesh, num_seeds)(parts)


@functools.lru_cache(maxsize=16)
def _seed_concatenation(model_cfg, mesh, num_seeds):
  """One compiled concatenation per (model, mesh, seeds): every fine-tune of a run reuses it."""
  out = shd.state_sharding(seed_stacked_abstract(model_cfg, num_seeds), mesh, seed_axis=True)
  return jax.jit(
    lambda parts: jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts), out_shardings=out
  )


def _concat_curves(curves):
  """Groups' curve points (the same steps; per-seed lists) -> one curve over every seed."""
  return [
    {
      k: (v if k == "step" else [x for point in points for x in point[k]])
      for k, v in points[0].items()
    }
    for points in zip(*curves)
  ]


def _finetune_group(
  params,
  model_cfg,
  per_seed,
  *,
  loss_cfg,
  optim_cfg,
  seeds,
  mesh,
  desc,
  progress,
  params_per_seed,
  gt_data,
  generative,
  teacher,
  sampling_cfg,
  measure,
  measure_every,
):
  """`finetune` of seeds trained together (one vmapped program)."""
  num_seeds = len(seeds)
  base = None
  if optim_cfg.lora_rank:
    base = jax.device_put(params, shd.state_sharding(params, mesh))
    params = _lora_trainable(params, model_cfg, optim_cfg, seeds)
  elif not params_per_seed:
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_seeds, *x.shape)), params)
  teacher_cfg, teacher_params = teacher if teacher is not None else (None, None)
  optimizer, step, teacher_sharding = finetune_step(
    model_cfg, loss_cfg, optim_cfg, mesh, num_seeds, generative, teacher_cfg, sampling_cfg
  )
  state = train.initial_state(
    train.from_params,
    params,
    optimizer=optimizer,
    mesh=mesh,
    rng=train.seed_keys(seeds),
    per_seed=True,
  )
  del params  # the state holds its own copy; this one (per seed) would stay resident all loop
  frozen = ((base,) if base is not None else ()) + (
    (jax.device_put(teacher_params, teacher_sharding),) if teacher is not None else ()
  )
  if frozen:
    compiled = step
    step = lambda state, batch: compiled(state, batch, *frozen)
  batches = seed_stream(
    per_seed,
    batch_size=optim_cfg.batch_size,
    seeds=seeds,
    rows=shd.process_rows(mesh, optim_cfg.batch_size),
    gt_data=gt_data,
  )
  # The params a model is evaluated with: each seed's adapters merged into the base.
  merged = (lambda p: p) if base is None else _merger(model_cfg, optim_cfg, mesh, num_seeds, base)
  watch = None
  if measure is not None:
    watch = loop.Watch(every=measure_every, measure=lambda state: measure(merged(state.params)))
  state, metrics = loop.fit(
    state,
    step,
    batches,
    num_steps=optim_cfg.steps,
    mesh=mesh,
    desc=desc,
    progress=progress,
    watch=watch,
  )
  return merged(state.params), metrics.get("curve", [])


def _merger(model_cfg, optim_cfg, mesh, num_seeds, base):
  """trainable params stacked per seed -> each seed's adapters merged into `base`."""
  merge = jax.vmap(
    lambda t, b: lora.merge(b, t, model_cfg=model_cfg, alpha=optim_cfg.lora_alpha),
    in_axes=(0, None),
  )
  out = shd.state_sharding(seed_stacked_abstract(model_cfg, num_seeds), mesh, seed_axis=True)
  merge = jax.jit(merge, out_shardings=out)
  return lambda trainable: merge(trainable, base)


def _lora_trainable(base, model_cfg, optim_cfg, seeds):
  """Per seed (stacked), fresh adapters from the seed's own key and the base's head."""
  keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 0x10A) for s in seeds])
  return jax.vmap(
    lambda k: lora.trainable_params(
      base, model_cfg, rank=optim_cfg.lora_rank, targets=optim_cfg.lora_targets, rng=k
    )
  )(keys)
