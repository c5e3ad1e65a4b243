"""The programs one W2S run executes, built by the run's own functions and
lowered on abstract arguments (nothing allocated), for any mesh.

For an ExperimentConfig: the weak model's ground-truth fine-tune, the strong
model's step for each W2S loss (token-level KD and the live supervisor with
the frozen weak model as an undonated argument), the ceiling's, the weak
model's inference over train_w2s: its soft labels (classification) or its
sampler (generation), and for classification the pair as a cascade: the
serving path's weak step and strong step (cascade/serving.py). Each is `finetune.finetune_step`,
`inference.compiled_softmax` or `sampling.compiled_sampler` itself, the
programs the run compiles, at the config's seeds (all seeds are one vmapped
program) and at a batch size the planner chooses.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.cascade import serving
from w2s_jax.data import text_files, text_tasks
from w2s_jax.data.dataset import Dataset
from w2s_jax.infra import sharding as shd
from w2s_jax.models import flops as flops_lib
from w2s_jax.models import inference, sampling, transformer
from w2s_jax.models.model_config import ModelConfig
from w2s_jax.tasks import layout
from w2s_jax.tasks.classification import TextTaskConfig
from w2s_jax.tasks.generation import GenTextTaskConfig
from w2s_jax.training import finetune
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.generative_losses import Sft
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig

TRAIN, INFERENCE, SAMPLING = "train", "inference", "sampling"


@dataclasses.dataclass(frozen=True)
class TaskShape:
  """What the programs' shapes need of a task (ExperimentConfig.model_config
  reads max_len and vocab_size), without reading its data."""

  max_len: int
  train_len: int  # a fine-tuning row's length
  vocab_size: int | None  # None: taken from each imported model's config.json
  generative: bool
  prompt_len: int = 0  # generation: left-padded prompt columns
  max_new_tokens: int = 0
  num_classes: int = 2  # a classification head's width
  per_choice: bool = False  # never set: preference tasks are not planned (task_shape)


@dataclasses.dataclass(frozen=True)
class Program:
  """One program of the run: `lower(mesh, batch)` lowers it for a mesh at a
  global batch of `batch` rows (per seed)."""

  name: str
  kind: str  # TRAIN, INFERENCE or SAMPLING
  model: ModelConfig
  lower: Callable
  parts: Callable  # (mesh) -> {part: bytes per device} of its arguments
  model_flops: Callable  # (batch) -> FLOPs of one execution, all devices together
  seeds: int
  # The compiler prices a loop's body once: the trip count of the loop that
  # holds the work (grad accumulation's micro-batches; the sampler's tokens).
  loop_trips: int = 1


def task_shape(cfg: ExperimentConfig) -> TaskShape:
  if cfg.preference is not None:
    raise ValueError(
      f"ExperimentConfig.preference={cfg.preference!r}: the planner compiles classification "
      "and generation runs; a preference run's pairs are not planned yet"
    )
  text = cfg.text_task
  if isinstance(text, TextTaskConfig):
    return TaskShape(
      text.max_len, text.split_len("train_w2s"), None, False, num_classes=_num_classes(text)
    )
  if isinstance(text, GenTextTaskConfig):
    new = cfg.generation.max_new_tokens or text.max_response_len
    length = text.max_prompt_len + text.max_response_len
    return TaskShape(length, length, None, True, text.max_prompt_len, new)
  from w2s_jax.tasks.factory import make_task  # the testbed: built in seconds, nothing read

  task = make_task(world=cfg.world, gen_cfg=cfg.generation)
  rows = task.splits["train_w2s"]
  if not task.generative:
    return TaskShape(
      task.max_len, rows["tokens"].shape[1], task.vocab_size, False, num_classes=task.num_classes
    )
  prompt_len = rows["prompt"].shape[1]
  longest = max(int(d["response_mask"].sum(1).max()) for d in task.splits.values())
  new = cfg.generation.max_new_tokens or longest
  return TaskShape(
    task.max_len, prompt_len + rows["response"].shape[1], task.vocab_size, True, prompt_len, new
  )


def _num_classes(text: TextTaskConfig) -> int:
  """A text task's classes, from its config or its train file's label column."""
  if text.label_names is not None:
    return len(text.label_names)
  if text.tfds_name is not None:
    return len(text_tasks.TASKS[text.tfds_name].class_names(text.tfds_classes))
  return len(text_files.infer_label_names(text.train_file, label_field=text.label_field))


def model_configs(cfg: ExperimentConfig, shape: TaskShape) -> tuple[ModelConfig, ModelConfig]:
  """(weak, strong) as the run builds them: an imported folder's config.json
  (no weights read) or a size of the model table."""
  missing = [
    s
    for s in (cfg.weak_size, cfg.strong_size)
    if s not in dict(cfg.pretrained_dirs) and shape.vocab_size is None
  ]
  if missing:
    raise ValueError(
      f"ExperimentConfig sizes {missing}: a text task's table-size model needs its "
      "tokenizer's vocabulary; plan imported models (pretrained_dirs) or the testbed"
    )
  return cfg.model_config(cfg.weak_size, shape), cfg.model_config(cfg.strong_size, shape)


def _abstract(tree, shardings):
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
  )


def _rows(shape: TaskShape, n: int) -> Dataset:
  """n rows laid out as the run's fine-tuning data (values do not matter)."""
  if not shape.generative:
    zeros = np.zeros((n, shape.train_len), np.int32)
    return Dataset(tokens=zeros, mask=zeros + 1, labels=np.zeros((n, 2), np.float32))
  response = shape.train_len - shape.prompt_len
  return layout.sequences(
    Dataset(
      prompt=np.zeros((n, shape.prompt_len), np.int32),
      prompt_mask=np.ones((n, shape.prompt_len), np.int32),
      response=np.zeros((n, response), np.int32),
      response_mask=np.ones((n, response), np.int32),
    )
  )


