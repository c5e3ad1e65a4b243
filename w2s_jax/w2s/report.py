"""Charts of a sweep's rows (sweep.jsonl); its table is sweep_tables.sweep_table."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from w2s_jax.infra.files import atomic_write  # noqa: E402
from w2s_jax.w2s.sweep_tables import (  # noqa: E402
  BASELINE,
  median_pgr,
  method_of,
  misfit_correlation,
)
from w2s_jax.w2s.tables import curve_accuracy  # noqa: E402


def load_rows(path) -> list[dict]:
  """A sweep's rows; a missing, empty or damaged file is a ValueError naming
  it (and the line), never a bare parse error."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"sweep rows {str(path)!r} do not exist")
  rows = []
  for number, line in enumerate(path.read_text().split("\n"), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(
        f"sweep rows {str(path)!r}, line {number}: not a JSON row ({e.msg}); the sweep "
        "rewrites this file from its finished cells when it runs again"
      ) from None
    if not isinstance(row, dict):
      raise ValueError(
        f"sweep rows {str(path)!r}, line {number}: a {type(row).__name__}, expected a JSON object"
      )
    rows.append(row)
  if not rows:
    raise ValueError(f"sweep rows {str(path)!r}: no rows (no cell has finished yet)")
  return rows


def _log_x_if_positive(ax, xs):
  """Log x only when there is positive data to scale (an all-NaN chart stays linear)."""
  if any(x > 0 for x in xs):
    ax.set_xscale("log")


def _save(fig, out_dir: Path, name: str) -> list[Path]:
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = [out_dir / f"{name}.{ext}" for ext in ("png", "svg")]
  for p in paths:
    with atomic_write(p, "wb") as f:  # a full disk leaves no half chart
      fig.savefig(f, format=p.suffix[1:], dpi=130, bbox_inches="tight")
  plt.close(fig)
  return paths


def _interval(rows, split, metric):
  mean = np.array([r[f"{split}/{metric}/mean"] for r in rows])
  lo = np.array([r[f"{split}/{metric}/lo"] for r in rows])
  hi = np.array([r[f"{split}/{metric}/hi"] for r in rows])
  return mean, np.abs(np.stack([mean - lo, hi - mean]))


def _weak_sizes(rows):
  """Weak sizes from smallest to largest, with a color each."""
  weaks = sorted(
    {r["weak"] for r in rows}, key=lambda w: min(r["weak_params"] for r in rows if r["weak"] == w)
  )
  return weaks, plt.cm.viridis(np.linspace(0, 0.85, max(len(weaks), 1)))


def accuracy_vs_compute(rows, out_dir, loss, split="test"):
  """Test accuracy against strong-model compute: a line per weak model, the ceiling, weak points."""
  rows = [r for r in rows if method_of(r) == loss]
  fig, ax = plt.subplots(figsize=(6, 4.2))
  weaks, colors = _weak_sizes(rows)
  ceiling = {}
  for weak, color in zip(weaks, colors):
    sub = sorted((r for r in rows if r["weak"] == weak), key=lambda r: r["strong_compute"])
    x = [r["strong_compute"] for r in sub]
    mean, err = _interval(sub, split, "w2s")
    ax.errorbar(x, mean, yerr=err, color=color, marker="o", capsize=3, label=f"weak {weak}")
    w = sub[0]
    ax.scatter(
      [w["weak_compute"]],
      [w[f"{split}/weak/mean"]],
      color=color,
      marker="s",
      s=60,
      edgecolor="black",
      zorder=5,
    )
    for r in sub:
      ceiling[r["strong"]] = (r["strong_compute"], r[f"{split}/ceiling/mean"])
  if ceiling:
    cx, cy = zip(*sorted(ceiling.values()))
    ax.plot(cx, cy, color="black", marker="^", label="ceiling (strong on ground truth)")
  _log_x_if_positive(ax, [r["strong_compute"] for r in rows] + [r["weak_compute"] for r in rows])
  ax.set_xlabel("strong-model compute (parameters x pretraining tokens)")
  ax.set_ylabel(f"{split} accuracy")
  ax.set_title(f"W2S accuracy vs compute ({loss}); squares: weak models")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return _save(fig, Path(out_dir), f"accuracy_vs_compute_{loss}")


def pgr_vs_strong(rows, out_dir, loss, split="test"):
  rows = [r for r in rows if method_of(r) == loss]
  fig, ax = plt.subplots(figsize=(6, 4.2))
  weaks, colors = _weak_sizes(rows)
  for weak, color in zip(weaks, colors):
    sub = sorted((r for r in rows if r["weak"] == weak), key=lambda r: r["strong_params"])
    mean, err = _interval(sub, split, "pgr")
    ax.errorbar(
      [r["strong_params"] for r in sub],
      mean,
      yerr=err,
      color=color,
      marker="o",
      capsize=3,
      label=f"weak {weak}",
    )
  ax.axhline(0, color="gray", lw=0.8)
  ax.axhline(1, color="gray", lw=0.8, ls="--")
  _log_x_if_positive(ax, [r["strong_params"] for r in rows if np.isfinite(r[f"{split}/pgr/mean"])])
  ax.set_xlabel("strong-model parameters")
  ax.set_ylabel("PGR (95% interval)")
  ax.set_title(f"Performance gap recovered ({loss})")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return _save(fig, Path(out_dir), f"pgr_vs_strong_{loss}")


def pgr_heatmap(rows, out_dir, loss, split="test"):
  rows = [r for r in rows if method_of(r) == loss]
  order = lambda key, params: sorted(
    {r[key] for r in rows}, key=lambda s: min(r[params] for r in rows if r[key] == s)
  )
  weaks, strongs = order("weak", "weak_params"), order("strong", "strong_params")
  grid = np.full((len(weaks), len(strongs)), np.nan)
  for r in rows:
    grid[weaks.index(r["weak"]), strongs.index(r["strong"])] = r[f"{split}/pgr/mean"]
  fig, ax = plt.subplots(figsize=(1.2 * len(strongs) + 2.5, 1.0 * len(weaks) + 1.8))
  im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=-0.2, vmax=1.0)
  for i in range(len(weaks)):
    for j in range(len(strongs)):
      if not np.isnan(grid[i, j]):
        ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=9)
  ax.set_xticks(range(len(strongs)), strongs)
  ax.set_yticks(range(len(weaks)), weaks)
  ax.set_xlabel("strong")
  ax.set_ylabel("weak")
  ax.set_title(f"PGR ({loss})")
  fig.colorbar(im, ax=ax, shrink=0.8)
  return _save(fig, Path(out_dir), f"pgr_heatmap_{loss}")


