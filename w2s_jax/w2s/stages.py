"""The W2S stages, shared by single runs, sweeps, curation and cascades: the
weak model on ground truth, the strong model on the weak model's supervision,
and the ceiling; and what each hands on, as typed values.

Two task kinds run through the same stages. Classification: the weak model's
supervision is soft labels; models are scored by accuracy. Generation: the
weak model writes a response to each train_w2s prompt (with its per-token
log-probs), and the strong model learns from the responses (`sft`) or, for
token-level KD, from the frozen weak model itself inside its train step;
models are scored on their greedy generations. All seeds of a stage train
together under jax.vmap, as one compiled program.

Stage outputs convert to and from flat named arrays (`arrays`, `from_arrays`)
for the store (infra/store.py): eval scores under "eval:<key>", a
model's answers under "answers:<split>", the training
curve under "curve:<name>" (curves.py).
"""

import dataclasses
import typing

import numpy as np

from w2s_jax.curation import weak_curation
from w2s_jax.curation.selection import FilterConfig
from w2s_jax.models import scoring
from w2s_jax.training.objectives import Loss
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import curves, metrics
from w2s_jax.w2s.parts import Parts

EVAL = "eval:"
ANSWERS = "answers:"
PROBS = "probs:"


def _eval_arrays(scores: dict) -> dict:
  return {EVAL + k: np.asarray(v) for k, v in scores.items()}


def _answer_arrays(answers: dict) -> dict:
  return {ANSWERS + k: np.asarray(v) for k, v in answers.items()}


def _answers(arrays: dict) -> dict:
  return {k[len(ANSWERS) :]: v for k, v in arrays.items() if k.startswith(ANSWERS)}


def _answer_fields(parts: Parts) -> tuple[str, ...]:
  """The answers a stored stage holds: every evaluation split's, where the task parses them."""
  if parts.generative and parts.task.answers is None:
    return ()
  return tuple(ANSWERS + s for s in parts.task.eval_splits)


def _eval_scores(arrays: dict) -> dict:
  return {k[len(EVAL) :]: v for k, v in arrays.items() if k.startswith(EVAL)}


@dataclasses.dataclass(frozen=True)
class WeakStage:
  """The weak model trained on ground truth, and what it hands the strong model.

  label_accuracy: [seeds], how right its supervision of train_w2s is;
  scores: {eval key: [seeds, N]}, its per-example scores (Pweak);
  labels: classification, its soft labels of train_w2s [seeds, N, classes];
  likelihood: classification, the pretrained weak LM's mean log-likelihood of
    each train_w2s text [N] (NaN for an encoder);
  answers: its answers on each evaluation split {split: [seeds, N, fields]}
    (Evaluator.assess: what a student's agreement is measured against);
  probs: classification, its class probabilities on each evaluation split
    {split: [seeds, N, classes]} (what an ensemble of weak models averages);
  curve: its training curve (curves.py; {} without one);
  responses, response_mask, logprobs: generation, its responses to train_w2s
    [seeds, N * weak_samples, max_new_tokens], prompt-major;
  curation: generation, each response's correctness and curation scores
    (weak_curation.score_responses);
  params: generation, its fine-tuned params per seed: token-level KD's teacher
    (stored apart from the arrays).
  """

  label_accuracy: np.ndarray
  scores: dict
  labels: np.ndarray | None = None
  likelihood: np.ndarray | None = None
  answers: dict = dataclasses.field(default_factory=dict)
  probs: dict = dataclasses.field(default_factory=dict)
  curve: dict = dataclasses.field(default_factory=dict)
  responses: np.ndarray | None = None
  response_mask: np.ndarray | None = None
  logprobs: np.ndarray | None = None
  curation: dict = dataclasses.field(default_factory=dict)
  params: typing.Any = None

  @property
  def generative(self) -> bool:
    return self.responses is not None

  @property
  def targets(self):
    """What the strong model trains on: soft labels, or (responses, masks)."""
    return (self.responses, self.response_mask) if self.generative else self.labels

  def arrays(self) -> dict:
    """Flat named arrays (what curation reads, and the store keeps); not the params."""
    named = {
      "label_accuracy": self.label_accuracy,
      **self.curation,
      **_eval_arrays(self.scores),
      **_answer_arrays(self.answers),
      **{PROBS + k: v for k, v in self.probs.items()},
      **self.curve,
    }
    for field in ("labels", "likelihood", "responses", "response_mask", "logprobs"):
      if getattr(self, field) is not None:
        named[field] = getattr(self, field)
    return {k: np.asarray(v) for k, v in named.items()}

  @classmethod
  def from_arrays(cls, arrays: dict, params=None) -> "WeakStage":
    known = {"label_accuracy", "labels", "likelihood", "responses", "response_mask", "logprobs"}
    prefixed = (EVAL, ANSWERS, PROBS, curves.PREFIX)
    return cls(
      **{k: arrays[k] for k in known if k in arrays},
      scores=_eval_scores(arrays),
      answers=_answers(arrays),
      probs={k[len(PROBS) :]: v for k, v in arrays.items() if k.startswith(PROBS)},
      curve=curves.from_arrays(arrays),
      curation={k: v for k, v in arrays.items() if k not in known and not k.startswith(prefixed)},
      params=params,
    )

  @staticmethod
  def fields(parts: Parts) -> tuple[str, ...]:
    """The arrays a stored weak stage of this experiment holds."""
    evals = tuple(EVAL + k for k in parts.evaluator.eval_keys) + _answer_fields(parts)
    curve = parts.evaluator.curve_names(agreement=False)
    if parts.generative:
      return (
        "responses",
        "response_mask",
        "logprobs",
        "label_accuracy",
        *weak_curation.response_fields(parts.task, parts.cfg.generation),
        *evals,
        *curve,
      )
    probs = tuple(PROBS + s for s in parts.task.eval_splits)
    return ("labels", "label_accuracy", "likelihood", *evals, *probs, *curve)


