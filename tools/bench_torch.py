"""Speed of w2s_jax against the PyTorch reference stack, on the same GPT-2-shaped model.

  python tools/bench_torch.py [--layers 6 --width 384 --heads 6 --seq 128 --batch 32]
                              [--shape gpt2-small] [--bf16] [--rounds 7] [--steps 3] [--json PATH]
                              [--quick]

PyTorch side, as openai/weak-to-strong runs it: transformers'
GPT2ForSequenceClassification (dropout off, eval mode) and a plain
torch.optim.AdamW loop (forward, 2-class cross-entropy, backward, step,
zero_grad), eagerly and under torch.compile. w2s_jax side: its one jitted,
donated train step (AdamW from make_optimizer, including its clip-by-global-norm
and NaN guard) and its jitted weak-inference forward (class probabilities), on
a 1-device mesh. (torch.compile of the whole step compiles the forward with
its loss, and the AdamW step; loss.backward() is a graph break that runs the
AOT-compiled backward.) fp32 throughout (--bf16: bfloat16 compute with float32
weights on both sides); inputs are random tokens already on the device,
identical shapes on both sides.

Every contender is warmed up first (its first step, which includes any
compile, is reported separately); then, in each of --rounds rounds, each
contender runs --steps steps in turn (the order rotates from round to round).
Reported: median time per step, achieved GFLOP/s against this machine's
measured fp32 matmul peak, and speed-ups of w2s_jax (torch time / w2s_jax
time, so > 1 means w2s_jax is faster), from the medians and as the median of
the per-round ratios. Runs unchanged on a GPU (torch uses cuda when present,
JAX its default backend).

To explain a ratio across machines it also prints the CPU model and its
vector extensions, both libraries' thread counts and matmul peaks, and the
train step split into forward (the loss), forward + backward (no update)
and the whole step, for w2s_jax and torch eager: the backward's GFLOP/s
(2x the forward's FLOPs over the time fwd+bwd adds) beside the forward's,
and each contender's minor page faults per step.

Like w2s_jax's entry points, it first has glibc keep freed memory for reuse
(w2s_jax/host_memory.py), which both libraries then share; after each
contender's warm-up the free pages are handed back, as loop.fit does when
its loop ends. W2S_JAX_KEEP_HOST_MEMORY=0 measures without it.

torch and transformers are not dependencies of w2s_jax:
  pip install torch==2.13.0 transformers
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, bench_model

from w2s_jax.infra import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.keep_freed_memory()  # before JAX starts: see host_memory
# On a GPU, JAX would otherwise grab most of its memory up front, starving torch.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from w2s_jax.infra import sharding as shd  # noqa: E402
from w2s_jax.models import (
  inference,  # noqa: E402
  transformer,
)
from w2s_jax.training import objectives, train
from w2s_jax.training.classifier_losses import Xent

import harness  # noqa: E402
from bench_model import (  # noqa: E402
  FLOP_FORMULA,
  QUICK,
  SHAPES,
  add_shape_args,
  forward_flops,
  make_inputs,
  model_config,
)

QUICK_RUN = dict(**QUICK, rounds=2, steps=1, peak_n=512, peak_reps=1)
TRAIN, INFER = ("train", "infer")
FORWARD, FWD_BWD = ("forward", "fwd+bwd")  # the train step's parts, batch --batch
# w2s_jax_fused: the same model with ModelConfig.attention="fused"
# (jax.nn.dot_product_attention), compared with the default explicit path.
SIDES = ("w2s_jax", "w2s_jax_fused", "torch_eager", "torch_compile")


def parse_args(argv):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  add_shape_args(parser)
  parser.add_argument("--lr", type=float, default=5e-5)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=3, help="steps per contender per round")
  parser.add_argument("--peak-n", type=int, default=4096, help="matmul size of the peak test")
  parser.add_argument("--peak-reps", type=int, default=3)
  parser.add_argument(
    "--tf32",
    action="store_true",
    help="let both sides use TF32 matmuls on GPU (default: strict fp32)",
  )
  parser.add_argument(
    "--no-compile", action="store_true", help="leave out the torch.compile contenders"
  )
  parser.add_argument("--json", help="write the numbers here")
  parser.add_argument(
    "--quick", action="store_true", help=f"seconds-long check of the whole tool: {QUICK_RUN}"
  )
  args = parser.parse_args(argv)
  if args.quick or args.shape:  # explicit flags still win over these defaults
    parser.set_defaults(**{**(QUICK_RUN if args.quick else {}), **SHAPES.get(args.shape, {})})
    args = parser.parse_args(argv)
  return args


def set_precision(torch, tf32: bool):
  jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
  torch.set_float32_matmul_precision("high" if tf32 else "highest")


# Each contender is run(n): n steps, returning only once the device is done.


def jax_contenders(args, train_data, infer_data, attention="explicit", side="w2s_jax") -> dict:
  mesh = shd.make_mesh(1)
  cfg = model_config(args, attention)
  optim_cfg = train.OptimConfig(steps=10**6, batch_size=args.batch, lr=args.lr, weight_decay=0.01)
  optimizer = train.make_optimizer(optim_cfg)
  params = transformer.init_params(cfg, jax.random.key(0), args.seq)
  infer_params = jax.tree.map(jnp.copy, params)  # the train state's buffers get donated
  state = train.initial_state(train.from_params, params, optimizer=optimizer, mesh=mesh)
  step = train.compile_train_step(
    loss_fn=objectives.classifier_objective(cfg, Xent()),
    optimizer=optimizer,
    total_steps=optim_cfg.steps,
    mesh=mesh,
    state_sharding=train.sharding_of(state),
  )
  batch = shd.put_batch(
    {
      "tokens": train_data["tokens"],
      "mask": train_data["mask"],
      "labels": np.eye(2, dtype=np.float32)[train_data["labels"]],
    },
    mesh,
  )
  box = {"state": state}

  def train_run(n):
    for _ in range(n):
      box["state"], metrics = step(box["state"], batch)
    jax.block_until_ready((box["state"], metrics))

  loss_fn = objectives.classifier_objective(cfg, Xent())
  loss_only = jax.jit(lambda p, b: loss_fn(p, b, 0.0, jax.random.key(0))[0])
  loss_and_grad = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, 0.0, jax.random.key(0))[0]))
  split_params = jax.tree.map(jnp.copy, params)

  def split_run(fn):
    def run(n):
      for _ in range(n):
        out = fn(split_params, batch)
      jax.block_until_ready(out)

    return run

  forward = inference.compiled_softmax(cfg, "class_logits", mesh, False)
  ib = shd.put_batch({k: infer_data[k] for k in ("tokens", "mask")}, mesh)

  def infer_run(n):
    for _ in range(n):
      probs = forward(infer_params, ib["tokens"], ib["mask"])
    probs.block_until_ready()

  out = {(TRAIN, side): train_run, (INFER, side): infer_run}
  if attention == "explicit":
    out.update({(FORWARD, side): split_run(loss_only), (FWD_BWD, side): split_run(loss_and_grad)})
  return out


def torch_contenders(args, torch, transformers, device, train_data, infer_data) -> dict:
  conf = transformers.GPT2Config(
    vocab_size=args.vocab,
    n_positions=args.seq,
    n_embd=args.width,
    n_layer=args.layers,
    n_head=args.heads,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    pad_token_id=0,
    bos_token_id=args.vocab - 1,
    eos_token_id=args.vocab - 1,
    num_labels=2,
  )
  new_model = lambda: transformers.GPT2ForSequenceClassification(conf).to(device).eval()
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  put = lambda data: {
    k: torch.as_tensor(v, dtype=torch.long, device=device) for k, v in data.items()
  }
  tb, ib = put(train_data), put(infer_data)
  # --bf16: bfloat16 compute under autocast, float32 weights and AdamW state.
  compute = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

  def train_step_fn():
    model = new_model()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def step(tokens, mask, labels):
      with compute():
        logits = model(input_ids=tokens, attention_mask=mask).logits
      loss = torch.nn.functional.cross_entropy(logits.float(), labels)
      loss.backward()
      opt.step()
      opt.zero_grad()
      return loss

    return step

  split_model = new_model()

  def forward_loss(tokens, mask, labels):
    with compute():
      logits = split_model(input_ids=tokens, attention_mask=mask).logits
    return torch.nn.functional.cross_entropy(logits.float(), labels)

  def forward_backward(tokens, mask, labels):
    forward_loss(tokens, mask, labels).backward()
    split_model.zero_grad()

  infer_model = new_model()

  def infer(tokens, mask):
    with torch.no_grad(), compute():
      return torch.softmax(infer_model(input_ids=tokens, attention_mask=mask).logits.float(), -1)

  def runner(fn, data):
    def run(n):
      for _ in range(n):
        fn(**data)
      sync()

    return run

  tb_args = {"tokens": tb["tokens"], "mask": tb["mask"], "labels": tb["labels"]}
  ib_args = {"tokens": ib["tokens"], "mask": ib["mask"]}
  out = {
    (FORWARD, "torch_eager"): runner(forward_loss, tb_args),
    (FWD_BWD, "torch_eager"): runner(forward_backward, tb_args),
    (TRAIN, "torch_eager"): runner(train_step_fn(), tb_args),
    (INFER, "torch_eager"): runner(infer, ib_args),
  }
  if not args.no_compile:
    out.update(
      {
        (TRAIN, "torch_compile"): runner(torch.compile(train_step_fn()), tb_args),
        (INFER, "torch_compile"): runner(torch.compile(infer), ib_args),
      }
    )
  return out


def summarize(args, timings: harness.Timings, first, errors, peak) -> dict:
  peak_best = max(peak.values())
  flops = {
    TRAIN: 3 * forward_flops(args, args.batch),
    INFER: forward_flops(args, args.infer_batch),
    FORWARD: forward_flops(args, args.batch),
    FWD_BWD: 3 * forward_flops(args, args.batch),
  }
  out = {"contenders": {}, "speedups": {}}
  for kind, side in timings.keys():
    med = timings.median((kind, side))
    out["contenders"][f"{kind}/{side}"] = {
      "median_ms_per_step": 1e3 * med,
      "ms_per_step_rounds": [1e3 * x for x in timings.seconds[(kind, side)]],
      "first_step_s": first[(kind, side)],
      "gflops": flops[kind] / med / 1e9,
      "page_faults_per_step": float(np.median(timings.page_faults[(kind, side)])),
      "peak_rss_mb": timings.peak_rss_mb[(kind, side)],
      "fraction_of_peak": flops[kind] / med / 1e9 / peak_best,
    }
  for (kind, side), err in errors.items():
    out["contenders"][f"{kind}/{side}"] = {"error": err}
  for kind in (TRAIN, INFER):
    for side in SIDES[1:]:
      if (kind, "w2s_jax") in timings and (kind, side) in timings:
        out["speedups"][f"{kind}/vs_{side}"] = timings.speedup((kind, "w2s_jax"), over=(kind, side))
  out["split"] = {}
  for side in ("w2s_jax", "torch_eager"):
    if all((k, side) in timings for k in (FORWARD, FWD_BWD, TRAIN)):
      fwd, fb, step = (timings.median((k, side)) for k in (FORWARD, FWD_BWD, TRAIN))
      forward_rate = flops[FORWARD] / fwd / 1e9
      backward_rate = 2 * flops[FORWARD] / max(fb - fwd, 1e-9) / 1e9
      out["split"][side] = {
        "forward_ms": 1e3 * fwd,
        "backward_ms": 1e3 * (fb - fwd),
        "update_ms": 1e3 * (step - fb),
        "forward_gflops": forward_rate,
        "backward_gflops": backward_rate,
        "backward_over_forward": backward_rate / forward_rate,
      }
  out.update(
    flops_per_step={k: float(v) for k, v in flops.items()},
    flop_formula=FLOP_FORMULA,
    peak_gflops=peak,
    peak_gflops_used=peak_best,
    peak_rss_covers=timings.peak_rss_covers,
  )
  return out


def print_header(args, env):
  print(
    f"torch {env['versions']['torch']}, transformers {env['versions']['transformers']} "
    f"on {env['torch_device']}: {env['torch_threads']} intra-op / "
    f"{env['torch_interop_threads']} inter-op threads; torch.compile cache "
    f"{env['torch_compile_cache']}"
  )
  shape = f" ({args.shape})" if args.shape else ""
  print(
    f"model: GPT-2 shape{shape}, {args.layers} layers, width {args.width}, {args.heads} heads, "
    f"seq {args.seq}, vocab {args.vocab}; train batch {args.batch}, inference batch "
    f"{args.infer_batch}; {'bf16 compute, fp32 weights' if args.bf16 else 'fp32'} "
    f"({env['fp32_matmuls']}); lr {args.lr}, weight decay 0.01"
  )
  print(
    "w2s_jax train step includes its clip-by-global-norm (1.0), warmup-cosine schedule and "
    "NaN guard; torch: plain AdamW, constant lr, no clipping"
  )


def print_report(args, summary):
  print(f"\nFLOPs: {summary['flop_formula']}")
  print(
    f"  train step {summary['flops_per_step'][TRAIN] / 1e9:.2f} GFLOP (batch {args.batch}), "
    f"inference {summary['flops_per_step'][INFER] / 1e9:.2f} GFLOP (batch {args.infer_batch})"
  )
  peak = summary["peak_gflops"]
  print(
    f"fp32 matmul peak at n={args.peak_n}: "
    + ", ".join(f"{k} {v:.1f}" for k, v in peak.items())
    + f" GFLOP/s; this machine's measured peak: {summary['peak_gflops_used']:.1f} GFLOP/s"
  )
  print(
    f"\n{'contender':22s} {'median ms/step':>14s} {'GFLOP/s':>9s} {'of peak':>8s} "
    f"{'first step s':>13s} {'page faults/step':>17s} {'peak RSS MB':>12s}"
  )
  for name, c in summary["contenders"].items():
    if "error" in c:
      print(f"{name:22s} unavailable: {c['error']}")
      continue
    print(
      f"{name:22s} {c['median_ms_per_step']:14.1f} {c['gflops']:9.1f} "
      f"{c['fraction_of_peak']:8.1%} {c['first_step_s']:13.2f} "
      f"{c['page_faults_per_step']:17.0f} {c['peak_rss_mb']:12.0f}"
    )
  print("\ntrain step split (medians; backward = fwd+bwd - forward, update = step - fwd+bwd)")
  for side, p in summary["split"].items():
    print(
      f"  {side:12s} forward {p['forward_ms']:7.1f} ms {p['forward_gflops']:6.1f} GFLOP/s, "
      f"backward {p['backward_ms']:7.1f} ms {p['backward_gflops']:6.1f} GFLOP/s "
      f"({p['backward_over_forward']:.0%} of the forward's rate), update "
      f"{p['update_ms']:6.1f} ms"
    )
  print("\nspeed-up of w2s_jax = torch time / w2s_jax time (> 1: w2s_jax faster)")
  for name, s in summary["speedups"].items():
    print(
      f"  {name:26s} {s['of_medians']:.2f}x from medians, "
      f"{s['median_of_round_ratios']:.2f}x median of per-round ratios"
    )
  print(
    f"(peak RSS: the resident set's high-water mark during {summary['peak_rss_covers']}; "
    "it includes what the other contenders still hold)"
  )


def main(argv=None):
  args = parse_args(argv)
  load_before = os.getloadavg()
  wall = time.perf_counter()
  tmp = tempfile.TemporaryDirectory(prefix="bench_torch_")
  torch, transformers = harness.import_torch(tmp.name, "bench_torch")
  set_precision(torch, args.tf32)
  torch.manual_seed(0)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  env = harness.machine()
  torch_env = harness.torch_machine(torch, transformers, device)
  env = {
    **env,
    **torch_env,
    "versions": {**env["versions"], **torch_env["versions"]},
    "torch_compile_cache": os.environ["TORCHINDUCTOR_CACHE_DIR"],
    "fp32_matmuls": "tf32 allowed" if args.tf32 else "strict fp32 (highest precision)",
  }
  harness.print_machine(env, load_before)
  print_header(args, env)
  train_data, infer_data = make_inputs(args, args.batch, 0), make_inputs(args, args.infer_batch, 1)
  contenders = {
    **jax_contenders(args, train_data, infer_data),
    **jax_contenders(args, train_data, infer_data, "fused", "w2s_jax_fused"),
    **torch_contenders(args, torch, transformers, device, train_data, infer_data),
  }
  kinds = (FORWARD, FWD_BWD, TRAIN, INFER)
  contenders = dict(
    sorted(contenders.items(), key=lambda kv: (kinds.index(kv[0][0]), SIDES.index(kv[0][1])))
  )
  print(f"warming up {len(contenders)} contenders ...", flush=True)
  first, errors = harness.warm_up(contenders, args.steps)
  peak = harness.matmul_peak(args.peak_n, args.peak_reps, torch=torch, device=device)
  print(f"{args.rounds} interleaved rounds of {args.steps} steps each ...", flush=True)
  timings = harness.interleaved(contenders, args.rounds, args.steps)
  summary = summarize(args, timings, first, errors, peak)
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
