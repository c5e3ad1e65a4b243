"""The W2S pipeline on the offline testbed, as plain functions.

pretrain (cached) -> weak on ground truth -> weak labels on train_w2s ->
strong on weak labels, once per loss -> ceiling on ground truth -> metrics.
All seeds of a stage train together under jax.vmap, as one compiled program.
"""

import dataclasses
import functools
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from w2s_jax import checkpoints, inference, metrics, models, objectives, scores, selection
from w2s_jax import hf_import, pretrain, tasks, testbed, train
from w2s_jax import sharding as shd
from w2s_jax.checkpoints import PretrainedCache, cache_key
from w2s_jax.distributed import DistributedConfig
from w2s_jax.sharding import MeshConfig
from w2s_jax.tasks import Task, TextTaskConfig
from w2s_jax.data import Dataset, one_hot, shuffled_batches
from w2s_jax.objectives import LossConfig
from w2s_jax.selection import FilterConfig
from w2s_jax.results import package_versions, summary_table, write_json_atomic
from w2s_jax.train import OptimConfig


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  name: str = "default"
  world: testbed.WorldConfig = testbed.WorldConfig()
  weak_size: str = "pico"
  strong_size: str = "mini"
  use_pretraining: bool = True   # False: the no-pretraining ablation
  pretrain: OptimConfig = OptimConfig(steps=6000, batch_size=32, lr=3e-3, warmup_frac=0.02,
                                      weight_decay=0.0)
  pretrain_seed: int = 0
  finetune: OptimConfig = OptimConfig(steps=50, batch_size=32, lr=3e-5, head_lr=5e-2)
  losses: tuple[LossConfig, ...] = (LossConfig("xent"), LossConfig("logconf"))
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  eval_batch_size: int = 200
  bootstrap_resamples: int = 2000
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedConfig = DistributedConfig()  # or JAX_COORDINATOR_ADDRESS etc.
  checkpoint_every: int = 1000   # pretraining steps between checkpoints
  text_task: TextTaskConfig | None = None  # a real text task instead of the testbed world
  head_input: str = "lm_probs"   # ModelConfig.head_input; "hidden" as GPT2ForSequenceClassification
  # (name, local Hugging Face folder): models imported pretrained, named by
  # weak_size/strong_size, instead of pretrained here.
  pretrained_dirs: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    for field in ("weak_size", "strong_size"):
      if getattr(self, field) in dict(self.pretrained_dirs):
        continue
      try:
        models.decode_size(getattr(self, field), vocab_size=1)
      except ValueError as e:
        raise ValueError(f"ExperimentConfig.{field}: {e} (or a name in pretrained_dirs)") from None
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"ExperimentConfig.seeds={self.seeds!r}: expected distinct ints, at least one")
    names = [l.name for l in self.losses]
    if not names or len(set(names)) != len(names):
      raise ValueError(f"ExperimentConfig.losses={names}: expected distinct losses, at least one")
    if self.bootstrap_resamples < 100:
      raise ValueError(
          f"ExperimentConfig.bootstrap_resamples={self.bootstrap_resamples}: expected >= 100")

  def model_config(self, size: str, task: Task) -> models.ModelConfig:
    if size in dict(self.pretrained_dirs):
      return hf_import.config_from_hf(
          hf_import.read_config(dict(self.pretrained_dirs)[size]), head_input=self.head_input,
          max_len=task.max_len)
    return models.decode_size(size, vocab_size=task.vocab_size, max_len=task.max_len,
                              head_input=self.head_input)


def config_to_dict(cfg) -> dict:
  return dataclasses.asdict(cfg)


