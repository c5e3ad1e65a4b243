"""Pretraining at scale: one model, any mesh, one process or many.

  python experiments/train.py --config configs/scale.py            # small, all local devices
  python experiments/train.py --config configs/scale.py:tiny       # seconds; what the tests run

Args (comma-separated):
  tiny       a 20-step run of the pico model on a small world
  size=NAME  a row of the model table, pico ... xxl (default small)
  fsdp=N     devices on the fsdp axis: params and optimizer state split N ways
  bf16       bf16 compute, float32 master params
  accum=N    gradient accumulation over N micro-batches
  remat      recompute each block in the backward pass
  steps=N    default 1000 (20 with tiny)
  batch=N    global batch size (default 32)
  cluster    let JAX detect a TPU pod / SLURM / Open MPI cluster

Multi-process: set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and
JAX_PROCESS_ID for each process (or pass `cluster` on a TPU pod), and run the
same command everywhere. Only process 0 writes results.json and logs; every
process reads only its own rows of each batch. Rerunning the command resumes
from the last checkpoint, on whatever mesh is current.

Expected on a 2-core CPU: `:tiny` about 10 s; the default (small, 1000 steps)
a few minutes, learning most of the testbed's frequent facts.
"""

import dataclasses

from w2s_jax.data import testbed
from w2s_jax.infra.configs import parse_arg
from w2s_jax.infra.distributed import DistributedConfig
from w2s_jax.infra.sharding import MeshConfig
from w2s_jax.training.pretrain_job import PretrainConfig
from w2s_jax.training.train import OptimConfig


def get_config(arg=None):
  arg = parse_arg(
    arg,
    tiny=False,
    size="",
    fsdp=1,
    bf16=False,
    accum=1,
    remat=False,
    steps=0,
    batch=32,
    cluster=False,
  )
  cfg = PretrainConfig(
    name=f"scale-{arg.size or 'small'}",
    size=arg.size or "small",
    optim=OptimConfig(
      steps=arg.steps or 1000,
      batch_size=arg.batch,
      lr=3e-3,
      warmup_frac=0.02,
      weight_decay=0.0,
      grad_accum_steps=arg.accum,
    ),
    dtype="bfloat16" if arg.bf16 else "float32",
    remat=arg.remat,
    mesh=MeshConfig(fsdp=arg.fsdp),
    distributed=DistributedConfig(cluster=arg.cluster),
    checkpoint_every=200,
  )
  if arg.tiny:
    cfg = dataclasses.replace(
      cfg,
      name="scale-tiny",
      size=arg.size or "pico",
      world=testbed.WorldConfig(
        num_entities=60, entities_per_split=20, corpus_docs=200, syllables=8
      ),
      optim=dataclasses.replace(cfg.optim, steps=arg.steps or 20, batch_size=8),
      checkpoint_every=5,
    )
  return cfg