def pgr_by_loss(rows, out_dir, split="test"):
  """PGR per loss side by side: grouped bars per (weak, strong) pair, with intervals."""
  losses = list(dict.fromkeys(method_of(r) for r in rows))
  pairs = list(dict.fromkeys((r["weak"], r["strong"]) for r in rows))
  index = {(r["weak"], r["strong"], method_of(r)): r for r in rows}
  width = 0.8 / len(losses)
  fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(pairs) * max(1, len(losses) / 2)), 4.2))
  medians = median_pgr(rows, split)
  for k, loss in enumerate(losses):
    sub = [index.get((w, s, loss)) for w, s in pairs]
    x = np.arange(len(pairs)) + (k - (len(losses) - 1) / 2) * width
    present = [(xi, r) for xi, r in zip(x, sub) if r is not None]
    if not present:
      continue
    xs, rs = zip(*present)
    mean, err = _interval(rs, split, "pgr")
    ax.bar(xs, mean, width, yerr=err, capsize=2, label=f"{loss} (median {medians[loss]:.2f})")
  ax.axhline(0, color="gray", lw=0.8)
  ax.set_xticks(range(len(pairs)), [f"{w}\n→{s}" for w, s in pairs], fontsize=8)
  ax.set_ylabel("PGR (95% interval)")
  ax.set_title("PGR per loss")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3, axis="y")
  return _save(fig, Path(out_dir), "pgr_by_loss")


def pgr_vs_keep_frac(rows, out_dir, split="test"):
  """No filter vs each criterion: PGR against the fraction of weak labels kept."""
  base = [r for r in rows if r.get("filter", "none") == "none"]
  fig, ax = plt.subplots(figsize=(6, 4.2))
  criteria = [c for c in dict.fromkeys(r["criterion"] for r in rows) if c != "none"]
  colors = plt.cm.tab10(np.arange(len(criteria)))
  for criterion, color in zip(criteria, colors):
    sub = sorted(
      [r for r in rows if r["criterion"] == criterion] + base, key=lambda r: r["keep_frac"]
    )
    mean, err = _interval(sub, split, "pgr")
    ax.errorbar(
      [r["keep_frac"] for r in sub],
      mean,
      yerr=err,
      color=color,
      marker="o",
      capsize=3,
      label=criterion,
      alpha=0.85,
    )
  if base:
    ax.axhline(base[0][f"{split}/pgr/mean"], color="black", ls="--", lw=1, label="no filter")
  ax.set_xlabel("fraction of weak-labelled examples kept")
  ax.set_ylabel("PGR (95% interval)")
  ax.set_title("Filtering the weak labels")
  ax.invert_xaxis()
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return _save(fig, Path(out_dir), "pgr_vs_keep_frac")


