"""The W2S pipeline on the offline testbed, as plain functions.

pretrain (cached) -> weak on ground truth -> weak labels on train_w2s ->
strong on weak labels, once per loss -> ceiling on ground truth -> metrics.
All seeds of a stage train together under jax.vmap, as one compiled program.
"""

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from w2s_jax import inference, metrics, models, objectives, testbed, train
from w2s_jax import sharding as shd
from w2s_jax.checkpoints import PretrainedCache, cache_key
from w2s_jax.data import Dataset, one_hot, shuffled_batches
from w2s_jax.objectives import LossConfig
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

  def __post_init__(self):
    for field in ("weak_size", "strong_size"):
      try:
        models.decode_size(getattr(self, field), vocab_size=1)
      except ValueError as e:
        raise ValueError(f"ExperimentConfig.{field}: {e}") from None
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"ExperimentConfig.seeds={self.seeds!r}: expected distinct ints, at least one")
    names = [l.name for l in self.losses]
    if not names or len(set(names)) != len(names):
      raise ValueError(f"ExperimentConfig.losses={names}: expected distinct losses, at least one")
    if self.bootstrap_resamples < 100:
      raise ValueError(
          f"ExperimentConfig.bootstrap_resamples={self.bootstrap_resamples}: expected >= 100")

  def model_config(self, size: str, world: testbed.World) -> models.ModelConfig:
    return models.decode_size(size, vocab_size=len(world.vocab), max_len=self.world.doc_len)


def config_to_dict(cfg) -> dict:
  return dataclasses.asdict(cfg)


def fact_accuracy(params, model_cfg, world, mesh) -> dict:
  """Fraction of (entity, relation) facts whose city the LM ranks first among cities."""
  prompts, answers = testbed.fact_probe(world)
  probs = inference.next_token_probs(params, model_cfg, prompts, mesh=mesh)
  cities = world.city_tokens
  known = cities[np.argmax(probs[:, cities], axis=-1)] == answers
  n = world.cfg.num_entities
  out = {rel: float(known[i * n:(i + 1) * n].mean()) for i, rel in enumerate(testbed.RELATIONS)}
  for split, ents in world.split_entities.items():
    out[f"lives/{split}"] = float(known[ents].mean())
  return out


def pretrained_model(cfg: ExperimentConfig, size: str, world, corpus, mesh, cache,
                     progress=True):
  """Params for `size` after LM pretraining on the corpus; cached with orbax."""
  model_cfg = cfg.model_config(size, world)
  init = lambda: models.init_params(model_cfg, jax.random.key(cfg.pretrain_seed))
  if not cfg.use_pretraining:
    params = init()
    return params, model_cfg, {"pretrained": False, **fact_accuracy(params, model_cfg, world, mesh)}
  key = cache_key(model=model_cfg, world=cfg.world.corpus_fields(), optim=cfg.pretrain, seed=cfg.pretrain_seed,
                  version=1)
  like = jax.eval_shape(init)
  params, info = cache.load(size, key, like)
  if params is not None:
    return params, model_cfg, {**info, "cached": True}
  optimizer = train.make_optimizer(cfg.pretrain)
  state = train.initial_state(init(), optimizer, mesh=mesh)
  step = train.compile_train_step(loss_fn=objectives.lm_objective(model_cfg),
                                  optimizer=optimizer, total_steps=cfg.pretrain.steps, mesh=mesh)
  start = time.perf_counter()
  state, last = train.fit(state, step, shuffled_batches(corpus, batch_size=cfg.pretrain.batch_size,
                                                        seed=cfg.pretrain_seed),
                          num_steps=cfg.pretrain.steps, mesh=mesh, desc=f"pretrain {size}",
                          progress=progress)
  info = {"pretrained": True, "size": size, "params": models.count_params(state.params),
          "steps": cfg.pretrain.steps, "tokens": int(cfg.pretrain.steps * cfg.pretrain.batch_size
                                                     * cfg.world.doc_len),
          "seconds": time.perf_counter() - start, "final_lm_loss": float(last["loss"]),
          **fact_accuracy(state.params, model_cfg, world, mesh)}
  cache.save(size, key, state.params, info)
  return state.params, model_cfg, {**info, "cached": False}


def _seed_stream(data: Dataset, labels, *, batch_size, seeds):
  """Batches with a leading seed axis; each seed has its own labels and order."""
  streams = [shuffled_batches(data.with_fields(labels=labels[i]), batch_size=batch_size, seed=s)
             for i, s in enumerate(seeds)]
  while True:
    parts = [next(s) for s in streams]
    yield {k: np.stack([p[k] for p in parts]) for k in parts[0]}


def finetune(params, model_cfg, data: Dataset, labels, *, loss_cfg: LossConfig,
             optim_cfg: OptimConfig, seeds, mesh, desc, progress=True,
             params_per_seed: bool = False):
  """Fine-tunes one copy of `params` per seed, all seeds in one vmapped program.

  labels: soft labels [seeds, examples, classes]. params: one shared starting
  point, or (params_per_seed) one per seed, stacked on a leading axis.
  """
  num_seeds = len(seeds)
  if labels.shape[0] != num_seeds:
    raise ValueError(f"finetune labels: leading axis {labels.shape[0]} != {num_seeds} seeds")
  if not params_per_seed:
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_seeds, *x.shape)), params)
  optimizer = train.make_optimizer(optim_cfg)
  state = train.initial_state(params, optimizer, mesh=mesh, per_seed=True)
  step = train.compile_train_step(loss_fn=objectives.classifier_objective(model_cfg, loss_cfg),
                                  optimizer=optimizer, total_steps=optim_cfg.steps, mesh=mesh,
                                  vmap_seeds=True)
  batches = _seed_stream(data, labels, batch_size=optim_cfg.batch_size, seeds=seeds)
  state, _ = train.fit(state, step, batches, num_steps=optim_cfg.steps, mesh=mesh, desc=desc,
                       progress=progress)
  return state.params


