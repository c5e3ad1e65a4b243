"""Every W2S run's tables, and how they print numbers (a sweep's: sweep_tables.py).

Intervals print as "mean [lo, hi]"; PGR through `format_pgr`, which says
where it is undefined (the ceiling does not beat the weak model) instead of
printing an interval that describes too few resamples.
"""

import math

import numpy as np

from w2s_jax.infra import memory

# PGR's interval is a percentile interval over the bootstrap resamples where PGR is
# defined (ceiling > weak); the others are left out of it. A 95% interval already
# leaves out 5% of the resamples (2.5% in each tail). Once more than that share is
# undefined, the resamples left out outweigh the tails, the bounds no longer describe
# 95% of the bootstrap distribution, and the table shows the undefined share instead.
PGR_UNDEFINED_FRAC_MAX = 0.05


PGR_UNDEFINED = "undefined (ceiling ≤ weak)"


def _is_nan(x) -> bool:
  return x is None or math.isnan(float(x))


def _percent(frac: float) -> str:
  """A share as a whole percent that never rounds a partial share to 0% or 100%."""
  if 0 < frac < 0.005:
    return "<1%"
  if 0.995 <= frac < 1:
    return ">99%"
  return f"{frac:.0%}"


def format_pgr(*, mean, lo, hi, undefined_frac=None, digits: int = 2) -> str:
  """PGR as a table prints it; the stored numbers are not changed.

  - point undefined (ceiling <= weak; NaN mean): "undefined (ceiling ≤ weak)", with
    "; 41% of resamples" when undefined_frac is known;
  - point defined, PGR undefined in more than PGR_UNDEFINED_FRAC_MAX of the
    resamples: "0.31 (undefined in 12% of resamples)", no interval;
  - otherwise "0.54 [0.47, 0.60]".
  undefined_frac None or NaN means unknown (rows written before it was recorded).
  """
  frac = None if _is_nan(undefined_frac) else float(undefined_frac)
  if _is_nan(mean):
    if frac is None:
      return PGR_UNDEFINED
    return f"undefined (ceiling ≤ weak; {_percent(frac)} of resamples)"
  if frac is not None and frac > PGR_UNDEFINED_FRAC_MAX:
    return f"{mean:.{digits}f} (undefined in {_percent(frac)} of resamples)"
  return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _fmt(stat: dict, digits: int = 3) -> str:
  return f"{stat['mean']:.{digits}f} [{stat['lo']:.{digits}f}, {stat['hi']:.{digits}f}]"


def _fmt_pgr(stat: dict) -> str:
  return format_pgr(
    mean=stat["mean"], lo=stat["lo"], hi=stat["hi"], undefined_frac=stat.get("undefined_frac")
  )


def text_table(header, lines) -> str:
  """Left-aligned columns, a rule under the header."""
  widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
  fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
  return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def summary_table(rows: list[dict], labels=("method",), *, fixed_pretraining: bool = False) -> str:
  """rows: the label columns (by name; not "weak", "w2s", "ceiling" or "pgr")
  and {"weak", "w2s", "ceiling", "pgr"} stats (mean/lo/hi; pgr may also hold
  undefined_frac). fixed_pretraining: a last column with PGR's interval
  within the pretrained models at hand (rows' "fixed_pretraining")."""
  clash = set(labels) & {"weak", "w2s", "ceiling", "pgr"}
  if clash:
    raise ValueError(f"summary_table labels {sorted(clash)}: the statistics' own names")
  lines = []
  for r in rows:
    line = [str(r[label]) for label in labels]
    line += [_fmt(r["weak"]), _fmt(r["w2s"]), _fmt(r["ceiling"]), _fmt_pgr(r["pgr"])]
    if fixed_pretraining:
      line.append(_fmt_pgr({**r["pgr"], **r["fixed_pretraining"]["pgr"]}))
    lines.append(line)
  header = (*labels, "Pweak", "Pweak->strong", "Pceiling", "PGR")
  return text_table((*header, "PGR, pretraining fixed") if fixed_pretraining else header, lines)


def coverage(cfg_record: dict, draws: dict) -> str:
  """What an interval covers, for a table's title: draws = a summary's "draws"."""
  cfg_record = cfg_record.get("base", cfg_record)  # a sweep's record: its base experiment
  runs, n, p = draws["runs"], draws["examples"], draws["pretraining"]
  seeds = runs // max(p, 1)
  n = "?" if n is None else n
  imported = bool(cfg_record.get("pretrained_dirs")) or not cfg_record.get("use_pretraining", True)
  if p > 1:
    what = (
      f"{p} pretraining draws x {seeds} seeds, {n} examples; resampling pretraining "
      "draws, seeds within each, and examples"
    )
  elif imported:
    what = (
      f"{seeds} seed{'s' * (seeds != 1)}, {n} examples; over seeds and examples: the "
      "models are imported or not pretrained, one fixed draw"
    )
  else:
    what = (
      f"{seeds} seed{'s' * (seeds != 1)}, {n} examples; over seeds and examples only: "
      "ONE pretraining draw, not covered"
    )
  return f"mean [95% bootstrap interval]; {what}"