def pgr_vs_kd_weight(rows, out_dir, split="test"):
  """The combined objective: PGR against kd_weight, a line per ground-truth set size."""
  rows = [r for r in rows if r.get("kd_weight") is not None]
  fig, ax = plt.subplots(figsize=(6, 4.2))
  sizes = sorted({r["gt_examples"] for r in rows})
  colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(sizes), 1)))
  for n, color in zip(sizes, colors):
    sub = sorted((r for r in rows if r["gt_examples"] == n), key=lambda r: r["kd_weight"])
    mean, err = _interval(sub, split, "pgr")
    ax.errorbar(
      [r["kd_weight"] for r in sub],
      mean,
      yerr=err,
      color=color,
      marker="o",
      capsize=3,
      label=f"{n} ground-truth examples",
    )
  ax.set_xlabel("kd_weight (1 = weak supervision only, 0 = ground truth only)")
  ax.set_ylabel("PGR (95% interval)")
  ax.set_title("Combined objective")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return _save(fig, Path(out_dir), "pgr_vs_kd_weight")


def gain_vs_misfit(rows, out_dir, split="test"):
  """Each cell's gain over its weak model against the student's misfit to the
  weak labels (Charikar et al. 2024): a point per cell, a color per loss."""
  rows = [r for r in rows if r.get("misfit") is not None]
  fig, ax = plt.subplots(figsize=(6, 4.2))
  losses = list(dict.fromkeys(method_of(r) for r in rows))
  for loss, color in zip(losses, plt.cm.tab10(np.arange(len(losses)))):
    sub = [r for r in rows if method_of(r) == loss]
    gain = [r[f"{split}/w2s/mean"] - r[f"{split}/weak/mean"] for r in sub]
    ax.scatter([r["misfit"] for r in sub], gain, color=color, label=loss)
  corr = misfit_correlation(rows, split)
  ax.axhline(0, color="gray", lw=0.8)
  ax.set_xlabel("misfit: KL(weak labels || W2S student) on train_w2s")
  ax.set_ylabel(f"gain: Pweak->strong - Pweak ({split})")
  ax.set_title(
    f"Gain vs misfit: r = {corr['r']:.2f} [{corr['lo']:.2f}, {corr['hi']:.2f}], {corr['n']} cells"
  )
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return _save(fig, Path(out_dir), "gain_vs_misfit")


def leaderboard_chart(entries, out_dir) -> list[Path]:
  """The leaderboard (sweep_tables.leaderboard_entries): one panel per column
  (a setting's pair), each method's PGR with its interval, naive KD's
  interval shaded."""
  columns = list(dict.fromkeys(e["column"] for e in entries))
  methods = list(dict.fromkeys(e["method"] for e in entries))
  fig, axes = plt.subplots(
    1, len(columns), figsize=(3.2 * len(columns) + 2.5, 0.32 * len(methods) + 1.6), sharey=True
  )
  axes = np.atleast_1d(axes)
  colour = {"above": "tab:green", "below": "tab:red"}
  for ax, column in zip(axes, columns):
    by = {e["method"]: e for e in entries if e["column"] == column}
    base = by.get(BASELINE)
    if base is not None and not np.isnan(base["lo"]):
      ax.axvspan(base["lo"], base["hi"], color="gray", alpha=0.2, lw=0)
    for y, method in enumerate(methods):
      e = by.get(method)
      if e is None or np.isnan(e["mean"]):
        continue
      lo, hi = (e["lo"], e["hi"]) if not np.isnan(e["lo"]) else (e["mean"], e["mean"])
      ax.errorbar(
        e["mean"],
        y,
        xerr=[[e["mean"] - lo], [hi - e["mean"]]],
        fmt="o",
        ms=4,
        capsize=2,
        color=colour.get(e["vs_baseline"], "tab:blue"),
      )
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_title(column, fontsize=9)
    ax.set_xlabel("PGR (95% interval)")
    ax.grid(alpha=0.3, axis="x")
  axes[0].set_yticks(range(len(methods)), methods, fontsize=8)
  axes[0].invert_yaxis()
  fig.suptitle(f"W2S methods: PGR against naive KD ({BASELINE}, shaded)", fontsize=10)
  return _save(fig, Path(out_dir), "leaderboard")


