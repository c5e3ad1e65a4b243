"""Meshes and shardings.

The mesh has two axes: "data" and "fsdp". A batch is split over both (every
device sees its own examples); params and optimizer state are split over
"fsdp" only, each leaf along its largest dimension the axis divides (ZeRO-3 /
FSDP), and XLA gathers them for the forward pass and reduce-scatters the
gradients. With fsdp=1 this is plain data parallelism. The rule depends only
on shapes, so it applies unchanged to params, Adam moments and seed-stacked
states.

In a multi-process run each process holds only its own rows of a batch
(`process_rows`), and `to_host` gathers outputs from every process.
"""

import dataclasses
import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)
# Leaves smaller than this stay replicated: splitting biases and norms saves
# nothing and costs a collective each.
MIN_SHARDED_SIZE = 2**14


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  devices: int | None = None  # None: every device of every process
  fsdp: int = 1  # devices along the fsdp axis; the rest form the data axis

  def __post_init__(self):
    if self.devices is not None and (not isinstance(self.devices, int) or self.devices < 1):
      raise ValueError(f"MeshConfig.devices={self.devices!r}: expected None or an int >= 1")
    if not isinstance(self.fsdp, int) or self.fsdp < 1:
      raise ValueError(f"MeshConfig.fsdp={self.fsdp!r}: expected an int >= 1")

  def make(self) -> jax.sharding.Mesh:
    return make_mesh(self.devices, fsdp=self.fsdp)


def make_mesh(num_devices: int | None = None, *, fsdp: int = 1, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp) mesh over the first num_devices devices (all by default)
  of `devices` (default jax.devices(); a TPU topology's for ahead-of-time
  compilation, plans/chips.py). jax.make_mesh puts the fsdp axis on devices
  that are neighbours on the interconnect."""
  devices = jax.devices() if devices is None else list(devices)
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"num_devices={num_devices}: expected 1..{len(devices)} (devices available)")
    devices = devices[:num_devices]
  if len(devices) % fsdp:
    raise ValueError(f"MeshConfig.fsdp={fsdp}: expected a divisor of the {len(devices)} devices")
  return jax.make_mesh(
    (len(devices) // fsdp, fsdp),
    BATCH_AXES,
    axis_types=(AxisType.Auto, AxisType.Auto),
    devices=devices,
  )


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, *, seed_axis: bool = False) -> NamedSharding:
  """Examples split over every device; a leading seed axis stays whole."""
  return NamedSharding(mesh, P(None, BATCH_AXES) if seed_axis else P(BATCH_AXES))


def fsdp_spec(shape, fsdp: int, *, seed_axis: bool = False) -> P:
  """Split the largest dimension fsdp divides; small leaves stay whole."""
  if fsdp == 1 or math.prod(shape) < MIN_SHARDED_SIZE:
    return P()
  dims = [d for d in range(int(seed_axis), len(shape)) if shape[d] % fsdp == 0]
  if not dims:
    return P()
  split = max(dims, key=lambda d: shape[d])
  return P(*[FSDP if d == split else None for d in range(len(shape))])


def state_sharding(abstract_tree, mesh, *, seed_axis: bool = False):
  """Shardings for a pytree of arrays or ShapeDtypeStructs (params, train state)."""
  fsdp = mesh.shape[FSDP]
  return jax.tree.map(
    lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp, seed_axis=seed_axis)), abstract_tree
  )


def per_device_bytes(tree, shardings) -> int:
  """Bytes one device holds of a pytree of arrays or ShapeDtypeStructs under
  these shardings (nothing allocated)."""
  return sum(
    math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))
  )


def check_batch_size(batch_size: int, mesh, field: str = "batch_size"):
  n = mesh.size
  if batch_size % n:
    raise ValueError(
      f"{field}={batch_size}: expected a multiple of the {n} devices "
      f"(data x fsdp = {mesh.shape[DATA]} x {mesh.shape[FSDP]})"
    )


def process_rows(mesh, batch_size: int) -> slice:
  """The rows of a global batch that this process's devices hold.

  jax.make_mesh lays devices out process by process, so each process holds
  one contiguous block of rows; a layout that breaks this is an error, not a
  silent reshuffle of the data.
  """
  if jax.process_count() == 1:
    return slice(0, batch_size)
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  starts = sorted({idx[0].start or 0 for idx in index_map.values()})
  stops = sorted({idx[0].stop or batch_size for idx in index_map.values()})
  rows = slice(starts[0], stops[-1])
  per_device = batch_size // mesh.size
  if rows.stop - rows.start != per_device * len(index_map):
    raise ValueError(
      f"process {jax.process_index()} holds non-contiguous batch rows "
      f"{sorted(zip(starts, stops))}: expected one block per process"
    )
  return rows


def put_batch(batch: dict, mesh, *, seed_axis: bool = False) -> dict:
  """This process's rows of a batch -> global arrays split over the mesh.

  With one process the rows are the whole batch, as in jax.device_put.
  """
  sharding = batch_sharding(mesh, seed_axis=seed_axis)
  if jax.process_count() == 1:
    return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def to_host(tree):
  """Device arrays -> numpy, gathering the parts other processes hold."""
  leaves = jax.tree.leaves(tree)
  if all(getattr(x, "is_fully_addressable", True) for x in leaves):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def under_mesh(fn, mesh):
  """fn traced with mesh as the abstract mesh in context, so the model's
  activation constraints (batch_constrained) apply; jit the result."""

  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced


def batch_constrained(x):
  """x with its leading (example or token) axis split over every device, as
  the batch is. Inside programs jitted through under_mesh only; elsewhere,
  or for a leading axis the devices do not divide, x as it is.

  Without it, XLA's SPMD partitioner lets FSDP's split of a weight's output
  columns (the fused q/k/v kernel's, for one) spread into the activations:
  heads split over devices on one side of a reshape and examples on the
  other, which it can only resolve by replicating the activation ("involuntary
  full rematerialization", seen by the TPU compiler for Qwen2.5-7B; plans/).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
    return x
  if x.shape[0] % math.prod(mesh.shape[a] for a in BATCH_AXES):
    return x
  return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, *[None] * (x.ndim - 1)))


def is_main_process() -> bool:
  """Only process 0 writes results and logs."""
  return jax.process_index() == 0