def pretrained_model(cfg: ExperimentConfig, size: str, task: Task, corpus, mesh, cache,
                     progress=True, corpus_tag: str = "clean"):
  """Params for `size` after LM pretraining on the corpus; cached with orbax.
  A size named in cfg.pretrained_dirs is imported from its folder instead.

  corpus_tag names a corpus other than the task's own (e.g. a filtered
  pool); it is part of the cache key."""
  model_cfg = cfg.model_config(size, task)
  init = lambda: models.init_params(model_cfg, jax.random.key(cfg.pretrain_seed))
  if size in dict(cfg.pretrained_dirs):
    folder = dict(cfg.pretrained_dirs)[size]
    _, params = hf_import.load_hf_folder(folder, head_input=cfg.head_input, max_len=task.max_len)
    params = jax.device_put(params, shd.state_sharding(params, mesh))
    return params, model_cfg, {"pretrained": f"imported from {folder}", "size": size,
                               "corpus": None, **task.probe(params, model_cfg, mesh)}
  if not cfg.use_pretraining:
    params = init()
    return params, model_cfg, {"pretrained": False, "corpus": None,
                               **task.probe(params, model_cfg, mesh)}
  key = cache_key(model=model_cfg, world=task.fingerprint, optim=cfg.pretrain,
                  seed=cfg.pretrain_seed, version=1,
                  **({} if corpus_tag == "clean" else {"corpus": corpus_tag}))
  abstract = jax.eval_shape(init)
  params, info = cache.load(size, key, checkpoints.abstract_like(
      abstract, shd.state_sharding(abstract, mesh)))
  if params is not None:
    return params, model_cfg, {**info, "cached": True}
  start = time.perf_counter()
  # An interrupted pretraining resumes from its last checkpoint, on the same batches.
  train_dir = cache.entry(size, key) / "train"
  state, last, _ = pretrain.train_lm(model_cfg, corpus, cfg.pretrain, seed=cfg.pretrain_seed,
                                     mesh=mesh, checkpoint_dir=train_dir,
                                     checkpoint_every=cfg.checkpoint_every, corpus_tag=corpus_tag,
                                     progress=progress, desc=f"pretrain {size}")
  info = {"pretrained": True, "size": size, "corpus": corpus_tag,
          "params": models.count_params(state.params),
          "steps": cfg.pretrain.steps, "tokens": int(cfg.pretrain.steps * cfg.pretrain.batch_size
                                                     * task.max_len),
          "seconds": time.perf_counter() - start,
          "final_lm_loss": float(np.mean(last.get("loss", np.nan))),
          **task.probe(state.params, model_cfg, mesh)}
  cache.save(size, key, state.params, info)
  if shd.is_main_process():
    shutil.rmtree(train_dir, ignore_errors=True)  # the cache entry is complete
  return state.params, model_cfg, {**info, "cached": False}


def _seed_stream(data: Dataset, labels, *, batch_size, seeds, rows, gt_data: Dataset | None = None,
                 subsets=None):
  """Batches with a leading seed axis; each seed has its own labels and order
  (and, with subsets, its own selected examples).

  With gt_data, each batch also carries a ground-truth batch under gt_* keys
  (and the weak-labelled one under weak_*), for the combined objective.
  """
  def stacked(streams):
    while True:
      parts = [next(s) for s in streams]
      yield {k: np.stack([p[k] for p in parts]) for k in parts[0]}

  def seed_data(i):
    labelled = data.with_fields(labels=labels[i])
    return labelled if subsets is None else labelled.take(subsets[i])

  weak = stacked([shuffled_batches(seed_data(i), batch_size=batch_size, seed=s, rows=rows)
                  for i, s in enumerate(seeds)])
  if gt_data is None:
    yield from weak
    return
  # Another seed stream than the weak one's, so the two orders are independent.
  gt = stacked([shuffled_batches(gt_data, batch_size=batch_size, seed=s + 7919, rows=rows)
                for s in seeds])
  while True:
    yield {**{f"weak_{k}": v for k, v in next(weak).items()},
           **{f"gt_{k}": v for k, v in next(gt).items()}}


@functools.lru_cache(maxsize=64)
def _finetune_step(model_cfg, loss_cfg, optim_cfg, mesh, num_seeds):
  """One compiled step per (model, loss, optimizer, mesh, seeds): sweep cells
  that share a strong size and a loss reuse it instead of compiling again."""
  optimizer = train.make_optimizer(optim_cfg)
  abstract = jax.eval_shape(lambda: jax.vmap(lambda k: train.init_state(
      models.init_params(model_cfg, k), optimizer, k))(jax.random.split(jax.random.key(0),
                                                                        num_seeds)))
  step = train.compile_train_step(loss_fn=objectives.objective(model_cfg, loss_cfg),
                                  optimizer=optimizer, total_steps=optim_cfg.steps, mesh=mesh,
                                  state_sharding=shd.state_sharding(abstract, mesh, seed_axis=True),
                                  vmap_seeds=True, accum_steps=optim_cfg.grad_accum_steps,
                                  linear_probe=optim_cfg.linear_probe)
  return optimizer, step


