"""The cascade experiment: train the models, store their answers, join them per query.

Per task (classification, generation) the stages are: each weak size on
ground truth, the strong model on ground truth (the ceiling), and the strong
model on each weak model's supervision (the W2S student, with the task
experiment's first loss). A stage keeps only its models' answers on the
evaluation splits (and the weak model's on train_gt and train_w2s), in a
checksummed .npz under out/stages/<task>-<config hash>/, written atomically;
a rerun after a kill loads the finished stages and trains only the rest.
cascade_table.task_rows joins them into one row per (task, weak, strong
variant, seed, split, query), which cascade_report turns into curves,
summaries and the chart.
"""

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from w2s_jax import cascade_report, cascade_table, integrity, locks, models, stages
from w2s_jax.cascade_table import TASKS, calibration_split
from w2s_jax import sharding as shd
from w2s_jax.flops import model_flops
from w2s_jax.pipeline import ExperimentConfig
from w2s_jax.results import (package_versions, prepare_out_dir, remove_stale_temp_files,
                             write_json_atomic)

RNG_SAMPLES = 7_777_777       # the agreement samples' key offset, apart from any stage's


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
  name: str = "cascade"
  classification: ExperimentConfig | None = None
  generative: ExperimentConfig | None = None
  weak_sizes: tuple[str, ...] = ("pico", "nano")
  strong_size: str = "mini"
  calibration_examples: int = 100    # of train_gt, held out from the classifying weak models
  agreement_samples: int = 5         # weak samples per generative query for sample_agreement
  agreement_temperature: float = 1.0
  quantile: float = 0.0              # Chow-Quantile's q: 0 is the least likely token
  target_fraction: float = 0.95      # cost to reach this share of the strong model
  ibc_resamples: int = 1000          # bootstrap resamples of the IBC lift's interval

  def __post_init__(self):
    if self.classification is None and self.generative is None:
      raise ValueError("CascadeConfig: classification and generative are both None: expected "
                       "at least one ExperimentConfig")
    for kind in TASKS:
      exp = getattr(self, kind)
      if exp is not None and exp.generative != (kind == "generative"):
        raise ValueError(f"CascadeConfig.{kind}: an ExperimentConfig with generation="
                         f"{exp.generation}: expected generation "
                         + ("set" if kind == "generative" else "None"))
    gen = self.generative.generation if self.generative is not None else None
    if gen is not None and (gen.weak_samples, gen.weak_temperature) != (1, 0):
      raise ValueError(f"CascadeConfig.generative.generation weak_samples={gen.weak_samples}, "
                       f"weak_temperature={gen.weak_temperature}: expected 1 and 0 (the student "
                       "learns from the weak model's one greedy response per prompt)")
    params = lambda size: models.decode_size(size, vocab_size=1).num_params
    strong = params(self.strong_size)
    if not self.weak_sizes or len(set(self.weak_sizes)) != len(self.weak_sizes) or any(
        params(w) >= strong for w in self.weak_sizes):
      raise ValueError(f"CascadeConfig.weak_sizes={self.weak_sizes}: expected distinct sizes, "
                       f"each smaller than strong_size={self.strong_size!r}")
    checks = [("calibration_examples", self.calibration_examples >= 2, ">= 2"),
              ("agreement_samples", self.agreement_samples >= 2, ">= 2"),
              ("agreement_temperature", self.agreement_temperature > 0, "> 0"),
              ("quantile", 0 <= self.quantile <= 1, "in [0, 1]"),
              ("target_fraction", 0 < self.target_fraction <= 1, "in (0, 1]"),
              ("ibc_resamples", self.ibc_resamples >= 100, ">= 100")]
    for field, ok, want in checks:
      if not ok:
        raise ValueError(f"CascadeConfig.{field}={getattr(self, field)}: expected {want}")

  def experiments(self) -> dict[str, ExperimentConfig]:
    return {kind: getattr(self, kind) for kind in TASKS if getattr(self, kind) is not None}

  def experiment_config(self, kind: str) -> ExperimentConfig:
    """The task's experiment with this cascade's models (what its Context checks)."""
    return dataclasses.replace(getattr(self, kind), weak_size=self.weak_sizes[0],
                               strong_size=self.strong_size)


