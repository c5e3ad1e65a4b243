"""The cascade experiment's numbers, chart and table, all from the per-query table.

Per (task, weak, strong variant, split, seed) group of queries: every
router's deferral curve and the random and oracle ones; costs are relative to
the strong model alone (strong-only = 1; deferring every query costs weak +
strong). Per curve: the area vs random (mean accuracy edge over random
deferral across defer rates), the defer rate and cost to reach
target_fraction of the strong model's gain over the weak one (of="gain") and
of its accuracy (of="accuracy"), and the IBC lift over random deferral with
a bootstrap interval over queries. Seeds are summarised by their mean (NaN
values, e.g. a student no better than its weak model, left out and counted).
"""

import math

import numpy as np

from w2s_jax.cascade import routers
from w2s_jax.cascade.per_query import ROUTERS, STRONG
from w2s_jax.infra import memory

SUMMARY = ("area_vs_random", "defer_to_gain", "cost_to_gain", "cost_to_accuracy", "ibc_lift")


def group(table: dict, **where) -> np.ndarray:
  """Row indices matching every column == value."""
  keep = np.ones(len(table["seed"]), bool)
  for k, v in where.items():
    keep &= table[k] == v
  return np.flatnonzero(keep)


def router_args(table: dict, rows, router: str | None = None) -> dict:
  """deferral_curve's table; the agreement router pays for its samples."""
  weak_cost = table["weak_flops"][rows]
  if router == "sample_agreement":
    weak_cost = weak_cost + table["agreement_flops"][rows]
  args = dict(
    weak_correct=table["weak_correct"][rows],
    strong_correct=table["strong_correct"][rows],
    weak_cost=weak_cost,
    strong_cost=table["strong_flops"][rows],
  )
  return args if router is None else {"scores": table[router][rows], **args}


def _curve_stats(curve, strong_cost, fraction):
  by_defer = curve._replace(cost=curve.defer_rate)
  return {
    "defer_to_gain": routers.cost_to_reach_strong(by_defer, fraction=fraction),
    "cost_to_gain": routers.cost_to_reach_strong(curve, fraction=fraction) / strong_cost,
    "cost_to_accuracy": routers.cost_to_reach_strong(curve, fraction=fraction, of="accuracy")
    / strong_cost,
  }


def group_summary(table: dict, rows, names, *, fraction: float, resamples: int) -> dict:
  """One group's numbers (see the module docstring); costs relative to strong-only."""
  base = router_args(table, rows)
  strong = routers.strong_only(
    strong_correct=base["strong_correct"], strong_cost=base["strong_cost"]
  )
  weak = routers.weak_only(weak_correct=base["weak_correct"], weak_cost=base["weak_cost"])
  random = routers.random_curve(**base)
  out = {
    "weak_accuracy": weak.accuracy,
    "strong_accuracy": strong.accuracy,
    "weak_cost": weak.cost / strong.cost,
    "strong_flops": strong.cost,
    "random": _curve_stats(random, strong.cost, fraction),
    "oracle": {
      "area_vs_random": routers.area_vs_random(routers.oracle_curve(**base), random),
      **_curve_stats(routers.oracle_curve(**base), strong.cost, fraction),
    },
    "routers": {},
  }
  for r in names:
    args = router_args(table, rows, r)
    curve = routers.deferral_curve(**args)
    lift = routers.ibc_lift_interval(**args, num_resamples=resamples, seed=0)
    out["routers"][r] = {
      "area_vs_random": routers.area_vs_random(curve, random),
      **_curve_stats(curve, strong.cost, fraction),
      "ibc_lift": lift["mean"],
      "ibc_lift_lo": lift["lo"],
      "ibc_lift_hi": lift["hi"],
      "weak_cost": curve.cost[0] / strong.cost,
    }
  return out


def _mean(values):
  v = np.asarray(values, np.float64)
  ok = ~np.isnan(v)
  return {"mean": float(np.mean(v[ok])) if ok.any() else math.nan, "defined": int(ok.sum())}


