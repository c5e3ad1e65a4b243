"""Scorers that grade a model's generated text against reference text.

The generative W2S pipeline turns each generation into one number in [0, 1] so
that weak, strong and W2S models can be compared (and PGR computed) the same way
as for classification. Every scorer takes one prediction and a non-empty
sequence of acceptable references, and returns the max over references, as
SQuAD's official evaluation does: an answer is as good as the closest gold one.

- exact_match, token_f1: SQuAD's normalisation and token-level F1.
- rouge_l: ROUGE-L F-measure from the maintained `rouge_score` package (imported
  on first use, so the rest of this module needs only the standard library).
- gsm8k_match: equality of GSM8K final answers (the number after "####").
"""

import collections
import functools
import re
import string
from collections.abc import Sequence

import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# GSM8K calculator annotations such as "<<48/2=24>>": they hold numbers and "=" that
# are not the answer, so they are removed before anything is extracted.
_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")
_GSM8K_MARKER = "####"
# The number must come first after the marker (only whitespace, a sign and "$" before
# it), as in the official GSM8K grader's "#### (-?[0-9.,]+)": text such as
# "#### unknown, maybe 5" has no answer rather than a guessed one.
_GSM8K_NUMBER = re.compile(r"\s*\$?\s*(-?)\s*\$?\s*([0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)")


def _check_text(name: str, value) -> str:
  if not isinstance(value, str):
    raise ValueError(f"{name}={value!r:.100}: expected a str, got {type(value).__name__}")
  return value


def _check_references(references) -> list[str]:
  # A bare str is a Sequence too, and would be scored character by character.
  if isinstance(references, (str, bytes)) or not isinstance(references, (Sequence, np.ndarray)):
    raise ValueError(f"references={references!r:.100}: expected a non-empty sequence of str")
  if len(references) == 0:
    raise ValueError(f"references={references!r}: expected a non-empty sequence of str")
  return [_check_text(f"references[{i}]", ref) for i, ref in enumerate(references)]


