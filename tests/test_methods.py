"""The W2S methods beyond a loss (issue 33): bootstrapping through
intermediate models, ensembles of weak supervisors, probes that relabel or
drop contaminated weak labels; on the tiny testbed sweep and by hand."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from w2s_jax.curation import ensembles, probes
from w2s_jax.curation.selection import FilterConfig
from w2s_jax.infra import configs
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.w2s import engine, stages, supervisors
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s.grid import Cell, SweepConfig, bootstrap_chain, grid

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/sweep.py") + ":tiny,seeds=2"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """One pretrained-model cache for the module's runs: each size pretrains once."""
  return tmp_path_factory.mktemp("pretrained")


def test_bootstrap_chains_come_from_the_sweeps_sizes():
  sizes = ("mini", "pico", "nano", "micro")
  assert bootstrap_chain(sizes, "pico", "mini") == ("nano", "micro")
  assert bootstrap_chain(sizes, "pico", "nano") == ()
  cells = grid(sizes, [Xent()], bootstrap=True)
  chained = {(c.weak, c.strong): c.via for c in cells if c.via}
  assert chained == {
    ("pico", "micro"): ("nano",),
    ("pico", "mini"): ("nano", "micro"),
    ("nano", "mini"): ("micro",),
  }
  assert len(cells) == 6 + 3
  # One step, weak straight to strong, is naive W2S: the very same cell.
  assert Cell("pico", "mini", Xent(), via=()).id == Cell("pico", "mini", Xent()).id
  assert Cell("pico", "mini", Xent(), via=("micro",)).label == "xent, via micro"
  swept = configs.load_sweep(str(ROOT / "configs/sweep.py") + ":tiny,bootstrap")
  assert {c.via for c in swept.cells} == {(), ("micro",)}


def test_a_chain_is_checked_before_compute():
  base = configs.load_sweep(TINY).base
  for via, needle in (
    (("pico",), "expected sizes larger than the weak model"),
    (("mini", "micro"), "none smaller than the one before"),
    (("bogus",), "Cell.via in"),
  ):
    with pytest.raises(ValueError, match=needle):
      SweepConfig(base, (Cell("pico", "mini", Xent(), via=via),))
  generative = configs.load_sweep(str(ROOT / "configs/generative_sweep.py") + ":tiny").base
  with pytest.raises(ValueError, match="expected a classification task"):
    SweepConfig(generative, (Cell("pico", "micro", generative.losses[0], via=("micro",)),))


def test_bootstrapping_relabels_for_the_next_model_and_keeps_pweak(tmp_path, pretrained):
  """pico -> micro -> mini against naive pico -> mini, and the strong-to-strong
  iteration pico -> micro -> fresh micro. The chain's first hop is the same
  training in both chained cells (micro on pico's labels, the same seeds), so
  their labels' accuracy on train_w2s is equal; Pweak and the ceiling are the
  weak and strong models' own, as in naive W2S."""
  base = configs.load_sweep(TINY).base
  naive = Cell("pico", "mini", Xent())
  chained = Cell("pico", "mini", Xent(), via=("micro",))
  iterated = Cell("pico", "micro", Xent(), via=("micro",))
  out = engine.run_sweep(
    SweepConfig(base, (naive, chained, iterated)),
    out_dir=tmp_path / "s",
    cache_dir=pretrained,
    progress=False,
  )
  rec = {r["id"]: r for r in out.records}
  n, c, i = (rec[x.id] for x in (naive, chained, iterated))
  key = next(iter(n["per_seed"]))
  for field in ("weak", "ceiling"):
    np.testing.assert_array_equal(n["per_seed"][key][field], c["per_seed"][key][field])
  np.testing.assert_array_equal(n["per_seed"][key]["weak"], i["per_seed"][key]["weak"])
  # The labels the strong models learn: pico's for naive W2S, micro's after a hop.
  np.testing.assert_array_equal(c["weak_label_accuracy"], i["weak_label_accuracy"])
  assert not np.array_equal(n["weak_label_accuracy"], c["weak_label_accuracy"])
  # A different teacher, a different student (on some split: 20 examples each).
  assert any(n["per_seed"][k]["w2s"] != c["per_seed"][k]["w2s"] for k in n["per_seed"])
  assert c["label"] == "xent, via micro"