def _aggregate(per_seed: list[dict]) -> dict:
  """Nested dicts of numbers -> the same nesting with the mean over seeds."""
  first = per_seed[0]
  if isinstance(first, dict):
    return {k: _aggregate([s[k] for s in per_seed]) for k in first}
  return _mean(per_seed)


def summarize(table: dict, cfg) -> dict:
  """{task: {weak: {strong: {split: {"per_seed": [...], "mean": {...}, "pooled": {...}}}}}}.

  "pooled" treats every seed's queries of the group as one population (each
  answered by its own seed's models), so the IBC lift's bootstrap interval
  covers all of them at once."""
  out = {}
  for kind in dict.fromkeys(table["task"]):
    for w in cfg.weak_sizes:
      for variant in STRONG:
        for split in dict.fromkeys(table["split"][group(table, task=kind)]):
          per_seed = [
            group_summary(
              table,
              group(table, task=kind, weak=w, strong=variant, split=split, seed=s),
              ROUTERS[kind],
              fraction=cfg.target_fraction,
              resamples=cfg.ibc_resamples,
            )
            for s in sorted(set(table["seed"].tolist()))
          ]
          pooled = group_summary(
            table,
            group(table, task=kind, weak=w, strong=variant, split=split),
            ROUTERS[kind],
            fraction=cfg.target_fraction,
            resamples=cfg.ibc_resamples,
          )
          out.setdefault(kind, {}).setdefault(w, {}).setdefault(variant, {})[split] = {
            "per_seed": per_seed,
            "mean": _aggregate(per_seed),
            "pooled": pooled,
          }
  return out


def mean_curves(table: dict, **where) -> dict:
  """Each router's, random's and oracle's curve averaged over seeds (the
  accuracy and relative cost at each defer rate), and the weak-only and
  strong-only points: {name: (cost, accuracy)}."""
  seeds = sorted(set(table["seed"][group(table, **where)].tolist()))
  kind = where["task"]
  acc, cost = {}, {}
  for s in seeds:
    rows = group(table, **where, seed=s)
    base = router_args(table, rows)
    strong = float(np.mean(base["strong_cost"]))
    curves = {r: routers.deferral_curve(**router_args(table, rows, r)) for r in ROUTERS[kind]}
    curves.update(random=routers.random_curve(**base), oracle=routers.oracle_curve(**base))
    for name, c in curves.items():
      acc.setdefault(name, []).append(c.accuracy)
      cost.setdefault(name, []).append(c.cost / strong)
    for name, (a, c) in {
      "weak only": (base["weak_correct"].mean(), base["weak_cost"].mean()),
      "strong only": (base["strong_correct"].mean(), strong),
    }.items():
      acc.setdefault(name, []).append(a)
      cost.setdefault(name, []).append(c / strong)
  return {name: (np.mean(cost[name], 0), np.mean(acc[name], 0)) for name in acc}