def finetune(params, model_cfg, data: Dataset, labels, *, loss_cfg: LossConfig,
             optim_cfg: OptimConfig, seeds, mesh, desc, progress=True,
             params_per_seed: bool = False, gt_data: Dataset | None = None, subsets=None):
  """Fine-tunes one copy of `params` per seed, all seeds in one vmapped program.

  labels: soft labels [seeds, examples, classes]. params: one shared starting
  point, or (params_per_seed) one per seed, stacked on a leading axis.
  gt_data (with one-hot labels) is required by, and only by, the combined loss.
  subsets: per seed, the indices of `data` to train on (a filter's selection).
  """
  num_seeds = len(seeds)
  if labels.shape[0] != num_seeds:
    raise ValueError(f"finetune labels: leading axis {labels.shape[0]} != {num_seeds} seeds")
  if (loss_cfg.name == "combined") != (gt_data is not None):
    raise ValueError(f"finetune: gt_data is needed by the combined loss only, got loss "
                     f"{loss_cfg.name!r} with gt_data={'set' if gt_data is not None else None}")
  if not params_per_seed:
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_seeds, *x.shape)), params)
  optimizer, step = _finetune_step(model_cfg, loss_cfg, optim_cfg, mesh, num_seeds)
  state = train.initial_state(train.from_params, params, optimizer=optimizer, mesh=mesh,
                              rng=train.seed_keys(seeds), per_seed=True)
  if subsets is not None and len(subsets) != num_seeds:
    raise ValueError(f"finetune subsets: {len(subsets)} given for {num_seeds} seeds")
  batches = _seed_stream(data, labels, batch_size=optim_cfg.batch_size, seeds=seeds,
                         rows=shd.process_rows(mesh, optim_cfg.batch_size), gt_data=gt_data,
                         subsets=subsets)
  state, _ = train.fit(state, step, batches, num_steps=optim_cfg.steps, mesh=mesh, desc=desc,
                       progress=progress)
  return state.params


class Context:
  """What every stage of one experiment shares: the task and its splits, the
  mesh and the pretrained models (pretrained lazily, once, through the cache)."""

  def __init__(self, cfg: ExperimentConfig, *, cache_dir, progress=True):
    self.cfg, self.progress = cfg, progress
    self.mesh = cfg.mesh.make()
    shd.check_batch_size(cfg.finetune.batch_size, self.mesh, "finetune.batch_size")
    shd.check_batch_size(cfg.pretrain.batch_size, self.mesh, "pretrain.batch_size")
    shd.check_batch_size(cfg.eval_batch_size, self.mesh, "eval_batch_size")
    self.task = (tasks.text_task(cfg.text_task) if cfg.text_task is not None
                 else tasks.testbed_task(cfg.world))
    self.splits = self.task.splits
    self.eval_splits = self.task.eval_splits
    self.cache = PretrainedCache(cache_dir)
    self.seeds = tuple(cfg.seeds)
    self._pretrained, self._corpus_of = {}, {}

  @property
  def world(self) -> testbed.World:
    if self.task.world is None:
      raise ValueError(f"the {self.task.name} task has no testbed world")
    return self.task.world

  @property
  def corpus(self) -> Dataset:
    return self.task.corpus

  def pretrain_on(self, size, corpus: Dataset, tag: str):
    """Pretrain `size` on another corpus (a curated pool) from now on."""
    self._corpus_of[size] = (tag, corpus)
    self._pretrained.pop(size, None)

  def pretrained(self, size):
    """(params, model_cfg, info) for a size, pretrained once per process."""
    if size not in self._pretrained:
      tag, corpus = self._corpus_of.get(size, ("clean", None))
      if (corpus is None and self.cfg.use_pretraining
          and size not in dict(self.cfg.pretrained_dirs)):
        corpus = self.corpus
      self._pretrained[size] = pretrained_model(self.cfg, size, self.task, corpus, self.mesh,
                                                self.cache, self.progress, corpus_tag=tag)
    return self._pretrained[size]

  def ground_truth(self, split):
    labels = one_hot(self.splits[split]["labels"], 2)
    return np.broadcast_to(labels, (len(self.seeds), *labels.shape))

  def tune(self, size, split, labels, loss_cfg, desc, finetune_cfg=None, subsets=None):
    params, model_cfg, _ = self.pretrained(size)
    gt_data = None
    if loss_cfg.name == "combined":
      gt = self.splits["train_gt"]
      if loss_cfg.gt_examples > len(gt):
        raise ValueError(f"LossConfig.gt_examples={loss_cfg.gt_examples}: train_gt has only "
                         f"{len(gt)} examples")
      gt = gt.take(np.arange(loss_cfg.gt_examples))
      gt_data = gt.with_fields(labels=one_hot(gt["labels"], 2))
    return finetune(params, model_cfg, self.splits[split], labels, loss_cfg=loss_cfg,
                    optim_cfg=finetune_cfg or self.cfg.finetune, seeds=self.seeds,
                    mesh=self.mesh, desc=desc, progress=self.progress, gt_data=gt_data,
                    subsets=subsets)

  def predict(self, size, params, split):
    return inference.soft_labels(params, self.pretrained(size)[1], self.splits[split],
                                 batch_size=self.cfg.eval_batch_size, mesh=self.mesh,
                                 seed_axis=True)

  def evaluate(self, size, params) -> dict:
    """Per-seed 0/1 correctness on every evaluation split: {split: [seeds, examples]}."""
    return {split: metrics.correct(probs=self.predict(size, params, split),
                                   labels=self.splits[split]["labels"])
            for split in self.eval_splits}


