"""Sweep tables and charts, from a small constructed results file."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from w2s_jax.w2s import report, sweep_tables

ROOT = Path(__file__).resolve().parents[1]


def _row(weak, strong, loss, wp, sp, weak_acc, w2s_acc, ceil_acc):
  row = {
    "cell": f"{weak}_{strong}_{loss}",
    "weak": weak,
    "strong": strong,
    "loss": loss,
    "weak_params": wp,
    "strong_params": sp,
    "weak_compute": wp * 1e5,
    "strong_compute": sp * 1e5,
    "seeds": [0, 1, 2],
  }
  pgr = (w2s_acc - weak_acc) / (ceil_acc - weak_acc)
  for split in ("test", "heldout"):
    for metric, v in (("weak", weak_acc), ("w2s", w2s_acc), ("ceiling", ceil_acc), ("pgr", pgr)):
      row.update(
        {
          f"{split}/{metric}/mean": v,
          f"{split}/{metric}/lo": v - 0.05,
          f"{split}/{metric}/hi": v + 0.05,
        }
      )
  return row


@pytest.fixture
def rows_file(tmp_path):
  sizes = {"a": 1e4, "b": 3e4, "c": 1e5}
  acc = {"a": 0.6, "b": 0.8, "c": 0.95}
  rows = []
  for i, w in enumerate(sizes):
    for s in list(sizes)[i + 1 :]:
      for loss, bonus in (("xent", 0.5), ("logconf", 0.7)):
        w2s = acc[w] + bonus * (acc[s] - acc[w])
        rows.append(_row(w, s, loss, sizes[w], sizes[s], acc[w], w2s, acc[s]))
  path = tmp_path / "sweep.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_summary_table_has_every_pair_and_median_pgr(rows_file):
  rows = report.load_rows(rows_file)
  table = sweep_tables.sweep_table(rows)
  assert table.count("\n") >= len(rows) + 2
  assert sweep_tables.median_pgr(rows) == pytest.approx({"xent": 0.5, "logconf": 0.7})
  assert "0.50 [0.45, 0.55]" in table
  # Each row names its pair and loss in the label columns.
  first = table.splitlines()[2].split()
  assert first[:3] == [rows[0]["weak"], rows[0]["strong"], rows[0]["loss"]]
  # Rows written before memory was measured say so; rows with it, their largest.
  assert "memory: not recorded" in table
  rows[0].update(peak_rss_bytes=1_230_000_000, steady_rss_bytes=900_000_000)
  rows[1].update(peak_rss_bytes=1_100_000_000, steady_rss_bytes=1_000_000_000)
  assert (
    "memory (largest over 2 cells, each where it was computed): peak RSS 1.23 GB, "
    "steady RSS 1.00 GB" in sweep_tables.sweep_table(rows)
  )


def test_every_chart_is_rendered_as_png_and_svg(rows_file, tmp_path):
  paths = report.all_charts(report.load_rows(rows_file), tmp_path / "charts")
  names = {p.name for p in paths}
  for loss in ("xent", "logconf"):
    for chart in ("accuracy_vs_compute", "pgr_vs_strong", "pgr_heatmap"):
      assert {f"{chart}_{loss}.png", f"{chart}_{loss}.svg"} <= names
  assert {"pgr_by_loss.png", "pgr_by_loss.svg"} <= names
  for p in paths:
    assert p.exists() and p.stat().st_size > 1000
    if p.suffix == ".png":
      assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_charts_survive_undefined_pgr(rows_file, tmp_path):
  rows = report.load_rows(rows_file)
  for r in rows:
    for k in [k for k in r if "/pgr/" in k]:
      r[k] = float("nan")
  assert all(p.stat().st_size > 0 for p in report.all_charts(rows, tmp_path))
  assert np.isnan(sweep_tables.median_pgr(rows)["xent"])


def test_missing_rows_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="sweep rows"):
    report.load_rows(tmp_path / "nope.jsonl")


def test_filter_and_combined_charts(tmp_path):
  rows = []
  base = _row("a", "b", "xent", 1e4, 1e5, 0.6, 0.8, 1.0)
  rows.append(
    {
      **base,
      "filter": "none",
      "criterion": "none",
      "keep_frac": 1.0,
      "kd_weight": None,
      "gt_examples": None,
      "kept_label_accuracy": None,
      "weak_label_accuracy": 0.6,
    }
  )
  for c in ("confidence", "likelihood"):
    for keep in (0.75, 0.5):
      r = _row("a", "b", "xent", 1e4, 1e5, 0.6, 0.7 + keep / 10, 1.0)
      rows.append(
        {
          **r,
          "filter": f"{c}@{keep}",
          "criterion": c,
          "keep_frac": keep,
          "kd_weight": None,
          "gt_examples": None,
          "kept_label_accuracy": 0.7,
          "weak_label_accuracy": 0.6,
        }
      )
  for n in (10, 30):
    for w in (0.0, 0.5, 1.0):
      r = _row("a", "b", f"combined,kd_weight={w},gt_examples={n}", 1e4, 1e5, 0.6, 0.9 - w / 5, 1.0)
      rows.append(
        {
          **r,
          "filter": "none",
          "criterion": "none",
          "keep_frac": 1.0,
          "kd_weight": w,
          "gt_examples": n,
          "kept_label_accuracy": None,
          "weak_label_accuracy": 0.6,
        }
      )
  names = {p.name for p in report.all_charts(rows, tmp_path)}
  assert {
    "pgr_vs_keep_frac.png",
    "pgr_vs_keep_frac.svg",
    "pgr_vs_kd_weight.png",
    "pgr_vs_kd_weight.svg",
  } <= names
  assert all((tmp_path / n).stat().st_size > 1000 for n in names)
  assert "label acc" in sweep_tables.sweep_table(rows)
  # One (weak, strong) pair: no charts over scale, one per loss would say nothing.
  assert not any(n.startswith(("pgr_heatmap", "pgr_vs_strong", "accuracy_vs")) for n in names)


def test_summary_table_pgr_cases_with_and_without_undefined_frac(rows_file):
  rows = report.load_rows(rows_file)[:4]
  fine, shaky, chance, old = rows
  fine["test/pgr/undefined_frac"] = 0.0
  shaky.update({"test/pgr/mean": 0.31, "test/pgr/undefined_frac": 0.12})
  chance.update(
    {
      "test/pgr/mean": float("nan"),
      "test/pgr/lo": -17.39,
      "test/pgr/hi": 3.48,
      "test/pgr/undefined_frac": 0.41,
    }
  )
  # a row written before the sweep recorded undefined_frac
  old.update({"test/pgr/mean": float("nan"), "test/pgr/lo": -17.39, "test/pgr/hi": 3.48})
  assert "test/pgr/undefined_frac" not in old
  lines = sweep_tables.sweep_table(rows).split("\n\n")[0].splitlines()[2:]
  assert lines[0].rstrip().endswith("0.50 [0.45, 0.55]")
  assert lines[1].rstrip().endswith("0.31 (undefined in 12% of resamples)")
  assert lines[2].rstrip().endswith("undefined (ceiling ≤ weak; 41% of resamples)")
  assert lines[3].rstrip().endswith("undefined (ceiling ≤ weak)")
  assert "nan" not in sweep_tables.sweep_table(rows) and "-17.39" not in sweep_tables.sweep_table(
    rows
  )
  # The rows keep the raw numbers, and the other metrics print as before.
  assert chance["test/pgr/lo"] == -17.39
  assert "0.600 [0.550, 0.650]" in lines[0]


def test_median_pgr_line_for_a_loss_undefined_everywhere(rows_file):
  rows = report.load_rows(rows_file)
  for r in rows:
    if r["loss"] == "xent":
      r["test/pgr/mean"] = float("nan")
  medians = sweep_tables.sweep_table(rows).split("\n\n")[1]
  assert any(
    l.split()[0] == "xent" and l.rstrip().endswith("undefined (ceiling ≤ weak)")
    for l in medians.splitlines()
  )
  assert any(
    l.split()[0] == "logconf" and l.rstrip().endswith("0.70") for l in medians.splitlines()
  )


def test_gain_vs_misfit_correlation_and_chart(rows_file, tmp_path):
  rows = report.load_rows(rows_file)
  misfits = [0.01 * (i + 1) for i in range(len(rows))]
  for r, m in zip(rows, misfits):
    r["misfit"] = m
  gains = [r["test/w2s/mean"] - r["test/weak/mean"] for r in rows]
  corr = sweep_tables.misfit_correlation(rows)
  assert corr["r"] == pytest.approx(np.corrcoef(misfits, gains)[0, 1])
  assert corr["n"] == len(rows) and corr["lo"] <= corr["r"] <= corr["hi"]
  assert f"vs misfit over {len(rows)} cells: Pearson r {corr['r']:.2f}" in sweep_tables.sweep_table(
    rows
  )
  paths = report.all_charts(rows, tmp_path / "charts")
  assert tmp_path / "charts" / "gain_vs_misfit.png" in paths
  # Without misfits (generation, older rows): no chart and no line, not an error.
  for r in rows:
    r.pop("misfit")
  assert "misfit" not in sweep_tables.sweep_table(rows)
  assert not any("misfit" in p.name for p in report.all_charts(rows, tmp_path / "c2"))


def test_correlation_interval_limits():
  from w2s_jax.w2s import metrics

  x = np.arange(10.0)
  perfect = metrics.correlation_interval(x=x, y=2 * x + 1)
  assert perfect["r"] == pytest.approx(1.0) and perfect["lo"] == pytest.approx(1.0)
  assert np.isnan(metrics.correlation_interval(x=x[:2], y=x[:2])["r"])
  with pytest.raises(ValueError, match="expected equal 1-D shapes"):
    metrics.correlation_interval(x=x, y=x[:5])


def _method_row(weak, strong, method, pgr, half=0.05):
  row = _row(weak, strong, method.split(",")[0], 1e4, 1e5, 0.6, 0.6 + pgr * 0.3, 0.9)
  row["method"] = method
  for split in ("test", "heldout"):
    row[f"{split}/pgr/lo"], row[f"{split}/pgr/hi"] = pgr - half, pgr + half
  return row


def test_leaderboard_ranks_methods_and_marks_intervals_against_naive_kd(tmp_path, capsys):
  """Issue 33: one table over settings; a method whose interval lies above
  naive KD's is marked ▲, below ▼, overlapping unmarked; ranks per column,
  the mean rank orders the rows; undefined PGR ranks last, unmarked."""
  settings = {
    "id": [
      _method_row("a", "b", "xent", 0.5),
      _method_row("a", "b", "logconf", 0.7),  # above
      _method_row("a", "b", "xent, via m", 0.52),  # overlaps
      _method_row("a", "c", "xent", 0.5),
      _method_row("a", "c", "logconf", 0.3),  # below
      _method_row("a", "c", "xent, via m", float("nan")),  # undefined
    ],
    "shifted": [_method_row("a", "b", "xent", 0.2), _method_row("a", "b", "logconf", 0.4)],
  }
  entries = sweep_tables.leaderboard_entries(settings)
  got = {(e["method"], e["column"]): (e["rank"], e["vs_baseline"]) for e in entries}
  assert got[("logconf", "id a>b")] == (1, "above")
  assert got[("xent, via m", "id a>b")] == (2, "overlaps")
  assert got[("xent", "id a>b")] == (3, None)
  assert got[("logconf", "id a>c")] == (2, "below")
  assert got[("xent, via m", "id a>c")] == (3, None)
  assert got[("logconf", "shifted a>b")] == (1, "above")
  text = sweep_tables.leaderboard(settings)
  lines = text.splitlines()
  assert lines[1].split("  ")[0] == "method" and "id a>b" in lines[1] and "shifted a>b" in lines[1]
  body = [line for line in lines[3:]]
  assert body[0].startswith("logconf") and "0.70 [0.65, 0.75] ▲" in body[0]
  assert "0.30 [0.25, 0.35] ▼" in body[0] and body[0].rstrip().endswith("2 / 1")
  assert "1.3" in body[0]  # mean rank (1 + 2 + 1) / 3
  assert any(line.startswith("xent, via m") and "undefined" in line for line in body)
  paths = report.leaderboard_chart(entries, tmp_path / "charts")
  assert {p.suffix for p in paths} == {".png", ".svg"} and all(p.stat().st_size for p in paths)
  # The tool: two sweep folders make the leaderboard.
  spec = importlib.util.spec_from_file_location("sweep_report", ROOT / "tools/sweep_report.py")
  sweep_report = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(sweep_report)
  for name, rows in settings.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  sweep_report.main([str(tmp_path / "id"), str(tmp_path / "shifted")])
  out = capsys.readouterr().out
  assert "▲/▼: the interval lies above/below xent's" in out and "wrote 2 chart files" in out
