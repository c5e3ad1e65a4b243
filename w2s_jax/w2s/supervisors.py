"""What supervises the strong model beyond one weak model: each a WeakStage
made from others, so the W2S stage, its metrics and its records are the
same for every method (docs/methods.md).

- ensemble_stage: several weak models' class probabilities averaged;
- relabel_stage: one bootstrapping step, an intermediate model relabelling
  train_w2s for the next (Burns et al. 2023, section 4.3.1);
- probe_stage: the weak labels mended by a probe on the strong model's
  frozen features (curation/probes.py).
"""

import dataclasses

import numpy as np

from w2s_jax.curation import probes
from w2s_jax.models import inference
from w2s_jax.training.objectives import Loss
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import metrics
from w2s_jax.w2s.parts import Parts
from w2s_jax.w2s.stages import WeakStage


def ensemble_stage(parts: Parts, members: list[WeakStage], weights=None) -> WeakStage:
  """Weak models as one supervisor: per seed, the weighted mean of their
  class probabilities, on train_w2s (the labels) and on every evaluation
  split, so that its Pweak is the ensemble's own accuracy.

  Args:
    parts: the experiment's parts.
    members: each weak model's stage (classification; the same seeds).
    weights: one per member, >= 0, summing to 1 (default equal).

  Returns:
    WeakStage: the ensemble's labels, their accuracy on train_w2s, its scores
    and answers on every evaluation split; the first member's likelihood
    (what a likelihood filter reads) and no curve.
  """
  if parts.generative or any(m.labels is None for m in members):
    raise ValueError(
      "an ensemble of weak supervisors averages class probabilities: expected a classification task"
    )
  w = np.full(len(members), 1.0 / len(members)) if weights is None else np.asarray(weights, float)
  if w.shape != (len(members),) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
    raise ValueError(
      f"ensemble weights {w.tolist()}: expected {len(members)} values >= 0 summing to 1"
    )
  mix = lambda arrays: np.tensordot(w, np.stack(arrays), axes=1).astype(np.float32)
  labels = mix([m.labels for m in members])
  probs = {s: mix([m.probs[s] for m in members]) for s in members[0].probs}
  scores, answers = parts.evaluator.classified(probs)
  truth = parts.task.splits["train_w2s"]["labels"]
  return WeakStage(
    label_accuracy=metrics.correct(probs=labels, labels=truth).mean(1),
    scores=scores,
    labels=labels,
    likelihood=members[0].likelihood,
    answers=answers,
    probs=probs,
  )


def relabel_stage(
  parts: Parts,
  size: str,
  weak: WeakStage,
  loss: Loss,
  finetune_cfg: OptimConfig | None = None,
) -> WeakStage:
  """One bootstrapping step (Burns et al. 2023, section 4.3.1): model `size`
  learns train_w2s from the supervision so far with `loss`, per seed, and its
  predictions become the next model's labels.

  Returns:
    WeakStage: the new labels with their accuracy on train_w2s; everything
    else (Pweak's scores, the answers agreement is measured against, the
    curve) is the original weak model's, so PGR stays relative to it.
  """
  if parts.generative:
    raise ValueError(
      f"bootstrapping via {size!r}: expected a classification task (relabelling "
      "train_w2s with class probabilities); the task is generative"
    )
  params, _ = parts.trainer.tune(
    size,
    parts.trainer.supervised("train_w2s", weak.labels, size=size),
    loss,
    f"bootstrap {size} on the labels so far ({loss.tag})",
    finetune_cfg,
  )
  labels = parts.evaluator.predict(size, params, "train_w2s")
  truth = parts.task.splits["train_w2s"]["labels"]
  return dataclasses.replace(
    weak, labels=labels, label_accuracy=metrics.correct(probs=labels, labels=truth).mean(1)
  )


def probe_stage(
  parts: Parts, strong: str, weak: WeakStage, probe_cfg: probes.ProbeConfig
) -> tuple[WeakStage, list | None]:
  """The weak labels mended by a probe on the strong model's frozen,
  pretrained features of train_w2s (probes.py), per seed.

  Returns:
    (WeakStage, subsets): relabel: the mended labels (their accuracy on
    train_w2s) and None; filter: the labels as they were and, per seed, the
    rows kept (w2s_stage's subsets).
  """
  if parts.generative:
    raise ValueError(f"{probe_cfg.tag}: a probe reads class labels: expected a classification task")
  pretrained, model_cfg, _ = parts.models.get(strong)
  features = inference.head_features(
    pretrained,
    model_cfg,
    parts.views.data(strong, "train_w2s"),
    batch_size=parts.cfg.eval_batch_size,
    mesh=parts.mesh,
  )
  mended = [
    probes.mend(
      probe_cfg,
      probe=probes.probe_predictions(probe_cfg, features=features, labels=labels, seed=seed),
      labels=labels,
    )
    for seed, labels in zip(parts.seeds, weak.labels)
  ]
  if probe_cfg.action == "filter":
    return weak, [kept for _, kept in mended]
  labels = np.stack([m for m, _ in mended])
  truth = parts.task.splits["train_w2s"]["labels"]
  accuracy = metrics.correct(probs=labels, labels=truth).mean(1)
  return dataclasses.replace(weak, labels=labels, label_accuracy=accuracy), None
