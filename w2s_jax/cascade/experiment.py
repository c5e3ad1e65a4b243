"""The cascade experiment: train the models, store their answers, join them per query.

Per task (classification, generation) the stages are: each weak size on
ground truth, the strong model on ground truth (the ceiling), and the strong
model on each weak model's supervision (the W2S student, with the task
experiment's first loss). A stage keeps only its models' answers on the
evaluation splits (and the weak model's on train_gt and train_w2s), in a
checksummed .npz under out/stages/<task>-<config hash>/, written atomically;
a rerun after a kill loads the finished stages and trains only the rest.
per_query.task_rows joins them into one row per (task, weak, strong
variant, seed, split, query), which summary.py turns into curves,
summaries and the chart.
"""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from w2s_jax.cascade import per_query, summary
from w2s_jax.cascade.per_query import TASKS, calibration_split
from w2s_jax.infra import memory
from w2s_jax.infra import sharding as shd
from w2s_jax.infra.files import atomic_files, check_run_name, prepare_out_dir, write_json_atomic
from w2s_jax.infra.fingerprint import KEY_SCHEME, digest, fingerprint
from w2s_jax.infra.store import Store, claim_folder
from w2s_jax.models.flops import model_flops
from w2s_jax.models.model_config import decode_size
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s import records
from w2s_jax.w2s.experiment import ExperimentConfig, check_mesh
from w2s_jax.w2s.parts import Parts

RNG_SAMPLES = 7_777_777  # the agreement samples' key offset, apart from any stage's


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
  name: str = "cascade"
  classification: ExperimentConfig | None = None
  generative: ExperimentConfig | None = None
  weak_sizes: tuple[str, ...] = ("pico", "nano")
  strong_size: str = "mini"
  calibration_examples: int = 100  # of train_gt, held out from the classifying weak models
  agreement_samples: int = 5  # weak samples per generative query for sample_agreement
  agreement_temperature: float = 1.0
  quantile: float = 0.0  # Chow-Quantile's q: 0 is the least likely token
  target_fraction: float = 0.95  # cost to reach this share of the strong model
  ibc_resamples: int = 1000  # bootstrap resamples of the IBC lift's interval

  def __post_init__(self):
    check_run_name(self.name, "CascadeConfig.name")
    if self.classification is None and self.generative is None:
      raise ValueError(
        "CascadeConfig: classification and generative are both None: expected "
        "at least one ExperimentConfig"
      )
    for kind in TASKS:
      exp = getattr(self, kind)
      if exp is not None and exp.generative != (kind == "generative"):
        raise ValueError(
          f"CascadeConfig.{kind}: an ExperimentConfig with generation="
          f"{exp.generation}: expected generation " + ("set" if kind == "generative" else "None")
        )
    gen = self.generative.generation if self.generative is not None else None
    if gen is not None and (gen.weak_samples, gen.weak_temperature) != (1, 0):
      raise ValueError(
        f"CascadeConfig.generative.generation weak_samples={gen.weak_samples}, "
        f"weak_temperature={gen.weak_temperature}: expected 1 and 0 (the student "
        "learns from the weak model's one greedy response per prompt)"
      )
    params = lambda size: decode_size(size, vocab_size=1).num_params
    strong = params(self.strong_size)
    if (
      not self.weak_sizes
      or len(set(self.weak_sizes)) != len(self.weak_sizes)
      or any(params(w) >= strong for w in self.weak_sizes)
    ):
      raise ValueError(
        f"CascadeConfig.weak_sizes={self.weak_sizes}: expected distinct sizes, "
        f"each smaller than strong_size={self.strong_size!r}"
      )
    checks = [
      ("calibration_examples", self.calibration_examples >= 2, ">= 2"),
      ("agreement_samples", self.agreement_samples >= 2, ">= 2"),
      ("agreement_temperature", self.agreement_temperature > 0, "> 0"),
      ("quantile", 0 <= self.quantile <= 1, "in [0, 1]"),
      ("target_fraction", 0 < self.target_fraction <= 1, "in (0, 1]"),
      ("ibc_resamples", self.ibc_resamples >= 100, ">= 100"),
    ]
    for field, ok, want in checks:
      if not ok:
        raise ValueError(f"CascadeConfig.{field}={getattr(self, field)}: expected {want}")

  def experiments(self) -> dict[str, ExperimentConfig]:
    return {kind: getattr(self, kind) for kind in TASKS if getattr(self, kind) is not None}

  def experiment_config(self, kind: str) -> ExperimentConfig:
    """The task's experiment with this cascade's models (what its Context checks)."""
    return dataclasses.replace(
      getattr(self, kind), weak_size=self.weak_sizes[0], strong_size=self.strong_size
    )