def weak_stage(ctx: Context, size: str) -> dict:
  """The weak model trained on ground truth: its soft labels on train_w2s and
  its correctness on the evaluation splits. Its params are not kept."""
  params = ctx.tune(size, "train_gt", ctx.ground_truth("train_gt"), LossConfig("xent"),
                    f"weak {size} on ground truth")
  labels = ctx.predict(size, params, "train_w2s")
  label_acc = metrics.correct(probs=labels, labels=ctx.splits["train_w2s"]["labels"]).mean(1)
  pretrained, model_cfg, _ = ctx.pretrained(size)
  likelihood = scores.sequence_log_likelihood(pretrained, model_cfg, ctx.splits["train_w2s"],
                                              batch_size=ctx.cfg.eval_batch_size, mesh=ctx.mesh)
  return {"labels": labels, "label_accuracy": label_acc, "likelihood": likelihood,
          **ctx.evaluate(size, params)}


def weak_stage_fields(ctx: Context) -> tuple[str, ...]:
  return ("labels", "label_accuracy", "likelihood", *ctx.eval_splits)


def filter_scores(weak: dict, criterion: str) -> np.ndarray:
  """Per-seed scores [seeds, examples] of the weak-labelled set; higher is kept."""
  labels = np.asarray(weak["labels"])
  per_seed = lambda fn: np.asarray(fn(probs=labels))
  match criterion:
    case "confidence":
      return per_seed(scores.confidence)
    case "margin":
      return per_seed(scores.margin)
    case "neg_entropy":
      return per_seed(scores.neg_entropy)
    case "agreement":  # the seeds' weak models vote
      return np.broadcast_to(np.asarray(scores.agreement(probs=labels)), labels.shape[:2])
    case "likelihood":  # the weak LM's log-likelihood of the example's text
      return np.broadcast_to(weak["likelihood"], labels.shape[:2])
  raise ValueError(f"filter criterion {criterion!r} does not apply to the weak-labelled set; "
                   f"expected one of confidence, margin, neg_entropy, agreement, likelihood")


def filter_subsets(weak: dict, filter_cfg: FilterConfig) -> list[np.ndarray]:
  """Per seed, the indices of train_w2s the strong model trains on."""
  seed_scores = filter_scores(weak, filter_cfg.criterion)
  hard = np.argmax(weak["labels"], axis=-1)
  return [selection.top_fraction(scores=seed_scores[i], keep_frac=filter_cfg.keep_frac,
                                 labels=hard[i] if filter_cfg.stratified else None)
          for i in range(len(seed_scores))]


def ceiling_stage(ctx: Context, size: str) -> dict:
  params = ctx.tune(size, "train_gt", ctx.ground_truth("train_gt"), LossConfig("xent"),
                    f"ceiling {size} on ground truth")
  return ctx.evaluate(size, params)


