"""Speed of w2s_jax's autoregressive sampler against transformers' generate, on one GPT-2 model.

  python tools/bench_sampler.py [--layers 6 --width 384 --heads 6 --vocab 50257]
                                [--prompt-len 64 --new-tokens 64 --batches 32,128]
                                [--rounds 5] [--calls 1] [--skip-nocache] [--json PATH] [--quick]

A randomly initialised transformers GPT2LMHeadModel (eval mode) is saved as
safetensors and read back with hf_import.load_hf_folder: both sides run the same
weights. Greedy, fp32, no EOS: each call generates exactly --new-tokens tokens
after the same left-padded random prompts (with their mask). At each batch:
  w2s_jax          sampling.compiled_sampler (one batched prefill into the
                   explicit KV cache, then a token per step in a while_loop),
                   on device arrays prepared once, 1-device mesh;
  w2s_jax_nocache  the same with use_cache=False: a full forward pass of the
                   body over prompt + new tokens per token (unembedding only
                   the position it needs);
  hf_generate      model.generate(input_ids, attention_mask, do_sample=False,
                   min_new_tokens = max_new_tokens), torch eager, no_grad, its
                   default DynamicCache.
Before timing, the share of w2s_jax's rows equal to hf_generate's token for token
is printed; under 90% the run stops (random weights give a few near-ties; more
misses mean the two sides are not running the same model).

As every benchmark here (tools/harness.py): each contender's first call
(compile included) is timed apart, then one untimed call; then in each of --rounds
rounds every contender runs --calls calls in turn, the order rotating. Reported:
median seconds per call, generated tokens/s (batch * new tokens / time) and
speed-ups of w2s_jax (other time / w2s_jax time, > 1: w2s_jax faster), from the
medians and as the median of per-round ratios. Runs unchanged on a GPU.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax.infra import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.keep_freed_memory(by_default=False)  # before JAX starts: see host_memory
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to torch

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from w2s_jax.infra import sharding as shd  # noqa: E402
from w2s_jax.models import (
  hf_import,  # noqa: E402
  model_config,
  sampling,
)

import harness  # noqa: E402

QUICK = dict(
  layers=2,
  width=64,
  heads=4,
  vocab=1000,
  prompt_len=16,
  new_tokens=16,
  batches="8,16",
  rounds=2,
  peak_n=512,
  peak_reps=1,
)
SIDES = ("w2s_jax", "w2s_jax_nocache", "hf_generate")
PAD, MIN_MATCH = 0, 0.9


def parse_args(argv):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--width", type=int, default=384)
  parser.add_argument("--heads", type=int, default=6)
  parser.add_argument("--vocab", type=int, default=50257, help="GPT-2's vocabulary by default")
  parser.add_argument("--prompt-len", type=int, default=64, help="padded prompt width")
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--batches", default="32,128", help="comma-separated batch sizes")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--calls", type=int, default=1, help="generate calls per contender per round")
  parser.add_argument("--skip-nocache", action="store_true", help="leave out w2s_jax_nocache")
  parser.add_argument("--peak-n", type=int, default=4096, help="matmul size of the peak test")
  parser.add_argument("--peak-reps", type=int, default=3)
  parser.add_argument("--tf32", action="store_true", help="TF32 matmuls on GPU (default: fp32)")
  parser.add_argument("--json", help="write the numbers here")
  parser.add_argument("--quick", action="store_true", help=f"tiny smoke configuration: {QUICK}")
  args = parser.parse_args(argv)
  if args.quick:  # explicit flags still win over the quick defaults
    parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
  args.batches = [int(b) for b in args.batches.split(",")]
  return args


def make_prompts(args, batch: int, seed: int) -> dict:
  """Left-padded random prompts (token 0 is the pad), the first row full width."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(args.prompt_len // 2, args.prompt_len + 1, batch)
  lengths[0] = args.prompt_len
  prompt = np.full((batch, args.prompt_len), PAD, np.int32)
  mask = np.zeros_like(prompt)
  for row, n in enumerate(lengths):
    prompt[row, args.prompt_len - n :] = rng.integers(1, args.vocab, n)
    mask[row, args.prompt_len - n :] = 1
  return {"prompt": prompt, "mask": mask}


def build_hf_model(args, torch, transformers, folder, device):
  """Random init; no BOS/EOS ids, so generate never stops early nor masks a token."""
  torch.manual_seed(0)
  transformers.utils.logging.disable_progress_bar()
  conf = transformers.GPT2Config(
    vocab_size=args.vocab,
    n_positions=args.prompt_len + args.new_tokens,
    n_embd=args.width,
    n_layer=args.layers,
    n_head=args.heads,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=PAD,
  )
  model = transformers.GPT2LMHeadModel(conf).eval()
  model.save_pretrained(folder, safe_serialization=True)
  return model.to(device)


