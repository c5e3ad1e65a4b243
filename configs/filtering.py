"""Does filtering the weak-labelled set help? No filter vs each criterion at keep fractions.

  python experiments/sweep.py --config configs/filtering.py
  python tools/sweep_report.py runs/sweeps/filtering

Weak pico (knows ~33% of the facts) labels train_w2s; the strong mini model
trains with naive KD on the examples each criterion keeps: the weak
classifier's confidence, margin, negative entropy, the agreement of the 5
weak seeds, or the weak LM's log-likelihood of the example's text (frequent
entities, which the weak model is likelier to know, read as likelier). The
selection keeps the weak labels' class balance. Expected: about 3 minutes.
"""


from w2s_jax.configs import parse_arg
from w2s_jax.objectives import LossConfig
from w2s_jax.pipeline import ExperimentConfig
from w2s_jax.selection import FilterConfig
from w2s_jax.sweep import Cell, SweepConfig

CRITERIA = ("confidence", "margin", "neg_entropy", "agreement", "likelihood")
KEEP_FRACS = (0.75, 0.5, 0.25)  # and 1.0: the unfiltered cell


def get_config(arg=None) -> ExperimentConfig:
  arg = parse_arg(arg, seeds=5)
  return ExperimentConfig(name="filtering", seeds=tuple(range(arg.seeds)))


def sweep(arg=None) -> SweepConfig:
  base = get_config(arg)
  cells = [Cell("pico", "mini", LossConfig("xent"))]
  cells += [Cell("pico", "mini", LossConfig("xent"), filter=FilterConfig(c, keep))
            for c in CRITERIA for keep in KEEP_FRACS]
  return SweepConfig(base, tuple(cells))
