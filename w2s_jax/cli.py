"""The one command line: python -m w2s_jax run|sweep|cascade|best-of-n|pretrain|filter-corpus|plan.

  python -m w2s_jax run --config configs/default.py:small --set finetune.lr=1e-3 --set seeds=0,1
  python -m w2s_jax sweep --config configs/sweep.py:tiny --set base.bootstrap_resamples=500
  python -m w2s_jax cascade --config configs/cascade.py:small
  python -m w2s_jax best-of-n --config configs/reward.py:small
  python -m w2s_jax pretrain --config configs/scale.py:tiny
  python -m w2s_jax filter-corpus --config configs/default.py:facts,small --keep 0.8
  python -m w2s_jax plan --config configs/default.py:small --topology v5e:2x2

Every command loads a config file (`get_config(arg)`, or `sweep(arg)` for
sweeps), applies each `--set path=value` to the frozen dataclasses it returns
(infra/overrides.py: any nested field; a wrong path or type is an error
naming both, before any compute), checks that the config is of the kind the
command runs, and type-checks it whole. experiments/*.py are thin wrappers
of these commands.
"""

import argparse
import functools
import logging
import os
import sys
from pathlib import Path

from w2s_jax.cascade import experiment as cascade
from w2s_jax.cascade import summary as cascade_summary
from w2s_jax.curation.pool import ALIASES, POOL_CRITERIA
from w2s_jax.infra import configs, distributed, files, overrides, sharding
from w2s_jax.plans import planner
from w2s_jax.training import pretrain_job
from w2s_jax.w2s import best_of_n, engine, pool_curation, sweep_tables, tables
from w2s_jax.w2s.experiment import ExperimentConfig, schedule_lines
from w2s_jax.w2s.grid import SweepConfig

COMMANDS = {
  # command: (what it runs, its config's type, the config file's function, default config)
  "run": ("one W2S experiment", ExperimentConfig, "get_config", "configs/default.py"),
  "sweep": (
    "a sweep over weak x strong sizes, losses, filters",
    SweepConfig,
    "sweep",
    "configs/sweep.py",
  ),
  "cascade": ("the cascade experiment", cascade.CascadeConfig, "get_config", "configs/cascade.py"),
  "best-of-n": (
    "best-of-n with the weak, W2S and ceiling reward models",
    best_of_n.BestOfNConfig,
    "best_of_n",
    "configs/reward.py",
  ),
  "pretrain": (
    "pretraining at scale, resumable",
    pretrain_job.PretrainConfig,
    "get_config",
    "configs/scale.py",
  ),
  "filter-corpus": (
    "weak-LM curation of a pretraining pool",
    ExperimentConfig,
    "get_config",
    "configs/default.py:facts",
  ),
}


# Compiles a run's programs for a TPU topology: no run folder, cache or progress.
PLAN = ("compile a run's programs for a TPU topology", ExperimentConfig, "get_config", None)