@dataclasses.dataclass(frozen=True)
class Evaluated:
  """A strong model's scores: {eval key: [seeds, N]}; after a filter, also how
  right the weak supervision it kept was, per seed; trained on weak labels
  (classification), its misfit to them on train_w2s, per seed
  (metrics.misfit); its answers (Evaluator.assess) and its training curve
  (curves.py; {} without one)."""

  scores: dict
  kept_label_accuracy: np.ndarray | None = None
  misfit: np.ndarray | None = None
  answers: dict = dataclasses.field(default_factory=dict)
  curve: dict = dataclasses.field(default_factory=dict)

  def arrays(self) -> dict:
    out = {**_eval_arrays(self.scores), **_answer_arrays(self.answers), **self.curve}
    if self.kept_label_accuracy is not None:
      out["kept_label_accuracy"] = np.asarray(self.kept_label_accuracy)
    return out

  @classmethod
  def from_arrays(cls, arrays: dict) -> "Evaluated":
    return cls(
      scores=_eval_scores(arrays),
      kept_label_accuracy=arrays.get("kept_label_accuracy"),
      answers=_answers(arrays),
      curve=curves.from_arrays(arrays),
    )

  @staticmethod
  def fields(parts: Parts) -> tuple[str, ...]:
    """A stored ceiling's arrays."""
    curve = parts.evaluator.curve_names(agreement=False)
    return tuple(EVAL + k for k in parts.evaluator.eval_keys) + _answer_fields(parts) + curve


def weak_stage(parts: Parts, size: str, *, rows=None, probs_on=()) -> WeakStage:
  """The weak model fine-tuned on ground truth, per seed.

  Args:
    parts: the experiment's parts.
    size: the weak model (a size of the table, or an imported name).
    rows: per seed, the train_gt rows it trains on (repeats allowed: a
      boosting round's resample); None: all of train_gt.
    probs_on: classification, splits beyond the evaluation ones whose class
      probabilities it keeps in `probs` (what an ensemble's weights are fit on).

  Returns:
    WeakStage: its soft labels (or responses) for train_w2s with their
    accuracy, its curation scores, and its scores on every evaluation key.
  """
  trainer, evaluator, cfg = parts.trainer, parts.evaluator, parts.cfg
  params, curve = trainer.tune(
    size,
    trainer.supervised("train_gt", subsets=rows, size=size),
    trainer.ground_truth_loss(),
    f"weak {size} on ground truth",
    cfg.weak_finetune,
    measure=evaluator.curve_measure(size),
  )
  if parts.generative:
    gen = cfg.generation
    weak_sampling = dataclasses.replace(
      evaluator.sampling, temperature=gen.weak_temperature, top_p=gen.weak_top_p
    )
    tokens, mask, logprobs = evaluator.generate(
      size, params, "train_w2s", weak_sampling, samples=gen.weak_samples, rng_offset=104729
    )
    curation = weak_curation.score_responses(
      task=parts.task,
      generation=gen,
      model_cfg=parts.models.get(size).model_cfg,
      params=params,
      prompts=parts.views.data(size, "train_w2s"),
      tokens=tokens,
      mask=mask,
      batch_size=cfg.eval_batch_size,
      mesh=parts.mesh,
    )
    scores, answers = evaluator.assess(size, params)
    return WeakStage(
      label_accuracy=curation["response_correct"].mean(1),
      scores=scores,
      answers=answers,
      responses=tokens,
      response_mask=mask,
      logprobs=logprobs,
      curation=curation,
      params=params,
      curve=curves.to_arrays(curve),
    )
  labels = evaluator.predict(size, params, "train_w2s")
  label_acc = metrics.correct(probs=labels, labels=parts.task.splits["train_w2s"]["labels"]).mean(1)
  pretrained, model_cfg, _ = parts.models.get(size)
  if model_cfg.causal and not parts.task.per_choice:
    likelihood = scoring.sequence_log_likelihood(
      pretrained,
      model_cfg,
      parts.views.data(size, "train_w2s"),
      batch_size=cfg.eval_batch_size,
      mesh=parts.mesh,
    )
  else:  # an encoder has no LM head, a pair no one text: a likelihood filter says so (weak_curation.py)
    likelihood = np.full(len(labels[0]), np.nan, np.float32)
  probs = {s: evaluator.predict(size, params, s) for s in parts.task.eval_splits}
  scores, answers = evaluator.classified(probs)
  probs |= {s: evaluator.predict(size, params, s) for s in probs_on if s not in probs}
  return WeakStage(
    label_accuracy=label_acc,
    scores=scores,
    labels=labels,
    likelihood=likelihood,
    answers=answers,
    probs=probs,
    curve=curves.to_arrays(curve),
  )


