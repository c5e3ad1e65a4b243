"""Prompt -> response data: JSONL files, TFDS generative tasks (offline, under
tfds.testing.mock_data, read through the same load_gen_task path as a real run)
and encode_pairs' left/right-padded layout, checked on hand-written bytes."""

import contextlib
import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from w2s_jax.data import gen_text, tfds_source, tokenize
from w2s_jax.data.gen_text import PromptResponses
from w2s_jax.data.text_files import TextFileError

PAD, BOS, EOS = 256, 257, 258  # ByteTokenizer's specials
BYTES = tokenize.ByteTokenizer()


def _write(tmp_path, lines, name="pairs.jsonl"):
  path = tmp_path / name
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


def _row(**fields):
  return json.dumps(fields)


# --- PromptResponses ---------------------------------------------------------------


def test_prompt_responses_default_references_and_take():
  pairs = PromptResponses(("p0", "p1", "p2"), ["r0", "r1", "r2"])
  assert pairs.references == [["r0"], ["r1"], ["r2"]] and len(pairs) == 3
  picked = pairs.take([2, 0])
  assert (picked.prompts, picked.responses, picked.references) == (
    ["p2", "p0"],
    ["r2", "r0"],
    [["r2"], ["r0"]],
  )
  with_refs = PromptResponses(["p"], ["r"], [("a", "b")])
  assert with_refs.references == [["a", "b"]]


def test_prompt_responses_check_their_fields():
  with pytest.raises(ValueError, match="2 prompts, 1 responses"):
    PromptResponses(["a", "b"], ["r"])
  with pytest.raises(ValueError, match=r"responses\[1\]: expected str, got bytes"):
    PromptResponses(["a", "b"], ["r", b"s"])
  with pytest.raises(ValueError, match=r"prompts\[0\]: expected str, got int"):
    PromptResponses([3], ["r"])
  for bad in ([], "abc", ["ok", 5], None):
    with pytest.raises(ValueError, match=r"references\[1\]=.*non-empty list of strings"):
      PromptResponses(["a", "b"], ["r", "s"], [["x"], bad])


# --- JSONL -------------------------------------------------------------------------


def test_read_jsonl_pairs_keeps_texts_as_written_and_skips_blank_lines(tmp_path):
  path = _write(
    tmp_path,
    [
      _row(prompt="Q: 2+2?\nA:", response=" 4", id=1),
      "",
      "   ",
      _row(prompt="Dis é", response=" ça\n"),
    ],
  )
  pairs = gen_text.read_jsonl_pairs(path)
  assert pairs.prompts == ["Q: 2+2?\nA:", "Dis é"]
  assert pairs.responses == [" 4", " ça\n"]
  assert pairs.references == [[" 4"], [" ça\n"]]


def test_read_jsonl_pairs_custom_fields_and_references(tmp_path):
  path = _write(
    tmp_path, [_row(q="q1", a=" a1", refs=["a1", "A1"]), _row(q="q2", a=" a2", refs=["a2"])]
  )
  pairs = gen_text.read_jsonl_pairs(
    path, prompt_field="q", response_field="a", references_field="refs"
  )
  assert pairs.prompts == ["q1", "q2"] and pairs.responses == [" a1", " a2"]
  assert pairs.references == [["a1", "A1"], ["a2"]]


@pytest.mark.parametrize(
  "line,problem",
  [
    ('{"prompt": "p", "response": ', "malformed JSON"),
    ('["p", "r"]', "expected a JSON object, got list"),
    (_row(prompt="p"), r"missing field 'response' \(found \['prompt'\]\)"),
    (
      _row(question="p", response="r"),
      r"missing field 'prompt' \(found \['question', 'response'\]\)",
    ),
    (_row(prompt=7, response="r"), "prompt=7: expected a string"),
    (_row(prompt="p", response=None), "response=None: expected a string"),
    (_row(prompt="", response="r"), "empty prompt ''"),
    (_row(prompt="p", response=" \t"), r"empty response ' \\t'"),
  ],
)
def test_read_jsonl_pairs_errors_name_file_line_and_problem(tmp_path, line, problem):
  path = _write(tmp_path, [_row(prompt="ok", response=" fine"), "", line])
  with pytest.raises(TextFileError, match=rf"^{re.escape(str(path))}:3: {problem}") as err:
    gen_text.read_jsonl_pairs(path)
  assert err.value.line == 3 and err.value.path == str(path)