def runner(call, finish, outputs: dict, key):
  """run(n): n calls; waits for the device and keeps the last output in outputs[key]."""

  def run(n):
    for _ in range(n):
      out = call()
    outputs[key] = finish(out)

  return run


def jax_contenders(args, folder, prompts, outputs) -> tuple[dict, model_config.ModelConfig]:
  cfg, params = hf_import.load_hf_folder(folder)
  mesh = shd.make_mesh(1)
  key = jnp.asarray(jax.random.key_data(jax.random.key(0)))
  runs = {}
  for batch, data in prompts.items():
    dev = shd.put_batch(
      {"prompt": data["prompt"], "mask": data["mask"], "ids": np.arange(batch, dtype=np.int32)},
      mesh,
    )
    sides = (("w2s_jax", True), ("w2s_jax_nocache", False))[: 2 - args.skip_nocache]
    for side, use_cache in sides:
      sampling_cfg = sampling.SamplingConfig(
        max_new_tokens=args.new_tokens, eos_id=None, pad_id=PAD, use_cache=use_cache
      )
      sampling_cfg.check(cfg, args.prompt_len)
      fn = sampling.compiled_sampler(cfg, sampling_cfg, mesh, False)
      call = lambda fn=fn, dev=dev: fn(params, dev["prompt"], dev["mask"], dev["ids"], key)
      runs[(batch, side)] = runner(call, jax.block_until_ready, outputs, (batch, side))
  return runs, cfg


def hf_contenders(args, torch, model, device, prompts, outputs) -> dict:
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  runs = {}
  for batch, data in prompts.items():
    ids, mask = (
      torch.as_tensor(data[k], dtype=torch.long, device=device) for k in ("prompt", "mask")
    )

    def call(ids=ids, mask=mask):  # noqa: E306
      with torch.no_grad():
        return model.generate(
          input_ids=ids,
          attention_mask=mask,
          do_sample=False,
          max_new_tokens=args.new_tokens,
          min_new_tokens=args.new_tokens,
          eos_token_id=None,
          pad_token_id=PAD,
          use_cache=True,
        )

    runs[(batch, "hf_generate")] = runner(
      call, lambda out: (sync(), out)[1], outputs, (batch, "hf_generate")
    )
  return runs


def check_tokens(args, outputs) -> dict:
  """Share of w2s_jax's rows equal to hf_generate's (and the uncached sampler's),
  printed; exits if under MIN_MATCH."""
  checks = {}
  for batch in args.batches:
    ours, hf = outputs.get((batch, "w2s_jax")), outputs.get((batch, "hf_generate"))
    if ours is None or hf is None:
      print(f"batch {batch}: tokens not checked (a side failed)")
      continue
    ours, hf = np.asarray(ours[0]), hf[:, args.prompt_len :].cpu().numpy()
    same = ours == hf if ours.shape == hf.shape else np.zeros_like(ours, bool)
    c = checks[batch] = {
      "rows_equal_hf": float(same.all(1).mean()),
      "tokens_equal_hf": float(same.mean()),
      "distinct_tokens": int(len(np.unique(ours))),
    }
    if (nocache := outputs.get((batch, "w2s_jax_nocache"))) is not None:
      c["rows_equal_nocache"] = float((ours == np.asarray(nocache[0])).all(1).mean())
    print(
      f"batch {batch}: w2s_jax rows equal to hf_generate's token for token: "
      f"{c['rows_equal_hf']:.1%} (tokens {c['tokens_equal_hf']:.2%}; "
      f"{c['distinct_tokens']} distinct tokens generated)"
      + (
        f"; to w2s_jax_nocache's: {c['rows_equal_nocache']:.1%}"
        if "rows_equal_nocache" in c
        else ""
      )
    )
  if bad := [b for b, c in checks.items() if c["rows_equal_hf"] < MIN_MATCH]:
    sys.exit(
      f"FAILED: at batches {bad} fewer than {MIN_MATCH:.0%} of w2s_jax's rows equal "
      "hf_generate's: the two sides are not running the same model"
    )
  return checks


