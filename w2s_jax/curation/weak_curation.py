"""Curating the weak model's supervision: which of it the strong model trains on.

Classification: the weak soft labels of train_w2s, ranked by the classifier
scores (confidence, margin, neg_entropy, the seeds' agreement) or the weak
LM's likelihood of the example's text.

Generation: every weak (prompt, response) pair is scored without ground
truth, by the weak model itself (its fine-tuned params, one per seed):
  mean_logprob      its mean token log-likelihood of its own response,
                    teacher-forced (the mean of the sampler's log-probs, which
                    are also taken at temperature 1, unfiltered);
  min_prob          its lowest token probability in the response;
  ifd               Superfiltering's instruction-following difficulty (Li et
                    al. 2024), PPL(response | prompt) / PPL(response alone),
                    with the weak model as the small scoring model. Selected
                    as the paper does: the HIGHEST IFD is kept, and IFD > 1
                    (the prompt makes the response less likely: unrelated to
                    it) is discarded, i.e. ranked below every IFD <= 1. The
                    response alone is scored after the prompt's first token
                    (the testbed's <bos>, which starts every pretraining
                    document; a text task's first template token), so both
                    perplexities cover the same response tokens;
  self_consistency  the share of the prompt's other samples that give the
                    same answer, per parsed answer field (Task.answers: the
                    testbed's city and region), averaged; needs
                    GenerationConfig.weak_samples >= 2.
Each response's correctness (the task's headline metric) is stored beside
them, so a filter reports how right the responses it keeps are.

Selection is among ALL N * weak_samples responses (the rows the unfiltered
strong model trains on): keep_frac of them, so a prompt may keep several of
its samples (a repeated majority answer) or none. Stratified (FilterConfig.
stratified) by the response's class-like answer field where the task has
one (Task.answer_class: the testbed's region, as the classification filter
keeps the weak labels' classes), else not stratified.
"""

import jax
import numpy as np

from w2s_jax.curation import scores, selection
from w2s_jax.curation.selection import CLASSIFICATION_CRITERIA, GENERATIVE_CRITERIA, FilterConfig
from w2s_jax.data.dataset import Dataset
from w2s_jax.models import scoring
from w2s_jax.tasks import layout


def response_fields(task, generation) -> tuple[str, ...]:
  """What a generative weak stage stores for curation, beside its responses."""
  fields = ["response_correct", "score_mean_logprob", "score_min_prob", "score_ifd"]
  if generation.weak_samples >= 2 and task.answers is not None:
    fields.append("score_self_consistency")
  if task.answer_class is not None:
    fields.append("response_class")
  return tuple(fields)


def response_alone(prompt, prompt_mask, response, response_mask) -> Dataset:
  """Each response after only its prompt's first real token, scored on the response."""
  first = np.asarray(prompt)[np.arange(len(prompt)), np.argmax(np.asarray(prompt_mask) > 0, 1)]
  ones = np.ones((len(first), 1), np.int32)
  response_mask = np.asarray(response_mask).astype(np.int32)
  return Dataset(
    tokens=np.concatenate([first[:, None], response], 1).astype(np.int32),
    mask=np.concatenate([ones, response_mask], 1),
    loss_mask=np.concatenate([0 * ones, response_mask], 1),
  )


def response_correct(*, task, tokens, mask, samples: int) -> np.ndarray:
  """The headline metric of each weak response to train_w2s: [seeds, N * samples]."""
  out = np.zeros(np.shape(tokens)[:2])
  for j in range(samples):  # rows are prompt-major: prompt i's j-th sample is row i * n + j
    per_seed = [
      task.score("train_w2s", t, m)[task.metrics[0]]
      for t, m in zip(tokens[:, j::samples], mask[:, j::samples])
    ]
    out[:, j::samples] = np.stack(per_seed)
  return out


def score_responses(
  *, task, generation, model_cfg, params, prompts: Dataset, tokens, mask, batch_size: int, mesh
) -> dict:
  """Per seed and response ([seeds, N * samples]): its correctness and the
  curation scores of response_fields, from the weak model's own params
  (stacked per seed). prompts: train_w2s as the weak model reads it."""
  n = generation.weak_samples
  repeated = prompts.take(np.repeat(np.arange(len(prompts)), n))
  run = lambda p, d: scoring.token_scores(p, model_cfg, d, batch_size=batch_size, mesh=mesh)
  wanted = response_fields(task, generation)
  out = {k: [] for k in wanted if k != "response_correct"}
  for i in range(len(tokens)):
    seed_params = jax.tree.map(lambda x: x[i], params)
    given = run(seed_params, layout.sequences(repeated, tokens[i], mask[i]))
    alone = run(
      seed_params, response_alone(repeated["prompt"], repeated["prompt_mask"], tokens[i], mask[i])
    )
    out["score_mean_logprob"].append(given["mean_logprob"])
    out["score_min_prob"].append(given["min_prob"])
    out["score_ifd"].append(
      np.asarray(
        scores.ifd(
          conditional_logprob=given["mean_logprob"], unconditional_logprob=alone["mean_logprob"]
        )
      )
    )
    answers = task.answers(tokens[i], mask[i]) if task.answers is not None else None
    if "score_self_consistency" in out:
      grouped = answers.reshape(len(prompts), n, answers.shape[-1])
      out["score_self_consistency"].append(
        np.asarray(scores.self_consistency(answers=grouped)).reshape(-1)
      )
    if "response_class" in out:
      out["response_class"].append(answers[:, task.answer_class])
  return {
    "response_correct": response_correct(task=task, tokens=tokens, mask=mask, samples=n),
    **{k: np.stack(v) for k, v in out.items()},
  }


