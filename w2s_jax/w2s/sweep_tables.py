"""A sweep's tables: per cell, the median PGR per method, and the leaderboard
of methods over several sweeps (settings)."""

import collections
import math

import numpy as np

from w2s_jax.infra import memory
from w2s_jax.w2s import metrics
from w2s_jax.w2s.records import row_summary
from w2s_jax.w2s.tables import PGR_UNDEFINED, format_pgr, summary_table, text_table


def method_of(row) -> str:
  """A sweep row's method (Cell.method): its loss, for rows from before methods."""
  return row.get("method", row["loss"])


def median_pgr(rows, split="test") -> dict:
  """Per loss, the median PGR over the sweep's cells (NaN where every cell's is undefined)."""
  by_loss = collections.defaultdict(list)
  for r in rows:
    by_loss[method_of(r)].append(r[f"{split}/pgr/mean"])
  return {
    loss: float(np.nanmedian(v)) if not all(map(math.isnan, v)) else float("nan")
    for loss, v in by_loss.items()
  }


def misfit_correlation(rows, split="test") -> dict:
  """Over a sweep's cells with a misfit (classification): Pearson's r of the
  gain (Pw2s - Pweak) with the misfit, with a bootstrap interval over cells."""
  rows = [r for r in rows if r.get("misfit") is not None]
  return metrics.correlation_interval(
    x=[r["misfit"] for r in rows],
    y=[r[f"{split}/w2s/mean"] - r[f"{split}/weak/mean"] for r in rows],
  )


def sweep_table(rows, split="test") -> str:
  """Per pair and loss: mean [95% interval] of Pweak, Pw2s, Pceiling, PGR; then
  the median PGR per loss. With filters, the filter and how right the kept
  weak labels are."""
  filtered = any(r.get("filter", "none") != "none" for r in rows)
  table = []
  for r in rows:
    stats = row_summary(r, split)
    entry = {"weak model": r["weak"], "strong model": r["strong"], "loss": method_of(r), **stats}
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
  draws = {r.get(f"{split}/draws/pretraining") for r in rows} - {None}
  if draws:  # rows written before pretraining draws name none
    p = max(draws)
    title = (
      f"{split}: mean [95% bootstrap interval over {p} pretraining draws, seeds and examples]"
      if p > 1
      else f"{split}: mean [95% bootstrap interval over seeds and examples; ONE pretraining "
      "draw, its variance not covered]"
    )
    table_text = f"{title}\n{summary_table(table, labels)}"
  else:
    table_text = summary_table(table, labels)
  text = f"{table_text}\n\n{medians}"
  cells = memory.largest(rows)  # a row carries its cell's peak and steady RSS
  text += f"\n\n{memory.summary_line(cells, over='cells, each where it was computed')}"
  corr = misfit_correlation(rows, split)
  if corr["n"] >= 3:
    text += (
      f"\n\ngain (Pweak->strong - Pweak) vs misfit over {corr['n']} cells: Pearson r "
      f"{corr['r']:.2f} [{corr['lo']:.2f}, {corr['hi']:.2f}] (95% bootstrap over cells)"
    )
  return text


BASELINE = "xent"  # naive KD: what every method is compared with
STATS_SHOWN = ("mean", "lo", "hi", "undefined_frac")


def leaderboard_entries(settings: dict, split="test", baseline=BASELINE) -> list[dict]:
  """Every method's PGR in every column (a setting's (weak, strong) pair),
  beside naive KD's: [{"method", "column", "mean", "lo", "hi",
  "undefined_frac", "vs_baseline" ("above": its interval lies above naive
  KD's, "below", or "overlaps"; None for naive KD or where either PGR is
  undefined), "rank" (1: the highest PGR of the column; undefined last)}].
  settings: {setting name: its sweep's rows}."""
  entries = []
  for setting, rows in settings.items():
    for pair in dict.fromkeys((r["weak"], r["strong"]) for r in rows):
      column = f"{setting} {pair[0]}>{pair[1]}"
      cells = [r for r in rows if (r["weak"], r["strong"]) == pair]
      stats = {
        method_of(r): {k: r.get(f"{split}/pgr/{k}", float("nan")) for k in STATS_SHOWN}
        for r in cells
      }
      base = stats.get(baseline)
      order = sorted(stats, key=lambda m: -np.nan_to_num(stats[m]["mean"], nan=-np.inf))
      for method, s in stats.items():
        vs = None
        if base is not None and method != baseline and not _undefined(s) and not _undefined(base):
          vs = "above" if s["lo"] > base["hi"] else "below" if s["hi"] < base["lo"] else "overlaps"
        rank = order.index(method) + 1
        entries.append({"method": method, "column": column, **s, "vs_baseline": vs, "rank": rank})
  return entries


def _undefined(s) -> bool:
  return any(math.isnan(float(s[k])) for k in ("mean", "lo", "hi"))


def leaderboard(settings: dict, split="test", baseline=BASELINE) -> str:
  """Methods (rows, best mean rank first) by columns (each setting's pairs):
  PGR [95% interval], marked ▲ where the interval lies above naive KD's and
  ▼ below; then the mean rank and how many columns are above and below."""
  entries = leaderboard_entries(settings, split, baseline)
  columns = list(dict.fromkeys(e["column"] for e in entries))
  by = {(e["method"], e["column"]): e for e in entries}
  methods = list(dict.fromkeys(e["method"] for e in entries))
  mean_rank = {m: np.mean([e["rank"] for e in entries if e["method"] == m]) for m in methods}
  mark = {"above": " ▲", "below": " ▼"}
  lines = []
  for m in sorted(methods, key=lambda m: (mean_rank[m], methods.index(m))):
    cells = []
    for c in columns:
      e = by.get((m, c))
      if e is None:
        cells.append("-")
        continue
      shown = {k: e[k] for k in STATS_SHOWN}
      cells.append(format_pgr(**shown) + mark.get(e["vs_baseline"], ""))
    votes = [e["vs_baseline"] for e in entries if e["method"] == m]
    lines.append(
      [m, *cells, f"{mean_rank[m]:.1f}", f"{votes.count('above')} / {votes.count('below')}"]
    )
  header = ("method", *columns, "mean rank", f"above / below {baseline}")
  draws = {r.get(f"{split}/draws/pretraining") for rows in settings.values() for r in rows}
  p = max(draws - {None}, default=None)
  title = (
    f"{split}: PGR mean [95% bootstrap interval over "
    + (f"{p} pretraining draws, " if p and p > 1 else "ONE pretraining draw (not covered), ")
    + f"seeds and examples]; ▲/▼: the interval lies above/below {baseline}'s"
  )
  return f"{title}\n{text_table(header, lines)}"