@pytest.mark.parametrize("refs", ["a1", [], ["a1", 2], None, {"text": "a1"}])
def test_read_jsonl_pairs_references_must_be_a_nonempty_list_of_strings(tmp_path, refs):
  path = _write(
    tmp_path,
    [_row(prompt="p", response="r", refs=["r"]), _row(prompt="p", response="r", refs=refs)],
  )
  with pytest.raises(TextFileError, match=r":2: refs=.*expected a non-empty list of strings"):
    gen_text.read_jsonl_pairs(path, references_field="refs")
  no_refs = _write(tmp_path, [_row(prompt="p", response="r")], name="no_refs.jsonl")
  with pytest.raises(TextFileError, match=r"no_refs.jsonl:1: missing field 'refs'"):
    gen_text.read_jsonl_pairs(no_refs, references_field="refs")


def test_read_jsonl_pairs_empty_and_missing_files(tmp_path):
  for name, content in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")):
    (tmp_path / name).write_text(content)
    with pytest.raises(TextFileError, match=rf"{name}: no examples"):
      gen_text.read_jsonl_pairs(tmp_path / name)
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    gen_text.read_jsonl_pairs(tmp_path / "nope.jsonl")
  (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "response": "r"}\n')
  with pytest.raises(TextFileError, match=r"latin1.jsonl:1: not valid UTF-8"):
    gen_text.read_jsonl_pairs(tmp_path / "latin1.jsonl")


# --- TFDS tasks --------------------------------------------------------------------

N = 20  # examples per fake split


@pytest.fixture(autouse=True)
def _fix_tfds_mock_batched_reads(monkeypatch):
  # As in test_text_tasks: tfds 4.9.10's mock binds its __getitems__ without
  # `self`, so a batched read raises TypeError; this gives the same examples.
  from tensorflow_datasets.testing import mocking

  monkeypatch.setattr(
    mocking,
    "_getitems",
    lambda record_keys, generator, serialized=False: [generator[k] for k in record_keys],
  )


def _fake_rows(builder_name: str, empty: tuple[int, ...] = ()) -> list[dict]:
  """Examples shaped as real ArrayRecord files give them: bytes and lists."""
  rows = []
  for i in range(N):
    gone = i in empty
    if builder_name == "gsm8k":
      answer = b"" if gone else f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}".encode()
      rows.append(
        {
          "question": f"What is {i} + 1?".encode(),
          "answer": answer,
          "annotation": b"x",
          "short_answer": str(i + 1).encode(),
        }
      )
    elif builder_name == "squad":
      texts = [] if gone else [f"ans {i}".encode(), f"the ans {i}".encode()]
      rows.append(
        {
          "context": f"ctx {i}".encode(),
          "question": f"q {i}?".encode(),
          "answers": {"text": texts, "answer_start": [0] * len(texts)},
          "id": b"id",
          "title": b"t",
        }
      )
    elif builder_name == "xsum":
      rows.append(
        {"document": f"doc {i}".encode(), "summary": b"  " if gone else f"sum {i}".encode()}
      )
    elif builder_name == "cnn_dailymail":
      rows.append(
        {
          "article": f"art {i}".encode(),
          "highlights": f"hl {i}".encode(),
          "publisher": b"cnn",
          "id": b"x",
        }
      )
    else:
      raise AssertionError(builder_name)
  return rows


@contextlib.contextmanager
def fake_tfds(empty=()):
  with tfds.testing.mock_data(
    as_data_source_fn=lambda builder, split, **kw: _fake_rows(builder.name, empty)
  ):
    yield


TEMPLATES = {  # the prompt each task's fake example i must give
  "gsm8k": (r"Question: (.+)\nAnswer:", ("question",)),
  "squad": (r"Context: (.+)\nQuestion: (.+)\nAnswer:", ("context", "question")),
  "xsum": (r"Document: (.+)\nSummary:", ("document",)),
  "cnn_dailymail": (r"Article: (.+)\nSummary:", ("article",)),
}


def _first_split(name):
  return gen_text.GEN_TASKS[name].labeled_splits[0]


