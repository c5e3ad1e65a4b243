"""Throughput of the classification cascade (w2s_jax.serving) against the strong model alone.

  python tools/bench_cascade.py [--weak tiny --strong medium --seq 128 --vocab 512]
                                [--batch 128 --queries 512 --bucket-step 8]
                                [--rates 0,0.1,0.3,0.5,1] [--rounds 3] [--json PATH] [--quick]

One stream of --queries random full-length queries (--seq tokens each), served
in batches of --batch, 1-device mesh, fp32. Both models are random-init (a
random class head on the final hidden state, so the weak confidences spread):
only the routing, not the answers, matters for speed. The weak model's
confidences on the stream give the thresholds: for each deferral rate r in
--rates the threshold is the confidence ranked r * queries (r = 0: -inf, none
deferred; r = 1: inf, all deferred). Contenders:
  strong_only      serving.serve_strong_only: every query through the strong model;
  cascade r        serving.serve at that threshold: the weak model on every
                   query, the deferred ones gathered into the smallest bucket
                   (multiples of --bucket-step up to --batch) and run through
                   the strong model.
As every benchmark here (tools/harness.py): each
contender's first pass over the stream (compiles included) is timed apart;
then in each of --rounds rounds every contender serves the whole stream once,
the order rotating. Reported: median seconds per stream, queries/s, speed-up
over strong_only (from the medians, and the median of per-round ratios),
beside the FLOP accounting 2 * params * tokens (weak on all + strong on the
deferred queries) and the FLOPs actually run (strong on whole buckets), each
relative to strong_only, and this run's jnp.dot fp32 matmul peak.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax.infra import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.keep_freed_memory(by_default=False)  # before JAX starts: see host_memory
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from w2s_jax.cascade import serving
from w2s_jax.data.dataset import Dataset  # noqa: E402
from w2s_jax.infra import sharding as shd  # noqa: E402
from w2s_jax.models import (
  model_config,
  transformer,  # noqa: E402
)

import harness  # noqa: E402

QUICK = dict(
  weak="mini", strong="tiny", seq=32, batch=32, queries=64, rounds=2, peak_n=512, peak_reps=1
)


def parse_args(argv):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--weak", default="tiny", help="model_config.SIZES name or WIDTHxDEPTH")
  parser.add_argument("--strong", default="medium")
  parser.add_argument("--seq", type=int, default=128, help="tokens per query")
  parser.add_argument(
    "--vocab",
    type=int,
    default=512,
    help="small, so embedding lookups (no FLOPs) are a small share of params",
  )
  parser.add_argument("--batch", type=int, default=128, help="queries per serving batch")
  parser.add_argument("--queries", type=int, default=512, help="queries in the stream")
  parser.add_argument("--bucket-step", type=int, default=8, help="buckets: multiples of this")
  parser.add_argument("--rates", default="0,0.1,0.3,0.5,1", help="target deferral rates")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--peak-n", type=int, default=2048, help="matmul size of the peak test")
  parser.add_argument("--peak-reps", type=int, default=5)
  parser.add_argument("--json", help="write the numbers here")
  parser.add_argument("--quick", action="store_true", help=f"smoke configuration: {QUICK}")
  args = parser.parse_args(argv)
  if args.quick:  # explicit flags still win over the quick defaults
    parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
  args.rates = [float(r) for r in args.rates.split(",")]
  return args


def build_model(name, args, seed):
  cfg = model_config.decode_size(name, vocab_size=args.vocab, max_len=args.seq, head_input="hidden")
  params = jax.jit(lambda: transformer.init_params(cfg, jax.random.key(seed)))()
  # Init gives a zero class head (every confidence 0.5): a random one spreads them.
  kernel = jax.random.normal(jax.random.key(seed + 100), (cfg.width, cfg.num_classes))
  params["cls_head"]["kernel"] = kernel * 3.0 / np.sqrt(cfg.width)
  return cfg, params


def thresholds(conf, rates):
  """Threshold per target rate: the confidence ranked rate * N defers that many."""
  s, n = np.sort(conf), len(conf)
  k = [round(r * n) for r in rates]
  return [-np.inf if i == 0 else np.inf if i >= n else float(s[i]) for i in k]


def main(argv=None):
  args = parse_args(argv)
  load_before = os.getloadavg()
  wall = time.perf_counter()
  env = harness.machine()
  mesh = shd.make_mesh(1)
  (wcfg, wp), (scfg, sp) = build_model(args.weak, args, 0), build_model(args.strong, args, 1)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, args.vocab, (args.queries, args.seq)).astype(np.int32)
  data = Dataset(tokens=tokens, mask=np.ones_like(tokens))
  buckets = tuple(range(args.bucket_step, args.batch, args.bucket_step)) + (args.batch,)
  cascade = serving.classification_cascade(
    wcfg, scfg, mesh=mesh, batch_size=args.batch, buckets=buckets
  )
  conf = serving.serve(cascade, wp, sp, data, threshold=-np.inf)["confidence"]
  outputs = {}

  def runner(key, fn):
    def run(n):
      for _ in range(n):
        outputs[key] = fn()

    return run

  contenders = {
    "strong_only": runner("strong_only", lambda: serving.serve_strong_only(cascade, sp, data))
  }
  for rate, t in zip(args.rates, thresholds(conf, args.rates)):
    key = f"cascade {rate:.0%}"
    contenders[key] = runner(key, lambda t=t: serving.serve(cascade, wp, sp, data, threshold=t))

  harness.print_machine(env, load_before)
  print(
    f"weak {args.weak} {wcfg.width}x{wcfg.depth} ({wcfg.num_params / 1e6:.2f}M params), "
    f"strong {args.strong} {scfg.width}x{scfg.depth} ({scfg.num_params / 1e6:.2f}M params); "
    f"FLOPs per token weak / strong = {wcfg.num_params / scfg.num_params:.3f}; vocab "
    f"{args.vocab}, {args.queries} queries of {args.seq} tokens in batches of {args.batch}; "
    f"buckets {buckets[0]}, {buckets[1] if len(buckets) > 1 else ''}.. {buckets[-1]}; "
    "1-device mesh"
  )
  print(f"warming up {len(contenders)} contenders (compiles included) ...", flush=True)
  first, errors = harness.warm_up(contenders, 0)
  peak = harness.matmul_peak(args.peak_n, args.peak_reps)["jnp.dot"]
  print(f"{args.rounds} interleaved rounds, one pass over the stream each ...", flush=True)
  timings = harness.interleaved(contenders, args.rounds, 1)
  summary = summarize(args, timings, first, errors, outputs, cascade, peak)
  print_report(args, summary)
  load_after = harness.print_footer(load_before, wall)
  if args.json:
    harness.write_record(
      args.json,
      {
        "config": {**vars(args), "buckets": buckets},
        **env,
        "load_before": load_before,
        "load_after": load_after,
        **summary,
      },
    )


def summarize(args, timings: harness.Timings, first, errors, outputs, cascade, peak) -> dict:
  strong_flops = float(outputs["strong_only"]["flops"].sum())
  weak_run = 2.0 * cascade.weak_cfg.num_params * args.seq
  strong_row = 2.0 * cascade.strong_cfg.num_params * args.seq
  batches = -(-args.queries // args.batch)
  out = {
    "peak_gflops": peak,
    "contenders": {},
    "errors": errors,
    "peak_rss_covers": timings.peak_rss_covers,
  }
  for key in timings.keys():
    o, med = outputs[key], timings.median(key)
    strong_rows = sum(o["buckets"]) if "buckets" in o else batches * args.batch
    weak_rows = batches * args.batch if "buckets" in o else 0
    speedup = timings.speedup(key, over="strong_only")
    out["contenders"][key] = {
      "median_s": med,
      "s_rounds": timings.seconds[key],
      "first_s": first[key],
      "queries_per_s": args.queries / med,
      "deferred": float(o["deferred"].mean()),
      "strong_rows_run": strong_rows / args.queries,
      "flops_vs_strong": float(o["flops"].sum()) / strong_flops,
      "flops_run_vs_strong": (weak_rows * weak_run + strong_rows * strong_row) / strong_flops,
      "speedup_of_medians": speedup["of_medians"],
      "speedup_round_median": speedup["median_of_round_ratios"],
      "gflops_per_s": float(o["flops"].sum()) / med / 1e9,
      "peak_rss_mb": timings.peak_rss_mb[key],
    }
  return out


def print_report(args, summary):
  print(f"\nfp32 matmul peak (jnp.dot, n={args.peak_n}): {summary['peak_gflops']:.1f} GFLOP/s")
  print(
    "FLOPs = 2 * params * tokens; 'acct': weak on every query + strong on the deferred ones; "
    "'run': strong on whole buckets (filler rows included); both / strong_only's\n"
  )
  head = (
    f"{'contender':13s} {'deferred':>8s} {'strong rows':>11s} {'FLOPs acct':>10s} "
    f"{'FLOPs run':>9s} {'median s':>8s} {'queries/s':>9s} {'speed-up':>8s} "
    f"{'(rounds)':>8s} {'by acct':>7s} {'GFLOP/s':>7s} {'first s':>7s} {'peak RSS MB':>11s}"
  )
  print(head)
  for key, c in summary["contenders"].items():
    print(
      f"{key:13s} {c['deferred']:8.1%} {c['strong_rows_run']:11.1%} "
      f"{c['flops_vs_strong']:10.3f} {c['flops_run_vs_strong']:9.3f} {c['median_s']:8.2f} "
      f"{c['queries_per_s']:9.1f} {c['speedup_of_medians']:7.2f}x "
      f"{c['speedup_round_median']:7.2f}x {1 / c['flops_vs_strong']:6.2f}x "
      f"{c['gflops_per_s']:7.1f} {c['first_s']:7.1f} {c['peak_rss_mb']:11.0f}"
    )
  for key, err in summary["errors"].items():
    print(f"{key:13s} unavailable: {err}")
  print(
    "\nspeed-up = strong_only time / contender time (> 1: faster), from the medians and as "
    "the median of per-round ratios; 'by acct' = 1 / FLOPs acct, what the accounting promises"
  )


if __name__ == "__main__":
  main()
