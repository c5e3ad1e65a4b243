"""Text scorers against hand-computed values on hand-made strings (and a few real
GSM8K solutions, copied here from the GSM8K train split)."""

import numpy as np
import pytest

from w2s_jax.tasks import text_metrics
from w2s_jax.tasks.text_metrics import (
  exact_match,
  gsm8k_final_answer,
  gsm8k_match,
  normalize_answer,
  rouge_l,
  score_all,
  token_f1,
)

# Real GSM8K train solutions (lines 1, 2 and 5716 of train.jsonl), with their annotations.
NATALIA = (
  "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
  "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
  "#### 72"
)
WENG = (
  "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
  "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n"
  "#### 10"
)
BUCYRUS = (
  "-14 + (-8) + 1 = <<-14+-8+1=-21>>-21 degrees Fahrenheit\n"
  "-21/3 = <<-21/3=-7>>-7 degrees Fahrenheit\n"
  "The average temperature was -7 degrees Fahrenheit.\n"
  "#### -7"
)


# ---------------------------------------------------------------- normalize_answer


@pytest.mark.parametrize(
  "text, expected",
  [
    ("The Cat!", "cat"),  # case, punctuation, leading article
    ("  An   apple a day\n", "apple day"),  # articles anywhere; whitespace collapsed
    ("New\tYork,  NY", "new york ny"),  # tabs and runs of spaces
    ("theatre another", "theatre another"),  # articles only as whole words
    ("U.S.A.", "usa"),  # punctuation removed, not turned into spaces
    ("a-the", "athe"),  # punctuation goes before articles
    ("the", ""),
    ("“Hi”", "“hi”"),  # ASCII string.punctuation: curly quotes stay
  ],
)
def test_normalize_answer_squad_examples(text, expected):
  assert normalize_answer(text) == expected


def test_normalize_answer_rejects_non_str():
  with pytest.raises(ValueError, match=r"text=b'cat'.*expected a str"):
    normalize_answer(b"cat")


# ---------------------------------------------------------------- exact_match


def test_exact_match_after_normalisation():
  assert exact_match(prediction="The Eiffel Tower.", references=["eiffel tower"]) == 1.0
  assert exact_match(prediction="Eiffel", references=["Eiffel Tower"]) == 0.0
  assert exact_match(prediction="", references=["the"]) == 1.0  # both normalise to ""


def test_exact_match_is_max_over_references():
  assert exact_match(prediction="Paris", references=["London", "paris, "]) == 1.0
  assert exact_match(prediction="Paris", references=["paris, ", "London"]) == 1.0
  assert exact_match(prediction="Paris", references=["London", "Rome"]) == 0.0


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(prediction="cat", references=[]), r"references=\[\]: expected a non-empty"),
    (dict(prediction="cat", references="cat"), r"references='cat': expected a non-empty seq"),
    (dict(prediction="cat", references=["cat", 3]), r"references\[1\]=3: expected a str, got int"),
    (dict(prediction=None, references=["cat"]), r"prediction=None: expected a str"),
  ],
)
def test_bad_input_is_a_value_error_naming_the_argument(kwargs, message):
  for scorer in (exact_match, token_f1, rouge_l, gsm8k_match):
    with pytest.raises(ValueError, match=message):
      scorer(**kwargs)


# ---------------------------------------------------------------- token_f1


def test_token_f1_articles_dropped_partial_overlap():
  # "the cat sat on the mat" -> [cat, sat, on, mat] (4); "a cat on a mat" -> [cat, on, mat] (3).
  # Shared: cat, on, mat = 3. P = 3/4, R = 3/3 = 1. F1 = 2 * 3/4 * 1 / (3/4 + 1) = 1.5/1.75 = 6/7.
  got = token_f1(prediction="the cat sat on the mat", references=["a cat on a mat"])
  assert got == pytest.approx(6 / 7, abs=1e-12)


def test_token_f1_counts_repeats_by_counter_intersection():
  # [red, red, blue] vs [red, green]: min(2, 1) = 1 shared red. P = 1/3, R = 1/2.
  # F1 = 2 * 1/6 / (1/3 + 1/2) = (1/3) / (5/6) = 2/5. (Counting every predicted "red"
  # that occurs in the reference would give P = 2/3, R = 1, F1 = 0.8.)
  assert token_f1(prediction="red red blue", references=["red green"]) == pytest.approx(0.4)


def test_token_f1_no_overlap_and_empty_prediction():
  assert token_f1(prediction="dog", references=["cat"]) == 0.0
  assert token_f1(prediction="", references=["cat"]) == 0.0
  assert token_f1(prediction="cat", references=["The."]) == 0.0  # reference normalises to ""
  # Both normalise to no tokens: 1.0 as in SQuAD v2.0's script (v1.1's would give 0).
  assert token_f1(prediction=".", references=["an"]) == 1.0


def test_token_f1_is_max_over_references():
  refs = ["dog", "a cat on a mat"]
  assert token_f1(prediction="the cat sat on the mat", references=refs) == pytest.approx(6 / 7)
  assert token_f1(prediction="the cat sat on the mat", references=refs[::-1]) == pytest.approx(
    6 / 7
  )
  assert token_f1(prediction="cat sat on mat", references=refs + ["The cat sat on a mat."]) == 1.0


# ---------------------------------------------------------------- rouge_l


def test_rouge_l_lcs_f_measure_short_words():
  # All words have <= 3 characters, which the scorer never stems; articles are kept.
  # [the, cat, sat, on, the, mat] (6) vs [a, cat, on, a, mat] (5): LCS = cat on mat = 3.
  # P = 3/6, R = 3/5, F = 2 * 0.5 * 0.6 / (0.5 + 0.6) = 0.6/1.1 = 6/11.
  got = rouge_l(prediction="The cat sat on the mat.", references=["a cat on a mat"])
  assert got == pytest.approx(6 / 11, abs=1e-12)


