"""Multi-process runs through JAX's own runtime (jax.distributed), from config or environment.

The same command runs one process or N: with nothing set it is one process;
with a coordinator address, a process count and this process's id (in the
config or in JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) it
joins an N-process run; with `cluster=True` (or W2S_CLUSTER=1) JAX detects the
cluster itself (TPU pods, SLURM, Open MPI, Kubernetes). It must run before
anything asks JAX for devices.
"""

import dataclasses
import os

import jax

ENV = {
  "coordinator_address": "JAX_COORDINATOR_ADDRESS",
  "num_processes": "JAX_NUM_PROCESSES",
  "process_id": "JAX_PROCESS_ID",
}
CLUSTER_ENV = "W2S_CLUSTER"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  coordinator_address: str | None = None  # "host:port" of process 0
  num_processes: int | None = None
  process_id: int | None = None
  cluster: bool = False  # let JAX detect the cluster and fill in all three


def from_environment(cfg: DistributedConfig, environ=os.environ) -> DistributedConfig:
  """cfg with every unset field filled from the environment."""
  values = {}
  for field, var in ENV.items():
    if getattr(cfg, field) is None and environ.get(var):
      raw = environ[var]
      if field == "coordinator_address":
        values[field] = raw
        continue
      try:
        values[field] = int(raw)
      except ValueError:
        raise ValueError(f"{var}={raw!r}: expected an integer") from None
  if not cfg.cluster and environ.get(CLUSTER_ENV, "") not in ("", "0"):
    values["cluster"] = True
  return dataclasses.replace(cfg, **values)


def check(cfg: DistributedConfig) -> None:
  """All three process fields or none: half a multi-process setup is an error."""
  given = {f: getattr(cfg, f) for f in ENV}
  missing = [f"{f} (or {ENV[f]})" for f, v in given.items() if v is None]
  if cfg.cluster or len(missing) == len(ENV):
    return
  if missing:
    raise ValueError(
      f"DistributedConfig: {', '.join(missing)} not set; a multi-process run "
      f"needs coordinator_address, num_processes and process_id (got {given})"
    )
  if not isinstance(cfg.num_processes, int) or cfg.num_processes < 1:
    raise ValueError(f"DistributedConfig.num_processes={cfg.num_processes!r}: expected an int >= 1")
  if not isinstance(cfg.process_id, int) or not 0 <= cfg.process_id < cfg.num_processes:
    raise ValueError(
      f"DistributedConfig.process_id={cfg.process_id!r}: expected an int in "
      f"[0, {cfg.num_processes})"
    )


def initialize(cfg: DistributedConfig = DistributedConfig()) -> DistributedConfig:
  """Joins the multi-process run the config (or environment) describes; a no-op
  for a single process. Returns the resolved config."""
  cfg = from_environment(cfg)
  check(cfg)
  if cfg.cluster:
    jax.distributed.initialize()
  elif cfg.coordinator_address is not None:
    jax.distributed.initialize(
      coordinator_address=cfg.coordinator_address,
      num_processes=cfg.num_processes,
      process_id=cfg.process_id,
    )
  return cfg