def run(cfg: ExperimentConfig, *, out_dir: str | Path, cache_dir: str | Path,
        progress: bool = True) -> dict:
  """Runs the whole pipeline and writes out_dir/results.json. Returns the results."""
  started = time.perf_counter()
  mesh = shd.make_mesh()
  shd.check_batch_size(cfg.finetune.batch_size, mesh, "finetune.batch_size")
  shd.check_batch_size(cfg.pretrain.batch_size, mesh, "pretrain.batch_size")
  shd.check_batch_size(cfg.eval_batch_size, mesh, "eval_batch_size")
  world = testbed.make_world(cfg.world)
  splits = testbed.task_splits(world)
  corpus = testbed.pretraining_corpus(world) if cfg.use_pretraining else None
  cache = PretrainedCache(cache_dir)
  seeds, num_seeds = tuple(cfg.seeds), len(cfg.seeds)
  stages = tqdm(total=4 + len(cfg.losses), desc="w2s pipeline", unit="stage",
                disable=not progress, dynamic_ncols=True)

  pre = {}
  for role, size in (("weak", cfg.weak_size), ("strong", cfg.strong_size)):
    pre[role] = pretrained_model(cfg, size, world, corpus, mesh, cache, progress)
  stages.update(1)

  def tune(role, split, labels, loss_cfg, desc):
    params, model_cfg, _ = pre[role]
    return finetune(params, model_cfg, splits[split], labels, loss_cfg=loss_cfg,
                    optim_cfg=cfg.finetune, seeds=seeds, mesh=mesh, desc=desc, progress=progress)

  def predict(role, params, split):
    return inference.soft_labels(params, pre[role][1], splits[split],
                                 batch_size=cfg.eval_batch_size, mesh=mesh, seed_axis=True)

  gt = lambda split: np.broadcast_to(one_hot(splits[split]["labels"], 2),
                                     (num_seeds, len(splits[split]), 2))
  xent = LossConfig("xent")
  weak = tune("weak", "train_gt", gt("train_gt"), xent, "weak on ground truth")
  weak_labels = predict("weak", weak, "train_w2s")
  stages.update(1)
  ceiling = tune("strong", "train_gt", gt("train_gt"), xent, "ceiling on ground truth")
  stages.update(1)
  w2s = {}
  for loss_cfg in cfg.losses:
    w2s[loss_cfg.name] = tune("strong", "train_w2s", weak_labels, loss_cfg,
                              f"strong on weak labels ({loss_cfg.name})")
    stages.update(1)

  evals = {}
  for split in ("test", "heldout"):
    labels = splits[split]["labels"]
    score = lambda role, params: metrics.correct(probs=predict(role, params, split), labels=labels)
    evals[split] = {"weak": score("weak", weak), "ceiling": score("strong", ceiling),
                    **{name: score("strong", p) for name, p in w2s.items()}}
  weak_label_acc = metrics.correct(probs=weak_labels, labels=splits["train_w2s"]["labels"]).mean(1)
  stages.update(1)
  stages.close()

  summary = {}
  for split, c in evals.items():
    summary[split] = {
        name: metrics.bootstrap_w2s(weak_correct=c["weak"], w2s_correct=c[name],
                                    ceiling_correct=c["ceiling"],
                                    num_resamples=cfg.bootstrap_resamples)
        for name in w2s}
  results = {
      "config": config_to_dict(cfg),
      "versions": package_versions(),
      "devices": [str(d) for d in jax.devices()],
      "pretraining": {role: {k: v for k, v in info.items()} | {"size": size}
                      for (role, (_, _, info)), size in
                      zip(pre.items(), (cfg.weak_size, cfg.strong_size))},
      "per_seed": {
          "seeds": list(seeds),
          "weak_label_accuracy_train_w2s": weak_label_acc.tolist(),
          **{split: {name: c[name].mean(1).tolist() for name in c} for split, c in evals.items()},
      },
      "summary": summary,
      "seconds": time.perf_counter() - started,
  }
  write_json_atomic(Path(out_dir) / "results.json", results)
  return results


def format_results(results: dict) -> str:
  lines = []
  for role, info in results["pretraining"].items():
    facts = f"facts known: lives {info['lives']:.0%}, works {info['works']:.0%}"
    if not info.get("pretrained"):
      origin = "not pretrained"
    elif info.get("cached"):
      origin = "pretrained (cached)"
    else:
      origin = f"pretrained in {info['seconds']:.0f}s"
    lines.append(f"{role:6s} {info['size']:8s} {origin:22s} {facts}")
  seeds = results["per_seed"]["seeds"]
  for split, per_loss in results["summary"].items():
    lines.append(f"\n{split} ({len(seeds)} seeds; mean [95% bootstrap interval over seeds and examples])")
    lines.append(summary_table([{"name": name, **stats} for name, stats in per_loss.items()]))
  lines.append(f"\ntotal {results['seconds']:.0f}s")
  return "\n".join(lines)
