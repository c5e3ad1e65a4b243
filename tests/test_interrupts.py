"""SIGINT/SIGTERM handling: the interrupt is recorded, so a swallowed one still stops a run."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from w2s_jax.infra import interrupts

ROOT = Path(__file__).resolve().parents[1]


def _signal_self(sig):
  os.kill(os.getpid(), sig)
  time.sleep(5)  # the handler runs at the latest when the sleep is interrupted
  raise AssertionError(f"{sig.name} was not delivered within 5 s")


def test_sigint_inside_the_context_raises_keyboard_interrupt():
  with pytest.raises(KeyboardInterrupt):
    with interrupts.handle_interrupts():
      _signal_self(signal.SIGINT)
  assert interrupts.interrupted() is None  # cleared once the outermost context is left


def test_sigterm_is_recorded_and_raises_keyboard_interrupt():
  with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
    with interrupts.handle_interrupts():
      try:
        _signal_self(signal.SIGTERM)
      except KeyboardInterrupt:
        assert interrupts.interrupted() == signal.SIGTERM
      # swallowed: the loop's next check raises again
      interrupts.raise_if_interrupted()


def test_no_interrupt_no_raise_and_flag_does_not_leak():
  with interrupts.handle_interrupts():
    interrupts.raise_if_interrupted()
    with pytest.raises(KeyboardInterrupt):
      _signal_self(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
      interrupts.raise_if_interrupted()
    assert interrupts.interrupted() == signal.SIGINT
    # ...but the context still raises when it ends.
    with pytest.raises(KeyboardInterrupt):
      with interrupts.handle_interrupts():  # nested: exit raises, the flag stays set
        pass
    assert interrupts.interrupted() == signal.SIGINT
    interrupts.clear()  # the caller handled it
  # Outside any context nothing is recorded and nothing raises.
  interrupts.raise_if_interrupted()
  with interrupts.handle_interrupts():
    interrupts.raise_if_interrupted()


def test_handlers_are_restored_on_exit():
  def custom(signum, frame):
    pass

  before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  old_term = signal.signal(signal.SIGTERM, custom)
  try:
    with interrupts.handle_interrupts():
      assert signal.getsignal(signal.SIGINT) is interrupts.on_signal
      assert signal.getsignal(signal.SIGTERM) is interrupts.on_signal
    assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is custom
    # restored also when the body raises
    with pytest.raises(RuntimeError, match="boom"):
      with interrupts.handle_interrupts():
        raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is custom
  finally:
    signal.signal(signal.SIGTERM, old_term)
  assert {s: signal.getsignal(s) for s in before} == before


def test_outside_the_main_thread_it_is_a_no_op():
  seen = {}

  def worker():
    try:
      with interrupts.handle_interrupts():
        seen["handler"] = signal.getsignal(signal.SIGINT)
        interrupts.raise_if_interrupted()
    except BaseException as e:  # noqa: BLE001  (reported to the main thread)
      seen["error"] = e

  t = threading.Thread(target=worker)
  t.start()
  t.join()
  assert "error" not in seen, seen
  assert seen["handler"] is not interrupts.on_signal


def _run(code: str, **kwargs) -> subprocess.CompletedProcess:
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
  }
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    capture_output=True,
    text=True,
    timeout=60,
    env=env,
    cwd=ROOT,
    **kwargs,
  )


def test_interrupt_swallowed_in_del_still_stops_the_next_check():
  """The observed bug: SIGINT handled while a __del__ runs is printed and ignored."""
  r = _run("""
    import os, signal, time
    from w2s_jax.infra import interrupts

    class Buffer:
      def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the KeyboardInterrupt is raised here, inside __del__

    with interrupts.handle_interrupts():
      b = Buffer()
      del b
      print("continued after the swallowed interrupt", flush=True)
      try:
        interrupts.raise_if_interrupted()
      except KeyboardInterrupt as e:
        print("raise_if_interrupted raised:", e, flush=True)
        interrupts.clear()  # handled: let the context end normally
    print("exit normally", flush=True)
  """)
  assert r.returncode == 0, r.stderr
  assert "Exception ignored" in r.stderr and "KeyboardInterrupt" in r.stderr, r.stderr
  assert "continued after the swallowed interrupt" in r.stdout
  assert "raise_if_interrupted raised: SIGINT received earlier" in r.stdout, r.stdout


_LOOP = """
  import sys, time
  from w2s_jax.infra import interrupts

  with interrupts.handle_interrupts():
    print("ready", flush=True)
    for step in range(int(sys.argv[1])):
      try:
        time.sleep(0.01)  # a step whose library swallows the KeyboardInterrupt
      except KeyboardInterrupt:
        pass
      if sys.argv[2] == "check":
        interrupts.raise_if_interrupted()
    print("loop finished", flush=True)
"""


def _interrupt_loop(steps: int, check: str) -> subprocess.CompletedProcess:
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
  }
  proc = subprocess.Popen(
    [sys.executable, "-c", textwrap.dedent(_LOOP), str(steps), check],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
    cwd=ROOT,
  )
  try:
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _stopped_by_interrupt(r) -> bool:
  return r.returncode != 0 and (
    r.returncode in (-signal.SIGINT, 130) or "KeyboardInterrupt" in r.stderr
  )


def test_loop_that_checks_stops_with_nonzero_exit_on_sigint():
  r = _interrupt_loop(100_000, "check")  # ~17 minutes if the interrupt were lost
  assert _stopped_by_interrupt(r), (r.returncode, r.stderr)
  assert "loop finished" not in r.stdout


def test_swallowed_interrupt_after_the_last_check_fails_at_context_exit():
  """Without a check, the loop runs to its end; the context's exit still fails the run."""
  r = _interrupt_loop(300, "no-check")
  assert "loop finished" in r.stdout  # the swallowing is real: the loop went on
  assert _stopped_by_interrupt(r), (r.returncode, r.stderr)


@pytest.mark.parametrize("swallow", [False, True])
def test_run_main_stops_within_seconds_with_one_line_and_no_traceback(swallow):
  """Ctrl-C under interrupts.run_main: one line on stderr, exit code 130, no
  traceback; a main that swallows the interrupt (or waits in C for work in
  flight) is ended by the watcher after GRACE_SECONDS."""
  # "started" is printed inside the loop's try, so the signal always lands in the loop.
  body = (
    "while True:\n    try:\n      say()\n      time.sleep(0.05)\n    except KeyboardInterrupt:\n      pass"
    if swallow
    else "while True:\n    say()\n    time.sleep(0.05)"
  )
  code = textwrap.dedent(
    """
    import sys, time
    from w2s_jax.infra import interrupts

    said = []

    def say():
      if not said:
        said.append(1)
        print("started", flush=True)

    def main():
      {body}

    interrupts.run_main(main, what="the test run")
    """
  ).replace("{body}", body.replace("\n", "\n      "))
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
  }
  proc = subprocess.Popen(
    [sys.executable, "-c", code],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
    cwd=ROOT,
  )
  assert proc.stdout.readline().strip() == "started"
  sent = time.monotonic()
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=30)
  took = time.monotonic() - sent
  assert proc.returncode == 130, (proc.returncode, err)
  assert took < 5.0
  assert "Traceback" not in err
  assert [line for line in err.splitlines() if line.strip()] == [
    "SIGINT: stopped the test run; rerun the same command to resume."
  ]
  if swallow:
    assert took >= interrupts.GRACE_SECONDS