def train_batch(shape: TaskShape, *, batch: int, seeds: int, gt: bool) -> dict:
  """The abstract batch `finetune.seed_stream` yields (seed axis first)."""
  data = _rows(shape, batch)
  stream = finetune.seed_stream(
    [data] * seeds,
    batch_size=batch,
    seeds=range(seeds),
    rows=slice(0, batch),
    gt_data=data if gt else None,
  )
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in next(stream).items()}


def train_program(
  name, model_cfg, loss, optim: OptimConfig, *, shape: TaskShape, seeds: int, teacher_cfg=None,
  sampling_cfg=None,
) -> Program:  # fmt: skip
  def lower(mesh, batch):
    optim_b = dataclasses.replace(optim, batch_size=batch)
    _, step, teacher_sharding = finetune.finetune_step(
      model_cfg, loss, optim_b, mesh, seeds, shape.generative, teacher_cfg, sampling_cfg
    )
    abstract, base = finetune.abstract_state(model_cfg, optim_b, seeds)
    args = [
      abstract,
      train_batch(shape, batch=batch, seeds=seeds, gt=loss.needs_gt_data),
    ]
    if base is not None:
      args.append(_abstract(base, shd.state_sharding(base, mesh)))
    if teacher_cfg is not None:
      teacher = finetune.seed_stacked_abstract(teacher_cfg, seeds)
      args.append(_abstract(teacher, teacher_sharding))
    return step.lower(*args)

  def parts(mesh):
    abstract, base = finetune.abstract_state(model_cfg, optim, seeds)
    state = shd.state_sharding(abstract, mesh, seed_axis=True)
    out = {
      "params": shd.per_device_bytes(abstract.params, state.params),
      "optimizer": shd.per_device_bytes(abstract.opt_state, state.opt_state),
      "frozen base": 0
      if base is None
      else shd.per_device_bytes(base, shd.state_sharding(base, mesh)),
      "teacher": 0,
    }
    if teacher_cfg is not None:
      teacher = finetune.seed_stacked_abstract(teacher_cfg, seeds)
      out["teacher"] = shd.per_device_bytes(
        teacher, shd.state_sharding(teacher, mesh, seed_axis=True)
      )
    return out

  def flops(batch):
    # Every row of every seed; a teacher's forward pass and the live
    # supervisor's sampling are not model FLOPs of the student. A frozen
    # base (LoRA) has no weight gradients; a linear probe no backward pass.
    passes = 1 if optim.linear_probe else 2 if optim.lora_rank else 3
    return flops_lib.train_flops(
      config=model_cfg,
      rows=seeds * batch,
      seq_len=shape.train_len,
      lm_head=lm_head(model_cfg, shape),
      passes=passes,
    )

  return Program(name, TRAIN, model_cfg, lower, parts, flops, seeds, optim.grad_accum_steps)