def stage_key(cfg: CascadeConfig, kind: str) -> dict:
  """Everything a task's stages depend on; the folder and each file's identity."""
  return {
    "experiment": fingerprint(cfg.experiment_config(kind)),
    "calibration_examples": cfg.calibration_examples,
    "agreement": [cfg.agreement_samples, cfg.agreement_temperature],
    "key_scheme": KEY_SCHEME,
  }


def stage_dir(cfg: CascadeConfig, kind: str, out_dir: Path) -> Path:
  """Keyed by everything a stage's answers depend on: a changed config never
  reuses a stale stage (the old folder stays, unread)."""
  return Path(out_dir) / "stages" / f"{kind}-{digest(stage_key(cfg, kind), 10)}"


def answers(parts: Parts, size: str, params, splits) -> dict:
  """Classification: probs:<split> [seeds, N, classes]. Generation: greedy
  tokens/mask/logprobs:<split> [seeds, N, max_new_tokens]."""
  out = {}
  for split in splits:
    if parts.generative:
      for name, x in zip(
        ("tokens", "mask", "logprobs"), parts.evaluator.generate(size, params, split)
      ):
        out[f"{name}:{split}"] = x
    else:
      out[f"probs:{split}"] = parts.evaluator.predict(size, params, split)
  return out


def weak_stage(parts: Parts, cfg: CascadeConfig, size: str) -> dict:
  """The weak model on ground truth (classification: all but the calibration
  slice), its answers on the evaluation splits, train_gt and train_w2s, and
  (generation) agreement_samples samples per evaluation query."""
  trainer, evaluator = parts.trainer, parts.evaluator
  n = len(parts.task.splits["train_gt"])
  fit = calibration_split(n, cfg.calibration_examples)[0] if not parts.generative else np.arange(n)
  params, _ = trainer.tune(
    size,
    trainer.supervised("train_gt", subsets=[fit] * len(parts.seeds), size=size),
    trainer.ground_truth_loss(),
    f"weak {size} on ground truth",
  )
  out = answers(parts, size, params, (*parts.task.eval_splits, "train_gt", "train_w2s"))
  if parts.generative:
    sampler = dataclasses.replace(evaluator.sampling, temperature=cfg.agreement_temperature)
    for split in parts.task.eval_splits:
      tokens, mask, _ = evaluator.generate(
        size, params, split, sampler, samples=cfg.agreement_samples, rng_offset=RNG_SAMPLES
      )
      out[f"sample_tokens:{split}"], out[f"sample_mask:{split}"] = tokens, mask
  return out


def strong_stage(
  parts: Parts, cfg: CascadeConfig, weak: dict | None, weak_size: str | None
) -> dict:
  """The strong model on ground truth (weak=None) or, as W2S student, on the
  weak stage's train_w2s answers; its answers on the evaluation splits."""
  trainer = parts.trainer
  if weak is None:
    per_seed, loss, desc = (
      trainer.supervised("train_gt", size=cfg.strong_size),
      trainer.ground_truth_loss(),
      f"ceiling {cfg.strong_size} on ground truth",
    )
  else:
    targets = (
      (weak["tokens:train_w2s"], weak["mask:train_w2s"])
      if parts.generative
      else weak["probs:train_w2s"]
    )
    per_seed, loss = (
      trainer.supervised("train_w2s", targets, size=cfg.strong_size),
      parts.cfg.losses[0],
    )
    desc = f"strong {cfg.strong_size} on weak {weak_size}'s labels ({loss.tag})"
  params, _ = trainer.tune(cfg.strong_size, per_seed, loss, desc)
  return answers(parts, cfg.strong_size, params, parts.task.eval_splits)