def test_an_ensemble_of_copies_of_one_model_is_that_model_and_pweak_is_its_own(
  tmp_path, pretrained
):
  """Issue 33: k copies of pico supervise exactly as pico does (the same
  record, number for number); pico + micro's Pweak is the ensemble's own
  accuracy, checked against the two weak stages' stored probabilities."""
  base = configs.load_sweep(TINY).base
  alone = Cell("pico", "mini", Xent())
  copies = Cell("pico", "mini", Xent(), ensemble=("pico", "pico"))
  mixed = Cell("pico", "mini", Xent(), ensemble=("micro",))
  assert mixed.label == "xent, ensemble pico+micro" and mixed.sizes == ("pico", "micro", "mini")
  out = engine.run_sweep(
    SweepConfig(base, (alone, copies, mixed)),
    out_dir=tmp_path / "s",
    cache_dir=pretrained,
    progress=False,
  )
  rec = {r["id"]: r for r in out.records}
  a, k, m = (rec[x.id] for x in (alone, copies, mixed))
  assert a["per_seed"] == k["per_seed"] and a["summary"] == k["summary"]
  assert a["weak_label_accuracy"] == k["weak_label_accuracy"] and a["misfit"] == k["misfit"]
  # The mixed ensemble's Pweak, by hand from the two stored weak stages: the
  # truth from pico's answers and whether each was right (2 classes).
  shared = tmp_path / "s" / "shared" / "pretrain0"
  pico, micro = (np.load(shared / f"weak-{size}.npz") for size in ("pico", "micro"))
  for split, per_seed in m["per_seed"].items():
    answer, right = pico[f"answers:{split}"][..., 0], pico[f"eval:{split}"] == 1
    truth = np.where(right, answer, 1 - answer)
    assert np.all(truth == truth[:1])  # one truth, whichever seed derived it
    mean = (pico[f"probs:{split}"] + micro[f"probs:{split}"]) / 2
    np.testing.assert_allclose(per_seed["weak"], (mean.argmax(-1) == truth).mean(1), atol=1e-12)
    assert per_seed["weak"] != a["per_seed"][split]["weak"] or split == "heldout"


def test_an_ensemble_is_checked_before_compute():
  base = configs.load_sweep(TINY).base
  with pytest.raises(ValueError, match="expected weak models smaller than strong='micro'"):
    SweepConfig(base, (Cell("pico", "micro", Xent(), ensemble=("mini",)),))
  with pytest.raises(ValueError, match="Cell.ensemble in"):
    SweepConfig(base, (Cell("pico", "mini", Xent(), ensemble=("bogus",)),))
  generative = configs.load_sweep(str(ROOT / "configs/generative_sweep.py") + ":tiny").base
  with pytest.raises(ValueError, match="an ensemble averages class probabilities"):
    SweepConfig(generative, (Cell("pico", "micro", generative.losses[0], ensemble=("pico",)),))


# ------------------------------------------------- weighted ensembles


def test_stacking_weights_by_hand():
  """Two rows, member A gives the truth 0.8 then 0.2, member B 0.4 twice:
  d/dw [log(0.4 + 0.4w) + log(0.4 - 0.2w)] = 0 at w = 1/2, by hand."""
  a = np.array([[0.8, 0.2], [0.8, 0.2]])  # truth: class 0, then class 1
  b = np.array([[0.4, 0.6], [0.6, 0.4]])
  w = ensembles.stacking_weights(probs=np.stack([a, b]), labels=np.array([0, 1]))
  np.testing.assert_allclose(w, [0.5, 0.5], atol=1e-6)
  # A member always right against one at chance takes all the weight; two
  # equal members keep the uniform mixture.
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 50)
  right = np.eye(3)[labels] * 0.9 + 0.1 / 3
  chance = np.full((50, 3), 1 / 3)
  w = ensembles.stacking_weights(probs=np.stack([chance, right]), labels=labels)
  assert w[1] > 0.999
  np.testing.assert_allclose(
    ensembles.stacking_weights(probs=np.stack([right, right]), labels=labels), [0.5, 0.5]
  )


