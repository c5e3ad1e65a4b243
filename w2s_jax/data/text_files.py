"""Bring-your-own data: TSV, CSV and JSONL files of (text, label) rows.

Gives the same TextExamples as a TFDS task (text_tasks.load_task), so the rest
of the pipeline cannot tell them apart. Every problem in a file is reported as
`path:line: problem`, the line being the one a text editor shows.

Formats (picked from the suffix, or file_format=):
  .tsv   header row, tab-separated, no quoting at all (the GLUE format: a text
         may hold `"`; it may not hold a tab or a newline).
  .csv   header row, comma-separated, RFC 4180 quoting ("..." may hold commas,
         newlines and "" for a quote).
  .jsonl one JSON object per line; blank lines are skipped.
Texts are kept exactly as written (GLUE's SST-2 ends each sentence with a
space, and so does the TFDS copy); a text that is empty or only whitespace is
an error.

Labels are ints >= 0, or, when label_names is given, one of those names
(mapped to its position in label_names). With num_labels, every label must be
an int in [0, num_labels): a label outside the task's classes is an error at
its line, not a silently wrong accuracy. `infer_label_names` reads a train
file's classes: ints as they are, or its distinct strings in sorted order.
"""

import csv
import io
import json
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np

from w2s_jax.data.text_tasks import TextExamples

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class TextFileError(ValueError):
  """A problem in a data file, located as path:line."""

  def __init__(self, path, line: int | None, problem: str):
    where = f"{path}:{line}" if line is not None else str(path)
    super().__init__(f"{where}: {problem}")
    self.path, self.line, self.problem = str(path), line, problem


def read_text_file(
  path,
  *,
  text_field: str = "text",
  label_field: str = "label",
  label_names: Sequence[str] | None = None,
  file_format: str | None = None,
  num_labels: int | None = None,
) -> TextExamples:
  """All rows of a TSV/CSV/JSONL file as TextExamples.

  num_labels: the task's number of classes; every label must then be an int in
    [0, num_labels) (with label_names, len(label_names) must equal it). None:
    any int >= 0.
  """
  file_format = _file_format(path, file_format)
  if label_names is not None:
    label_names = list(label_names)
    if (
      not label_names
      or len(set(label_names)) != len(label_names)
      or not all(isinstance(n, str) for n in label_names)
    ):
      raise ValueError(f"label_names={label_names!r}: expected distinct strings")
  if num_labels is not None:
    if not (isinstance(num_labels, int) and not isinstance(num_labels, bool) and num_labels >= 2):
      raise ValueError(f"num_labels={num_labels!r}: expected an int >= 2 (the number of classes)")
    if label_names is not None and len(label_names) != num_labels:
      raise ValueError(
        f"label_names={label_names!r} has {len(label_names)} names but "
        f"num_labels={num_labels}: expected one name per class"
      )
  texts, labels = [], []
  for line, row in checked_rows(path, file_format, (text_field, label_field)):
    text = row[text_field]
    if not isinstance(text, str):
      raise TextFileError(path, line, f"{text_field}={text!r}: expected a string")
    if not text.strip():
      raise TextFileError(path, line, f"empty {text_field}")
    texts.append(text)
    label = _label(path, line, row[label_field], label_field, label_names)
    if num_labels is not None and label >= num_labels:
      raise TextFileError(
        path,
        line,
        f"{label_field} {label}: expected an int in [0, {num_labels}) ({_task_kind(num_labels)})",
      )
    labels.append(label)
  if not texts:
    raise TextFileError(
      path,
      None,
      "no examples (expected a header and at least one row)"
      if file_format != "jsonl"
      else "no examples",
    )
  return TextExamples(texts, np.asarray(labels, np.int64))


def infer_label_names(
  path, *, label_field: str = "label", file_format: str | None = None
) -> tuple[str, ...]:
  """The classes of a (train) file, in label order: with int labels (JSON
  ints or digit strings), "0" .. str(max label) (at least two); otherwise the
  distinct labels as strings, sorted. A file that mixes the two is an error
  at the first row of the minority kind."""
  ints, names = {}, {}  # value -> first line
  for line, row in checked_rows(path, file_format, (label_field,)):
    value = row[label_field]
    as_int = _as_int(value)
    if as_int is not None:
      ints.setdefault(as_int, line)
    elif isinstance(value, str) and value.strip():
      names.setdefault(value, line)
    else:
      raise TextFileError(path, line, f"{label_field}={value!r}: expected an int or a string")
  if ints and names:
    few, many = (ints, "string") if len(ints) < len(names) else (names, "int")
    value, line = min(few.items(), key=lambda kv: kv[1])
    raise TextFileError(
      path,
      line,
      f"{label_field} {value!r}: the file's labels are mostly {many}s; expected one kind "
      "(ints 0..K-1, or names; label_names= fixes the names and their order)",
    )
  if names:
    return tuple(sorted(names))
  return tuple(str(i) for i in range(max(2, max(ints, default=0) + 1)))


