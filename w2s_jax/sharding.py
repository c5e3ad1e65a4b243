"""Meshes and shardings. Batches split over the data axis; params replicated."""

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(
          f"num_devices={num_devices}: expected 1..{len(devices)} (devices available)")
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Auto,),
                       devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, *, seed_axis: bool = False) -> NamedSharding:
  """Examples split over the data axis; a leading seed axis stays whole."""
  return NamedSharding(mesh, P(None, DATA) if seed_axis else P(DATA))


def check_batch_size(batch_size: int, mesh, field: str = "batch_size"):
  n = mesh.shape[DATA]
  if batch_size % n:
    raise ValueError(f"{field}={batch_size}: expected a multiple of the {n} data-parallel devices")


def put_batch(batch: dict, mesh, *, seed_axis: bool = False) -> dict:
  sharding = batch_sharding(mesh, seed_axis=seed_axis)
  return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}
