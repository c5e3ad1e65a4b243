"""LM pretraining at any scale: sharded, checkpointed, resumable, multi-host.

`train_lm` is the one pretraining loop: the W2S pipeline uses it for the
models it caches (`pretrained_model`), and `run` wraps it as a standalone job
(experiments/train.py) for meshes, pods and scaling studies.
"""

import dataclasses
import json
import shutil
import time
from pathlib import Path

import jax

from w2s_jax import checkpoints, hf_import, integrity, models, objectives, tasks, testbed, train
from w2s_jax import sharding as shd
from w2s_jax.checkpoints import cache_key
from w2s_jax.data import Dataset, shuffled_batches
from w2s_jax.distributed import DistributedConfig
from w2s_jax.results import package_versions, prepare_out_dir, write_json_atomic
from w2s_jax.sharding import MeshConfig
from w2s_jax.train import OptimConfig


def train_lm(model_cfg: models.ModelConfig, corpus: Dataset, optim: OptimConfig, *, seed: int,
             mesh, checkpoint_dir, checkpoint_every: int, checkpoint_keep: int = 2,
             corpus_tag: str = "corpus", progress: bool = True, desc: str = "pretrain"):
  """Next-token training from a fresh init; resumes from checkpoint_dir if it
  holds a checkpoint of this run. Returns (state, record, resumed step): the
  record holds the final loss and the training seconds of every run that
  reached the final checkpoint, killed ones included."""
  # Each micro-batch is split over every device.
  shd.check_batch_size(optim.batch_size // optim.grad_accum_steps, mesh,
                       "batch_size / grad_accum_steps")
  optimizer = train.make_optimizer(optim)
  key = jax.random.key(seed)
  state = train.initial_state(lambda k: models.init_params(model_cfg, k), key,
                              optimizer=optimizer, mesh=mesh, rng=jax.random.key_data(key))
  ckpts = checkpoints.TrainCheckpoints(
      checkpoint_dir, every=checkpoint_every, keep=checkpoint_keep,
      data={"corpus": corpus_tag, "examples": len(corpus), "seed": seed,
            "batch_size": optim.batch_size})
  state = ckpts.restore(state)
  resumed_from = train.first_step(state)
  step = train.compile_train_step(loss_fn=objectives.lm_objective(model_cfg), optimizer=optimizer,
                                  total_steps=optim.steps, mesh=mesh,
                                  state_sharding=train.sharding_of(state),
                                  accum_steps=optim.grad_accum_steps)
  batches = shuffled_batches(corpus, batch_size=optim.batch_size, seed=seed,
                             start_step=resumed_from, rows=shd.process_rows(mesh, optim.batch_size))
  try:
    state, _ = train.fit(state, step, batches, num_steps=optim.steps, mesh=mesh, desc=desc,
                         progress=progress, checkpoints=ckpts)
  finally:
    ckpts.close()
  return state, ckpts.record, resumed_from


def pretrained_model(cfg, size: str, task, corpus, mesh, cache,
                     progress=True, corpus_tag: str = "clean", splits=None):
  """Params for `size` of an ExperimentConfig after LM pretraining on the
  task's corpus; cached with orbax (a PretrainedCache).
  A size named in cfg.pretrained_dirs is imported from its folder instead.

  corpus_tag names a corpus other than the task's own (e.g. a filtered
  pool); it is part of the cache key. splits: the task as an imported model
  reads it through its own tokenizer (its LM probe runs on those tokens)."""
  model_cfg = cfg.model_config(size, task)
  init = lambda: models.init_params(model_cfg, jax.random.key(cfg.pretrain_seed))
  if size in dict(cfg.pretrained_dirs):
    folder = dict(cfg.pretrained_dirs)[size]
    params = hf_import.load_params(folder, model_cfg)
    params = jax.device_put(params, shd.state_sharding(params, mesh))
    if not model_cfg.causal:
      probe = {}   # an encoder has no LM head to probe
    elif splits is not None and splits is not task.splits:
      probe = task.probe(params, model_cfg, mesh, test=splits["test"])
    else:
      probe = task.probe(params, model_cfg, mesh)
    return params, model_cfg, {"pretrained": f"imported from {folder}", "size": size,
                               "corpus": None, **probe}
  if not cfg.use_pretraining:
    params = init()
    return params, model_cfg, {"pretrained": False, "corpus": None,
                               **task.probe(params, model_cfg, mesh)}
  key = cache_key(model=model_cfg, world=task.fingerprint, optim=cfg.pretrain,
                  seed=cfg.pretrain_seed, version=1,
                  **({} if corpus_tag == "clean" else {"corpus": corpus_tag}))
  abstract = jax.eval_shape(init)
  like = checkpoints.abstract_like(abstract, shd.state_sharding(abstract, mesh))
  # One process builds an entry; another run that wants it waits, then reads it.
  with cache.lock(size, key):
    params, info = cache.load(size, key, like)
    if params is not None:
      return params, model_cfg, {**info, "cached": True}
    # An interrupted pretraining resumes from its last checkpoint, on the same batches.
    train_dir = cache.entry(size, key) / "train"
    state, record, _ = train_lm(model_cfg, corpus, cfg.pretrain, seed=cfg.pretrain_seed,
                                mesh=mesh, checkpoint_dir=train_dir,
                                checkpoint_every=cfg.checkpoint_every, corpus_tag=corpus_tag,
                                progress=progress, desc=f"pretrain {size}")
    info = {"pretrained": True, "size": size, "corpus": corpus_tag,
            "params": models.count_params(state.params), "steps": cfg.pretrain.steps,
            "tokens": int(cfg.pretrain.steps * cfg.pretrain.batch_size * task.max_len),
            "seconds": record["seconds"], "final_lm_loss": record["loss"],
            **task.probe(state.params, model_cfg, mesh)}
    cache.save(size, key, state.params, info)
    if shd.is_main_process():
      shutil.rmtree(train_dir, ignore_errors=True)  # the cache entry is complete
  return state.params, model_cfg, {**info, "cached": False}


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """A standalone pretraining run on the testbed corpus."""
  name: str = "pretrain"
  size: str = "tiny"
  world: testbed.WorldConfig = testbed.WorldConfig()
  optim: OptimConfig = OptimConfig(steps=2000, batch_size=32, lr=3e-3, warmup_frac=0.02,
                                   weight_decay=0.0)
  dtype: str = "float32"  # "bfloat16": bf16 compute, float32 master params
  remat: bool = False
  seed: int = 0
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedConfig = DistributedConfig()
  checkpoint_every: int = 200
  checkpoint_keep: int = 2

  def __post_init__(self):
    try:
      self.model_config(vocab_size=1)
    except ValueError as e:
      raise ValueError(f"PretrainConfig: {e}") from None

  def model_config(self, vocab_size: int) -> models.ModelConfig:
    return models.decode_size(self.size, vocab_size=vocab_size, max_len=self.world.doc_len,
                              dtype=self.dtype, remat=self.remat)


