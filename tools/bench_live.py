"""The live supervisor's cost: train-step time of `live` (lambda = 0.5 and 1)
against `sft` and `forward_kl` (the configs' live divergence), and how much
of it is the student's sampling.

  python tools/bench_live.py [--config configs/generative.py] [--rounds 7] [--steps 10]
                             [--json PATH] [--quick]

The default generative experiment's shapes: its task (tasks.make_task), weak
and strong sizes, seeds (vmapped), batch and sampling config (max_new_tokens,
EOS). Random-init params: step time does not depend on the weights, except
that sampling stops early once every row has emitted EOS, so it is timed at
its longest (random weights rarely emit EOS). Each variant's compiled stage
step (finetune.finetune_step) is warmed up, then the variants run in
interleaved rounds of --steps steps each; per-step medians are printed. The
sampling alone is live.sample_rows (row selection, sampling, layout) jitted
over the seeds, on the same batches.
"""

import argparse
import dataclasses
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness

from w2s_jax.infra import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.keep_freed_memory(by_default=False)  # before JAX starts: see host_memory

import jax  # noqa: E402
import numpy as np  # noqa: E402

from w2s_jax.infra import configs  # noqa: E402
from w2s_jax.infra import sharding as shd  # noqa: E402
from w2s_jax.models import transformer
from w2s_jax.training import finetune, live, train
from w2s_jax.training.generative_losses import ForwardKl, Sft
from w2s_jax.training.live import Live
from w2s_jax.w2s import parts as parts_lib

import harness  # noqa: E402

VARIANTS = {
  "sft": Sft(),
  "forward_kl": ForwardKl(),
  "live 0.5": Live(live_fraction=0.5, live_divergence="forward_kl"),
  "live 1.0": Live(live_fraction=1.0, live_divergence="forward_kl"),
}


QUICK = dict(config=f"{harness.CONFIGS / 'generative.py'}:small", rounds=2, steps=2)