def best_of_n_chart(results: dict, out_dir) -> list[Path]:
  """Best-of-n (w2s/best_of_n.py): the picked response's accuracy against n
  for each picker, with its interval."""
  ns = results["ns"]
  fig, ax = plt.subplots(figsize=(6, 4))
  styles = {"oracle": ("k", "--"), "random": ("gray", ":")}
  for name, per_n in results["curves"].items():
    mean = np.array([per_n[str(n)]["mean"] for n in ns])
    lo = np.array([per_n[str(n)]["lo"] for n in ns])
    hi = np.array([per_n[str(n)]["hi"] for n in ns])
    colour, style = styles.get(name, (None, "-"))
    (line,) = ax.plot(ns, mean, style, marker="o", ms=4, color=colour, label=name)
    ax.fill_between(ns, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
  ax.set_xscale("log", base=2)
  ax.set_xticks(ns, [str(n) for n in ns])
  ax.set_xlabel("n (candidates from the weak policy: greedy, then samples)")
  ax.set_ylabel(f"accuracy of the picked response ({results['split']})")
  ax.set_title("Best-of-n: what each reward model picks", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, Path(out_dir), "best_of_n")


def all_charts(rows, out_dir, split="test") -> list[Path]:
  paths = []
  if sum(r.get("misfit") is not None for r in rows) >= 3:
    paths += gain_vs_misfit(rows, out_dir, split)
  if any(r.get("filter", "none") != "none" for r in rows):
    paths += pgr_vs_keep_frac(rows, out_dir, split)
  if len({r.get("kd_weight") for r in rows} - {None}) > 1:
    paths += pgr_vs_kd_weight(rows, out_dir, split)
  if len({(r["weak"], r["strong"]) for r in rows}) > 1:  # charts over scale need 2+ pairs
    for loss in dict.fromkeys(method_of(r) for r in rows):
      paths += accuracy_vs_compute(rows, out_dir, loss, split)
      paths += pgr_vs_strong(rows, out_dir, loss, split)
      paths += pgr_heatmap(rows, out_dir, loss, split)
  paths += pgr_by_loss(rows, out_dir, split)
  return paths


def training_curves(records: list[dict], out_dir) -> list[Path]:
  """Per (weak, strong) pair of a run's cell records: the headline accuracy
  against fine-tuning step, each W2S cell beside the ceiling, the weak
  model's as a dashed line; the mean over runs (pretraining draws x seeds),
  shaded over the runs' range. Cells without curves draw nothing."""
  pairs = {}
  for record in records:
    if record.get("curves", {}).get("w2s"):
      pairs.setdefault((record["cell"]["weak"], record["cell"]["strong"]), []).append(record)
  paths = []
  for (weak, strong), cells in pairs.items():
    fig, ax = plt.subplots(figsize=(6, 4.2))
    first = cells[0]["curves"]
    name = curve_accuracy(first["w2s"], next(iter(cells[0]["summary"])).partition(":")[0])
    series = [(f"ceiling {strong}", first["ceiling"], "black")]
    colors = plt.cm.tab10(np.arange(len(cells)))
    series += [(f"W2S {c['label']}", c["curves"]["w2s"], col) for c, col in zip(cells, colors)]
    for label, curve, color in series:
      values = np.asarray(curve[name])
      ax.plot(curve["step"], values.mean(1), color=color, marker="o", ms=3, label=label)
      ax.fill_between(curve["step"], values.min(1), values.max(1), color=color, alpha=0.12)
    if "weak" in first:
      weak_values = np.asarray(first["weak"][name])
      ax.axhline(weak_values[-1].mean(), color="gray", ls="--", label=f"weak {weak} (final)")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(name.replace("/", " "))
    runs = np.asarray(first["ceiling"][name]).shape[1]
    ax.set_title(f"{weak} -> {strong}: mean of {runs} runs, band: their range", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths += _save(fig, Path(out_dir), f"{weak}_{strong}")
  return paths