def plot(table: dict, path, *, split: str = "test") -> None:
  """accuracy vs cost per (task, weak, strong variant): a row per task."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from w2s_jax.infra.files import atomic_write

  kinds, weaks = list(dict.fromkeys(table["task"])), list(dict.fromkeys(table["weak"]))
  cols = [(w, v) for w in weaks for v in STRONG]
  fig, axes = plt.subplots(
    len(kinds), len(cols), figsize=(4.2 * len(cols), 3.6 * len(kinds)), squeeze=False
  )
  styles = {"random": dict(color="gray", ls="--"), "oracle": dict(color="black", ls=":")}
  for i, kind in enumerate(kinds):
    for j, (w, variant) in enumerate(cols):
      ax = axes[i][j]
      for name, (c, a) in mean_curves(
        table, task=kind, weak=w, strong=variant, split=split
      ).items():
        if np.ndim(c) == 0:
          ax.plot(
            c,
            a,
            "o" if name == "weak only" else "s",
            ms=7,
            label=name,
            color="tab:red" if name == "weak only" else "tab:green",
          )
        else:
          ax.plot(c, a, lw=1.4, label=name, **styles.get(name, {}))
      strong = "ceiling" if variant == "ceiling" else "W2S student"
      ax.set_title(f"{kind}: weak {w}, strong {strong}", fontsize=9)
      ax.set_xlabel("cost per query / strong-only")
      ax.set_ylabel("accuracy" if kind == "classification" else "field accuracy")
      ax.grid(alpha=0.3)
    axes[i][0].legend(fontsize=7, loc="lower right")
  note = (
    "; with 2 classes the classification routers rank queries alike"
    if "classification" in kinds
    else ""
  )
  fig.suptitle(f"Cascade accuracy vs cost ({split} split, mean over seeds){note}")
  fig.tight_layout()
  with atomic_write(path, "wb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def _cell(stat, digits=3):
  return "n/a" if math.isnan(stat["mean"]) else f"{stat['mean']:.{digits}f}"


def format_results(results: dict, *, split: str = "test") -> str:
  """The seed-mean table: per (task, weak, strong variant), one row per router."""
  frac = results["config"]["target_fraction"]
  lines = []
  for kind, per_weak in results["summary"].items():
    for w, per_variant in per_weak.items():
      for variant, per_split in per_variant.items():
        m = per_split[split]["mean"]
        lines.append(
          f"\n{kind} {split}, weak {w} -> strong {variant}: accuracy weak "
          f"{_cell(m['weak_accuracy'])}, strong {_cell(m['strong_accuracy'])}; "
          f"weak cost {_cell(m['weak_cost'])} of strong-only"
        )
        lines.append(
          f"  {'router':20s} {'area vs rnd':>11s} {'defer@gain':>10s} "
          f"{'cost@gain':>9s} {'cost@acc':>8s} {'IBC lift [pooled 95%] seeds lo>0':>34s}"
        )
        rows = [("oracle", m["oracle"]), ("random", m["random"]), *m["routers"].items()]
        for name, r in rows:
          lift = ""
          if "ibc_lift" in r:
            seeds = per_split[split]["per_seed"]
            above = sum(s["routers"][name]["ibc_lift_lo"] > 0 for s in seeds)
            pool = per_split[split]["pooled"]["routers"][name]
            lift = (
              f"{_cell(r['ibc_lift'], 2)} [{pool['ibc_lift_lo']:.2f}, "
              f"{pool['ibc_lift_hi']:.2f}] {above}/{len(seeds)}"
            )
          area = _cell(r["area_vs_random"]) if "area_vs_random" in r else "0"
          lines.append(
            f"  {name:20s} {area:>11s} {_cell(r['defer_to_gain'], 2):>10s} "
            f"{_cell(r['cost_to_gain'], 2):>9s} {_cell(r['cost_to_accuracy'], 2):>8s} "
            f"{lift:>34s}"
          )
  lines.append(
    f"\n@gain: reaching weak + {frac:g} x (strong - weak) accuracy; @acc: {frac:g} x "
    "strong accuracy. IBC lift: mean over seeds [bootstrap interval over all seeds' "
    "queries pooled], and how many seeds' own intervals lie above 0. defer = share of queries deferred; cost per query relative "
    "to strong-only (deferring all = weak + 1). n/a: strong no better than weak."
  )
  for w, c in results.get("calibration", {}).items():
    lines.append(
      f"calibration {w}: T {np.mean(c['temperature']):.2f}, ECE {split} "
      f"{np.mean(c[f'ece_before:{split}']):.3f} -> "
      f"{np.mean(c[f'ece_after:{split}']):.3f} (mean over seeds)"
    )
  lines.append(f"total {results['seconds']:.0f}s; {memory.summary_line(results.get('memory'))}")
  return "\n".join(lines)
