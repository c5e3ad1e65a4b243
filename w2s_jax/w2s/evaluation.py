"""Scoring models on the task: soft labels, generations, and per-example scores.

Every score has a seed axis: params come stacked per seed (one fine-tune per
seed, vmapped), and so do the answers. `evaluate` gives each evaluation key
(a split under the task's headline metric; "split:metric" for the further
metrics of generative tasks) as [seeds, examples].
"""

import numpy as np

from w2s_jax.models import inference, sampling
from w2s_jax.training import train
from w2s_jax.w2s import curves
from w2s_jax.w2s.pretrained import PretrainedModels
from w2s_jax.w2s.views import ModelViews


def sampling_config(task, generation, **overrides) -> sampling.SamplingConfig:
  """A generative task's sampler: max_new_tokens from the config (None: the
  longest ground-truth response), the task's EOS and pad ids."""
  longest = max(int(d["response_mask"].sum(1).max()) for d in task.splits.values())
  return sampling.SamplingConfig(
    max_new_tokens=generation.max_new_tokens or longest,
    eos_id=task.eos_id,
    pad_id=task.pad_id,
    **overrides,
  )


class Evaluator:
  def __init__(self, cfg, task, views: ModelViews, models: PretrainedModels, mesh, seeds):
    self.cfg, self.task, self.views, self.models, self.mesh = cfg, task, views, models, mesh
    self.seeds = tuple(seeds)
    self.sampling = sampling_config(task, cfg.generation) if task.generative else None

  def eval_key(self, split: str, metric: str) -> str:
    """A split scored by the task's headline metric is keyed by the split alone,
    by a further metric as "split:metric"."""
    return split if metric == self.task.metrics[0] else f"{split}:{metric}"

  @property
  def eval_keys(self) -> tuple[str, ...]:
    """What evaluate() returns: every evaluation split under its headline
    metric, then under each further metric (generation)."""
    names = self.task.metrics if self.task.generative else self.task.metrics[:1]
    return tuple(self.eval_key(s, m) for m in names for s in self.task.eval_splits)

  def predict(self, size: str, params, split: str) -> np.ndarray:
    """Class probabilities [seeds, N, classes]."""
    return inference.soft_labels(
      params,
      self.models.get(size).model_cfg,
      self.views.data(size, split),
      batch_size=self.cfg.eval_batch_size,
      mesh=self.mesh,
      seed_axis=True,
    )

  def generate(
    self, size: str, params, split: str, sampling_cfg=None, samples: int = 1, rng_offset: int = 0
  ):
    """Every seed's generations for the split's prompts: (tokens, mask,
    logprobs), each [seeds, N * samples, max_new_tokens]."""
    keys = train.seed_keys([s + rng_offset for s in self.seeds])
    return sampling.generate(
      params,
      self.models.get(size).model_cfg,
      self.views.data(size, split),
      cfg=sampling_cfg or self.sampling,
      mesh=self.mesh,
      batch_size=self.cfg.eval_batch_size,
      rng=keys,
      seed_axis=True,
      samples=samples,
    )

  def score(self, split: str, tokens, mask) -> dict:
    """{metric: [seeds, N]} for generations with a seed axis."""
    per_seed = [self.task.score(split, t, m) for t, m in zip(tokens, mask)]
    return {m: np.stack([s[m] for s in per_seed]) for m in self.task.metrics}

  def curve_measure(self, size: str, reference: dict | None = None):
    """The training curve's measure for `size` on the evaluation splits
    (curves.make_measure), or None when the config asks for no curves.
    reference: {split: [seeds, examples]} classes to measure agreement with."""
    if not self.cfg.curve_points:
      return None
    return curves.make_measure(
      model_cfg=self.models.get(size).model_cfg,
      splits={s: self.views.data(size, s) for s in self.task.eval_splits},
      generative=self.task.generative,
      batch_size=self.cfg.eval_batch_size,
      mesh=self.mesh,
      reference=reference,
    )

  def curve_names(self, *, agreement: bool) -> tuple[str, ...]:
    """The arrays a stage's stored curve has (none without curves)."""
    if not self.cfg.curve_points:
      return ()
    return curves.names(
      eval_splits=self.task.eval_splits, generative=self.task.generative, agreement=agreement
    )

  def evaluate(self, size: str, params) -> dict:
    """Per seed and example, the score on every evaluation key: {key: [seeds, examples]}."""
    return self.assess(size, params)[0]

  def assess(self, size: str, params) -> tuple[dict, dict]:
    """(scores, answers): evaluate()'s scores, and each evaluation split's
    answers {split: [seeds, examples, fields]}: a classifier's predicted
    class (one field), a generation's parsed fields (task.answers; none
    for a task without), what imitation compares (metrics.answer_imitation)."""
    task = self.task
    if not task.generative:
      return self.classified({s: self.predict(size, params, s) for s in task.eval_splits})
    scores, answers = {}, {}
    for split in task.eval_splits:
      tokens, mask, _ = self.generate(size, params, split)
      for metric, values in self.score(split, tokens, mask).items():
        scores[self.eval_key(split, metric)] = values
      if task.answers is not None:
        answers[split] = np.stack([task.answers(t, m) for t, m in zip(tokens, mask)])
    return scores, answers

  def classified(self, probs: dict) -> tuple[dict, dict]:
    """assess()'s (scores, answers) of a classifier from its class
    probabilities on each evaluation split {split: [seeds, examples, classes]}."""
    answers = {s: p.argmax(-1)[..., None] for s, p in probs.items()}
    scores = {
      s: (a[..., 0] == self.task.splits[s]["labels"][None]).astype(np.float64)
      for s, a in answers.items()
    }
    return scores, answers

  def truth_answers(self) -> dict:
    """The right answers of each evaluation split, as assess() gives them: {split: [examples, fields]}."""
    task = self.task
    if not task.generative:
      return {s: np.asarray(task.splits[s]["labels"])[:, None] for s in task.eval_splits}
    if task.answers is None:
      return {}
    return {
      s: task.answers(task.splits[s]["response"], task.splits[s]["response_mask"])
      for s in task.eval_splits
    }

  @property
  def answer_names(self) -> tuple[str, ...]:
    return self.task.answer_names if self.task.generative else ("class",)