def _stacked_init(cfg, seeds):
  init = jax.jit(jax.vmap(lambda k: transformer.init_params(cfg, k)))
  return init(jax.random.split(jax.random.key(1), len(seeds)))


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--config", default=str(harness.CONFIGS / "generative.py"))
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
  parser.add_argument("--json", help="write the numbers here")
  parser.add_argument("--quick", action="store_true", help=f"seconds: {QUICK}")
  args = parser.parse_args(argv)
  if args.quick:  # explicit flags still win
    parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
  load_before, wall = os.getloadavg(), time.perf_counter()
  env = harness.machine()
  cfg = configs.load(args.config)
  parts = parts_lib.build(cfg, cache_dir=tempfile.mkdtemp(prefix="bench-live-"), progress=False)
  mesh, seeds, optim, sampler = parts.mesh, parts.seeds, cfg.finetune, parts.evaluator.sampling
  strong_cfg = cfg.model_config(cfg.strong_size, parts.task)
  weak_cfg = cfg.model_config(cfg.weak_size, parts.task)
  batches = finetune.seed_stream(
    parts.trainer.supervised("train_w2s", size=cfg.strong_size),
    batch_size=optim.batch_size,
    seeds=seeds,
    rows=shd.process_rows(mesh, optim.batch_size),
  )
  batches = [shd.put_batch(next(batches), mesh, seed_axis=True) for _ in range(args.steps)]
  student = _stacked_init(strong_cfg, seeds)
  print(
    f"{cfg.name}: strong {cfg.strong_size} (student), weak {cfg.weak_size} (teacher), "
    f"{len(seeds)} seeds vmapped, batch {optim.batch_size}, sequences "
    f"{batches[0]['tokens'].shape[-1]} tokens (prompt {batches[0]['prompt'].shape[-1]}), "
    f"max_new_tokens {sampler.max_new_tokens}, {len(jax.devices())} device(s)"
  )

  runs = {}
  for name, loss_cfg in VARIANTS.items():
    teacher_cfg = weak_cfg if loss_cfg.needs_teacher else None
    sampling_cfg = sampler if loss_cfg.name == "live" else None
    optimizer, step, teacher_sharding = finetune.finetune_step(
      strong_cfg, loss_cfg, optim, mesh, len(seeds), True, teacher_cfg, sampling_cfg
    )
    state = train.initial_state(
      train.from_params,
      student,
      optimizer=optimizer,
      mesh=mesh,
      rng=train.seed_keys(seeds),
      per_seed=True,
    )
    if teacher_cfg is not None:
      teacher = jax.device_put(_stacked_init(weak_cfg, seeds), teacher_sharding)
      step = functools.partial(lambda s, b, c, t: c(s, b, t), c=step, t=teacher)
    runs[name] = [step, state]

  sample_fns = {}
  for name, loss_cfg in VARIANTS.items():
    if loss_cfg.name == "live":
      sampling_cfg = dataclasses.replace(sampler, temperature=loss_cfg.live_temperature)
      fn = functools.partial(
        live.sample_rows,
        model_cfg=strong_cfg,
        sampling_cfg=sampling_cfg,
        fraction=loss_cfg.live_fraction,
      )
      sample_fns[f"sampling ({name})"] = jax.jit(jax.vmap(lambda p, b, k, fn=fn: fn(p, b, k)))
  keys = jax.random.split(jax.random.key(0), len(seeds))
  params = student  # never donated (the states are)

  def run_steps(name):
    step, state = runs[name]
    for batch in batches:
      state, metrics = step(state, batch)
    jax.block_until_ready(state)
    runs[name][1] = state
    return metrics

  def run_sampling(name):
    for batch in batches:
      out = sample_fns[name](params, batch, keys)
    jax.block_until_ready(out)
    return out

  contenders = {
    **{n: functools.partial(run_steps, n) for n in runs},
    **{n: functools.partial(run_sampling, n) for n in sample_fns},
  }
  harness.print_machine(env, load_before)
  lengths = {}

  def record_length(name, fn):
    def run(n):
      for _ in range(n):
        out = fn()
      if name.startswith("live"):
        lengths[name] = float(np.mean(out["live_response_len"]))

    return run

  contenders = {name: record_length(name, fn) for name, fn in contenders.items()}
  first, errors = harness.warm_up(contenders, 0)  # compiles each
  for name, seconds in first.items():
    print(
      f"  warm-up {name:22s} {seconds:6.1f}s"
      + (f"; mean sampled length {lengths[name]:.2f}" if name in lengths else "")
    )
  timings = harness.interleaved(contenders, args.rounds, 1)
  per_step = {name: [t / len(batches) for t in timings.seconds[name]] for name in timings.keys()}
  med = {name: float(np.median(v)) for name, v in per_step.items()}
  print(f"per-step medians over {args.rounds} interleaved rounds of {len(batches)} steps:")
  for name, v in per_step.items():
    print(
      f"  {name:22s} {1e3 * med[name]:8.2f} ms  (min {1e3 * min(v):.2f}, max {1e3 * max(v):.2f})"
      f"  peak RSS {timings.peak_rss_mb[name]:.0f} MB"
    )
  for name in ("live 0.5", "live 1.0"):
    share = med[f"sampling ({name})"] / med[name]
    print(
      f"  {name}: {med[name] / med['sft']:.2f}x sft, {med[name] / med['forward_kl']:.2f}x "
      f"forward_kl; sampling alone is {share:.0%} of its step"
    )
  load_after = harness.print_footer(load_before, wall)
  if args.json:
    harness.write_record(
      args.json,
      {
        "config": vars(args),
        **env,
        "load_before": load_before,
        "load_after": load_after,
        "first_s": first,
        "errors": errors,
        "seconds_per_step": per_step,
        "peak_rss_mb": timings.peak_rss_mb,
        "peak_rss_covers": timings.peak_rss_covers,
        "mean_sampled_length": lengths,
      },
    )


if __name__ == "__main__":
  main()
