"""The pod planner: every program of a run, compiled for a TPU topology,
over mesh shapes and per-device batches; the fastest plan that fits.

  python -m w2s_jax plan --config configs/qwen_w2s.py:models=DIR --topology v5p:2x2x2

For each program (programs.run_programs) and each (fsdp, per-device batch)
it compiles the program with libtpu and reports, per device: memory split
into params, optimizer state, frozen base, teacher and the rest
(temporaries, outputs, code) against the chip's HBM; the compiler's
predicted time of one execution (`optimal_seconds`; where its cost model
gives none, the roofline bound, labelled so); MFU, the model FLOPs
(6 N D for a train step, 2 N D for inference) over that time and the
devices' bf16 peak; the roofline terms (the compiler's FLOPs at peak, its
bytes accessed at HBM bandwidth); the collectives of the optimized HLO; and
any involuntary full rematerialisation the SPMD partitioner reports. The
recommendation per program is the fitting plan with the most examples per
predicted second.
"""

import dataclasses
import math

from w2s_jax.plans import chips, programs
from w2s_jax.plans.compiled import Compiled, compile_and_read


@dataclasses.dataclass(frozen=True)
class Plan:
  program: str
  kind: str
  topology: str
  devices: int
  data: int
  fsdp: int
  per_device_batch: int
  seeds: int
  parts: dict  # bytes per device of the arguments: params, optimizer, frozen base, teacher
  compiled: Compiled
  device: chips.Device
  model_flops: float  # one execution, all devices
  loop_trips: int = 1  # the compiler prices a loop's body once (programs.Program)

  @property
  def batch(self) -> int:
    return self.per_device_batch * self.devices

  @property
  def peak_bytes(self) -> int:
    return self.compiled.peak_bytes

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.device.hbm_bytes

  @property
  def predicted_by_compiler(self) -> bool:
    """The compiler's cost model leaves some programs unpriced: it returns a
    negative optimal_seconds (seen for the logconf step, which sorts)."""
    return self.compiled.optimal_seconds > 0

  @property
  def seconds(self) -> float:
    """The compiler's predicted time of one execution, or where it gives
    none, the roofline bound max(FLOPs at peak, bytes at HBM bandwidth);
    times the trip count of the program's loop, whose body the compiler
    prices once (work outside the loop is then counted that many times too:
    an upper bound, close for grad accumulation, loose for the sampler's
    prefill)."""
    if self.predicted_by_compiler:
      return self.compiled.optimal_seconds * self.loop_trips
    return max(self.flops_seconds, self.hbm_seconds) * self.loop_trips

  @property
  def mfu(self) -> float:
    if not self.seconds > 0:
      return float("nan")
    return self.model_flops / self.devices / self.seconds / self.device.flops

  @property
  def examples_per_second(self) -> float:
    return self.seeds * self.batch / self.seconds if self.seconds > 0 else 0.0

  @property
  def flops_seconds(self) -> float:
    """The compiler's FLOPs (counted per TensorCore) at a core's share of the peak."""
    return self.compiled.flops / (self.device.flops / self.device.cores)

  @property
  def hbm_seconds(self) -> float:
    """The compiler's bytes accessed (per TensorCore) at a core's share of HBM bandwidth."""
    return self.compiled.bytes_accessed / (self.device.hbm_bandwidth / self.device.cores)

  def record(self) -> dict:
    c = self.compiled
    return {
      "program": self.program,
      "kind": self.kind,
      "topology": self.topology,
      "chip": self.device.chip.name,
      "devices": self.devices,
      "mesh": {"data": self.data, "fsdp": self.fsdp},
      "per_device_batch": self.per_device_batch,
      "global_batch_per_seed": self.batch,
      "seeds": self.seeds,
      "bytes_per_device": {
        **self.parts,
        "other (temporaries, outputs, code)": self.peak_bytes - sum(self.parts.values()),
        "temporaries": c.temp_bytes,
        "arguments": c.argument_bytes,
        "peak": self.peak_bytes,
        "hbm": self.device.hbm_bytes,
      },
      "fits": self.fits,
      "optimal_seconds": c.optimal_seconds,
      "seconds": self.seconds,
      "seconds_from": "compiler" if self.predicted_by_compiler else "roofline",
      "loop_trips": self.loop_trips,
      "model_flops": self.model_flops,
      "mfu": self.mfu,
      "examples_per_second": self.examples_per_second,
      "compiler_flops_per_device": c.flops,
      "bytes_accessed_per_device": c.bytes_accessed,
      "flops_seconds": self.flops_seconds,
      "hbm_seconds": self.hbm_seconds,
      "collectives": c.collectives,
      "involuntary_remat": list(c.remat_warnings),
      "compile_seconds": c.compile_seconds,
    }


def plan_program(
  program: programs.Program, devices, *, topology: str, fsdp: int, per_device_batch: int
) -> Plan:
  mesh = chips.topology_mesh(devices, fsdp=fsdp)
  batch = per_device_batch * len(devices)
  compiled = compile_and_read(program.lower(mesh, batch))
  return Plan(
    program=program.name,
    kind=program.kind,
    topology=topology,
    devices=len(devices),
    data=len(devices) // fsdp,
    fsdp=fsdp,
    per_device_batch=per_device_batch,
    seeds=program.seeds,
    parts=program.parts(mesh),
    compiled=compiled,
    device=chips.describe(devices),
    model_flops=program.model_flops(batch),
    loop_trips=program.loop_trips,
  )


def best(plans: list[Plan]) -> Plan | None:
  """The fitting plan with the most examples per predicted second."""
  fitting = [p for p in plans if p.fits and p.seconds > 0]
  return max(fitting, key=lambda p: p.examples_per_second, default=None)