def count_rows(
  path, *, text_field: str = "text", label_field: str = "label", file_format: str | None = None
) -> int:
  """How many examples a file holds (its rows, checked for both fields)."""
  return sum(1 for _ in checked_rows(path, file_format, (text_field, label_field)))


def checked_rows(path, file_format: str | None, fields: tuple[str, ...]):
  """The file's rows as (line, row), each checked to hold `fields`; the file
  itself (format, existence) checked before any row is read."""
  file_format = _file_format(path, file_format)
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path}: is a folder, expected a TSV, CSV or JSONL file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  content = decode_bytes(path)
  if file_format == "jsonl":
    rows = jsonl_rows(path, content)
  else:
    delimiter = "\t" if file_format == "tsv" else ","
    rows = _table_rows(
      path, content, delimiter=delimiter, quoted=file_format == "csv", fields=fields
    )
  return _holding(path, rows, fields)


def _holding(path, rows, fields):
  for line, row in rows:
    for field in fields:
      if field not in row:
        raise TextFileError(path, line, f"missing field {field!r} (found {sorted(row)})")
    yield line, row


def _as_int(value) -> int | None:
  if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
    return value
  if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):  # TSV/CSV cells are strings
    return int(value)
  return None


def _task_kind(num_labels: int) -> str:
  return "a binary task" if num_labels == 2 else f"a {num_labels}-class task"


def _file_format(path, file_format: str | None) -> str:
  if file_format is not None:
    if file_format not in set(FORMATS.values()):
      raise ValueError(
        f"file_format={file_format!r}: expected one of {sorted(set(FORMATS.values()))}"
      )
    return file_format
  suffix = os.path.splitext(str(path))[1].lower()
  if suffix not in FORMATS:
    raise ValueError(
      f"{path}: cannot tell the format from suffix {suffix!r}: expected one of "
      f"{sorted(FORMATS)} or pass file_format="
    )
  return FORMATS[suffix]


def decode_bytes(path) -> str:
  with open(path, "rb") as f:
    raw = f.read()
  try:
    # utf-8-sig: spreadsheet exports start with a byte-order mark, which would
    # otherwise become part of the first column's name.
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as err:
    line = raw[: err.start].count(b"\n") + 1
    raise TextFileError(path, line, f"not valid UTF-8 ({err.reason} at byte {err.start})") from None


def _table_rows(
  path, content: str, *, delimiter: str, quoted: bool, fields: tuple[str, str]
) -> Iterator[tuple[int, dict]]:
  # No field is longer than the file: the csv module's default cap (131,072
  # characters) would call a long valid field malformed. The cap is process-wide
  # and is only ever raised here.
  csv.field_size_limit(max(csv.field_size_limit(), len(content) + 1))
  # newline="" lets the csv module see \r\n itself, and quoted newlines survive.
  reader = csv.reader(
    io.StringIO(content, newline=""),
    delimiter=delimiter,
    strict=True,
    quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
  )
  try:
    header = next(reader, None)
  except csv.Error as err:
    raise TextFileError(path, 1, f"malformed header: {err}") from None
  if header is None:
    raise TextFileError(path, None, "empty file (expected a header row)")
  missing = [f for f in fields if f not in header]
  if missing:
    raise TextFileError(path, 1, f"missing column(s) {missing} in header {header}")
  column = {f: header.index(f) for f in fields}
  while True:
    start = reader.line_num + 1  # a quoted field can span lines: report where the row starts
    try:
      values = next(reader)
    except StopIteration:
      return
    except csv.Error as err:
      raise TextFileError(path, start, f"malformed row: {err}") from None
    if not values:  # a blank line, e.g. after the last row
      continue
    if len(values) != len(header):
      sep = "tab" if delimiter == "\t" else "comma"
      raise TextFileError(
        path,
        start,
        f"malformed row: {len(values)} {sep}-separated fields, "
        f"expected {len(header)} as in the header {header}",
      )
    yield start, {f: values[i] for f, i in column.items()}


def jsonl_rows(path, content: str) -> Iterator[tuple[int, dict]]:
  # JSON Lines end at "\n" only: str.splitlines() would also split at U+2028,
  # U+0085 and the like, which a JSON string may hold unescaped.
  for line, text in enumerate(content.split("\n"), start=1):
    text = text.removesuffix("\r")
    if not text.strip():
      continue
    try:
      row = json.loads(text)
    except json.JSONDecodeError as err:
      raise TextFileError(path, line, f"malformed JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(row, dict):
      raise TextFileError(path, line, f"expected a JSON object, got {type(row).__name__}")
    yield line, row


def _label(path, line: int, value, field: str, label_names: list[str] | None) -> int:
  if label_names is not None:
    if isinstance(value, str) and value in label_names:
      return label_names.index(value)
    if _as_int(value) is not None and str(_as_int(value)) in label_names:  # JSON ints
      return label_names.index(str(_as_int(value)))
    raise TextFileError(path, line, f"unknown {field} {value!r}: expected one of {label_names}")
  if _as_int(value) is not None:
    return _as_int(value)
  raise TextFileError(
    path,
    line,
    f"unknown {field} {value!r}: expected an int >= 0 (or pass label_names= for string labels)",
  )
