"""Probes on a frozen strong model's features that find and mend contaminated
weak labels before fine-tuning (EleutherAI/w2s's relabel and filter).

A probe predicts each train_w2s example's class from the strong model's
features, fitted on the weak labels of the *other* examples: kNN (the mean
label of the k most similar examples, leaving the example out) or a
logistic regression fitted out of fold. Where the probe and the weak label
disagree most is where the weak label is likeliest wrong: `contamination`
ranks the examples, and `mend` relabels (the probe's prediction replaces the
weak label) or drops that fraction. Pure functions of numpy arrays; the
logistic regression's gradient steps run jitted.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("knn", "logistic")
ACTIONS = ("relabel", "filter")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """kind: knn or logistic; action: relabel or filter; fraction: of train_w2s
  judged contaminated; k: kNN's neighbours; folds, l2, steps: the logistic
  probe's cross-fitting and fit."""

  kind: str = "knn"
  action: str = "relabel"
  fraction: float = 0.1
  k: int = 20
  folds: int = 5
  l2: float = 1e-2
  steps: int = 300

  def __post_init__(self):
    checks = (
      ("kind", self.kind in KINDS, f"one of {KINDS}"),
      ("action", self.action in ACTIONS, f"one of {ACTIONS}"),
      ("fraction", 0 < self.fraction < 1, "in (0, 1)"),
      ("k", isinstance(self.k, int) and self.k >= 1, "an int >= 1"),
      ("folds", isinstance(self.folds, int) and self.folds >= 2, "an int >= 2"),
      ("l2", self.l2 >= 0, ">= 0"),
      ("steps", isinstance(self.steps, int) and self.steps >= 1, "an int >= 1"),
    )
    for field, ok, expected in checks:
      if not ok:
        raise ValueError(f"ProbeConfig.{field}={getattr(self, field)!r}: expected {expected}")

  @property
  def tag(self) -> str:
    return f"probe {self.kind} {self.action} {self.fraction:g}"


def _standardized(features):
  x = np.asarray(features, np.float64)
  return (x - x.mean(0)) / (x.std(0) + 1e-8)


def knn_probe(*, features, labels, k: int) -> np.ndarray:
  """Each example's class distribution as the mean weak label of its k most
  similar other examples (cosine similarity of standardized features) [N, C]."""
  x = _standardized(features)
  x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
  sim = x @ x.T
  np.fill_diagonal(sim, -np.inf)  # never its own neighbour
  k = min(k, len(x) - 1)
  nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
  return np.asarray(labels, np.float64)[nearest].mean(1)


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_logistic(x, y, l2, steps):
  """Multinomial logistic regression on soft labels: full-batch gradient
  descent on mean cross-entropy + l2 * |W|^2 (a convex fit; the step is 1/L)."""
  n, d = x.shape
  lipschitz = 0.5 * jnp.max(jnp.sum(x * x, axis=1)) + 2 * l2

  def loss(wb):
    w, b = wb
    logp = jax.nn.log_softmax(x @ w + b, axis=-1)
    return -jnp.mean(jnp.sum(y * logp, axis=-1)) + l2 * jnp.sum(w * w)

  def step(wb, _):
    g = jax.grad(loss)(wb)
    return jax.tree.map(lambda p, gp: p - gp / lipschitz, wb, g), None

  init = (jnp.zeros((d, y.shape[1]), x.dtype), jnp.zeros((y.shape[1],), x.dtype))
  (w, b), _ = jax.lax.scan(step, init, None, length=steps)
  return w, b


def logistic_probe(*, features, labels, folds: int, l2: float, steps: int, seed: int = 0):
  """Out-of-fold class probabilities of a logistic regression of the weak
  labels on standardized features: each fold predicted by a fit on the
  others [N, C]."""
  x = _standardized(features).astype(np.float32)
  y = np.asarray(labels, np.float32)
  fold_of = np.random.default_rng(seed).permutation(len(x)) % folds
  out = np.zeros(y.shape, np.float64)
  for f in range(folds):
    held = fold_of == f
    w, b = _fit_logistic(x[~held], y[~held], np.float32(l2), steps)
    out[held] = np.asarray(jax.nn.softmax(x[held] @ w + b, axis=-1))
  return out


def probe_predictions(cfg: ProbeConfig, *, features, labels, seed: int = 0) -> np.ndarray:
  """The probe's class probabilities for every example [N, C]."""
  if cfg.kind == "knn":
    return knn_probe(features=features, labels=labels, k=cfg.k)
  return logistic_probe(
    features=features, labels=labels, folds=cfg.folds, l2=cfg.l2, steps=cfg.steps, seed=seed
  )


def contamination(*, probe, labels) -> np.ndarray:
  """How much the probe and the weak label disagree, per example: their total
  variation distance, 0.5 * sum |probe - label| (0 agree, 1 disjoint)."""
  return 0.5 * np.abs(np.asarray(probe, np.float64) - np.asarray(labels, np.float64)).sum(-1)


def mend(cfg: ProbeConfig, *, probe, labels):
  """(labels, kept indices): the `fraction` most contaminated examples
  relabelled with the probe's prediction, or dropped (kept lists the rest,
  sorted). Ties break toward the lower index."""
  labels = np.asarray(labels, np.float32)
  score = contamination(probe=probe, labels=labels)
  worst = np.lexsort((np.arange(len(score)), -score))[: int(round(cfg.fraction * len(score)))]
  if cfg.action == "filter":
    return labels, np.setdiff1d(np.arange(len(labels)), worst)
  mended = labels.copy()
  mended[worst] = np.asarray(probe, np.float32)[worst]
  return mended, np.arange(len(labels))