def w2s_stage(ctx: Context, strong: str, weak: dict, loss_cfg: LossConfig,
              finetune_cfg: OptimConfig | None = None,
              filter_cfg: FilterConfig | None = None) -> dict:
  subsets = filter_subsets(weak, filter_cfg) if filter_cfg else None
  tag = loss_cfg.tag + (f", {filter_cfg.tag}" if filter_cfg else "")
  params = ctx.tune(strong, "train_w2s", weak["labels"], loss_cfg,
                    f"strong {strong} on weak labels ({tag})", finetune_cfg, subsets)
  out = ctx.evaluate(strong, params)
  if subsets is not None:  # how right the kept weak labels are, per seed
    truth = ctx.splits["train_w2s"]["labels"]
    out["kept_label_accuracy"] = np.array([
        np.mean(np.argmax(weak["labels"][i][idx], -1) == truth[idx])
        for i, idx in enumerate(subsets)])
  return out


def summarize(weak: dict, w2s: dict, ceiling: dict, *, splits, num_resamples: int) -> dict:
  return {split: metrics.bootstrap_w2s(weak_correct=weak[split], w2s_correct=w2s[split],
                                       ceiling_correct=ceiling[split], num_resamples=num_resamples)
          for split in splits}


def run(cfg: ExperimentConfig, *, out_dir: str | Path, cache_dir: str | Path,
        progress: bool = True) -> dict:
  """Runs the whole pipeline and writes out_dir/results.json. Returns the results."""
  started = time.perf_counter()
  ctx = Context(cfg, cache_dir=cache_dir, progress=progress)
  stages = tqdm(total=4 + len(cfg.losses), desc="w2s pipeline", unit="stage",
                disable=not progress or not shd.is_main_process(), dynamic_ncols=True)
  for size in (cfg.weak_size, cfg.strong_size):
    ctx.pretrained(size)
    stages.update(1)
  weak = weak_stage(ctx, cfg.weak_size)
  stages.update(1)
  ceiling = ceiling_stage(ctx, cfg.strong_size)
  stages.update(1)
  w2s = {}
  for loss_cfg in cfg.losses:
    w2s[loss_cfg.tag] = w2s_stage(ctx, cfg.strong_size, weak, loss_cfg)
    stages.update(1)
  stages.close()

  summary = {split: {} for split in ctx.eval_splits}
  for tag, result in w2s.items():
    for split, stats in summarize(weak, result, ceiling, splits=ctx.eval_splits,
                                  num_resamples=cfg.bootstrap_resamples).items():
      summary[split][tag] = stats
  per_seed = {split: {"weak": weak[split].mean(1).tolist(),
                      "ceiling": ceiling[split].mean(1).tolist(),
                      **{tag: r[split].mean(1).tolist() for tag, r in w2s.items()}}
              for split in ctx.eval_splits}
  results = {
      "config": config_to_dict(cfg),
      "versions": package_versions(),
      "devices": [str(d) for d in jax.devices()],
      "pretraining": {role: {**ctx.pretrained(size)[2], "size": size}
                      for role, size in (("weak", cfg.weak_size), ("strong", cfg.strong_size))},
      "per_seed": {"seeds": list(ctx.seeds),
                   "weak_label_accuracy_train_w2s": weak["label_accuracy"].tolist(),
                   **per_seed},
      "summary": summary,
      "encoding": ctx.task.encoding,
      "seconds": time.perf_counter() - started,
  }
  if shd.is_main_process():
    write_json_atomic(Path(out_dir) / "results.json", results)
  return results


def format_results(results: dict) -> str:
  lines = []
  for role, info in results["pretraining"].items():
    if "lives" in info:
      facts = f"facts known: lives {info['lives']:.0%}, works {info['works']:.0%}"
    else:
      facts = ", ".join(f"{k} {v:.3f}" for k, v in info.items() if k.startswith("test_lm"))
    if not info.get("pretrained"):
      origin = "not pretrained"
    elif isinstance(info["pretrained"], str):
      origin = "imported"
    elif info.get("cached"):
      origin = "pretrained (cached)"
    else:
      origin = f"pretrained in {info['seconds']:.0f}s"
    lines.append(f"{role:6s} {info['size']:8s} {origin:22s} {facts}")
  for split, counts in results.get("encoding", {}).items():
    lines.append(f"{split:9s} {counts}")
  seeds = results["per_seed"]["seeds"]
  for split, per_loss in results["summary"].items():
    lines.append(f"\n{split} ({len(seeds)} seeds; mean [95% bootstrap interval over seeds and examples])")
    lines.append(summary_table([{"name": name, **stats} for name, stats in per_loss.items()]))
  lines.append(f"\ntotal {results['seconds']:.0f}s")
  return "\n".join(lines)
