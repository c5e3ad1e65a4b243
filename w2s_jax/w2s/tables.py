"""Every W2S table: a run's results, a sweep's rows, and how they print numbers.

Intervals print as "mean [lo, hi]"; PGR through `format_pgr`, which says
where it is undefined (the ceiling does not beat the weak model) instead of
printing an interval that describes too few resamples.
"""

import collections
import math

import numpy as np

from w2s_jax.w2s.records import row_summary

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


def summary_table(rows: list[dict], labels=("method",)) -> str:
  """rows: the label columns (by name; not "weak", "w2s", "ceiling" or "pgr")
  and {"weak", "w2s", "ceiling", "pgr"} stats (mean/lo/hi; pgr may also hold
  undefined_frac)."""
  clash = set(labels) & {"weak", "w2s", "ceiling", "pgr"}
  if clash:
    raise ValueError(f"summary_table labels {sorted(clash)}: the statistics' own names")
  lines = [
    [str(r[label]) for label in labels]
    + [_fmt(r["weak"]), _fmt(r["w2s"]), _fmt(r["ceiling"]), _fmt_pgr(r["pgr"])]
    for r in rows
  ]
  return text_table((*labels, "Pweak", "Pweak->strong", "Pceiling", "PGR"), lines)


def _models_lines(results: dict) -> list[str]:
  lines = []
  pairs = {(c["cell"]["weak"], c["cell"]["strong"]) for c in results["cells"]}
  roles = dict(zip(next(iter(pairs)), ("weak", "strong"))) if len(pairs) == 1 else {}
  for size, info in results["models"].items():
    if "lives" in info:
      facts = f"facts known: lives {info['lives']:.0%}, works {info['works']:.0%}"
    else:
      facts = ", ".join(f"{k} {v:.3f}" for k, v in info.items() if k.startswith("test_lm"))
    if not info.get("pretrained"):
      origin = "not pretrained"
    elif isinstance(info["pretrained"], str):
      origin = "imported"
    elif info.get("cached"):
      origin = "pretrained (cached)"
    else:
      origin = f"pretrained in {info['seconds']:.0f}s"
    role = f"{roles[size]:6s} " if roles else ""
    lines.append(f"{role}{size:8s} {origin:22s} {facts}")
  return lines


def format_results(results: dict) -> str:
  """A run record (records.run_record) as text: each model's pretraining, the
  task's encoding, then per evaluation key a table with a row per cell."""
  lines = _models_lines(results)
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
  seeds = cells[0]["seeds"] if cells else []
  for key in results["task"]["eval_keys"]:
    lines.append(
      f"\n{key} ({len(seeds)} seed{'' if len(seeds) == 1 else 's'}; "
      "mean [95% bootstrap interval over seeds and examples])"
    )
    lines.append(
      summary_table(
        [
          {
            "method": c["label"],
            "weak model": c["cell"]["weak"],
            "strong model": c["cell"]["strong"],
            **c["summary"][key],
          }
          for c in cells
        ],
        labels,
      )
    )
  lines.append(f"\ntotal {results['seconds']:.0f}s")
  return "\n".join(lines)


def median_pgr(rows, split="test") -> dict:
  """Per loss, the median PGR over the sweep's cells (NaN where every cell's is undefined)."""
  by_loss = collections.defaultdict(list)
  for r in rows:
    by_loss[r["loss"]].append(r[f"{split}/pgr/mean"])
  return {
    loss: float(np.nanmedian(v)) if not all(map(math.isnan, v)) else float("nan")
    for loss, v in by_loss.items()
  }


def sweep_table(rows, split="test") -> str:
  """Per pair and loss: mean [95% interval] of Pweak, Pw2s, Pceiling, PGR; then
  the median PGR per loss. With filters, the filter and how right the kept
  weak labels are."""
  filtered = any(r.get("filter", "none") != "none" for r in rows)
  table = []
  for r in rows:
    stats = row_summary(r, split)
    entry = {"weak model": r["weak"], "strong model": r["strong"], "loss": r["loss"], **stats}
    if filtered:
      entry["filter"] = r["filter"]
      entry["label acc"] = f"{r['kept_label_accuracy'] or r['weak_label_accuracy']:.3f}"
    table.append(entry)
  labels = ("weak model", "strong model", "loss", *(("filter", "label acc") if filtered else ()))
  medians = text_table(
    ("loss", "median PGR"),
    [
      [loss, PGR_UNDEFINED if math.isnan(v) else f"{v:.2f}"]
      for loss, v in median_pgr(rows, split).items()
    ],
  )
  return f"{summary_table(table, labels)}\n\n{medians}"