def stage_dir(cfg: CascadeConfig, kind: str, out_dir: Path) -> Path:
  """Keyed by everything a stage's answers depend on: a changed config never
  reuses a stale stage (the old folder stays, unread)."""
  key = {"experiment": dataclasses.asdict(cfg.experiment_config(kind)),
         "calibration_examples": cfg.calibration_examples,
         "agreement": [cfg.agreement_samples, cfg.agreement_temperature]}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
  return Path(out_dir) / "stages" / f"{kind}-{digest[:10]}"


def stored(path: Path, compute) -> dict:
  """A stage's arrays from its checksummed file, or computed and stored (one
  process at a time); a corrupt file is recomputed with a warning."""
  def load():
    if not path.exists():
      return None
    try:
      return integrity.load_npz_checked(path)
    except integrity.CorruptFileError as err:
      integrity.warn_rebuild(path, err.problem, "recomputing the stage")
      return None
  arrays = load()
  if arrays is None:
    with locks.exclusive(path):
      arrays = load()
      if arrays is None:
        arrays = {k: np.asarray(v) for k, v in compute().items()}
        integrity.save_npz_checked(path, arrays)
  return arrays


def answers(ctx: stages.Context, size: str, params, splits) -> dict:
  """Classification: probs:<split> [seeds, N, classes]. Generation: greedy
  tokens/mask/logprobs:<split> [seeds, N, max_new_tokens]."""
  out = {}
  for split in splits:
    if ctx.generative:
      for name, x in zip(("tokens", "mask", "logprobs"), ctx.generate(size, params, split)):
        out[f"{name}:{split}"] = x
    else:
      out[f"probs:{split}"] = ctx.predict(size, params, split)
  return out


def weak_stage(ctx, cfg: CascadeConfig, size: str) -> dict:
  """The weak model on ground truth (classification: all but the calibration
  slice), its answers on the evaluation splits, train_gt and train_w2s, and
  (generation) agreement_samples samples per evaluation query."""
  n = len(ctx.splits["train_gt"])
  fit = calibration_split(n, cfg.calibration_examples)[0] if not ctx.generative else np.arange(n)
  params = ctx.tune(size, ctx.supervised("train_gt", subsets=[fit] * len(ctx.seeds),
                                          size=size),
                    ctx.ground_truth_loss(), f"weak {size} on ground truth")
  out = answers(ctx, size, params, (*ctx.eval_splits, "train_gt", "train_w2s"))
  if ctx.generative:
    sampler = ctx.sampling_config(temperature=cfg.agreement_temperature)
    for split in ctx.eval_splits:
      tokens, mask, _ = ctx.generate(size, params, split, sampler, samples=cfg.agreement_samples,
                                     rng_offset=RNG_SAMPLES)
      out[f"sample_tokens:{split}"], out[f"sample_mask:{split}"] = tokens, mask
  return out


def strong_stage(ctx, cfg: CascadeConfig, weak: dict | None, weak_size: str | None) -> dict:
  """The strong model on ground truth (weak=None) or, as W2S student, on the
  weak stage's train_w2s answers; its answers on the evaluation splits."""
  if weak is None:
    per_seed, loss, desc = (ctx.supervised("train_gt", size=cfg.strong_size),
                            ctx.ground_truth_loss(),
                            f"ceiling {cfg.strong_size} on ground truth")
  else:
    targets = ((weak["tokens:train_w2s"], weak["mask:train_w2s"]) if ctx.generative
               else weak["probs:train_w2s"])
    per_seed, loss = (ctx.supervised("train_w2s", targets, size=cfg.strong_size),
                      ctx.cfg.losses[0])
    desc = f"strong {cfg.strong_size} on weak {weak_size}'s labels ({loss.tag})"
  params = ctx.tune(cfg.strong_size, per_seed, loss, desc)
  return answers(ctx, cfg.strong_size, params, ctx.eval_splits)