def imitation_table(rows: list[dict], labels=("method",)) -> str:
  """How the W2S student and the ceiling follow the weak model: rows hold the
  label columns, "imitation" (metrics.imitation) and "misfit" (or None)."""
  lines = []
  for r in rows:
    im = r["imitation"]
    line = [str(r[label]) for label in labels]
    for student in ("w2s", "ceiling"):
      a = im[student]
      line.append(
        f"{a['agreement']:.3f} / {a['agreement_weak_right']:.3f} / {a['agreement_weak_wrong']:.3f}"
      )
    line.append("-" if r.get("misfit") is None else f"{r['misfit']:.4f}")
    line.append(f"{im['error_consistency']:.3f}")
    lines.append(line)
  return text_table(
    (
      *labels,
      "W2S agrees with weak: all / weak right / weak wrong",
      "ceiling agrees: all / weak right / weak wrong",
      "misfit KL(weak||W2S)",
      "weak-ceiling error consistency",
    ),
    lines,
  )


def answer_imitation_table(rows: list[dict], labels=("method",)) -> str:
  """A generative task's answer imitation (metrics.answer_imitation): over
  every field, then the W2S student's copied errors field by field."""
  rate = lambda r: (
    f"{r['agreement']:.3f} / {r['agreement_weak_right']:.3f} / {r['agreement_weak_wrong']:.3f}"
  )
  lines = []
  for r in rows:
    answers = r["imitation"]["answers"]
    copied = ", ".join(
      f"{name} {v['agreement_weak_wrong']:.3f}" for name, v in answers["w2s"]["fields"].items()
    )
    lines.append(
      [
        *(str(r[label]) for label in labels),
        rate(answers["w2s"]["all"]),
        rate(answers["ceiling"]["all"]),
        copied,
      ]
    )
  return text_table(
    (
      *labels,
      "W2S, same answer: all / weak right / weak wrong",
      "ceiling, same answer: all / weak right / weak wrong",
      "W2S copied errors per field",
    ),
    lines,
  )


def _models_lines(results: dict) -> list[str]:
  lines = []
  pairs = {(c["cell"]["weak"], c["cell"]["strong"]) for c in results["cells"]}
  roles = dict(zip(next(iter(pairs)), ("weak", "strong"))) if len(pairs) == 1 else {}
  for size, info in results["models"].items():
    per_draw = info.get("draws") or [info]
    if "lives" in info:
      lives = "/".join(f"{d['lives']:.0%}" for d in per_draw)
      works = "/".join(f"{d['works']:.0%}" for d in per_draw)
      facts = f"facts known: lives {lives}, works {works}"
      if len(per_draw) > 1:
        facts += f" (pretraining draws {'/'.join(str(d.get('seed')) for d in per_draw)})"
    else:
      facts = ", ".join(f"{k} {v:.3f}" for k, v in info.items() if k.startswith("test_lm"))
    if not info.get("pretrained"):
      origin = "not pretrained"
    elif isinstance(info["pretrained"], str):
      origin = "imported"
    elif all(d.get("cached") for d in per_draw):
      origin = "pretrained (cached)"
    else:
      seconds = sum(d.get("seconds", 0) for d in per_draw if not d.get("cached"))
      origin = f"pretrained in {seconds:.0f}s"
    role = f"{roles[size]:6s} " if roles else ""
    lines.append(f"{role}{size:8s} {origin:22s} {facts}")
  return lines