def parser() -> argparse.ArgumentParser:
  top = argparse.ArgumentParser(
    prog="python -m w2s_jax",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = top.add_subparsers(dest="command", required=True)
  for name, (what, _, _, default) in COMMANDS.items():
    p = sub.add_parser(name, help=what, description=what)
    p.add_argument("--config", default=default, help=f"config file[:arg] (default {default})")
    p.add_argument(
      "--set",
      action="append",
      default=[],
      metavar="PATH=VALUE",
      help="override a config field, e.g. finetune.lr=1e-4 (repeatable)",
    )
    p.add_argument("--out", default=None, help="output folder (default runs/<config name>)")
    if name in ("run", "sweep", "cascade", "best-of-n"):
      p.add_argument(
        "--overwrite",
        action="store_true",
        help="run in an --out holding another config's results (refused otherwise)",
      )
    configs.add_run_args(p)
    if name == "sweep":
      p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: every cell in this process (default); ray: each stage and cell a Ray "
        "task, on this machine or a cluster (docs/sweeps.md)",
      )
      p.add_argument(
        "--address",
        default=None,
        help="with --executor ray: the cluster to join ('auto', or the head's HOST:PORT); "
        "default: a Ray instance on this machine alone",
      )
    if name == "filter-corpus":
      p.add_argument("--keep", type=float, default=0.8, help="keep fraction for the strong corpus")
      p.add_argument(
        "--criterion",
        default="likelihood",
        choices=(*POOL_CRITERIA, *ALIASES),
        help="what filters the strong corpus (mean_logprob = likelihood)",
      )
  p = sub.add_parser(
    "plan",
    help=f"{PLAN[0]} (libtpu, no TPU needed)",
    description=planner.__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--config", default="configs/default.py", help="an ExperimentConfig file[:arg]")
  p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
  p.add_argument("--topology", required=True, help="a TPU topology, e.g. v5e:4x4, v5p:2x2x2")
  p.add_argument("--fsdp", type=_ints, help="fsdp sizes to try, e.g. 1,8 (default: every divisor)")
  p.add_argument("--per-device-batch", type=_ints, default=(1, 2, 4, 8), help="default 1,2,4,8")
  p.add_argument("--programs", default="", help="only programs whose name contains this")
  p.add_argument("--json", help="write every plan here")
  return top


def _ints(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated ints") from None


def load_config(command: str, spec: str, assignments) -> object:
  """The config a command runs.

  Args:
    command: one of COMMANDS.
    spec: "path/to/config.py[:arg]".
    assignments: the --set overrides ("path=value").

  Returns:
    The config, of the command's type, overridden and type-checked.
  """
  _, kind, function, _ = {**COMMANDS, "plan": PLAN}[command]
  cfg = configs.load(spec, function)
  if not isinstance(cfg, kind):
    raise TypeError(
      f"--config {spec}: gives a {type(cfg).__name__}; `{command}` expects a {kind.__name__}"
    )
  return overrides.apply(cfg, assignments)


def _name(cfg) -> str:
  if isinstance(cfg, best_of_n.BestOfNConfig):
    return cfg.reward.name + "-best-of-n"
  return cfg.base.name if isinstance(cfg, SweepConfig) else cfg.name


class _QuietDiskFull(logging.Filter):
  """orbax's writer threads log each failed write of a full disk with its
  traceback (hundreds of lines); main() reports it once, in one line."""

  def filter(self, record):
    text = record.getMessage()
    return (
      files.disk_full(Exception(text)) is None
      and "background save thread" not in text
      and ("Save Finalize thread" not in text)
    )


def main(argv=None, *, exit_now=os._exit) -> None:
  """Runs a command. A full disk ends it with one line naming the file and the
  free space, and exit status 1: exit_now(1) at once, since orbax's background
  writers would otherwise print their tracebacks while Python shuts down."""
  quiet = _QuietDiskFull()
  logging.getLogger("absl").addFilter(quiet)
  try:
    _main(argv)
  except Exception as err:
    message = files.disk_full(err)
    if message is None:
      raise
    sys.stdout.flush()
    print(f"w2s_jax: {message}", file=sys.stderr, flush=True)
    exit_now(1)
    raise SystemExit(1) from None
  finally:
    logging.getLogger("absl").removeFilter(quiet)


def _main(argv=None) -> None:
  args = parser().parse_args(argv)
  cfg = load_config(args.command, args.config, args.set)
  if args.command == "plan":
    planner.run(
      cfg,
      topology=args.topology,
      fsdp=args.fsdp,
      per_device_batch=args.per_device_batch,
      only=args.programs,
      json_path=args.json,
    )
    return
  if args.command == "sweep" and args.executor == "local" and args.address is not None:
    raise ValueError(f"--address {args.address!r}: expected only with --executor ray")
  if args.command == "sweep" and args.executor == "ray":
    dist = distributed.from_environment(cfg.base.distributed)
    if dist.cluster or dist.coordinator_address is not None:
      raise ValueError(
        f"base.distributed={dist}: a multi-process JAX run cannot be a --executor ray "
        "sweep (each Ray task is one process; docs/sweeps.md)"
      )
  if args.command in ("run", "sweep", "pretrain"):
    dist = cfg.base.distributed if isinstance(cfg, SweepConfig) else cfg.distributed
    distributed.initialize(dist)  # before anything asks JAX for devices
  configs.start_run(args)
  progress = not args.no_progress
  default_out = {"sweep": f"runs/sweeps/{_name(cfg)}", "filter-corpus": "runs/filter_corpus"}.get(
    args.command, f"runs/{_name(cfg)}"
  )
  out = Path(args.out or default_out)
  main_process = sharding.is_main_process()
  if args.command == "run":
    if main_process:
      print("\n".join(schedule_lines(cfg)), flush=True)
    results = engine.run_experiment(
      cfg, out_dir=out, cache_dir=args.cache, progress=progress, overwrite=args.overwrite
    )
    if main_process:
      print(tables.format_results(results))
      print(f"\nwrote {out / 'results.json'}")
  elif args.command == "sweep":
    if args.executor == "ray":
      from w2s_jax.w2s import ray_executor  # imported here: the local executor never imports Ray

      run = functools.partial(ray_executor.run_sweep, address=args.address)
    else:
      run = engine.run_sweep
    outcome = run(
      cfg, out_dir=out, cache_dir=args.cache, progress=progress, overwrite=args.overwrite
    )
    if main_process:
      if outcome.rows:
        print(sweep_tables.sweep_table(outcome.rows))
      print(
        f"\n{len(outcome.rows)} cells in {out / 'sweep.jsonl'}; charts: "
        f"python tools/sweep_report.py {out}"
      )
      if outcome.failed:
        print(f"\n{len(outcome.failed)} of {len(cfg.cells)} cells failed (rerun to retry them):")
        for cell, error in outcome.failed.items():
          print(f"  {cell}: {error}")
        print(f"their logs: {out / 'logs'}")
        raise SystemExit(1)
  elif args.command == "cascade":
    results = cascade.run(
      cfg, out_dir=out, cache_dir=args.cache, progress=progress, overwrite=args.overwrite
    )
    if main_process:
      print(cascade_summary.format_results(results))
      print(
        f"\nwrote {out / 'results.json'}, {out / 'per_query.csv'}, {out / 'accuracy_vs_cost.png'}"
      )
  elif args.command == "best-of-n":
    results = best_of_n.run(
      cfg, out_dir=out, cache_dir=args.cache, progress=progress, overwrite=args.overwrite
    )
    if main_process:
      print(best_of_n.format_results(results))
      print(f"\nwrote {out / 'best_of_n.json'} and {out / 'best_of_n.png'}")
  elif args.command == "pretrain":
    results = pretrain_job.run(cfg, out_dir=out, progress=progress)
    if main_process:
      print(pretrain_job.format_results(results))
      print(f"wrote {out / 'results.json'} and {out / 'params'}")
  else:
    results = pool_curation.run(
      cfg,
      keep=args.keep,
      out_dir=out,
      cache_dir=args.cache,
      progress=progress,
      criterion=args.criterion,
    )
    print(pool_curation.format_report(results))
