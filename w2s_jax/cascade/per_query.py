"""The cascade experiment's per-query table: every router's score, both models'
correctness and FLOPs, one row per (task, weak, strong variant, seed, split,
query); written as CSV (floats in shortest round-trip form, so a reader gets
the exact values back) and read back by `read_csv`.

Costs are flops.model_flops of the model configs (2 * non-embedding params *
tokens): a classifier reads the query's real tokens; a generator the prompt
plus its own response. agreement_flops is what the agreement router's samples
cost on top of the weak greedy pass (each sample counted as a full pass).
"""

import csv
from pathlib import Path

import numpy as np

from w2s_jax.cascade import calibration, routers
from w2s_jax.curation import scores
from w2s_jax.infra.files import atomic_write
from w2s_jax.models.flops import model_flops
from w2s_jax.w2s import metrics

TASKS = ("classification", "generative")
ROUTERS = {
  "classification": ("max_prob", "margin", "neg_entropy", "max_prob_calibrated"),
  "generative": ("mean_logprob", "chow_quantile", "sample_agreement"),
}
STRONG = ("ceiling", "w2s")  # strong variants: trained on ground truth, on the weak model's labels


def calibration_split(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(fit, calibration) indices of train_gt: k examples drawn once (seed 0)."""
  if not 2 <= k <= n - 2:
    raise ValueError(
      f"CascadeConfig.calibration_examples={k}: expected in [2, {n - 2}] "
      f"(train_gt has {n} examples; the weak model trains on the rest)"
    )
  perm = np.random.default_rng(0).permutation(n)
  return np.sort(perm[k:]), np.sort(perm[:k])


KEYS = ("task", "weak", "strong", "seed", "split", "query")
ROUTER_COLUMNS = tuple(r for kind in TASKS for r in ROUTERS[kind])
VALUES = ROUTER_COLUMNS + (
  "weak_correct",
  "strong_correct",
  "weak_flops",
  "strong_flops",
  "agreement_flops",
)
COLUMNS = KEYS + VALUES
TEXT = ("task", "weak", "strong", "split")


def _calibrated(probs, temperature):
  """softmax(log p / T) in float64, T one per seed: probs [seeds, N, C]."""
  z = np.log(np.clip(np.asarray(probs, np.float64), 1e-300, None)) / np.reshape(
    temperature, (-1, 1, 1)
  )
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def fit_calibration(parts, cfg, weak: dict) -> dict:
  """Per seed, the weak model's temperature fitted on the calibration slice of
  train_gt (which it never trained on), and its ECE before and after on each
  evaluation split."""
  gt = parts.task.splits["train_gt"]
  idx = calibration_split(len(gt), cfg.calibration_examples)[1]
  held = np.asarray(weak["probs:train_gt"], np.float64)[:, idx]
  temps = np.array(
    [
      calibration.fit_temperature(logits=np.log(np.clip(p, 1e-300, None)), labels=gt["labels"][idx])
      for p in held
    ]
  )
  out = {"temperature": temps.tolist(), "calibration_examples": len(idx)}
  for split in parts.task.eval_splits:
    probs, labels = weak[f"probs:{split}"], parts.task.splits[split]["labels"]
    out[f"ece_before:{split}"] = [
      calibration.expected_calibration_error(probs=p, labels=labels) for p in probs
    ]
    out[f"ece_after:{split}"] = [
      calibration.expected_calibration_error(probs=p, labels=labels)
      for p in _calibrated(probs, temps)
    ]
  return out


def _answer_ids(tokens, mask, samples):
  """[N * samples, T] prompt-major samples -> [samples, N] ids, equal where
  two samples wrote the same response (its real tokens)."""
  rows = np.where(np.asarray(mask) > 0, tokens, -1)
  _, inverse = np.unique(rows, axis=0, return_inverse=True)
  return np.reshape(inverse, (-1, samples)).T


def _weak_columns(parts, cfg, size, weak, split, temps) -> dict:
  """The weak side of a split's rows: router scores, correctness, FLOPs, [seeds, N]."""
  model_cfg = parts.cfg.model_config(size, parts.task)
  data = parts.views.data(size, split)
  if not parts.generative:
    probs = weak[f"probs:{split}"]
    return {
      # A classifier's routers are the curation scores (higher: more confident).
      "max_prob": scores.confidence(probs=probs),
      "margin": scores.margin(probs=probs),
      "neg_entropy": scores.neg_entropy(probs=probs),
      "max_prob_calibrated": _calibrated(probs, temps).max(-1),
      "weak_correct": metrics.correct(probs=probs, labels=data["labels"]),
      "weak_flops": model_flops(config=model_cfg, tokens=data["mask"].sum(-1)),
      "agreement_flops": 0.0,
    }
  tokens, mask, logprobs = (weak[f"{k}:{split}"] for k in ("tokens", "mask", "logprobs"))
  prompt = data["prompt_mask"].sum(-1)
  n = cfg.agreement_samples
  s_tokens, s_mask = weak[f"sample_tokens:{split}"], weak[f"sample_mask:{split}"]
  agreement = [
    routers.sample_agreement(answers=_answer_ids(t, m, n)) for t, m in zip(s_tokens, s_mask)
  ]
  sample_len = s_mask.reshape(len(s_mask), len(data), n, -1).sum((-1, -2))
  return {
    "mean_logprob": routers.mean_logprob(logprobs=logprobs, mask=mask),
    "chow_quantile": routers.quantile_prob(logprobs=logprobs, mask=mask, q=cfg.quantile),
    "sample_agreement": np.stack(agreement),
    "weak_correct": parts.evaluator.score(split, tokens, mask)[parts.task.metrics[0]],
    "weak_flops": model_flops(config=model_cfg, tokens=prompt + mask.sum(-1)),
    "agreement_flops": model_flops(config=model_cfg, tokens=n * prompt + sample_len),
  }


def _strong_columns(parts, cfg, strong, split) -> dict:
  model_cfg = parts.cfg.model_config(cfg.strong_size, parts.task)
  data = parts.views.data(cfg.strong_size, split)
  if not parts.generative:
    probs = strong[f"probs:{split}"]
    return {
      "strong_correct": metrics.correct(probs=probs, labels=data["labels"]),
      "strong_flops": model_flops(config=model_cfg, tokens=data["mask"].sum(-1)),
    }
  tokens, mask = strong[f"tokens:{split}"], strong[f"mask:{split}"]
  return {
    "strong_correct": parts.evaluator.score(split, tokens, mask)[parts.task.metrics[0]],
    "strong_flops": model_flops(
      config=model_cfg, tokens=data["prompt_mask"].sum(-1) + mask.sum(-1)
    ),
  }


def task_rows(parts, cfg, kind, stage_out: dict) -> tuple[dict, dict]:
  """One task's rows (columns of equal length) and, for classification, each
  weak size's calibration."""
  blocks, calib = [], {}
  seeds = np.asarray(parts.seeds)
  for w in cfg.weak_sizes:
    weak = stage_out[w, "weak"]
    temps = None
    if not parts.generative:
      calib[w] = fit_calibration(parts, cfg, weak)
      temps = np.asarray(calib[w]["temperature"])
    for split in parts.task.eval_splits:
      weak_cols = _weak_columns(parts, cfg, w, weak, split, temps)
      for variant in STRONG:
        strong = stage_out[(None, "ceiling") if variant == "ceiling" else (w, "w2s")]
        cols = {**weak_cols, **_strong_columns(parts, cfg, strong, split)}
        n = len(parts.task.splits[split])
        shape = (len(seeds), n)
        block = {
          "task": kind,
          "weak": w,
          "strong": variant,
          "split": split,
          "seed": np.repeat(seeds, n),
          "query": np.tile(np.arange(n), len(seeds)),
        }
        for col in VALUES:
          block[col] = np.broadcast_to(np.asarray(cols.get(col, np.nan), np.float64), shape).ravel()
        blocks.append({k: np.full(len(seeds) * n, v) if k in TEXT else v for k, v in block.items()})
  return {k: np.concatenate([b[k] for b in blocks]) for k in COLUMNS}, calib


def concatenate(tables) -> dict:
  return {k: np.concatenate([t[k] for t in tables]) for k in COLUMNS}


def write_csv(path: Path, table: dict) -> None:
  with atomic_write(path) as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    cols = [table[k].tolist() for k in COLUMNS]
    writer.writerows(zip(*cols))


def read_csv(path: Path) -> dict:
  """The table as written: text columns as str arrays, seed/query int, the rest float."""
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = tuple(next(reader))
    if header != COLUMNS:
      raise ValueError(f"{path}: columns {header}, expected {COLUMNS}")
    cols = list(zip(*reader))
  kind = lambda k: str if k in TEXT else int if k in ("seed", "query") else float
  return {k: np.array([kind(k)(x) for x in c]) for k, c in zip(COLUMNS, cols)}