def format_results(results: dict) -> str:
  """A run record (records.run_record) as text: each model's pretraining, the
  task's encoding, then per evaluation key a table with a row per cell."""
  lines = _models_lines(results)
  lines.extend(f"WARNING (data) {w}" for w in results["task"].get("warnings", []))
  if results["task"].get("label_names"):
    names = results["task"]["label_names"]
    lines.append(f"classes ({len(names)}, in label order): {', '.join(names)}")
  for split, counts in results["task"].get("encoding", {}).items():
    lines.append(f"{split:9s} {counts}")
  for size, info in results["models"].items():
    if info.get("encoding"):
      lines.append(f"{size} reads the task through {info['encoding']['tokenizer']}")
      lines.extend(
        f"  {split:9s} {counts}"
        for split, counts in info["encoding"].items()
        if split != "tokenizer"
      )
  cells = results["cells"]
  pairs = {(c["cell"]["weak"], c["cell"]["strong"]) for c in cells}
  labels = ("method",) if len(pairs) == 1 else ("weak model", "strong model", "method")
  sanity = results["task"].get("splits", {})
  for key in results["task"]["eval_keys"]:
    rows = [
      {
        "method": c["label"],
        "weak model": c["cell"]["weak"],
        "strong model": c["cell"]["strong"],
        "misfit": float(np.mean(c["misfit"])) if c.get("misfit") else None,
        **c["summary"][key],
      }
      for c in cells
    ]
    if not rows:
      continue
    # Records written before pretraining draws (schema results/2) name none.
    draws = rows[0].get("draws") or {
      "pretraining": 1,
      "runs": len(cells[0]["seeds"]),
      "examples": None,
    }
    lines.append(f"\n{key}: {coverage(results.get('config', {}), draws)}")
    split = key.partition(":")[0]
    if split in sanity and "majority" in sanity[split]:
      lines.append(
        f"  {split}: majority class {sanity[split]['majority']:.3f}, chance "
        f"{sanity[split]['chance']:.3f}, {sanity[split]['examples']} examples"
      )
    lines.append(summary_table(rows, labels, fixed_pretraining=draws["pretraining"] > 1))
    if all("imitation" in r for r in rows):
      lines.append(f"\n{key}: imitation (Burns et al. 2023, section 5), mean over runs")
      lines.append(imitation_table(rows, labels))
    if all("answers" in r.get("imitation", {}) for r in rows):
      lines.append(
        f"\n{key}: the weak model's own answers given, mean over runs (a copied error "
        "is the same wrong answer)"
      )
      lines.append(answer_imitation_table(rows, labels))
  if any(c.get("oracle") for c in cells):
    lines.append(oracle_table(cells, labels))
  lines.append(f"\ntotal {results['seconds']:.0f}s; {memory.summary_line(results.get('memory'))}")
  return "\n".join(lines)


def curve_accuracy(curve: dict, split: str) -> str:
  """The accuracy a stored curve ({name: values}) has for a split: its
  class accuracy, or a generative curve's token accuracy."""
  for name in (f"{split}/accuracy", f"{split}/token_accuracy"):
    if name in curve:
      return name
  raise KeyError(f"training curve without an accuracy of {split!r}: {sorted(curve)}")


def oracle_table(cells: list[dict], labels=("method",)) -> str:
  """The training curves' final step beside their best one (curves.oracle),
  for each cell with curves: the best step is picked on the evaluation data,
  Burns et al.'s early-stopping upper bound, not a result one can get."""
  lines = []
  for c in cells:
    oracle = c.get("oracle")
    if not oracle:
      continue
    # PGR from the curves' own measure (a generative curve's is teacher forced).
    weak = oracle.get("weak", {}).get("final")  # a record from before weak curves: none
    w2s, ceiling = oracle["w2s"], oracle["ceiling"]
    gap = None if weak is None else ceiling["final"] - weak
    pgr = lambda x: "-" if not gap else f"{(x - weak) / gap:.2f}"
    named = {
      "method": c["label"],
      "weak model": c["cell"]["weak"],
      "strong model": c["cell"]["strong"],
    }
    lines.append(
      [
        *(str(named[label]) for label in labels),
        f"{w2s['final']:.3f}",
        f"{w2s['best']:.3f} @ {w2s['best_step']}",
        f"{ceiling['final']:.3f}",
        f"{ceiling['best']:.3f} @ {ceiling['best_step']}",
        f"{pgr(w2s['final'])} / {pgr(w2s['best'])}",
      ]
    )
  first = next(c for c in cells if c.get("oracle"))
  split = next(iter(first["summary"])).partition(":")[0]
  name = curve_accuracy(first["curves"]["w2s"], split)
  forced = " (teacher forced on the right responses)" if "token" in name else ""
  title = (
    f"\n{name}{forced}: training curves (curves/), mean over runs: the final step, and "
    "the best step ORACLE-picked on this split (Burns et al.'s early-stopping upper "
    "bound, not an achievable result)"
  )
  table = text_table(
    (
      *labels,
      "W2S final",
      "W2S oracle best @ step",
      "ceiling final",
      "ceiling oracle best @ step",
      "PGR final / oracle (means)",
    ),
    lines,
  )
  return f"{title}\n{table}"