def ceiling_stage(parts: Parts, size: str) -> Evaluated:
  """The strong model fine-tuned on ground truth, per seed.

  Args:
    parts: the experiment's parts.
    size: the strong model.

  Returns:
    Evaluated: its scores on every evaluation key (Pceiling's).
  """
  trainer = parts.trainer
  params, curve = trainer.tune(
    size,
    trainer.supervised("train_gt", size=size),
    trainer.ground_truth_loss(),
    f"ceiling {size} on ground truth",
    measure=parts.evaluator.curve_measure(size),
  )
  scores, answers = parts.evaluator.assess(size, params)
  return Evaluated(scores, answers=answers, curve=curves.to_arrays(curve))


def w2s_stage(
  parts: Parts,
  strong: str,
  weak: WeakStage,
  loss: Loss,
  finetune_cfg: OptimConfig | None = None,
  filter_cfg: FilterConfig | None = None,
  weak_size: str | None = None,
  subsets: list | None = None,
) -> Evaluated:
  """The strong model fine-tuned on the weak stage's supervision, per seed.

  Args:
    parts: the experiment's parts.
    strong: the strong model.
    weak: the weak stage (its params too, for a loss that reads the teacher).
    loss: the loss the student trains with.
    finetune_cfg: its fine-tuning (default the experiment's).
    filter_cfg: keep only the rows this filter selects, per seed.
    weak_size: the weak model's name, for a loss that reads the teacher.
    subsets: per seed, the rows to keep (a probe's filter); not with filter_cfg.

  Returns:
    Evaluated: its scores on every evaluation key (Pweak->strong's) and,
    with a filter, how right the kept supervision was.
  """
  generative = parts.generative
  loss.check_kind(generative)
  if filter_cfg is not None and subsets is not None:
    raise ValueError(f"{filter_cfg.tag} and a probe's filter: expected one selection of rows")
  if filter_cfg is not None:  # per seed, the rows kept (weak_curation.py)
    weak_curation.check_filter(
      filter_cfg,
      generative=generative,
      weak_samples=(parts.cfg.generation.weak_samples if generative else 1),
    )
    subsets = weak_curation.filter_subsets(weak.arrays(), filter_cfg, generative)
  tag = loss.tag + (f", {filter_cfg.tag}" if filter_cfg else "")
  teacher = None
  if loss.needs_teacher:
    if weak_size is None or weak.params is None:
      raise ValueError(
        f"loss {loss.name!r} trains against the weak model itself: expected "
        "weak_size and the weak stage's params"
      )
    if parts.views.splits_of(weak_size) is not parts.views.splits_of(strong):
      raise ValueError(
        f"loss {loss.name!r} feeds the strong model's tokens to the weak model, "
        f"but {weak_size!r} and {strong!r} read the task through different "
        "tokenizers: expected models that share one"
      )
    teacher = (parts.models.get(weak_size).model_cfg, weak.params)
  what = "responses" if generative else "labels"
  trainer = parts.trainer
  params, curve = trainer.tune(
    strong,
    trainer.supervised("train_w2s", weak.targets, subsets, size=strong),
    loss,
    f"strong {strong} on weak {what} ({tag})",
    finetune_cfg,
    teacher=teacher,
    # Its agreement with the weak model's predicted classes, as training goes.
    measure=parts.evaluator.curve_measure(
      strong, reference=None if generative else {s: a[..., 0] for s, a in weak.answers.items()}
    ),
  )
  kept = None
  if subsets is not None:  # how right the kept weak labels (or responses) are, per seed
    kept = weak_curation.kept_label_accuracy(
      weak.arrays(),
      subsets,
      generative=generative,
      truth=None if generative else parts.task.splits["train_w2s"]["labels"],
    )
  misfit = None
  if not generative:  # how far the student lands from the labels it was taught
    student = parts.evaluator.predict(strong, params, "train_w2s")
    misfit = metrics.misfit(student_probs=student, weak_probs=weak.labels)
  scores, answers = parts.evaluator.assess(strong, params)
  return Evaluated(
    scores,
    answers=answers,
    kept_label_accuracy=kept,
    misfit=misfit,
    curve=curves.to_arrays(curve),
  )