def normalize_answer(text: str) -> str:
  """SQuAD v1.1's normalisation: lower-case, drop punctuation, drop a/an/the, collapse spaces.

  The steps run in the official script's order; punctuation goes before articles,
  so "a-the" becomes the word "athe", not "". Punctuation is string.punctuation
  (ASCII only): curly quotes and dashes are kept, as the official script keeps them.
  """
  text = "".join(ch for ch in _check_text("text", text).lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(*, prediction: str, references: Sequence[str]) -> float:
  """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
  predicted = normalize_answer(_check_text("prediction", prediction))
  return float(any(predicted == normalize_answer(ref) for ref in _check_references(references)))


def _f1(prediction_tokens: list[str], reference_tokens: list[str]) -> float:
  if not prediction_tokens or not reference_tokens:
    return float(prediction_tokens == reference_tokens)
  # Counter intersection: a word repeated in the prediction counts only as often
  # as it appears in the reference.
  num_same = sum(
    (collections.Counter(prediction_tokens) & collections.Counter(reference_tokens)).values()
  )
  if num_same == 0:
    return 0.0
  precision = num_same / len(prediction_tokens)
  recall = num_same / len(reference_tokens)
  return 2 * precision * recall / (precision + recall)


def token_f1(*, prediction: str, references: Sequence[str]) -> float:
  """SQuAD's token-level F1 over normalize_answer's whitespace tokens, max over references.

  Precision and recall count the tokens the prediction shares with the reference
  (Counter intersection), as SQuAD v1.1's evaluate-v1.1.py f1_score does. The one
  place the v1.1 script is silent is an empty normalisation: it returns 0 whenever
  nothing is shared, so "" against "the" (which normalises to "") scores 0 there
  although exact match scores 1. This follows SQuAD v2.0's evaluate-v2.0.py instead,
  which is otherwise identical: if either side has no tokens, F1 is 1.0 when both
  have none and 0.0 otherwise. So exact_match 1.0 always implies token_f1 1.0.
  """
  predicted = normalize_answer(_check_text("prediction", prediction)).split()
  return max(_f1(predicted, normalize_answer(ref).split()) for ref in _check_references(references))


@functools.cache
def rouge_l_scorer():
  # Built once: the scorer holds a Porter stemmer. Imported here because rouge_score
  # pulls in nltk, which only ROUGE callers need.
  from rouge_score import rouge_scorer

  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(*, prediction: str, references: Sequence[str]) -> float:
  """ROUGE-L F-measure (longest common subsequence of words), max over references.

  rouge_score's own tokenisation applies, not SQuAD's: lower-case, every run of
  characters outside [a-z0-9] splits words (so non-ASCII letters are dropped),
  articles are kept, and words longer than 3 characters are Porter-stemmed
  ("jumped" and "jumping" both become "jump"). An empty side scores 0.0.
  """
  scorer = rouge_l_scorer()
  _check_text("prediction", prediction)
  return max(
    float(scorer.score(ref, prediction)["rougeL"].fmeasure) for ref in _check_references(references)
  )


def gsm8k_final_answer(text: str) -> str | None:
  """The number after the last "####" of a GSM8K solution, in canonical form; or None.

  Calculator annotations ("<<48/2=24>>") are removed first. The number must be the
  first thing after the marker, after optional whitespace, "-" and "$"; anything
  after it (a trailing ".", units, more text) is ignored. None when there is no
  marker or no number right after the last one.

  Numeric equality is decided here, so callers can compare the strings: thousands
  commas are removed, leading zeros of the integer part and trailing zeros of the
  fraction are dropped, and so is a bare ".". "1,234", "1234", "$1234" and "1234."
  all give "1234"; "18.0" gives "18"; "0.50" gives "0.5"; "-0" gives "0". The
  arithmetic is on digit strings, so it is exact for numbers of any length.
  """
  text = _CALCULATOR_ANNOTATION.sub("", _check_text("text", text))
  marker = text.rfind(_GSM8K_MARKER)
  if marker < 0:
    return None
  match = _GSM8K_NUMBER.match(text, marker + len(_GSM8K_MARKER))
  if match is None:
    return None
  sign, digits = match.groups()
  whole, _, fraction = digits.replace(",", "").partition(".")
  whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
  number = f"{whole}.{fraction}" if fraction else whole
  return f"-{number}" if sign and number != "0" else number


def _gsm8k_reference_answer(index: int, reference: str) -> str:
  # A reference without a marker is a bare answer such as "1,234" or "$18.00".
  text = reference if _GSM8K_MARKER in reference else f"{_GSM8K_MARKER} {reference}"
  answer = gsm8k_final_answer(text)
  if answer is None:
    # A reference with no answer is a data bug; scoring it 0.0 would hide it.
    raise ValueError(
      f"references[{index}]={reference!r:.100}: expected a GSM8K solution "
      f"ending in '#### <number>', or a bare number"
    )
  return answer


def gsm8k_match(*, prediction: str, references: Sequence[str]) -> float:
  """1.0 if the prediction's final answer equals any reference's, else 0.0.

  References are whole GSM8K solutions or bare numbers. The prediction must carry
  the "####" marker itself: a prediction with no final answer (including a bare
  "72") scores 0.0. Equality is of gsm8k_final_answer's canonical strings, so
  "18.0" matches "18" and "1,000" matches "1000".
  """
  predicted = gsm8k_final_answer(_check_text("prediction", prediction))
  answers = {_gsm8k_reference_answer(i, ref) for i, ref in enumerate(_check_references(references))}
  return float(predicted is not None and predicted in answers)


METRICS = {
  "exact_match": exact_match,
  "token_f1": token_f1,
  "rouge_l": rouge_l,
  "gsm8k": gsm8k_match,
}


def score_all(
  *, metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> np.ndarray:
  """METRICS[metric] of each (prediction, its references) pair: float64 [N]."""
  if metric not in METRICS:
    raise ValueError(f"metric={metric!r}: expected one of {sorted(METRICS)}")
  if isinstance(predictions, str):
    raise ValueError(f"predictions={predictions!r:.100}: expected a sequence of str, not one str")
  if len(predictions) != len(references):
    raise ValueError(
      f"predictions and references must have the same length: "
      f"{len(predictions)} predictions, {len(references)} reference lists"
    )
  score = METRICS[metric]
  return np.array(
    [score(prediction=p, references=r) for p, r in zip(predictions, references)], dtype=np.float64
  )
