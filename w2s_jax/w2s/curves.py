"""Training curves: every fine-tune evaluated every K steps, on device, and
the curves written out.

At each point of a curve (loop.Watch: the loop never waits for it), per seed:
- classification, on each evaluation split: `accuracy`, `xent` (the true
  class's cross-entropy) and, for a student of the weak model, `agreement`
  with the weak model's predicted class (its imitation, as it grows);
- generation, on each evaluation split's ground-truth responses, teacher
  forced: `response_nll` and `token_accuracy` (greedy generation at every
  point would cost more than the training; the headline scores stay
  evaluate()'s, from the final params);
- `loss`, the training loss at that step.

A stage keeps its curve beside its scores ("curve:step" [points],
"curve:<name>" [points, seeds]). `write` puts every curve of a run folder
in curves/<run>/seed<s>/: curve.jsonl and a TensorBoard event file
(tensorboard's own writer; `tensorboard --logdir <folder>/curves`).
"""

import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.data.dataset import padded_batches
from w2s_jax.infra import sharding as shd
from w2s_jax.infra.files import atomic_write, staging_dir
from w2s_jax.models import sampling
from w2s_jax.models.inference import one_seed_at_a_time
from w2s_jax.models.transformer import Transformer
from w2s_jax.tasks import layout

PREFIX = "curve:"
STEP = PREFIX + "step"


# --- What a point measures (pure) ----------------------------------------------------


def classification_sums(*, probs, labels, weight, reference=None) -> dict:
  """Per seed, sums over a batch's real rows (weight 1, padding 0).

  Args:
    probs: class probabilities [seeds, B, classes].
    labels: true classes [B].
    weight: [B], 1 for a real row.
    reference: classes to agree with, per seed [seeds, B] (the weak model's).

  Returns:
    {"count", "correct", "xent", ["agree"]}, each [seeds].
  """
  predicted = jnp.argmax(probs, -1)
  p_true = jnp.take_along_axis(probs, labels[None, :, None], axis=-1)[..., 0]
  sums = {
    "count": jnp.broadcast_to(jnp.sum(weight), predicted.shape[:1]),
    "correct": jnp.sum((predicted == labels[None]) * weight, -1),
    "xent": -jnp.sum(jnp.log(jnp.clip(p_true, 1e-7, 1.0)) * weight, -1),
  }
  if reference is not None:
    sums["agree"] = jnp.sum((predicted == reference) * weight, -1)
  return sums


def response_sums(*, logits, tokens, loss_mask) -> dict:
  """Per seed, sums over a batch's response tokens, teacher forced.

  Args:
    logits: next-token logits [seeds, B, T, vocab].
    tokens, loss_mask: prompt + response [B, T]; loss_mask marks the response.

  Returns:
    {"count" (response tokens), "nll", "correct" (greedy next token right)}, each [seeds].
  """

  # logits[:, t] predicts tokens[:, t + 1], which counts where loss_mask[:, t + 1] is 1
  # (as in the SFT loss, training/losses.py).
  weight = loss_mask[:, 1:].astype(jnp.float32)

  def one(logits):
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
    target = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    right = sampling.greedy_token(logits[:, :-1]) == tokens[:, 1:]
    return {
      "count": jnp.sum(weight),
      "nll": -jnp.sum(target * weight),
      "correct": jnp.sum(right * weight),
    }

  return jax.vmap(one)(logits)


def finish(sums: dict, split: str, generative: bool) -> dict:
  """A split's sums -> its named values per seed."""
  count = jnp.maximum(sums["count"], 1.0)
  if generative:
    return {
      f"{split}/response_nll": sums["nll"] / count,
      f"{split}/token_accuracy": sums["correct"] / count,
    }
  out = {f"{split}/accuracy": sums["correct"] / count, f"{split}/xent": sums["xent"] / count}
  if "agree" in sums:
    out[f"{split}/agreement"] = sums["agree"] / count
  return out


# --- The measure a fine-tune calls ---------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _point(model_cfg, generative: bool, mesh):
  """jit: (params stacked per seed, {split: batches stacked [batches, B, ...]})
  -> {name: [seeds]}: one program per point, the batches in a lax.map."""
  model = Transformer(model_cfg)
  method = Transformer.lm_logits if generative else Transformer.class_logits

  def batch_sums(params, batch):
    logits = one_seed_at_a_time(
      lambda p, tokens, mask: model.apply({"params": p}, tokens, mask, method=method)
    )(params, batch["tokens"], batch["mask"])
    if generative:
      return response_sums(logits=logits, tokens=batch["tokens"], loss_mask=batch["loss_mask"])
    return classification_sums(
      probs=jax.nn.softmax(logits.astype(jnp.float32), -1),
      labels=batch["labels"],
      weight=batch["weight"],
      reference=batch["reference"].T if "reference" in batch else None,
    )

  def point(params, splits):
    out = {}
    for split, stacked in splits.items():
      sums = jax.lax.map(lambda batch: batch_sums(params, batch), stacked)
      out.update(finish(jax.tree.map(lambda x: x.sum(0), sums), split, generative))
    return out

  # Params keep their sharding; the batches come split over the mesh.
  return jax.jit(point, out_shardings=shd.replicated(mesh))


