"""What supervises the strong model beyond one weak model: each a WeakStage
made from others, so the W2S stage, its metrics and its records are the
same for every method (docs/methods.md).

- ensemble_stage: several weak models' class probabilities averaged, with
  equal weights or (weighted_ensemble_stage) weights fitted on ground truth;
- relabel_stage: one bootstrapping step, an intermediate model relabelling
  train_w2s for the next (Burns et al. 2023, section 4.3.1);
- probe_stage: the weak labels mended by a probe on the strong model's
  frozen features (curation/probes.py).
"""

import dataclasses

import numpy as np

from w2s_jax.curation import ensembles, probes
from w2s_jax.models import inference
from w2s_jax.training.objectives import Loss
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import metrics, stages
from w2s_jax.w2s.parts import Parts
from w2s_jax.w2s.stages import WeakStage


def ensemble_stage(parts: Parts, members: list[WeakStage], weights=None) -> WeakStage:
  """Weak models as one supervisor: per seed, the weighted mean of their
  class probabilities, on train_w2s (the labels) and on every evaluation
  split, so that its Pweak is the ensemble's own accuracy.

  Args:
    parts: the experiment's parts.
    members: each weak model's stage (classification; the same seeds).
    weights: [members] or, per seed, [seeds, members]; each row >= 0 and
      summing to 1 (default equal).

  Returns:
    WeakStage: the ensemble's labels, their accuracy on train_w2s, its scores
    and answers on every evaluation split; the first member's likelihood
    (what a likelihood filter reads) and no curve.
  """
  if parts.generative or any(m.labels is None for m in members):
    raise ValueError(
      "an ensemble of weak supervisors averages class probabilities: expected a classification task"
    )
  seeds, count = len(parts.seeds), len(members)
  w = np.full(count, 1.0 / count) if weights is None else np.asarray(weights, np.float64)
  w = np.broadcast_to(w, (seeds, count)) if w.shape == (count,) else w
  if w.shape != (seeds, count) or np.any(w < 0) or not np.allclose(w.sum(1), 1.0):
    raise ValueError(
      f"ensemble weights {np.asarray(weights).tolist()}: expected {count} values >= 0 summing "
      f"to 1, or {seeds} rows of them (one per seed)"
    )
  mix = lambda arrays: np.einsum("sm,ms...->s...", w, np.stack(arrays)).astype(np.float32)
  labels = mix([m.labels for m in members])
  probs = {s: mix([m.probs[s] for m in members]) for s in parts.task.eval_splits}
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


def weighted_ensemble_stage(
  parts: Parts, sizes: tuple[str, ...], weighting: ensembles.Weighting
) -> tuple[WeakStage, np.ndarray]:
  """An ensemble of weak models whose weights are fitted on ground truth
  (curation/ensembles.py), its members trained here: Stacked's on train_gt
  minus each seed's held-out slice, Boosted's one after another on resamples.

  Returns:
    (WeakStage, weights): the ensemble (ensemble_stage) and its weights
    [seeds, members].
  """
  truth = np.asarray(parts.task.splits["train_gt"]["labels"])
  n, seeds = len(truth), parts.seeds
  if isinstance(weighting, ensembles.Stacked):
    split = [ensembles.holdout_split(n, weighting.holdout_examples, seed=s) for s in seeds]
    fit, held = [f for f, _ in split], [h for _, h in split]
    members = [stages.weak_stage(parts, x, rows=fit, probs_on=("train_gt",)) for x in sizes]
    weights = np.stack(
      [
        ensembles.stacking_weights(
          probs=np.stack([m.probs["train_gt"][i][held[i]] for m in members]),
          labels=truth[held[i]],
        )
        for i in range(len(seeds))
      ]
    )
  elif isinstance(weighting, ensembles.Boosted):
    members, alphas = [], []
    distribution = np.full((len(seeds), n), 1.0 / n)
    for t, size in enumerate(sizes):
      rows = None  # the first round: D is uniform, train_gt as it is
      if t:
        rows = [
          np.sort(np.random.default_rng([weighting.resample_seed, s, t]).choice(n, n, p=d))
          for s, d in zip(seeds, distribution)
        ]
      member = stages.weak_stage(parts, size, rows=rows, probs_on=("train_gt",))
      alpha, distribution = ensembles.samme_round(
        probs=member.probs["train_gt"], labels=truth, distribution=distribution
      )
      members.append(member)
      alphas.append(alpha)
    weights = ensembles.normalized(np.stack(alphas, 1))
  else:
    raise ValueError(f"ensemble weighting {weighting!r}: expected Stacked or Boosted")
  return ensemble_stage(parts, members, weights), weights


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
