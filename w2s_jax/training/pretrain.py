"""LM pretraining: the one loop, and the cached pretrained models of an experiment.

`train_lm` is the one pretraining loop: the W2S pipeline uses it for the
models it caches (`pretrained_model`), and pretrain_job.py wraps it as a
standalone job (experiments/train.py) for meshes, pods and scaling studies.
A cache entry is keyed by a digest of everything that determines it (the
model config, the task's corpus fingerprint, the optimizer, the seed,
fingerprint.KEY_SCHEME); see infra/checkpoints.PretrainedCache.
"""

import contextlib
import shutil

import jax

from w2s_jax.data.dataset import Dataset, shuffled_batches
from w2s_jax.infra import checkpoints
from w2s_jax.infra import sharding as shd
from w2s_jax.infra.fingerprint import KEY_SCHEME, digest
from w2s_jax.models import hf_import, transformer
from w2s_jax.models.model_config import ModelConfig
from w2s_jax.training import loop, objectives, train
from w2s_jax.training.train import OptimConfig


def train_lm(
  model_cfg: ModelConfig,
  corpus: Dataset,
  optim: OptimConfig,
  *,
  seed: int,
  mesh,
  checkpoint_dir,
  checkpoint_every: int,
  checkpoint_keep: int = 2,
  async_save: bool = True,
  corpus_tag: str = "corpus",
  progress: bool = True,
  desc: str = "pretrain",
):
  """Next-token training from a fresh init; resumes from checkpoint_dir if it
  holds a checkpoint of this run. Returns (state, record, resumed step): the
  record holds the final loss and the training seconds of every run that
  reached the final checkpoint, killed ones included."""
  # Each micro-batch is split over every device.
  shd.check_batch_size(
    optim.batch_size // optim.grad_accum_steps, mesh, "batch_size / grad_accum_steps"
  )
  optimizer = train.make_optimizer(optim)
  key = jax.random.key(seed)
  state = train.initial_state(
    lambda k: transformer.init_params(model_cfg, k),
    key,
    optimizer=optimizer,
    mesh=mesh,
    rng=jax.random.key_data(key),
  )
  ckpts = checkpoints.TrainCheckpoints(
    checkpoint_dir,
    every=checkpoint_every,
    keep=checkpoint_keep,
    async_save=async_save,
    data={
      "corpus": corpus_tag,
      "examples": len(corpus),
      "seed": seed,
      "batch_size": optim.batch_size,
    },
  )
  state = ckpts.restore(state)
  resumed_from = loop.first_step(state)
  step = train.compile_train_step(
    loss_fn=objectives.lm_objective(model_cfg),
    optimizer=optimizer,
    total_steps=optim.steps,
    mesh=mesh,
    state_sharding=train.sharding_of(state),
    accum_steps=optim.grad_accum_steps,
  )
  batches = shuffled_batches(
    corpus,
    batch_size=optim.batch_size,
    seed=seed,
    start_step=resumed_from,
    rows=shd.process_rows(mesh, optim.batch_size),
  )
  try:
    state, _ = loop.fit(
      state,
      step,
      batches,
      num_steps=optim.steps,
      mesh=mesh,
      desc=desc,
      progress=progress,
      checkpoints=ckpts,
    )
  finally:
    ckpts.close()
  return state, ckpts.record, resumed_from


def cache_key(cfg, size: str, task, *, seed: int, corpus_tag: str = "clean") -> str:
  """The pretrained cache's key of `size` (an ExperimentConfig's size): what
  its params are the result of (the model, the corpus's contents, the
  pretraining config, the draw)."""
  return digest(
    {
      "model": cfg.model_config(size, task),
      "corpus": task.fingerprint,
      "optim": cfg.pretrain,
      "seed": seed,
      "key_scheme": KEY_SCHEME,
      **({} if corpus_tag == "clean" else {"corpus_tag": corpus_tag}),
    }
  )


def is_cached(cfg, size: str, task, mesh, cache, *, seed: int, corpus_tag: str = "clean") -> bool:
  """Whether the cache holds a complete, valid entry of `size`, which
  pretrained_model would read (a corrupt one is reported and removed, as
  pretrained_model does)."""
  model_cfg = cfg.model_config(size, task)
  key = cache_key(cfg, size, task, seed=seed, corpus_tag=corpus_tag)
  abstract = jax.eval_shape(lambda: transformer.init_params(model_cfg, jax.random.key(seed)))
  like = checkpoints.abstract_like(abstract, shd.state_sharding(abstract, mesh))
  params, _ = cache.load(size, key, like, repair=False)
  if params is None and cache.entry(size, key).exists():
    with cache.lock(size, key):
      params, _ = cache.load(size, key, like)
  return params is not None