def make_measure(
  *, model_cfg, splits: dict, generative: bool, batch_size: int, mesh, reference=None
):
  """The curve's measure: (params stacked per seed) -> {name: [seeds]} on device.

  Args:
    model_cfg: the model's config.
    splits: {split: Dataset} (the model's view of each evaluation split).
    generative: teacher-forced response scores instead of class scores.
    batch_size: examples per batch, a multiple of the mesh's devices.
    mesh: the device mesh.
    reference: {split: [seeds, N] classes}, to measure agreement with.

  The batches go to the devices once, stacked; each call dispatches one
  program and returns without waiting for it.
  """
  shd.check_batch_size(batch_size, mesh, "eval_batch_size")
  rows = shd.process_rows(mesh, batch_size)
  prepared = {}
  for split, data in splits.items():
    ref = None if generative or not reference else reference.get(split)
    if generative:
      data = layout.sequences(data)
    elif ref is not None:  # [N, seeds]: examples first, like every field
      data = data.with_fields(reference=np.asarray(ref).T)
    fields = ("tokens", "mask") + (("loss_mask",) if generative else ("labels",))
    fields += ("reference",) if ref is not None else ()
    batches = []
    for batch, real in padded_batches(data, batch_size=batch_size):
      real_rows = (np.arange(batch_size) < real)[rows]
      host = {k: np.asarray(batch[k])[rows] for k in fields}
      if generative:  # a padding row repeats a real one: it adds no response tokens
        host["loss_mask"] = host["loss_mask"] * real_rows[:, None]
      else:
        host["weight"] = real_rows.astype(np.float32)
      batches.append(host)
    stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    # [batches, B, ...]: the leading axis whole, each batch's rows over the mesh.
    prepared[split] = shd.put_batch(stacked, mesh, seed_axis=True)
  point = _point(model_cfg, generative, mesh)
  return lambda params: point(params, prepared)


