"""TPU chips and topologies: what the planner compiles for and measures against.

`topology_mesh` turns a topology name ("v5p:2x2x2") into a (data, fsdp) mesh
of that topology's devices, through libtpu's ahead-of-time compiler, with no
TPU attached. The chip table holds the published per-chip peaks the compiler
does not report: bf16 matmul FLOP/s, HBM capacity and HBM bandwidth (Google
Cloud TPU system-architecture pages, per chip; one JAX device per chip on
v5e, v5p and v6e, two per v4 chip, whose figures are split between them).
"""

import dataclasses

import jax

from w2s_jax.infra import sharding as shd


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  bf16_flops: float  # peak dense bf16 FLOP/s per chip
  hbm_bytes: float  # HBM per chip
  hbm_bandwidth: float  # bytes/s per chip
  tensorcores: int  # per chip (v4 and v5p: two, run as one "megacore" device)


# Keyed by jax's device_kind.
CHIPS = {
  "TPU v4": Chip("v4", 275e12, 32 * 2**30, 1228e9, 2),
  "TPU v5 lite": Chip("v5e", 197e12, 16 * 2**30, 819e9, 1),
  "TPU v5": Chip("v5p", 459e12, 95 * 2**30, 2765e9, 2),
  "TPU v6 lite": Chip("v6e", 918e12, 32 * 2**30, 1640e9, 1),
}

EXTRA_HINT = 'pip install -e ".[tpu]" (libtpu, the TPU compiler; no TPU needed)'


def libtpu_available() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True


def topology_devices(name: str) -> list:
  """The devices of a TPU topology such as "v5e:2x2" or "v5p:4x4x4", for
  ahead-of-time compilation only."""
  if not isinstance(name, str) or ":" not in name:
    raise ValueError(
      f"--topology={name!r}: expected a TPU topology such as 'v5e:4x4' or 'v5p:2x2x2'"
    )
  if not libtpu_available():
    raise RuntimeError(f"--topology={name!r} needs libtpu: {EXTRA_HINT}")
  from jax.experimental import topologies

  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
  except Exception as e:  # libtpu's own message names what it could not parse
    hint = ""
    if "lockfile" in str(e):  # one process per host holds libtpu unless told otherwise
      hint = "; another process holds libtpu: ALLOW_MULTIPLE_LIBTPU_LOAD=1 compiles beside it"
    raise ValueError(f"--topology={name!r}: libtpu cannot build it ({e}){hint}") from None


@dataclasses.dataclass(frozen=True)
class Device:
  """One JAX device of a topology: its share of a chip's peaks."""

  kind: str
  chip: Chip
  per_chip: int  # JAX devices per chip

  @property
  def flops(self) -> float:
    return self.chip.bf16_flops / self.per_chip

  @property
  def hbm_bytes(self) -> float:
    return self.chip.hbm_bytes / self.per_chip

  @property
  def hbm_bandwidth(self) -> float:
    return self.chip.hbm_bandwidth / self.per_chip

  @property
  def cores(self) -> int:
    """TensorCores behind one device. The compiler's cost_analysis counts
    FLOPs and bytes per core: for Qwen2.5-7B's step on v5p (2 per device)
    it reports 0.667 of the model FLOPs per device, which is remat's 8/6
    halved."""
    return max(1, self.chip.tensorcores // self.per_chip)


def describe(devices) -> Device:
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise ValueError(f"device_kind={kind!r}: no peaks known; expected one of {sorted(CHIPS)}")
  cores = {getattr(d, "core_on_chip", 0) for d in devices}
  return Device(kind=kind, chip=CHIPS[kind], per_chip=len(cores))


def topology_mesh(devices, *, fsdp: int) -> jax.sharding.Mesh:
  """The (data, fsdp) mesh a run builds (sharding.make_mesh), over a topology's devices."""
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"fsdp={fsdp}: expected a divisor of the topology's {len(devices)} devices")
  return shd.make_mesh(fsdp=fsdp, devices=devices)


def divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]