def run_stages(parts: Parts, cfg: CascadeConfig, kind: str, out_dir: Path, bar=None) -> dict:
  """{(weak size or None, strong variant or "weak"): stage arrays}, loaded or computed
  through the one store (infra/store.py), each file tied to its stage's identity."""
  folder = stage_dir(cfg, kind, out_dir)
  store, key = Store(folder), stage_key(cfg, kind)
  tick = (lambda: bar.update(1)) if bar is not None else (lambda: None)
  identity = lambda name: {**key, "stage": name}
  out = {}
  for w in cfg.weak_sizes:
    name = f"weak-{w}.npz"
    out[w, "weak"] = store.arrays(
      name, lambda w=w: weak_stage(parts, cfg, w), identity=identity(name)
    )
    tick()
  name = f"ceiling-{cfg.strong_size}.npz"
  out[None, "ceiling"] = store.arrays(
    name, lambda: strong_stage(parts, cfg, None, None), identity=identity(name)
  )
  tick()
  for w in cfg.weak_sizes:
    name = f"w2s-{cfg.strong_size}-from-{w}.npz"
    out[w, "w2s"] = store.arrays(
      name, lambda w=w: strong_stage(parts, cfg, out[w, "weak"], w), identity=identity(name)
    )
    tick()
  return out


def _models(parts: Parts, cfg) -> dict:
  out = {}
  for size in (*cfg.weak_sizes, cfg.strong_size):
    model_cfg = parts.cfg.model_config(size, parts.task)
    out[size] = {
      "params": model_cfg.num_params,
      "flops_per_token": float(model_flops(config=model_cfg, tokens=1)),
      "flops_per_token_with_embeddings": float(
        model_flops(config=model_cfg, tokens=1, include_embeddings=True)
      ),
    }
  return out


def run(
  cfg: CascadeConfig, *, out_dir, cache_dir, progress: bool = True, overwrite: bool = False
) -> dict:
  """Every stage (stored ones loaded), then out_dir/per_query.csv,
  accuracy_vs_cost.png and results.json. Returns the results. Configs, the
  output folder and the calibration slice are checked before any training;
  a folder holding another cascade config's results is refused unless overwrite."""
  started, meter = time.perf_counter(), memory.Peak().start()
  kinds = tuple(cfg.experiments())
  for kind in kinds:
    check_mesh(cfg.experiment_config(kind))  # a config error leaves no folder behind
  all_parts = {}
  for kind in kinds:
    parts = parts_lib.build(cfg.experiment_config(kind), cache_dir=cache_dir, progress=progress)
    parts.check((*cfg.weak_sizes, cfg.strong_size))
    if not parts.generative:
      calibration_split(len(parts.task.splits["train_gt"]), cfg.calibration_examples)
    all_parts[kind] = parts
  out_dir = prepare_out_dir(out_dir)
  claim_folder(
    out_dir,
    record="cascade.json",
    identity={"key_scheme": KEY_SCHEME, **json.loads(json.dumps(fingerprint(cfg)))},
    what="a cascade",
    overwrite=overwrite,
  )
  bar = tqdm(
    total=len(kinds) * (2 * len(cfg.weak_sizes) + 1),
    desc="cascade stages",
    unit="stage",
    disable=not progress or not shd.is_main_process(),
    dynamic_ncols=True,
  )
  tables, calibration = [], {}
  for kind, parts in all_parts.items():
    rows, calibration[kind] = per_query.task_rows(
      parts, cfg, kind, run_stages(parts, cfg, kind, out_dir, bar)
    )
    tables.append(rows)
  bar.close()
  table = per_query.concatenate(tables)
  results = {
    "schema": records.SCHEMA,
    "kind": "cascade",
    "config": fingerprint(cfg),
    "environment": records.environment(),
    "models": {kind: _models(parts, cfg) for kind, parts in all_parts.items()},
    "calibration": calibration.get("classification", {}),
    "rows": len(table["seed"]),
    "summary": summary.summarize(table, cfg),
  }
  if shd.is_main_process():
    with atomic_files():  # all three, or none (a full disk leaves the folder as it was)
      per_query.write_csv(out_dir / "per_query.csv", table)
      summary.plot(table, out_dir / "accuracy_vs_cost.png")
      results["seconds"] = time.perf_counter() - started
      results["memory"] = meter.report()
      write_json_atomic(out_dir / "results.json", results)
  results.setdefault("seconds", time.perf_counter() - started)
  results.setdefault("memory", meter.report())  # processes that wrote nothing
  meter.stop()
  return results