def run(cfg: PretrainConfig, *, out_dir: str | Path, progress: bool = True) -> dict:
  """Pretrains, saves the final params (orbax) and results.json under out_dir.

  Every process runs this; only process 0 writes results.json. Rerunning
  with the same out_dir resumes from the last checkpoint.
  """
  out_dir = prepare_out_dir(out_dir)
  finished = _finished_results(cfg, out_dir)
  if finished is not None:
    return finished
  started = time.perf_counter()
  mesh = cfg.mesh.make()
  shd.check_batch_size(cfg.optim.batch_size, mesh, "optim.batch_size")
  task = tasks.testbed_task(cfg.world)
  model_cfg = cfg.model_config(task.vocab_size)
  state, record, resumed_from = train_lm(
      model_cfg, task.corpus, cfg.optim, seed=cfg.seed, mesh=mesh,
      checkpoint_dir=out_dir / "checkpoints", checkpoint_every=cfg.checkpoint_every,
      checkpoint_keep=cfg.checkpoint_keep, progress=progress, desc=f"pretrain {cfg.size}")
  seconds = time.perf_counter() - started
  checkpoints.save_params(out_dir / "params", state.params)
  steps_run = cfg.optim.steps - resumed_from
  results = {
      "config": dataclasses.asdict(cfg),
      "versions": package_versions(),
      "processes": jax.process_count(),
      "devices": len(jax.devices()),
      "mesh": dict(mesh.shape),
      "params": models.count_params(state.params),
      "resumed_from_step": resumed_from,
      "final_lm_loss": record["loss"],
      "seconds": seconds,
      "tokens_per_second": steps_run * cfg.optim.batch_size * cfg.world.doc_len / seconds,
      "steps_run": steps_run,
      "facts_known": task.probe(state.params, model_cfg, mesh),
  }
  if shd.is_main_process():
    write_json_atomic(out_dir / "results.json", results)
  return results


def _finished_results(cfg: PretrainConfig, out_dir: Path) -> dict | None:
  """The results of a finished run in out_dir, which a rerun returns untouched.
  A run directory of another config is refused rather than overwritten."""
  path = out_dir / "results.json"
  if not path.exists():
    return None
  results = integrity.read_json(path, "results")
  wanted = json.loads(json.dumps(dataclasses.asdict(cfg)))
  if results["config"] != wanted:
    changed = sorted(k for k in wanted if results["config"].get(k) != wanted[k])
    raise ValueError(f"{out_dir} holds a finished run of another config (differs in {changed}); "
                     f"choose another --out")
  return results


def format_results(results: dict) -> str:
  facts = results["facts_known"]
  return (f"{results['config']['size']}: {results['params']:,} params on {results['devices']} "
          f"devices ({results['processes']} processes, mesh {results['mesh']})\n"
          f"final LM loss {results['final_lm_loss']:.4f}; facts known: lives {facts['lives']:.0%}, "
          f"works {facts['works']:.0%}\n"
          f"{results['seconds']:.0f}s, {results['tokens_per_second']:,.0f} tokens/s"
          + (f" (resumed at step {results['resumed_from_step']})"
             if results["resumed_from_step"] else ""))