def test_the_table_covers_the_tasks_and_their_metrics():
  assert set(gen_text.GEN_TASKS) == set(TEMPLATES)
  assert {n: gen_text.metric_of(n) for n in gen_text.GEN_TASKS} == {
    "gsm8k": "gsm8k",
    "squad": "token_f1",
    "xsum": "rouge_l",
    "cnn_dailymail": "rouge_l",
  }
  with pytest.raises(ValueError, match=r"generative task 'squad_v2': expected one of \["):
    gen_text.metric_of("squad_v2")


@pytest.mark.parametrize("name", sorted(gen_text.GEN_TASKS))
def test_random_mock_data_gives_templated_pairs_deterministically(name):
  with tfds.testing.mock_data(num_examples=12):
    split = _first_split(name)
    first = gen_text.load_gen_task(name, split=split, take=8, seed=3)
    again = gen_text.load_gen_task(name, split=split, take=8, seed=3)
    whole = gen_text.load_gen_task(name, split=split, seed=3)
    other = gen_text.load_gen_task(name, split=split, take=8, seed=4)
  assert isinstance(first, PromptResponses) and len(first) == 8 and len(whole) == 12
  pattern, _ = TEMPLATES[name]
  for prompt, response, refs in zip(first.prompts, first.responses, first.references):
    assert re.fullmatch(pattern, prompt, flags=re.DOTALL), prompt
    assert response.startswith(" ") and response[1:] == refs[0]
    assert refs and all(isinstance(r, str) and r for r in refs)
  assert (first.prompts, first.responses, first.references) == (
    again.prompts,
    again.responses,
    again.references,
  )
  assert whole.prompts[:8] == first.prompts and whole.responses[:8] == first.responses
  assert other.prompts != first.prompts


def test_real_shaped_examples_give_the_exact_prompts_and_references():
  with fake_tfds():
    gsm8k = gen_text.load_gen_task("gsm8k", split="test", take=5)
    squad = gen_text.load_gen_task("squad", split="validation", take=5)
    xsum = gen_text.load_gen_task("xsum", split="test", take=5)
    cnn = gen_text.load_gen_task("cnn_dailymail", split="validation")
  assert len(cnn) == N and sorted(cnn.prompts) == sorted(
    f"Article: art {i}\nSummary:" for i in range(N)
  )
  for prompt, response, refs in zip(gsm8k.prompts, gsm8k.responses, gsm8k.references):
    i = int(prompt.split()[3])
    answer = f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"
    assert (prompt, response, refs) == (
      f"Question: What is {i} + 1?\nAnswer:",
      " " + answer,
      [answer],
    )
  for prompt, response, refs in zip(squad.prompts, squad.responses, squad.references):
    i = int(prompt.split("\n")[0].split()[-1])
    assert prompt == f"Context: ctx {i}\nQuestion: q {i}?\nAnswer:"
    assert (response, refs) == (f" ans {i}", [f"ans {i}", f"the ans {i}"])
  for prompt, response, refs in zip(xsum.prompts, xsum.responses, xsum.references):
    i = int(prompt.split("\n")[0].split()[-1])
    assert (prompt, response, refs) == (f"Document: doc {i}\nSummary:", f" sum {i}", [f"sum {i}"])


def test_splits_get_different_subsets_and_take_is_checked():
  with fake_tfds():
    train = gen_text.load_gen_task("xsum", split="train", take=10)
    test = gen_text.load_gen_task("xsum", split="test", take=10)
    assert train.prompts != test.prompts
    with pytest.raises(ValueError, match=r"take=21: xsum\[train\] has only 20"):
      gen_text.load_gen_task("xsum", split="train", take=21)
    for take in (0, -1, 2.5, True):
      with pytest.raises(ValueError, match="expected a positive int"):
        gen_text.load_gen_task("xsum", split="train", take=take)


@pytest.mark.parametrize(
  "name,split",
  [("gsm8k", "validation"), ("squad", "test"), ("xsum", "dev"), ("cnn_dailymail", "unsupervised")],
)
def test_unknown_split_or_task_is_rejected(name, split):
  with tfds.testing.mock_data(num_examples=3):  # the mock alone would accept any split
    with pytest.raises(ValueError, match=rf"split '{split}' of {name}: expected one of \["):
      gen_text.load_gen_task(name, split=split)
    with pytest.raises(ValueError, match=r"generative task 'glue/sst2': expected one of \["):
      gen_text.load_gen_task("glue/sst2", split="train")


