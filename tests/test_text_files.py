"""TSV / CSV / JSONL files of (text, label) rows, and the errors a bad file gets."""

import json

import numpy as np
import pytest

from w2s_jax.data.text_files import TextFileError, read_text_file
from w2s_jax.data.text_tasks import TextExamples


def _write(tmp_path, name, content: str | bytes):
  path = tmp_path / name
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content, encoding="utf-8", newline="")
  return path


def test_tsv_in_the_glue_sst2_format(tmp_path):
  # As GLUE writes it: no quoting, so '"' is part of the text, and a trailing space.
  path = _write(
    tmp_path,
    "sst2.tsv",
    'text\tlabel\nit \'s a "charming" journey . \t1\n"unflinchingly bleak\t0\n\n',
  )
  ex = read_text_file(path)
  assert isinstance(ex, TextExamples)
  assert ex.text == ['it \'s a "charming" journey . ', '"unflinchingly bleak']
  assert ex.label.tolist() == [1, 0] and ex.label.dtype == np.int64


def test_csv_with_quoting_crlf_bom_and_custom_columns(tmp_path):
  content = '\ufeffid,sentence,sentiment\r\n1,"a, b ""c""\r\nsecond line",pos\r\n2,plain,neg\r\n'
  path = _write(tmp_path, "data.csv", content)
  ex = read_text_file(
    path, text_field="sentence", label_field="sentiment", label_names=["neg", "pos"]
  )
  assert ex.text == ['a, b "c"\r\nsecond line', "plain"]
  assert ex.label.tolist() == [1, 0]