def check_choices(name: str, values, upper: int | None = None) -> tuple[int, ...]:
  values = tuple(values)
  bad = [v for v in values if not isinstance(v, int) or v < 1 or (upper and upper % v)]
  if not values or bad:
    what = f"divisors of the topology's {upper} devices" if upper else "ints >= 1"
    raise ValueError(f"--{name}={list(values)}: expected {what}; {bad} are not")
  return values


def search(
  program: programs.Program,
  devices,
  *,
  topology: str,
  fsdp=None,
  per_device_batch=(1, 2, 4, 8),
  progress=print,
) -> list[Plan]:
  """Every (fsdp, per-device batch) plan of one program; fsdp None: every
  divisor of the device count."""
  n = len(devices)
  fsdps = check_choices("fsdp", fsdp or chips.divisors(n), n)
  batches = check_choices("per-device-batch", per_device_batch)
  plans = []
  for f in fsdps:
    for b in sorted(batches):
      plan = plan_program(program, devices, topology=topology, fsdp=f, per_device_batch=b)
      plans.append(plan)
      progress(
        f"  {program.name}: data {n // f} x fsdp {f}, batch {b}/device: "
        f"{plan.peak_bytes / 1e9:.2f} GB, {_ms(plan)}, "
        f"MFU {plan.mfu:.0%} (compiled in {plan.compiled.compile_seconds:.0f} s)"
      )
      if not plan.fits:
        break  # larger batches of this mesh fit even less
  return plans


def gb(x: float) -> str:
  return f"{x / 1e9:.2f}"


def table(plans: list[Plan], *, recommended=()) -> str:
  """One row per plan, bytes per device in GB (1e9)."""
  head = (
    "| program | mesh (data x fsdp) | batch / device | params | optimizer | frozen base | "
    "teacher | other | peak / HBM | fits | predicted | MFU | FLOPs ms | HBM ms | "
    "all-gather | reduce-scatter | all-reduce | involuntary remat |"
  )
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for p in plans:
    parts = p.parts
    other = p.peak_bytes - sum(parts.values())
    coll = lambda op: (
      f"{p.compiled.collectives[op]['count']} ({gb(p.compiled.collectives[op]['bytes'])} GB)"
    )
    mark = " **(recommended)**" if p in recommended else ""
    lines.append(
      f"| {p.program}{mark} | {p.data} x {p.fsdp} | {p.per_device_batch} | "
      f"{gb(parts.get('params', 0))} | {gb(parts.get('optimizer', 0))} | "
      f"{gb(parts.get('frozen base', 0))} | {gb(parts.get('teacher', 0))} | {gb(other)} | "
      f"{gb(p.peak_bytes)} / {gb(p.device.hbm_bytes)} | {'yes' if p.fits else 'NO'} | "
      f"{_ms(p)} | {_pct(p.mfu)} | {p.flops_seconds * 1e3:.2f} | "
      f"{p.hbm_seconds * 1e3:.2f} | {coll('all-gather')} | {coll('reduce-scatter')} | "
      f"{coll('all-reduce')} | {len(p.compiled.remat_warnings)} |"
    )
  return "\n".join(lines)


def _ms(p: Plan) -> str:
  notes = [] if p.predicted_by_compiler else ["roofline"]
  if p.loop_trips > 1:
    notes.append(f"x{p.loop_trips} loop trips")
  return f"{p.seconds * 1e3:.2f} ms" + (f" ({', '.join(notes)})" if notes else "")


def _pct(x: float) -> str:
  return "n/a" if math.isnan(x) else f"{x:.0%}"


def run(cfg, *, topology: str, fsdp=None, per_device_batch=(1, 2, 4, 8), only="", json_path=None):
  """Plans every program of cfg's run (those whose name contains `only`);
  prints a table per program and the recommendations; returns every plan."""
  from w2s_jax.infra import files  # writes only: the planner reads nothing from disk

  devices = chips.topology_devices(topology)  # before any compile: a bad name fails first
  device = chips.describe(devices)
  check_choices("fsdp", fsdp or chips.divisors(len(devices)), len(devices))
  check_choices("per-device-batch", per_device_batch)
  chosen = [p for p in programs.run_programs(cfg) if only in p.name]
  if not chosen:
    raise ValueError(f"--programs={only!r}: matches none of the run's programs")
  print(
    f"{cfg.name} on {topology}: {len(devices)} x {device.kind} "
    f"({device.chip.bf16_flops / 1e12:.0f} TFLOP/s bf16, {device.hbm_bytes / 2**30:.0f} GiB HBM "
    f"per device); {len(cfg.seeds)} seeds in one program"
  )
  plans, recommended = [], []
  for program in chosen:
    print(f"{program.name} ({program.model.num_params:,} params):")
    found = search(
      program, devices, topology=topology, fsdp=fsdp, per_device_batch=per_device_batch
    )
    plans += found
    if (choice := best(found)) is not None:
      recommended.append(choice)
  print()
  print(table(plans, recommended=recommended))
  print()
  for program in chosen:
    choice = next((p for p in recommended if p.program == program.name), None)
    print(
      f"{program.name}: "
      + (
        "nothing fits; try a larger topology, LoRA or grad_accum_steps"
        if choice is None
        else f"data {choice.data} x fsdp {choice.fsdp}, {choice.per_device_batch} rows per "
        f"device (batch {choice.batch} per seed), {_ms(choice)} predicted, MFU {_pct(choice.mfu)}"
      )
    )
  if json_path:
    files.write_json_atomic(
      json_path,
      {
        "config": cfg.name,
        "topology": topology,
        "plans": [p.record() for p in plans],
        "recommended": [p.record() for p in recommended],
      },
    )
    print(f"wrote {json_path}")
  return plans
