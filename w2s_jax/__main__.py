"""python -m w2s_jax run|sweep|cascade|pretrain|filter-corpus --config ... (see cli.py)."""

from w2s_jax.infra import host_memory

host_memory.keep_freed_memory(by_default=False)  # before JAX starts: see host_memory

from w2s_jax import cli  # noqa: E402
from w2s_jax.infra import interrupts  # noqa: E402

interrupts.run_main(cli.main)  # Ctrl-C: one line, a prompt exit, resumable