def summarize(args, timings: harness.Timings, first, errors, peak, checks) -> dict:
  out = {"contenders": {}, "speedups": {}, "token_check": checks, "peak_gflops": peak}
  for batch, side in timings.keys():
    med = timings.median((batch, side))
    out["contenders"][f"b{batch}/{side}"] = {
      "median_s_per_call": med,
      "s_per_call_rounds": timings.seconds[(batch, side)],
      "first_call_s": first[(batch, side)],
      "tokens_per_s": batch * args.new_tokens / med,
      "peak_rss_mb": timings.peak_rss_mb[(batch, side)],
    }
  for (batch, side), err in errors.items():
    out["contenders"][f"b{batch}/{side}"] = {"error": err}
  for batch in args.batches:
    for side in ("hf_generate", "w2s_jax_nocache"):
      if (batch, "w2s_jax") in timings and (batch, side) in timings:
        out["speedups"][f"b{batch}/vs_{side}"] = timings.speedup(
          (batch, "w2s_jax"), over=(batch, side)
        )
  return out


def print_header(args, env, cfg):
  print(
    f"torch {env['versions']['torch']}, transformers {env['versions']['transformers']} on "
    f"{env['torch_device']} ({env['torch_threads']} threads); jax on a 1-device mesh"
  )
  print(
    f"model: GPT2LMHeadModel, random init, {args.layers} layers, width {args.width}, "
    f"{args.heads} heads, vocab {args.vocab}, {cfg.num_params / 1e6:.1f}M params; "
    f"{env['fp32_matmuls']}; greedy, no EOS, prompts left-padded to "
    f"{args.prompt_len} (lengths {args.prompt_len // 2}..{args.prompt_len}), "
    f"{args.new_tokens} new tokens; batches {', '.join(map(str, args.batches))}"
  )


def print_report(args, summary):
  peak = summary["peak_gflops"]
  print(
    f"\nfp32 matmul peak at n={args.peak_n}: "
    + ", ".join(f"{k} {v:.1f}" for k, v in peak.items())
    + " GFLOP/s"
  )
  print(
    f"\n{'contender':24s} {'median s/call':>13s} {'tokens/s':>10s} {'first call s':>13s} "
    f"{'peak RSS MB':>12s}"
  )
  for name, c in summary["contenders"].items():
    if "error" in c:
      print(f"{name:24s} unavailable: {c['error']}")
      continue
    print(
      f"{name:24s} {c['median_s_per_call']:13.3f} {c['tokens_per_s']:10.0f} "
      f"{c['first_call_s']:13.2f} {c['peak_rss_mb']:12.0f}"
    )
  print("\nspeed-up of w2s_jax = other time / w2s_jax time (> 1: w2s_jax faster)")
  for name, s in summary["speedups"].items():
    print(
      f"  {name:28s} {s['of_medians']:.2f}x from medians, "
      f"{s['median_of_round_ratios']:.2f}x median of per-round ratios"
    )


def set_precision(torch, tf32: bool):
  jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
  torch.set_float32_matmul_precision("high" if tf32 else "highest")


def main(argv=None):
  args = parse_args(argv)
  load_before = os.getloadavg()
  wall = time.perf_counter()
  tmp = tempfile.TemporaryDirectory(prefix="bench_sampler_")
  torch, transformers = harness.import_torch(tmp.name, "bench_sampler")
  set_precision(torch, args.tf32)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  env, torch_env = harness.machine(), harness.torch_machine(torch, transformers, device)
  env = {
    **env,
    **torch_env,
    "versions": {**env["versions"], **torch_env["versions"]},
    "fp32_matmuls": "tf32 allowed" if args.tf32 else "strict fp32 (highest precision)",
  }
  hf_model = build_hf_model(args, torch, transformers, tmp.name, device)
  prompts = {b: make_prompts(args, b, seed=i) for i, b in enumerate(args.batches)}
  outputs = {}
  jax_runs, cfg = jax_contenders(args, tmp.name, prompts, outputs)
  contenders = {**jax_runs, **hf_contenders(args, torch, hf_model, device, prompts, outputs)}
  contenders = dict(sorted(contenders.items(), key=lambda kv: (kv[0][0], SIDES.index(kv[0][1]))))
  harness.print_machine(env, load_before)
  print_header(args, env, cfg)
  print(f"warming up {len(contenders)} contenders ...", flush=True)
  first, errors = harness.warm_up(contenders, args.calls)
  checks = check_tokens(args, outputs)
  peak = harness.matmul_peak(args.peak_n, args.peak_reps, torch=torch, device=device)
  print(f"{args.rounds} interleaved rounds of {args.calls} call(s) each ...", flush=True)
  timings = harness.interleaved(contenders, args.rounds, args.calls)
  summary = summarize(args, timings, first, errors, peak, checks)
  print_report(args, summary)
  load_after = harness.print_footer(load_before, wall)
  if args.json:
    harness.write_record(
      args.json,
      {
        "config": vars(args),
        **env,
        "load_before": load_before,
        "load_after": load_after,
        **summary,
      },
    )
  tmp.cleanup()


if __name__ == "__main__":
  main()