def test_rouge_l_depends_on_word_order():
  # [mat, on, cat] vs [cat, on, mat]: no two words share an order, LCS = 1, P = R = F = 1/3.
  # Token F1 on the same pair is 1.0 (same bag of words).
  assert rouge_l(prediction="mat on cat", references=["cat on mat"]) == pytest.approx(1 / 3)
  assert token_f1(prediction="mat on cat", references=["cat on mat"]) == 1.0


def test_rouge_l_stems_longer_words():
  # Porter: dogs -> dog, jumping -> jump, jumped -> jump ("dog" and "the" are unstemmed).
  # [dog, jump] vs [the, dog, jump]: LCS = 2. P = 2/2, R = 2/3, F = 2 * 2/3 / (5/3) = 4/5.
  # Without stemming no word would match and the score would be 0.
  got = rouge_l(prediction="dogs jumping", references=["the dog jumped"])
  assert got == pytest.approx(0.8, abs=1e-12)


def test_rouge_l_max_over_references_and_empty():
  refs = ["zebra", "a cat on a mat"]
  assert rouge_l(prediction="the cat sat on the mat", references=refs) == pytest.approx(6 / 11)
  assert rouge_l(prediction="cat", references=["cat"]) == 1.0
  assert rouge_l(prediction="", references=["cat"]) == 0.0


def test_rouge_l_builds_one_scorer():
  rouge_l(prediction="cat", references=["cat"])
  assert text_metrics.rouge_l_scorer() is text_metrics.rouge_l_scorer()


# ---------------------------------------------------------------- gsm8k_final_answer


@pytest.mark.parametrize(
  "text, expected",
  [
    (NATALIA, "72"),
    (WENG, "10"),  # "$<<...=0.2>>0.2" earlier must not count
    (BUCYRUS, "-7"),
    ("So she has 1000 in total.\n#### 1,000", "1000"),
    ("#### 1,234", "1234"),
    ("#### 1234", "1234"),
    ("#### $1234", "1234"),
    ("#### 1234.", "1234"),
    ("####   $ 1,234.\n", "1234"),
    ("#### 18.0", "18"),  # numeric canonical form
    ("#### 0.50", "0.5"),
    ("#### 2.75", "2.75"),
    ("#### 72 clips", "72"),  # trailing words ignored
    ("#### <<6*12=72>>72", "72"),  # an annotation after the marker too
    ("#### 5\nQuestion: next one... #### 7", "7"),  # the last marker wins
    ("The answer is 72.", None),  # no marker
    ("#### ", None),  # marker, no number
    ("#### seventy-two", None),
  ],
)
def test_gsm8k_final_answer(text, expected):
  assert gsm8k_final_answer(text) == expected


def test_gsm8k_last_marker_without_number_is_none():
  # The last marker decides even when an earlier one has a number.
  assert gsm8k_final_answer("#### 5\n#### unknown") is None


# ---------------------------------------------------------------- gsm8k_match


def test_gsm8k_match_solution_against_bare_number_and_solution():
  assert gsm8k_match(prediction=NATALIA, references=["72"]) == 1.0
  assert gsm8k_match(prediction=NATALIA, references=[NATALIA]) == 1.0
  assert gsm8k_match(prediction=NATALIA, references=["73"]) == 0.0
  assert gsm8k_match(prediction=NATALIA, references=[WENG]) == 0.0


def test_gsm8k_match_numeric_forms_and_max_over_references():
  assert gsm8k_match(prediction="so #### 18.0", references=["x = <<9*2=18>>18\n#### 18"]) == 1.0
  assert gsm8k_match(prediction="#### 1,000", references=["$1000.00"]) == 1.0
  assert gsm8k_match(prediction="#### 10", references=["72", WENG]) == 1.0
  assert gsm8k_match(prediction="#### -7", references=["7"]) == 0.0


def test_gsm8k_match_prediction_without_answer_scores_zero():
  assert gsm8k_match(prediction="72", references=["72"]) == 0.0  # bare numbers: references only
  assert gsm8k_match(prediction="I think 72", references=["72"]) == 0.0


def test_gsm8k_match_reference_without_answer_is_an_error():
  with pytest.raises(ValueError, match=r"references\[1\]='seventy-two': expected a GSM8K"):
    gsm8k_match(prediction=NATALIA, references=["72", "seventy-two"])


# ---------------------------------------------------------------- score_all


def test_score_all_shape_dtype_and_values():
  got = score_all(
    metric="token_f1",
    predictions=["the cat sat on the mat", "dog", "red red blue"],
    references=[["a cat on a mat"], ["cat"], ["red green"]],
  )
  assert got.dtype == np.float64 and got.shape == (3,)
  np.testing.assert_allclose(got, [6 / 7, 0.0, 0.4], rtol=1e-12)
  gsm = score_all(metric="gsm8k", predictions=[NATALIA, WENG], references=[["72"], ["11"]])
  np.testing.assert_array_equal(gsm, [1.0, 0.0])
  empty = score_all(metric="exact_match", predictions=[], references=[])
  assert empty.dtype == np.float64 and empty.shape == (0,)


def test_score_all_unknown_metric_lists_the_valid_ones():
  with pytest.raises(
    ValueError,
    match=r"metric='bleu'.*'exact_match', 'gsm8k', 'rouge_l', "
    r"'token_f1'",
  ):
    score_all(metric="bleu", predictions=["a"], references=[["a"]])


def test_score_all_mismatched_lengths_give_both():
  with pytest.raises(ValueError, match=r"2 predictions, 1 reference lists"):
    score_all(metric="exact_match", predictions=["a", "b"], references=[["a"]])