def test_jsonl_with_int_and_named_labels(tmp_path):
  rows = [{"text": "first", "label": 1}, {"text": "second", "label": 0, "extra": [1]}]
  path = _write(tmp_path, "data.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
  assert read_text_file(path).label.tolist() == [1, 0]
  named = _write(tmp_path, "named.jsonl", '{"text": "x", "label": "yes"}\n')
  assert read_text_file(named, label_names=["no", "yes"]).label.tolist() == [1]


def test_same_examples_whatever_the_format(tmp_path):
  tsv = _write(tmp_path, "a.tsv", "text\tlabel\nup\t1\ndown\t0\n")
  csv = _write(tmp_path, "a.csv", "text,label\nup,1\ndown,0\n")
  jsonl = _write(tmp_path, "a.jsonl", '{"text": "up", "label": 1}\n{"text": "down", "label": 0}\n')
  loaded = [read_text_file(p) for p in (tsv, csv, jsonl)]
  for ex in loaded[1:]:
    assert ex.text == loaded[0].text and (ex.label == loaded[0].label).all()


@pytest.mark.parametrize(
  "name,content,kwargs,line,problem",
  [
    # TSV
    ("a.tsv", "text\tlabel\nok\t1\ntoo\tmany\t1\n", {}, 3, "3 tab-separated fields, expected 2"),
    ("a.tsv", "text\tlabel\nok\t1\nno label\n", {}, 3, "1 tab-separated fields"),
    ("a.tsv", "sentence\tlabel\nok\t1\n", {}, 1, "missing column(s) ['text']"),
    ("a.tsv", "text\tlabel\nok\t1\n   \t0\n", {}, 3, "empty text"),
    ("a.tsv", "text\tlabel\nok\t1\nbad\tpositive\n", {}, 3, "unknown label 'positive'"),
    ("a.tsv", "text\tlabel\nok\t-1\n", {}, 2, "unknown label '-1'"),
    (
      "a.tsv",
      "text\tlabel\nok\tpos\nbad\tmeh\n",
      {"label_names": ["neg", "pos"]},
      3,
      "unknown label 'meh': expected one of ['neg', 'pos']",
    ),
    # CSV: a quoted field spanning lines is located where its row starts
    ("a.csv", 'text,label\n"two\nlines",1\n"open quote,1\n', {}, 4, "malformed row"),
    ("a.csv", "text,label\nok,1\na,b,c\n", {}, 3, "3 comma-separated fields"),
    ("a.csv", "label\n1\n", {}, 1, "missing column(s) ['text']"),
    ("a.csv", "text,label\n,1\n", {}, 2, "empty text"),
    # JSONL
    ("a.jsonl", '{"text": "ok", "label": 1}\n{"text": "x", "label": 1\n', {}, 2, "malformed JSON"),
    ("a.jsonl", '{"text": "ok", "label": 1}\n\n{"label": 1}\n', {}, 3, "missing field 'text'"),
    ("a.jsonl", '{"text": "", "label": 1}\n', {}, 1, "empty text"),
    ("a.jsonl", '{"text": 5, "label": 1}\n', {}, 1, "text=5: expected a string"),
    (
      "a.jsonl",
      '{"text": "a", "label": "1"}\n{"text": "b", "label": true}\n',
      {},
      2,
      "unknown label True",
    ),
    ("a.jsonl", '{"text": "a", "label": 2.5}\n', {}, 1, "unknown label 2.5"),
    ("a.jsonl", '["text", 1]\n', {}, 1, "expected a JSON object, got list"),
  ],
)
def test_bad_rows_name_the_file_line_and_problem(tmp_path, name, content, kwargs, line, problem):
  path = _write(tmp_path, name, content)
  with pytest.raises(TextFileError) as caught:
    read_text_file(path, **kwargs)
  message = str(caught.value)
  assert message.startswith(f"{path}:{line}: "), message
  assert problem in message, message
  assert caught.value.line == line


def test_whole_file_problems(tmp_path):
  with pytest.raises(TextFileError, match="empty file"):
    read_text_file(_write(tmp_path, "empty.tsv", ""))
  with pytest.raises(TextFileError, match="no examples"):
    read_text_file(_write(tmp_path, "header_only.csv", "text,label\n"))
  with pytest.raises(TextFileError, match=r"bad\.tsv:3: not valid UTF-8"):
    read_text_file(_write(tmp_path, "bad.tsv", b"text\tlabel\nok\t1\n\xff\t0\n"))
  with pytest.raises(FileNotFoundError, match="no such file"):
    read_text_file(tmp_path / "missing.tsv")
  with pytest.raises(ValueError, match="cannot tell the format from suffix '.txt'"):
    read_text_file(_write(tmp_path, "data.txt", "text\tlabel\n"))
  with pytest.raises(ValueError, match="file_format='xml'"):
    read_text_file(tmp_path / "x.tsv", file_format="xml")
  with pytest.raises(ValueError, match="expected distinct strings"):
    read_text_file(tmp_path / "x.tsv", label_names=["a", "a"])


def test_file_format_overrides_the_suffix(tmp_path):
  path = _write(tmp_path, "data.txt", "text\tlabel\nfine\t0\n")
  assert read_text_file(path, file_format="tsv").text == ["fine"]


@pytest.mark.parametrize(
  "name,content,kwargs,line,problem",
  [
    (
      "test.tsv",
      "text\tlabel\na\t0\nb\t1\nc\t2\nd\t0\n",
      {"num_labels": 2},
      4,
      "label 2: expected an int in [0, 2) (a binary task)",
    ),
    (
      "test.csv",
      'text,label\n"x\ny",1\n"z",7\n',
      {"num_labels": 3},
      4,
      "label 7: expected an int in [0, 3) (a 3-class task)",
    ),
    (
      "test.jsonl",
      '{"text": "a", "y": 1}\n\n{"text": "b", "y": 2}\n',
      {"num_labels": 2, "label_field": "y"},
      3,
      "y 2: expected an int in [0, 2) (a binary task)",
    ),
    (
      "test.tsv",
      "text\tlabel\na\tpos\nb\tmaybe\n",
      {"num_labels": 2, "label_names": ["neg", "pos"]},
      3,
      "unknown label 'maybe': expected one of ['neg', 'pos']",
    ),
  ],
)
def test_a_label_outside_the_tasks_classes_names_the_file_and_line(
  tmp_path, name, content, kwargs, line, problem
):
  path = _write(tmp_path, name, content)
  with pytest.raises(TextFileError) as caught:
    read_text_file(path, **kwargs)
  assert str(caught.value) == f"{path}:{line}: {problem}"
  assert caught.value.line == line
  # Without num_labels the same file still reads (backward compatible), except
  # for an unknown name, which was always an error.
  if "label_names" not in kwargs:
    del kwargs["num_labels"]
    assert len(read_text_file(path, **kwargs)) >= 2


def test_labels_inside_num_labels_read_as_before(tmp_path):
  path = _write(tmp_path, "a.tsv", "text\tlabel\nup\t1\ndown\t0\n")
  assert read_text_file(path, num_labels=2).label.tolist() == [1, 0]
  assert read_text_file(path, num_labels=3).label.tolist() == [1, 0]
  named = _write(tmp_path, "n.jsonl", '{"text": "x", "label": "pos"}\n')
  assert read_text_file(named, label_names=["neg", "pos"], num_labels=2).label.tolist() == [1]


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"num_labels": 1}, r"num_labels=1: expected an int >= 2"),
    ({"num_labels": 0}, r"num_labels=0: expected an int >= 2"),
    ({"num_labels": 2.0}, r"num_labels=2\.0: expected an int >= 2"),
    ({"num_labels": True}, r"num_labels=True: expected an int >= 2"),
    (
      {"num_labels": 3, "label_names": ["neg", "pos"]},
      r"label_names=\['neg', 'pos'\] has 2 names but num_labels=3: expected one name per class",
    ),
  ],
)
def test_bad_num_labels_fails_before_reading(tmp_path, kwargs, match):
  # The file does not exist: the argument is checked before the file is opened.
  with pytest.raises(ValueError, match=match):
    read_text_file(tmp_path / "missing.tsv", **kwargs)


def test_jsonl_text_may_hold_any_unicode_line_separator(tmp_path):
  """U+2028, U+2029 and U+0085 are legal unescaped inside a JSON string; only
  "\n" (or "\r\n") ends a JSON line."""
  texts = ["a\u2028b", "c\u0085d", "e\u2029f\x1cg"]
  body = "\r\n".join(json.dumps({"text": t, "label": 1}, ensure_ascii=False) for t in texts)
  path = _write(tmp_path, "u.jsonl", body + "\n")
  assert "\u2028" in path.read_text(encoding="utf-8")  # written raw, not escaped
  assert read_text_file(path).text == texts