def every(steps: int, points: int) -> int:
  """Steps between a curve's points: `points` evenly spaced, the last at `steps`."""
  return max(1, steps // points)


# --- Stored with a stage --------------------------------------------------------------------


def to_arrays(curve: list[dict]) -> dict:
  """loop.curve_points' list -> {"curve:step": [P], "curve:<name>": [P, seeds]}."""
  if not curve:
    return {}
  out = {STEP: np.array([p["step"] for p in curve], np.int64)}
  for name in curve[0]:
    if name != "step":
      out[PREFIX + name] = np.array([p[name] for p in curve], np.float32)
  return out


def from_arrays(arrays: dict) -> dict:
  """The curve arrays of a stage's arrays ({} when it has none)."""
  return {k: np.asarray(v) for k, v in arrays.items() if k.startswith(PREFIX)}


def names(*, eval_splits, generative: bool, agreement: bool) -> tuple[str, ...]:
  """The arrays a stored curve has."""
  if generative:
    per_split = ("response_nll", "token_accuracy")
  else:
    per_split = ("accuracy", "xent") + (("agreement",) if agreement else ())
  return (
    STEP,
    PREFIX + "loss",
    *(f"{PREFIX}{s}/{m}" for s in eval_splits for m in per_split),
  )


def oracle(curve: dict, name: str) -> dict:
  """The final point and the best one by `name`, over the curve's points.

  The best step is picked on the evaluation data itself (the early-stopping
  upper bound of Burns et al.): an oracle, not an achievable result.

  Args:
    curve: one stage's curve arrays (to_arrays), values [points, seeds].
    name: the value to pick by (higher is better), e.g. "test/accuracy".

  Returns:
    {"final", "best", "best_step"}: the mean over seeds at the last point,
    at the best point (one step for every seed: the mean curve's best), and
    that step.
  """
  mean = np.asarray(curve[PREFIX + name], np.float64).mean(-1)
  best = int(np.argmax(mean))
  return {
    "final": float(mean[-1]),
    "best": float(mean[best]),
    "best_step": int(curve[STEP][best]),
  }


# --- Written out -----------------------------------------------------------------------------


def rows(curve: dict, seed_index: int) -> list[dict]:
  """One seed's points: [{"step", name: value}]."""
  steps = curve[STEP]
  named = {k[len(PREFIX) :]: v for k, v in curve.items() if k != STEP}
  return [
    {"step": int(s), **{n: float(v[i, seed_index]) for n, v in named.items()}}
    for i, s in enumerate(steps)
  ]


def of_cells(records: list[dict]) -> dict:
  """Every stage's curve in a run's cell records, once each (cells share
  their weak and ceiling stages), per pretraining draw:
  {"pretrain<p>/weak-<size>" | "pretrain<p>/ceiling-<size>" |
  "pretrain<p>/w2s-<cell id>": (curve arrays [points, seeds], seeds)}."""
  out = {}
  for record in records:
    runs = np.asarray(record["runs"]).reshape(-1, 2)
    cell = record["cell"]
    names = {
      "weak": f"weak-{cell['weak']}",
      "ceiling": f"ceiling-{cell['strong']}",
      "w2s": f"w2s-{record['id']}",
    }
    for stage, stored in record.get("curves", {}).items():
      curve = from_record(stored)
      for draw in dict.fromkeys(runs[:, 0].tolist()):
        columns = np.flatnonzero(runs[:, 0] == draw)
        out[f"pretrain{draw}/{names[stage]}"] = (
          {k: v if k == STEP else v[:, columns] for k, v in curve.items()},
          runs[columns, 1].tolist(),
        )
  return out


def write(folder, runs: dict) -> list[Path]:
  """Writes each run's curves to folder/<run>/seed<s>/: curve.jsonl and a
  TensorBoard event file. A folder whose curve.jsonl already holds the
  same rows is left as it is; one holding other rows (a rerun that changed
  them) is replaced whole: it was written here (its curve.jsonl says so).

  Args:
    folder: the run folder's curves/ folder.
    runs: {run name (a path, e.g. "pretrain0/weak-pico"): (curve arrays,
      the fine-tuning seed of each column)} (of_cells).

  Returns:
    The seed folders written or kept.
  """
  from tensorboard.summary import Writer  # imported here: only writing curves needs it

  out = []
  for run, (curve, seeds) in runs.items():
    for i, seed in enumerate(seeds):
      target = Path(folder) / run / f"seed{seed}"
      lines = "".join(json.dumps(r) + "\n" for r in rows(curve, i))
      out.append(target)
      jsonl = target / "curve.jsonl"
      if jsonl.is_file() and jsonl.read_text() == lines:
        continue
      if target.exists() and not jsonl.is_file():
        raise FileExistsError(
          f"curves: {str(target)!r} exists without a curve.jsonl: it was not "
          "written here, so it is left alone; move it away"
        )
      # Our own staging folder (two processes writing one run's curves each
      # stage their own); a killed writer's is removed by the next write.
      staging = staging_dir(target)
      try:
        writer = Writer(str(staging))
        for row in rows(curve, i):
          for name, value in row.items():
            if name != "step":
              writer.add_scalar(name, value, step=row["step"])
        writer.close()
        with atomic_write(staging / "curve.jsonl") as f:
          f.write(lines)
        if target.exists():
          shutil.rmtree(target, ignore_errors=True)
        try:
          staging.rename(target)
        except OSError:  # another process placed its folder first: equal rows are kept
          if not (jsonl.is_file() and jsonl.read_text() == lines):
            raise
      finally:
        shutil.rmtree(staging, ignore_errors=True)
  return out


def pooled(per_draw: list[dict]) -> dict:
  """One stage's curves on several pretraining draws, as one: values
  [points, runs], draw-major (every draw's curve has the same steps)."""
  steps = per_draw[0][STEP]
  for curve in per_draw[1:]:
    if not np.array_equal(curve[STEP], steps):
      raise ValueError(f"curves: steps {curve[STEP]} and {steps} differ between draws")
  return {
    k: steps if k == STEP else np.concatenate([c[k] for c in per_draw], axis=1) for k in per_draw[0]
  }


def headline(key: str, curve: dict) -> str:
  """The curve value the oracle picks by for an evaluation key: its split's
  accuracy (classification) or token accuracy (generation)."""
  split = key.partition(":")[0]
  for name in (f"{split}/accuracy", f"{split}/token_accuracy"):
    if PREFIX + name in curve:
      return name
  raise KeyError(f"curves: no accuracy of split {split!r} in {sorted(curve)}")


def from_record(stored: dict) -> dict:
  """A cell record's stored curve ({name: nested lists}) as curve arrays."""
  return {
    PREFIX + k: np.asarray(v, np.int64 if k == "step" else np.float32) for k, v in stored.items()
  }
