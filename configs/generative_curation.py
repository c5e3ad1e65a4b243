"""Does curating the weak model's generations help? sft on all of them vs on the
top 25% / 50% by each curation score.

  python experiments/sweep.py --config configs/generative_curation.py
  python tools/sweep_report.py runs/sweeps/generative-curation

configs/generative.py's task and models (weak pico -> strong mini, 5 seeds),
except that the weak model writes weak_samples=4 responses per train_w2s
prompt at weak_temperature=1.0 (self_consistency needs several samples; the
whole sweep uses the same 4 samples, so every cell curates the same pool and
the unfiltered cell is sft on all 4 x 400 sampled responses, not on the
greedy ones of configs/generative.py). The scores (weak_curation.py), all
from the weak model, none from ground truth: mean_logprob, min_prob, ifd
(Superfiltering: highest IFD kept, IFD > 1 discarded) and self_consistency;
selection among all 1,600 responses, stratified by the response's region.
The report's "label acc" column is the kept responses' field accuracy.

Expected on a 2-core CPU, pretraining cached: under 2 minutes. At keep 0.25
the kept responses are 0.60 (mean_logprob, min_prob) and 0.55
(self_consistency) accurate against 0.40 for all, and PGR rises from 0.34 to
0.74-0.78; ifd keeps less accurate responses (0.30) and loses.

Args: `tiny` (or `small`) for a seconds-long run on configs/generative.py's
small world; `seeds=N`; `samples=N`, `temperature=X` (the weak sampling).
"""

import dataclasses
from pathlib import Path

from w2s_jax.curation.selection import GENERATIVE_CRITERIA, FilterConfig
from w2s_jax.infra import configs
from w2s_jax.infra.configs import parse_arg
from w2s_jax.training.generative_losses import Sft
from w2s_jax.w2s.experiment import ExperimentConfig
from w2s_jax.w2s.grid import Cell, SweepConfig

KEEP_FRACS = (0.5, 0.25)  # and 1.0: the unfiltered cell


def get_config(arg=None) -> ExperimentConfig:
  arg = parse_arg(arg, tiny=False, small=False, seeds=5, samples=4, temperature=1.0)
  small = arg.tiny or arg.small
  base = configs.load(
    f"{Path(__file__).with_name('generative.py')}:seeds={arg.seeds},losses=sft"
    + (",small" if small else "")
  )
  name = "generative-curation" + (
    "" if (arg.samples, arg.temperature) == (4, 1.0) else f"-n{arg.samples}-t{arg.temperature:g}"
  )
  return dataclasses.replace(
    base,
    name=name + ("-small" if small else ""),
    losses=(Sft(),),
    generation=dataclasses.replace(
      base.generation, weak_samples=arg.samples, weak_temperature=arg.temperature
    ),
  )


def sweep(arg=None) -> SweepConfig:
  base = get_config(arg)
  sft = Sft()
  criteria = [
    c for c in GENERATIVE_CRITERIA if c != "self_consistency" or base.generation.weak_samples >= 2
  ]
  cells = [Cell(base.weak_size, base.strong_size, sft)]
  cells += [
    Cell(base.weak_size, base.strong_size, sft, filter=FilterConfig(c, keep))
    for c in criteria
    for keep in KEEP_FRACS
  ]
  return SweepConfig(base, tuple(cells))