def lm_head(model_cfg: ModelConfig, shape: TaskShape) -> bool:
  """Whether the unembedding matmul runs: generation, or a classifier on LM
  probabilities (head_input "lm_probs"); a classifier on the hidden state skips it."""
  return shape.generative or model_cfg.head_input != "hidden"


def _params(model_cfg, seeds, mesh):
  params = finetune.seed_stacked_abstract(model_cfg, seeds)
  return params, shd.state_sharding(params, mesh, seed_axis=True)


def labels_program(name, model_cfg, *, shape: TaskShape, seeds: int) -> Program:
  """Soft labels: every seed's weak model over the same batch of rows."""

  def lower(mesh, batch):
    fn = inference.compiled_softmax(model_cfg, "class_logits", mesh, True)
    params, shardings = _params(model_cfg, seeds, mesh)
    rows = jax.ShapeDtypeStruct((batch, shape.max_len), jnp.int32)
    return fn.lower(_abstract(params, shardings), rows, rows)

  def parts(mesh):
    params, shardings = _params(model_cfg, seeds, mesh)
    return {"params": shd.per_device_bytes(params, shardings)}

  flops = lambda batch: flops_lib.train_flops(
    config=model_cfg, rows=seeds * batch, seq_len=shape.max_len, lm_head=lm_head(model_cfg, shape),
    passes=1,
  )  # fmt: skip
  return Program(name, INFERENCE, model_cfg, lower, parts, flops, seeds)


def sampler_program(name, model_cfg, sampling_cfg, *, shape: TaskShape, seeds: int) -> Program:
  """The weak model's generations: prefill, then one token per loop step."""

  def lower(mesh, batch):
    fn = sampling.compiled_sampler(model_cfg, sampling_cfg, mesh, True)
    params, shardings = _params(model_cfg, seeds, mesh)
    prompt = jax.ShapeDtypeStruct((batch, shape.prompt_len), jnp.int32)
    ids = jax.ShapeDtypeStruct((batch,), jnp.int32)
    rng = jax.ShapeDtypeStruct((seeds, 2), jnp.uint32)
    return fn.lower(_abstract(params, shardings), prompt, prompt, ids, rng)

  def parts(mesh):
    params, shardings = _params(model_cfg, seeds, mesh)
    return {"params": shd.per_device_bytes(params, shardings)}

  # The prefill over the prompt, then one token per step attending to the
  # cache (counted at the full length: an upper bound on the model FLOPs).
  tokens = shape.prompt_len + sampling_cfg.max_new_tokens
  flops = lambda batch: flops_lib.train_flops(
    config=model_cfg, rows=seeds * batch, seq_len=tokens, lm_head=True, passes=1
  )
  return Program(name, SAMPLING, model_cfg, lower, parts, flops, seeds, sampling_cfg.max_new_tokens)