def test_examples_with_an_empty_text_are_skipped_and_replaced():
  with fake_tfds(empty=tuple(range(0, N, 2))):  # half the examples have no answer
    with pytest.warns(UserWarning, match=r"squad\[train\]: skipped \d+ examples"):
      squad = gen_text.load_gen_task("squad", split="train", take=10)
    with pytest.warns(UserWarning, match="empty summary"):
      few = gen_text.load_gen_task("xsum", split="train", take=3)
    with pytest.warns(UserWarning):
      more = gen_text.load_gen_task("xsum", split="train", take=6)
    with pytest.raises(ValueError, match=r"gsm8k\[train\]: only 10 of 20 examples have text"):
      gen_text.load_gen_task("gsm8k", split="train", take=11)
    with pytest.warns(UserWarning, match="skipped 10 examples"):
      whole = gen_text.load_gen_task("gsm8k", split="train")
  assert len(whole) == N // 2
  assert len(squad) == 10 and all(int(p.split()[2]) % 2 for p in squad.prompts)
  assert len(few) == 3 and more.prompts[:3] == few.prompts  # still a prefix


def test_a_malformed_example_is_an_error_naming_it():
  rows = [{"question": b"q", "answer": b"a"}, {"question": b"q"}]
  with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: rows):
    with pytest.raises(ValueError, match=r"gsm8k\[train\] example 1: KeyError: 'answer'"):
      gen_text.load_gen_task("gsm8k", split="train")


def test_missing_data_is_not_downloaded(tmp_path):
  with pytest.raises(tfds_source.MissingTfdsData, match="gsm8k: no prepared data"):
    gen_text.load_gen_task("gsm8k", split="train", data_dir=str(tmp_path))
  assert not any(p.suffix == ".array_record" for p in tmp_path.rglob("*"))


# --- encode_pairs ------------------------------------------------------------------


def _encode(prompts, responses, **kwargs):
  kwargs = {"tokenizer": BYTES, "max_prompt_len": 5, "max_response_len": 4, **kwargs}
  return gen_text.encode_pairs(PromptResponses(prompts, responses), **kwargs)


