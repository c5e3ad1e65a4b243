"""What the TPU compiler says of one compiled program: memory, predicted
time, collectives, and any rematerialisation the SPMD partitioner forced.

`compile_and_read` compiles a lowered program and reads the partitioner's
"Involuntary full rematerialization" warnings, which exist only as log
lines: libtpu writes them to its own log files (TPU_LOG_DIR, by default
/tmp/tpu_logs, one WARNING file per process), other backends to stderr, so
both are read. The rest comes from the compiled executable:
memory_analysis (bytes per device), cost_analysis (per-device FLOPs, bytes
accessed and the compiler's own `optimal_seconds`) and the optimized HLO
(collectives, counted and sized by their result shapes).
"""

import contextlib
import dataclasses
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
DTYPE_BYTES = {
  "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
  "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
  "s32": 4, "u32": 4, "f32": 4,
  "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
# `%name = <result type> <op>(`: the result type is a shape or a tuple of shapes.
_INSTRUCTION = re.compile(
  r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(?P<type>.+?)\s+(?P<op>[a-z][a-z0-9-]*)\(", re.MULTILINE
)
_SHAPE = re.compile(r"\b(?P<dtype>[a-z]+[0-9]*[a-z0-9]*)\[(?P<dims>[0-9,]*)\]")
REMAT_MARK = "Involuntary full rematerialization"


@dataclasses.dataclass(frozen=True)
class Compiled:
  """One program as the TPU compiler compiled it (bytes and FLOPs per device)."""

  argument_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs written in place of donated arguments
  temp_bytes: int
  code_bytes: int
  flops: float  # per device, as the compiler counts them
  bytes_accessed: float
  optimal_seconds: float  # the compiler's predicted time of one execution
  collectives: dict  # op -> {"count", "bytes"} (per execution of the HLO text, loops once)
  remat_warnings: tuple[str, ...]  # the partitioner's involuntary rematerialisations
  compile_seconds: float

  @property
  def peak_bytes(self) -> int:
    """Live at once on a device: arguments, temporaries, and outputs not
    written over donated arguments, plus the program itself."""
    return (
      self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes + self.code_bytes
    )


def collectives(hlo_text: str) -> dict:
  """Count and result bytes of each collective in optimized HLO text. An
  async pair (`all-gather-start` / `-done`) counts once: an all-gather or
  permute start by its last result (its first is the operand), an
  all-reduce start by its results (the reduced buffers)."""
  out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
  for m in _INSTRUCTION.finditer(hlo_text):
    op = m["op"]
    base = op.removesuffix("-start")
    if base not in out or op.endswith("-done"):
      continue
    shapes = _SHAPE.findall(m["type"])
    if not shapes:
      continue
    if op.endswith("-start") and base in ("all-gather", "collective-permute", "all-to-all"):
      shapes = shapes[-1:]
    out[base]["count"] += 1
    out[base]["bytes"] += sum(_shape_bytes(dtype, dims) for dtype, dims in shapes)
  return out


def _shape_bytes(dtype: str, dims: str) -> int:
  if dtype not in DTYPE_BYTES:
    return 0  # tokens, u32 keys... anything unknown is too small to matter here
  return DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))


@contextlib.contextmanager
def captured_stderr():
  """The process's fd 2 (C++ logs included) into a list of lines."""
  lines: list[str] = []
  with tempfile.TemporaryFile(mode="w+b") as sink:
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
      yield lines
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      sink.seek(0)
      lines.extend(sink.read().decode(errors="replace").splitlines())


def libtpu_warning_logs() -> list[Path]:
  """This process's libtpu WARNING log files (glog names them by PID)."""
  folder = Path(os.environ.get("TPU_LOG_DIR") or "/tmp/tpu_logs")
  return sorted(folder.glob(f"*.log.WARNING.*.{os.getpid()}"))


@contextlib.contextmanager
def new_log_lines():
  """Lines this process writes to stderr or to its libtpu WARNING logs meanwhile."""
  before = {p: p.stat().st_size for p in libtpu_warning_logs()}
  lines: list[str] = []
  with captured_stderr() as err:
    yield lines
  lines.extend(err)
  for p in libtpu_warning_logs():
    with open(p, "rb") as f:
      f.seek(before.get(p, 0))
      lines.extend(f.read().decode(errors="replace").splitlines())


def compile_and_read(lowered) -> Compiled:
  started = time.perf_counter()
  with new_log_lines() as log:
    executable = lowered.compile()
  seconds = time.perf_counter() - started
  memory = executable.memory_analysis()
  cost = executable.cost_analysis() or {}
  if isinstance(cost, list):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return Compiled(
    argument_bytes=int(memory.argument_size_in_bytes),
    output_bytes=int(memory.output_size_in_bytes),
    alias_bytes=int(memory.alias_size_in_bytes),
    temp_bytes=int(memory.temp_size_in_bytes),
    code_bytes=int(memory.generated_code_size_in_bytes),
    flops=float(cost.get("flops", 0.0)),
    bytes_accessed=float(cost.get("bytes accessed", 0.0)),
    optimal_seconds=float(cost.get("optimal_seconds", float("nan"))),
    collectives=collectives(executable.as_text()),
    remat_warnings=tuple(l for l in log if REMAT_MARK in l),
    compile_seconds=seconds,
  )