def cascade_programs(weak_cfg, strong_cfg, *, shape: TaskShape) -> list[Program]:
  """The classification cascade's serving path (cascade/serving.py): the weak
  model's step over a batch of queries with the router, and the strong
  model's step on the deferred rows at the largest bucket (every query
  deferred), each with one params copy (FSDP-sharded as the run holds it)."""

  def cascade(mesh, batch):
    return serving.classification_cascade(weak_cfg, strong_cfg, mesh=mesh, batch_size=batch)

  def single(model_cfg, mesh):
    params = jax.eval_shape(lambda: transformer.init_params(model_cfg, jax.random.key(0)))
    return params, shd.state_sharding(params, mesh)

  def queries(batch):
    rows = jax.ShapeDtypeStruct((batch, shape.max_len), jnp.int32)
    return {"tokens": rows, "mask": rows, "valid": jax.ShapeDtypeStruct((batch,), jnp.bool_)}

  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)

  def lower_weak(mesh, batch):
    params, shardings = single(weak_cfg, mesh)
    threshold = jax.ShapeDtypeStruct((), jnp.float32)
    return cascade(mesh, batch).weak_step.lower(
      _abstract(params, shardings), queries(batch), threshold, rng
    )

  def lower_strong(mesh, batch):
    params, shardings = single(strong_cfg, mesh)
    answers = {
      "answer": jax.ShapeDtypeStruct((batch,), jnp.int32),
      "probs": jax.ShapeDtypeStruct((batch, strong_cfg.num_classes), jnp.float32),
    }
    order = jax.ShapeDtypeStruct((batch,), jnp.int32)
    count = jax.ShapeDtypeStruct((), jnp.int32)
    return cascade(mesh, batch).strong_step.lower(
      batch, _abstract(params, shardings), queries(batch), order, count, answers, rng
    )

  def parts_of(model_cfg):
    def parts(mesh):
      params, shardings = single(model_cfg, mesh)
      return {"params": shd.per_device_bytes(params, shardings)}

    return parts

  def flops_of(model_cfg):
    return lambda batch: flops_lib.train_flops(
      config=model_cfg, rows=batch, seq_len=shape.max_len, lm_head=lm_head(model_cfg, shape),
      passes=1,
    )  # fmt: skip

  return [
    Program("cascade weak step (serving)", INFERENCE, weak_cfg, lower_weak, parts_of(weak_cfg),
            flops_of(weak_cfg), 1),
    Program("cascade strong step, every query deferred (serving)", INFERENCE, strong_cfg,
            lower_strong, parts_of(strong_cfg), flops_of(strong_cfg), 1),
  ]  # fmt: skip


def run_programs(cfg: ExperimentConfig) -> list[Program]:
  """Every distinct program of one run of cfg (a sweep cell is one run)."""
  shape = task_shape(cfg)
  weak, strong = model_configs(cfg, shape)
  seeds = len(cfg.seeds)
  ground_truth = Sft() if shape.generative else Xent()
  weak_sampling = live_sampling = None
  if shape.generative:  # eos_id: any id, the loop's early exit is compiled in either way
    live_sampling = sampling.SamplingConfig(max_new_tokens=shape.max_new_tokens, eos_id=0)
    weak_sampling = dataclasses.replace(
      live_sampling,
      temperature=cfg.generation.weak_temperature,
      top_p=cfg.generation.weak_top_p,
    )
  out = [
    train_program(
      f"weak {ground_truth.tag} (ground truth)",
      weak,
      ground_truth,
      cfg.weak_finetune or cfg.finetune,
      shape=shape,
      seeds=seeds,
    )
  ]
  if shape.generative:
    out.append(sampler_program("weak sampler", weak, weak_sampling, shape=shape, seeds=seeds))
  else:
    out.append(labels_program("weak soft labels", weak, shape=shape, seeds=seeds))
  losses = list(cfg.losses)
  if all(l.tag != ground_truth.tag for l in losses):
    losses.append(ground_truth)  # the ceiling's
  for loss in losses:
    name = f"strong {loss.tag}" + (" (w2s, ceiling)" if loss.tag == ground_truth.tag else " (w2s)")
    out.append(
      train_program(
        name,
        strong,
        loss,
        cfg.finetune,
        shape=shape,
        seeds=seeds,
        teacher_cfg=weak if loss.needs_teacher else None,
        sampling_cfg=live_sampling if loss.name == "live" else None,
      )
    )
  if (
    not shape.generative
  ):  # the W2S pair as a cascade: the weak model answers, the strong one on deferral
    out += cascade_programs(weak, strong, shape=shape)
  return out