def test_encode_pairs_exact_tokens_left_padded_prompt_right_padded_response():
  data, counts = _encode(["Q:", "Hi?"], [" A", "!"])
  # "Q:" = 81 58, "Hi?" = 72 105 63, " A" = 32 65, "!" = 33
  np.testing.assert_array_equal(data["prompt"], [[PAD, PAD, BOS, 81, 58], [PAD, BOS, 72, 105, 63]])
  np.testing.assert_array_equal(data["prompt_mask"], [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
  np.testing.assert_array_equal(data["response"], [[32, 65, EOS, PAD], [33, EOS, PAD, PAD]])
  np.testing.assert_array_equal(data["response_mask"], [[1, 1, 1, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(data["index"], [0, 1])
  assert all(data[k].dtype == np.int32 for k in data)
  assert counts == {"examples": 2, "prompt_truncated": 0, "response_truncated": 0, "dropped": 0}


def test_prompt_then_response_is_one_contiguous_sequence_as_a_sampler_writes_it():
  data, _ = _encode(["Q:", "Hi?", "é"], [" A", "!", " ok"], max_prompt_len=6, max_response_len=5)
  tokens = np.concatenate([data["prompt"], data["response"]], axis=1)
  mask = np.concatenate([data["prompt_mask"], data["response_mask"]], axis=1)
  for row, (prompt, response) in enumerate([("Q:", " A"), ("Hi?", "!"), ("é", " ok")]):
    real = np.flatnonzero(mask[row])
    assert (np.diff(real) == 1).all()  # no padding between prompt and response
    assert mask[row, 5] == mask[row, 6] == 1  # the prompt's last column, the response's first
    assert tokens[row, real].tolist() == [BOS, *prompt.encode(), *response.encode(), EOS]
    assert (tokens[row, mask[row] == 0] == PAD).all()


def test_without_bos_and_eos():
  data, _ = _encode(["Q:"], [" A"], add_bos=False, add_eos=False)
  np.testing.assert_array_equal(data["prompt"], [[PAD, PAD, PAD, 81, 58]])
  np.testing.assert_array_equal(data["response"], [[32, 65, PAD, PAD]])


def test_long_prompt_loses_its_beginning_and_keeps_bos():
  data, counts = _encode(["abcdefgh", "xy"], [" r", " s"], max_prompt_len=4)
  np.testing.assert_array_equal(data["prompt"], [[BOS, 102, 103, 104], [PAD, BOS, 120, 121]])
  np.testing.assert_array_equal(data["prompt_mask"], [[1, 1, 1, 1], [0, 1, 1, 1]])
  assert counts["prompt_truncated"] == 1 and counts["response_truncated"] == 0
  no_bos, _ = _encode(["abcdefgh"], [" r"], max_prompt_len=4, add_bos=False)
  np.testing.assert_array_equal(no_bos["prompt"], [[101, 102, 103, 104]])  # "efgh"


def test_long_response_is_cut_on_the_right_without_eos():
  data, counts = _encode(["p", "p", "p"], [" yes!", " yes", " ye"])
  # " yes!" is cut; " yes" fits but its <eos> does not, so it is cut too; " ye" + <eos> fits.
  np.testing.assert_array_equal(
    data["response"], [[32, 121, 101, 115], [32, 121, 101, 115], [32, 121, 101, EOS]]
  )
  np.testing.assert_array_equal(data["response_mask"], np.ones((3, 4)))
  assert counts == {"examples": 3, "prompt_truncated": 0, "response_truncated": 2, "dropped": 0}
  no_eos, counts = _encode(["p"], [" yes"], add_eos=False)
  np.testing.assert_array_equal(no_eos["response"], [[32, 121, 101, 115]])
  assert counts["response_truncated"] == 0


def test_drop_mode_drops_and_counts_examples_that_do_not_fit():
  data, counts = _encode(
    ["abcdefgh", "p", "ok", "q"], [" r", " yes", " a", " yes!"], overflow="drop"
  )
  np.testing.assert_array_equal(data["index"], [2])
  np.testing.assert_array_equal(data["prompt"], [[PAD, PAD, BOS, 111, 107]])
  np.testing.assert_array_equal(data["response"], [[32, 97, EOS, PAD]])
  assert counts == {"examples": 4, "prompt_truncated": 0, "response_truncated": 0, "dropped": 3}
  with pytest.raises(ValueError, match="overflow='drop' drops all 2 examples"):
    _encode(["abcdefgh", "p"], [" r", " yes"], overflow="drop")


def test_an_empty_response_carries_eos_or_is_an_error():
  data, _ = _encode(["p"], [""])
  np.testing.assert_array_equal(data["response"], [[EOS, PAD, PAD, PAD]])
  np.testing.assert_array_equal(data["response_mask"], [[1, 0, 0, 0]])
  with pytest.raises(ValueError, match="example 1: response '' encodes to no tokens"):
    _encode(["p", "q"], ["r", ""], add_eos=False)


class _NoSpecials(tokenize.ByteTokenizer):
  bos_id = eos_id = None


def test_encode_pairs_errors():
  with pytest.raises(ValueError, match="example 1: prompt '' encodes to no tokens"):
    _encode(["p", ""], ["r", "s"])
  with pytest.raises(ValueError, match="add_bos=True but _NoSpecials has no bos token"):
    _encode(["p"], ["r"], tokenizer=_NoSpecials())
  with pytest.raises(ValueError, match="add_eos=True but _NoSpecials has no eos token"):
    _encode(["p"], ["r"], tokenizer=_NoSpecials(), add_bos=False)
  with pytest.raises(ValueError, match="max_prompt_len=1: no room for a prompt after <bos>"):
    _encode(["p"], ["r"], max_prompt_len=1)
  for bad in (0, -2, 2.0, True):
    with pytest.raises(ValueError, match=rf"max_response_len={bad!r}: expected a positive int"):
      _encode(["p"], ["r"], max_response_len=bad)
  with pytest.raises(ValueError, match=r"overflow='cut': expected one of \('truncate', 'drop'\)"):
    _encode(["p"], ["r"], overflow="cut")
  with pytest.raises(ValueError, match="pairs: empty"):
    _encode([], [])
  with pytest.raises(TypeError, match="expected PromptResponses, got list"):
    gen_text.encode_pairs([("p", "r")], tokenizer=BYTES, max_prompt_len=4, max_response_len=4)