# --- Filters ----------------------------------------------------------------------


def _kind(generative: bool):
  return (
    ("generative", GENERATIVE_CRITERIA)
    if generative
    else ("classification", CLASSIFICATION_CRITERIA)
  )


def check_filter(filter_cfg: FilterConfig, *, generative: bool, weak_samples: int = 1) -> None:
  """Before any compute: the criterion applies to the task's kind of weak
  supervision, and self_consistency has samples to compare."""
  kind, criteria = _kind(generative)
  if filter_cfg.criterion not in criteria:
    raise ValueError(
      f"FilterConfig.criterion={filter_cfg.criterion!r} does not apply to the "
      f"weak supervision of a {kind} task; expected one of {criteria}"
    )
  if filter_cfg.criterion == "self_consistency" and weak_samples < 2:
    raise ValueError(
      f"FilterConfig.criterion='self_consistency' compares the weak model's "
      f"samples of each prompt: GenerationConfig.weak_samples={weak_samples}; "
      "expected >= 2 (with weak_temperature > 0)"
    )


def _response_scores(weak: dict, criterion: str) -> np.ndarray:
  key = f"score_{criterion}"
  if key not in weak:
    if criterion == "self_consistency":
      raise ValueError(
        "filter criterion 'self_consistency': the weak stage holds no "
        f"{key!r}; expected GenerationConfig.weak_samples >= 2 and a task "
        "that parses answers (Task.answers)"
      )
    raise ValueError(
      f"filter criterion {criterion!r}: the weak stage holds no {key!r} "
      f"(it has {sorted(weak)}); expected a weak stage scored by weak_curation"
    )
  values = np.asarray(weak[key])
  return np.asarray(scores.ifd_selection(ifd=values)) if criterion == "ifd" else values


def filter_scores(weak: dict, criterion: str, generative: bool) -> np.ndarray:
  """Per-seed scores [seeds, examples] of the weak supervision (soft labels
  per train_w2s example, or responses per (prompt, sample)); higher is kept."""
  kind, criteria = _kind(generative)
  if criterion not in criteria:
    raise ValueError(
      f"filter criterion {criterion!r} does not apply to the weak supervision "
      f"of a {kind} task; expected one of {', '.join(criteria)}"
    )
  if generative:
    return _response_scores(weak, criterion)
  labels = np.asarray(weak["labels"])
  per_seed = lambda fn: np.asarray(fn(probs=labels))
  match criterion:
    case "confidence":
      return per_seed(scores.confidence)
    case "margin":
      return per_seed(scores.margin)
    case "neg_entropy":
      return per_seed(scores.neg_entropy)
    case "agreement":  # the seeds' weak models vote
      return np.broadcast_to(np.asarray(scores.agreement(probs=labels)), labels.shape[:2])
    case "likelihood":  # the weak LM's log-likelihood of the example's text
      if np.isnan(weak["likelihood"]).all():
        raise ValueError(
          "filter criterion 'likelihood': the weak model is an encoder, which has "
          "no LM head and so no likelihood scores; expected a decoder weak model "
          "or another criterion"
        )
      return np.broadcast_to(weak["likelihood"], labels.shape[:2])


def filter_subsets(weak: dict, filter_cfg: FilterConfig, generative: bool) -> list[np.ndarray]:
  """Per seed, the indices of the rows the strong model trains on: train_w2s
  examples, or (generation) its prompt-major (prompt, sample) responses."""
  seed_scores = filter_scores(weak, filter_cfg.criterion, generative)
  strata = None
  if filter_cfg.stratified:
    strata = weak.get("response_class") if generative else np.argmax(weak["labels"], axis=-1)
  return [
    selection.top_fraction(
      scores=seed_scores[i],
      keep_frac=filter_cfg.keep_frac,
      labels=None if strata is None else strata[i],
    )
    for i in range(len(seed_scores))
  ]


def kept_label_accuracy(weak: dict, subsets, *, generative: bool, truth=None) -> np.ndarray:
  """Per seed, how right the kept weak supervision is: the hard weak labels'
  accuracy against truth, or the kept responses' mean correctness."""
  if generative:
    return np.array([np.mean(weak["response_correct"][i][idx]) for i, idx in enumerate(subsets)])
  return np.array(
    [np.mean(np.argmax(weak["labels"][i][idx], -1) == truth[idx]) for i, idx in enumerate(subsets)]
  )
