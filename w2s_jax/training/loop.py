"""The loop that runs a compiled train step (train.py): progress, NaN checks
at intervals, checkpoints, a bounded queue of dispatched steps, and training
curves (`Watch`), without a host sync per step."""

import collections
import dataclasses
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from w2s_jax.infra import host_memory, interrupts, memory
from w2s_jax.infra import sharding as shd
from w2s_jax.training.train import TrainState


@dataclasses.dataclass(frozen=True)
class Watch:
  """A training curve: `measure(state) -> {name: device array}` every `every`
  steps and after the last. Each call only dispatches work (the loop never
  waits for it); the values come to the host once, when the loop ends."""

  every: int
  measure: Callable

  def __post_init__(self):
    if self.every < 1:
      raise ValueError(f"Watch.every={self.every}: expected a step count >= 1")

  def due(self, done: int, num_steps: int) -> bool:
    return done % self.every == 0 or done == num_steps


def curve_points(points: list) -> list[dict]:
  """A watched loop's points on the host: [{"step": s, "loss": ..., name: ...}],
  numbers as lists (one per seed with a seed axis)."""
  host = shd.to_host(points)
  return [
    {k: (v if k == "step" else np.asarray(v, np.float64).tolist()) for k, v in p.items()}
    for p in host
  ]


class NonFiniteLossError(FloatingPointError):
  pass


def _check_finite(state: TrainState, what: str):
  bad = np.asarray(jax.device_get(state.bad_step))
  if (bad >= 0).any():
    step = int(bad[bad >= 0].min())
    raise NonFiniteLossError(
      f"{what}: loss became NaN or infinite at step {step}; training stopped "
      f"(params are those from before step {step})"
    )


def first_step(state: TrainState) -> int:
  """The step a (possibly restored) state resumes from."""
  return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def fit(
  state: TrainState,
  step_fn,
  batches: Iterator[dict],
  *,
  num_steps: int,
  mesh,
  desc: str,
  check_every: int = 100,
  progress: bool = True,
  max_in_flight: int = 8,
  checkpoints=None,
  watch: Watch | None = None,
) -> tuple[TrainState, dict]:
  """Runs step_fn from state.step up to num_steps. Host syncs only every check_every steps.

  batches must start at state.step (a resumed state continues where it
  stopped). checkpoints: a `checkpoints.TrainCheckpoints`, saved to every
  `checkpoints.every` steps and at the end.

  At most max_in_flight steps are dispatched ahead of the device: an unbounded
  queue buys nothing once the device is busy, and on XLA:CPU with several
  (simulated) devices on few cores, a deep queue of collectives was measured
  to starve an all-reduce rendezvous into a deadlock abort.

  Each checkpoint records the loss and the training seconds so far (those of
  earlier, interrupted runs included), so a resumed run reports the same.

  watch: a training curve (`Watch`); its points, with the training loss at
  each, come back in the metrics as "curve" (`curve_points`), and go into
  each checkpoint's record, so a resumed run's curve is whole.
  """
  metrics = {}
  record = getattr(checkpoints, "record", {})
  points = list(record.get("curve", [])) if watch is not None else []
  seed_axis = state.step.ndim > 0
  start = first_step(state)
  started = time.perf_counter()
  seconds_before = float(record.get("seconds", 0.0))
  in_flight = collections.deque()
  with tqdm(
    total=num_steps,
    initial=start,
    desc=desc,
    unit="step",
    disable=not progress or not shd.is_main_process(),
    leave=False,
    dynamic_ncols=True,
  ) as bar:
    for i in range(start, num_steps):
      # A Ctrl-C swallowed somewhere (a JAX callback) still stops the run here.
      interrupts.raise_if_interrupted()
      state, metrics = step_fn(state, shd.put_batch(next(batches), mesh, seed_axis=seed_axis))
      in_flight.append(metrics["loss"])
      done = i + 1
      if watch is not None and watch.due(done, num_steps):
        points.append({"step": done, "loss": metrics["loss"], **watch.measure(state)})
        in_flight.append(points[-1])  # its programs count toward the queue too
      while len(in_flight) > max_in_flight:
        jax.block_until_ready(in_flight.popleft())
      bar.update(1)
      if done % check_every == 0 or done == num_steps:
        _check_finite(state, desc)
        bar.set_postfix(loss=f"{float(np.mean(shd.to_host(metrics['loss']))):.4f}")
      if checkpoints is not None and (done % checkpoints.every == 0 or done == num_steps):
        _check_finite(state, desc)  # never checkpoint a state that stopped on a NaN
        checkpoints.save(
          done,
          state,
          record={
            "loss": float(np.mean(shd.to_host(metrics["loss"]))),
            "seconds": seconds_before + time.perf_counter() - started,
            **({"curve": curve_points(points)} if watch is not None else {}),
          },
        )
  if checkpoints is not None:
    checkpoints.wait()
  metrics = shd.to_host(metrics)  # waits for the last step
  if watch is not None:
    metrics["curve"] = curve_points(points)
  memory.sample_steady()  # what the loop held while it ran, before its scratch goes back
  host_memory.release_freed_memory()  # this loop's scratch pages back to the system
  return state, metrics
