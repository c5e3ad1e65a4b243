"""Best-of-n with the weak, W2S and ceiling reward models:

  python experiments/best_of_n.py --config configs/reward.py[:arg] [--set path=value ...]

The same as `python -m w2s_jax best-of-n ...` (w2s_jax/cli.py, which lists the flags).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax.infra import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.keep_freed_memory(by_default=False)  # before JAX starts: see host_memory

from w2s_jax import cli  # noqa: E402
from w2s_jax.infra import interrupts  # noqa: E402


def main(argv=None):
  cli.main(["best-of-n", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
  interrupts.run_main(main)  # Ctrl-C: one line, a prompt exit, resumable