def test_a_samme_round_by_hand():
  """Four rows, uniform, one wrong, two classes: e = 1/4, alpha = log 3, and
  the wrong row's weight triples: (1, 1, 1, 3) / 6. After the round the
  member's weighted error is 1 - 1/k (AdaBoost's invariant), for any k."""
  probs = np.array([[[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]])
  labels = np.array([0, 0, 1, 1])
  alpha, d = ensembles.samme_round(probs=probs, labels=labels, distribution=np.full((1, 4), 0.25))
  np.testing.assert_allclose(alpha, [np.log(3)])
  np.testing.assert_allclose(d, [[1 / 6, 1 / 6, 1 / 6, 1 / 2]])
  rng = np.random.default_rng(1)
  for k in (2, 3, 5):
    labels = rng.integers(0, k, 40)
    probs = rng.dirichlet(np.ones(k), (3, 40))
    probs[:, :30] += 2 * np.eye(k)[labels[:30]]  # better than chance
    d0 = rng.dirichlet(np.ones(40), 3)
    alpha, d = ensembles.samme_round(probs=probs, labels=labels, distribution=d0)
    wrong = probs.argmax(-1) != labels
    assert np.all(alpha > 0)
    np.testing.assert_allclose((d * wrong).sum(1), 1 - 1 / k)
  # A member at chance or worse carries no vote and leaves D as it was.
  worst = np.eye(2)[1 - np.array([0, 1, 0, 1])][None]
  d0 = np.full((1, 4), 0.25)
  alpha, d = ensembles.samme_round(probs=worst, labels=np.array([0, 1, 0, 1]), distribution=d0)
  assert alpha[0] == 0 and np.array_equal(d, d0)
  np.testing.assert_allclose(
    ensembles.normalized(np.array([[0.0, 0.0], [1.0, 3.0]])), [[0.5, 0.5], [0.25, 0.75]]
  )


def test_weighted_ensembles_through_the_pipeline(tmp_path, pretrained):
  """Boosting over one member is that weak model (its first round trains on
  train_gt as it is), number for number; boosted and stacked cells run in a
  sweep, their Pweak the ensemble's own, their weights on the simplex."""
  base = configs.load_sweep(TINY).base
  parts = parts_lib.build(base, cache_dir=pretrained, progress=False)
  alone = stages.weak_stage(parts, "pico")
  boosted, weights = supervisors.weighted_ensemble_stage(parts, ("pico",), ensembles.Boosted())
  assert np.array_equal(weights, np.ones((2, 1)))
  np.testing.assert_array_equal(boosted.labels, alone.labels)
  for split in alone.scores:
    np.testing.assert_array_equal(boosted.scores[split], alone.scores[split])
  stacked, weights = supervisors.weighted_ensemble_stage(
    parts, ("pico", "micro"), ensembles.Stacked(holdout_examples=8)
  )
  assert weights.shape == (2, 2) and np.allclose(weights.sum(1), 1) and np.all(weights >= 0)
  assert not np.array_equal(stacked.labels, alone.labels)  # less ground truth, another mix

  cells = (
    Cell("pico", "mini", Xent(), ensemble=("pico", "pico"), weighting=ensembles.Boosted()),
    Cell("pico", "mini", Xent(), ensemble=("micro",), weighting=ensembles.Stacked(8)),
  )
  assert cells[0].label == "xent, boosted ensemble pico+pico+pico"
  assert cells[1].label == "xent, stacked on 8 held-out ensemble pico+micro"
  assert len({c.id for c in cells} | {Cell("pico", "mini", Xent(), ensemble=("micro",)).id}) == 3
  out = engine.run_sweep(
    SweepConfig(base, cells), out_dir=tmp_path / "s", cache_dir=pretrained, progress=False
  )
  for record in out.records:
    assert record["status"] == "done" if "status" in record else True
    for per_seed in record["per_seed"].values():
      assert 0 <= np.min(per_seed["weak"]) and np.max(per_seed["weak"]) <= 1


def test_a_weighted_ensemble_is_checked_before_compute(tmp_path, pretrained):
  base = configs.load_sweep(TINY).base
  with pytest.raises(ValueError, match="with no Cell.ensemble"):
    SweepConfig(base, (Cell("pico", "mini", Xent(), weighting=ensembles.Boosted()),))
  with pytest.raises(ValueError, match="Stacked.holdout_examples=1: expected an int >= 2"):
    ensembles.Stacked(holdout_examples=1)
  too_many = Cell("pico", "mini", Xent(), ensemble=("micro",), weighting=ensembles.Stacked(10**6))
  with pytest.raises(ValueError, match=r"Stacked.holdout_examples=1000000: expected in \[2, "):
    engine.run_sweep(
      SweepConfig(base, (too_many,)), out_dir=tmp_path / "s", cache_dir=pretrained, progress=False
    )
  assert not (tmp_path / "s" / "cells").exists()


# ---------------------------------------------------------------- probes


def _planted(seed=0, n=200, flip=0.1, classes=2, width=16):
  """Separable features (one cluster per class) and one-hot labels with a
  planted fraction flipped to another class."""
  rng = np.random.default_rng(seed)
  truth = rng.integers(0, classes, n)
  centres = rng.normal(size=(classes, width)) * 4
  features = centres[truth] + rng.normal(size=(n, width))
  flipped = rng.choice(n, int(flip * n), replace=False)
  noisy = truth.copy()
  noisy[flipped] = (truth[flipped] + rng.integers(1, classes, len(flipped))) % classes
  return features, truth, np.eye(classes, dtype=np.float32)[noisy], flipped


@pytest.mark.parametrize("kind", probes.KINDS)
@pytest.mark.parametrize("classes", [2, 4])
def test_a_probe_relabeller_fixes_planted_flips_on_separable_features(kind, classes):
  features, truth, labels, flipped = _planted(seed=classes, classes=classes)
  cfg = probes.ProbeConfig(kind=kind, action="relabel", fraction=0.1, k=10, steps=200)
  probe = probes.probe_predictions(cfg, features=features, labels=labels)
  mended, kept = probes.mend(cfg, probe=probe, labels=labels)
  assert (labels.argmax(1) == truth).mean() == pytest.approx(0.9)
  # Every planted flip is among the 10% judged most contaminated, and mended.
  assert (mended.argmax(1) == truth).mean() == 1.0
  worst = np.argsort(-probes.contamination(probe=probe, labels=labels), kind="stable")[:20]
  assert set(worst.tolist()) == set(flipped.tolist())
  np.testing.assert_array_equal(kept, np.arange(len(labels)))
  # Filtering drops exactly those rows and keeps the labels as they were.
  filtered = dataclasses.replace(cfg, action="filter")
  same, kept = probes.mend(filtered, probe=probe, labels=labels)
  np.testing.assert_array_equal(same, labels)
  assert len(kept) == 180 and not set(kept.tolist()) & set(flipped.tolist())


def test_probe_limits_and_named_errors():
  features, truth, labels, _ = _planted(seed=5)
  # kNN leaves each example out: an example's own label never votes for it.
  lone = np.zeros((3, 2), np.float32) + [[1, 0]]
  lone[0] = [0, 1]
  got = probes.knn_probe(features=np.eye(3), labels=lone, k=2)
  np.testing.assert_allclose(got[0], [1.0, 0.0])
  # Contamination: 0 where probe and label agree, 1 where they are disjoint.
  np.testing.assert_allclose(
    probes.contamination(probe=[[1, 0], [0.5, 0.5]], labels=[[1, 0], [0, 1]]), [0.0, 0.5]
  )
  for kwargs, needle in (
    (dict(kind="svm"), "ProbeConfig.kind='svm'"),
    (dict(action="drop"), "ProbeConfig.action='drop'"),
    (dict(fraction=1.0), "ProbeConfig.fraction=1.0"),
    (dict(k=0), "ProbeConfig.k=0"),
  ):
    with pytest.raises(ValueError, match=needle):
      probes.ProbeConfig(**kwargs)


def test_probe_cells_run_through_the_pipeline(tmp_path, pretrained):
  """A relabelling and a filtering probe on the tiny sweep: the relabelled
  cell keeps every row, the filtering one drops the asked fraction of it;
  Pweak and the ceiling are the weak and strong models' own."""
  base = configs.load_sweep(TINY).base
  naive = Cell("pico", "mini", Xent())
  relabel = Cell("pico", "mini", Xent(), probe=probes.ProbeConfig(kind="knn", fraction=0.2, k=5))
  dropped = Cell(
    "pico", "mini", Xent(), probe=probes.ProbeConfig(kind="logistic", action="filter", fraction=0.2)
  )
  assert relabel.label == "xent, probe knn relabel 0.2"
  with pytest.raises(ValueError, match="no other filter"):
    SweepConfig(base, (dataclasses.replace(dropped, filter=FilterConfig("confidence", 0.5)),))
  out = engine.run_sweep(
    SweepConfig(base, (naive, relabel, dropped)),
    out_dir=tmp_path / "s",
    cache_dir=pretrained,
    progress=False,
  )
  rec = {r["id"]: r for r in out.records}
  n, r, d = (rec[x.id] for x in (naive, relabel, dropped))
  for split in n["per_seed"]:
    assert (
      n["per_seed"][split]["weak"] == r["per_seed"][split]["weak"] == d["per_seed"][split]["weak"]
    )
  assert r["kept_label_accuracy"] is None and d["kept_label_accuracy"] is not None
  assert r["weak_label_accuracy"] != n["weak_label_accuracy"]  # the labels were mended
  assert d["weak_label_accuracy"] == n["weak_label_accuracy"]  # filtered, not changed