def pretrained_model(
  cfg,
  size: str,
  task,
  corpus,
  mesh,
  cache,
  progress=True,
  corpus_tag: str = "clean",
  splits=None,
  *,
  seed: int,
):
  """Params for `size` of an ExperimentConfig after LM pretraining on the
  task's corpus; cached with orbax (a PretrainedCache).
  A size named in cfg.pretrained_dirs is imported from its folder instead.

  corpus_tag names a corpus other than the task's own (e.g. a filtered
  pool); it is part of the cache key. splits: the task as an imported model
  reads it through its own tokenizer (its LM probe runs on those tokens).
  seed: the pretraining draw (its init and its batches)."""
  model_cfg = cfg.model_config(size, task)
  init = lambda: transformer.init_params(model_cfg, jax.random.key(seed))
  if size in dict(cfg.pretrained_dirs):
    folder = dict(cfg.pretrained_dirs)[size]
    params = hf_import.load_params(folder, model_cfg)
    params = jax.device_put(params, shd.state_sharding(params, mesh))
    if not model_cfg.causal:
      probe = {}  # an encoder has no LM head to probe
    elif splits is not None and splits is not task.splits:
      probe = task.probe(params, model_cfg, mesh, test=splits["test"])
    else:
      probe = task.probe(params, model_cfg, mesh)
    return (
      params,
      model_cfg,
      {"pretrained": f"imported from {folder}", "size": size, "corpus": None, **probe},
    )
  if not cfg.use_pretraining:
    params = init()
    return (
      params,
      model_cfg,
      {"pretrained": False, "corpus": None, **task.probe(params, model_cfg, mesh)},
    )
  key = cache_key(cfg, size, task, seed=seed, corpus_tag=corpus_tag)
  abstract = jax.eval_shape(init)
  like = checkpoints.abstract_like(abstract, shd.state_sharding(abstract, mesh))
  # A complete entry is read without its lock (a read-only shared cache
  # serves); otherwise one process builds it, and another that wants it waits, then reads it.
  params, info = cache.load(size, key, like, repair=False)
  if params is not None:
    return params, model_cfg, {**info, "cached": True}
  with cache.lock(size, key):
    params, info = cache.load(size, key, like)
    if params is not None:
      return params, model_cfg, {**info, "cached": True}
    older = cache.older_entries(size, KEY_SCHEME)
    if older and shd.is_main_process():
      print(
        f"pretrained cache {cache.root}: {len(older)} entr{'y' if len(older) == 1 else 'ies'} "
        f"of {size!r} written by an older w2s_jax (keyed another way) are not used; "
        f"pretraining {size!r} again (the old entries stay: remove them when done)"
      )
    # An interrupted pretraining resumes from its last checkpoint, on the same batches.
    train_dir = cache.entry(size, key) / "train"
    new_entry = not cache.entry(size, key).exists()
    try:
      state, record, _ = train_lm(
        model_cfg,
        corpus,
        cfg.pretrain,
        seed=seed,
        mesh=mesh,
        checkpoint_dir=train_dir,
        checkpoint_every=cfg.checkpoint_every,
        # The cached models are small: a synchronous save costs little, and a
        # write that fails (a full disk) fails here, once, not in writer threads.
        async_save=False,
        corpus_tag=corpus_tag,
        progress=progress,
        desc=f"pretrain {size}",
      )
    except loop.NonFiniteLossError:
      # A deterministic failure: its checkpoints would only lead to it again.
      # The folders this call created go; anything else found there stays.
      if new_entry and shd.is_main_process():
        shutil.rmtree(train_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
          cache.entry(size, key).rmdir()  # only if empty
      raise
    info = {
      "pretrained": True,
      "size": size,
      "seed": seed,
      "corpus": corpus_tag,
      "key_scheme": KEY_SCHEME,
      "params": transformer.count_params(state.params),
      "steps": cfg.pretrain.steps,
      "tokens": int(cfg.pretrain.steps * cfg.pretrain.batch_size * task.max_len),
      "seconds": record["seconds"],
      "final_lm_loss": record["loss"],
      **task.probe(state.params, model_cfg, mesh),
    }
    cache.save(size, key, state.params, info)
    if shd.is_main_process():
      shutil.rmtree(train_dir, ignore_errors=True)  # the cache entry is complete
  return state.params, model_cfg, {**info, "cached": False}
