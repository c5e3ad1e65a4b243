"""Ctrl-C (and SIGTERM) always stop a run, even when the KeyboardInterrupt is swallowed.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread
happens to be. When that is inside a `__del__`, a weakref or garbage-collection
callback (JAX runs some when it frees buffers), Python prints "Exception ignored
in ..." and carries on, and a library's broad `except` can swallow it too: the
run then finishes with exit code 0 as if nobody had pressed Ctrl-C.

`handle_interrupts()` records every SIGINT/SIGTERM in a module-level flag before
raising KeyboardInterrupt as usual; `raise_if_interrupted()` raises again from a
place that cannot swallow it. Usage:

  # Entry points: wrap main (also usable as a decorator, @handle_interrupts()).
  def main():
    with interrupts.handle_interrupts():
      ...

  # Loops: once per iteration (loop.fit: once per step).
  for i in range(start, num_steps):
    interrupts.raise_if_interrupted()
    ...

A context that ends normally while the flag is set raises KeyboardInterrupt
itself, so an interrupt swallowed after the last check still stops the run with a
non-zero exit (an uncaught KeyboardInterrupt exits with 130 / -SIGINT).
SIGTERM raises KeyboardInterrupt too (not the default silent kill), so `finally`
blocks, e.g. a checkpoint wait, run before the process exits.
"""

import contextlib
import os
import signal
import sys
import threading
import time

_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_interrupted: signal.Signals | None = None  # the last signal received, within a context
_depth = 0  # nesting of handle_interrupts contexts


_last_signal: signal.Signals | None = None  # what run_main reports after the context clears


def on_signal(signum, frame):
  global _interrupted, _last_signal
  _interrupted = _last_signal = signal.Signals(signum)
  raise KeyboardInterrupt(_interrupted.name)


def interrupted() -> signal.Signals | None:
  """The signal that interrupted the current handle_interrupts context, or None."""
  return _interrupted


def clear() -> None:
  """Forget a recorded signal: the caller has handled it, so the context ends normally."""
  global _interrupted
  _interrupted = None


def raise_if_interrupted() -> None:
  """Raises KeyboardInterrupt if a SIGINT/SIGTERM arrived inside handle_interrupts().

  Cheap (reads a module global): call it once per step of every long loop, so a
  run stops even when the first KeyboardInterrupt was swallowed (by a `__del__`,
  a GC callback or a broad except). Safe from any thread; never raises outside
  handle_interrupts(), whose handler is the only thing that sets the flag.
  """
  if _interrupted is not None:
    raise KeyboardInterrupt(
      f"{_interrupted.name} received earlier (the first KeyboardInterrupt was swallowed)"
    )


@contextlib.contextmanager
def handle_interrupts():
  """Within the context, SIGINT and SIGTERM set the flag and raise KeyboardInterrupt.

  Installs the handler (main thread only: elsewhere Python cannot install signal
  handlers and this is a no-op) and restores the previous handlers on exit. The
  outermost context clears the flag on entry and on exit, so one run's interrupt
  never leaks into the next (e.g. tests in one process). If the body ends without
  an exception but an interrupt was recorded (it was swallowed after the last
  raise_if_interrupted), the context raises KeyboardInterrupt on exit.
  """
  global _interrupted, _depth
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  if _depth == 0:
    _interrupted = None
  previous = {}
  try:
    for s in _SIGNALS:
      previous[s] = signal.signal(s, on_signal)
    _depth += 1
    try:
      yield
      raise_if_interrupted()
    finally:
      _depth -= 1
  finally:
    for s, handler in previous.items():
      # None: the previous handler was not installed from Python and cannot be put
      # back from it; the default action is the closest.
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    if _depth == 0:
      _interrupted = None


# How long the main thread gets to stop by itself before the process exits anyway.
GRACE_SECONDS = 2.0


def run_main(main, *, what: str = "the run") -> None:
  """An entry point's main() under handle_interrupts, stopping promptly on
  Ctrl-C or SIGTERM with one line and no traceback (exit code 130 or 143).

  Python runs a signal handler only when the main thread is back in Python:
  during a long XLA compile or step, Ctrl-C would wait for it, and at exit
  the runtime waits for every dispatched step. A watcher thread, woken at
  once by the signal (signal.set_wakeup_fd), ends the process after
  GRACE_SECONDS if the main thread has not. Either way the process ends
  with os._exit, skipping that wait: every file the project writes is
  written atomically, so a stop at any moment is resumable (the SIGKILL
  tests in test_sweep.py), and rerunning the same command resumes.
  """
  done = threading.Event()
  read_end, write_end = os.pipe()
  os.set_blocking(write_end, False)
  try:
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
  except ValueError:  # not the main thread: no signal handling here
    main()
    return

  def stop(signum: int) -> None:
    name = signal.Signals(signum).name
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # a closed pipe: nothing more to say
        pass
    os.write(2, f"\n{name}: stopped {what}; rerun the same command to resume.\n".encode())
    os._exit(128 + signum)

  def watch() -> None:
    while True:
      got = os.read(read_end, 1)
      if not got or done.is_set():
        return
      signum = got[0]
      if signum not in (int(s) for s in _SIGNALS):
        continue
      time.sleep(GRACE_SECONDS)
      if not done.is_set():
        stop(signum)

  threading.Thread(target=watch, name="interrupt-watcher", daemon=True).start()
  try:
    with handle_interrupts():
      main()
  except KeyboardInterrupt:
    stop(int(_last_signal or signal.SIGINT))
  finally:
    done.set()
    signal.set_wakeup_fd(previous_fd)
    os.write(write_end, b"\0")  # wake the watcher so it returns