def run_stages(ctx, cfg: CascadeConfig, kind: str, out_dir: Path, bar=None) -> dict:
  """{(weak size or None, strong variant or "weak"): stage arrays}, loaded or computed."""
  folder = stage_dir(cfg, kind, out_dir)
  tick = (lambda: bar.update(1)) if bar is not None else (lambda: None)
  out = {}
  for w in cfg.weak_sizes:
    out[w, "weak"] = stored(folder / f"weak-{w}.npz", lambda w=w: weak_stage(ctx, cfg, w))
    tick()
  out[None, "ceiling"] = stored(folder / f"ceiling-{cfg.strong_size}.npz",
                                lambda: strong_stage(ctx, cfg, None, None))
  tick()
  for w in cfg.weak_sizes:
    out[w, "w2s"] = stored(folder / f"w2s-{cfg.strong_size}-from-{w}.npz",
                           lambda w=w: strong_stage(ctx, cfg, out[w, "weak"], w))
    tick()
  return out


def _models(ctx, cfg) -> dict:
  out = {}
  for size in (*cfg.weak_sizes, cfg.strong_size):
    model_cfg = ctx.cfg.model_config(size, ctx.task)
    out[size] = {"params": model_cfg.num_params,
                 "flops_per_token": float(model_flops(config=model_cfg, tokens=1)),
                 "flops_per_token_with_embeddings": float(model_flops(
                     config=model_cfg, tokens=1, include_embeddings=True))}
  return out


def run(cfg: CascadeConfig, *, out_dir, cache_dir, progress: bool = True) -> dict:
  """Every stage (stored ones loaded), then out_dir/per_query.csv,
  accuracy_vs_cost.png and results.json. Returns the results. Configs, the
  output folder and the calibration slice are checked before any training."""
  started = time.perf_counter()
  kinds = tuple(cfg.experiments())
  for kind in kinds:
    stages.check_mesh(cfg.experiment_config(kind))  # a config error leaves no folder behind
  contexts = {}
  for kind in kinds:
    ctx = stages.Context(cfg.experiment_config(kind), cache_dir=cache_dir, progress=progress)
    ctx.check_models((*cfg.weak_sizes, cfg.strong_size))
    if not ctx.generative:
      calibration_split(len(ctx.splits["train_gt"]), cfg.calibration_examples)
    contexts[kind] = ctx
  out_dir = prepare_out_dir(out_dir)
  remove_stale_temp_files(out_dir)  # left by a run killed inside a write
  bar = tqdm(total=len(kinds) * (2 * len(cfg.weak_sizes) + 1), desc="cascade stages",
             unit="stage", disable=not progress or not shd.is_main_process(), dynamic_ncols=True)
  tables, calibration = [], {}
  for kind, ctx in contexts.items():
    rows, calibration[kind] = cascade_table.task_rows(ctx, cfg, kind,
                                                      run_stages(ctx, cfg, kind, out_dir, bar))
    tables.append(rows)
  bar.close()
  table = cascade_table.concatenate(tables)
  results = {
      "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
      "versions": package_versions(),
      "devices": [str(d) for d in jax.devices()],
      "models": {kind: _models(ctx, cfg) for kind, ctx in contexts.items()},
      "calibration": calibration.get("classification", {}),
      "rows": len(table["seed"]),
      "summary": cascade_report.summarize(table, cfg),
  }
  if shd.is_main_process():
    cascade_table.write_csv(out_dir / "per_query.csv", table)
    cascade_report.plot(table, out_dir / "accuracy_vs_cost.png")
    results["seconds"] = time.perf_counter() - started
    write_json_atomic(out_dir / "results.json", results)
  results.setdefault("seconds", time.perf_counter() - started)
  return results
