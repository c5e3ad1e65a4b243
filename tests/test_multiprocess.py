"""Whole runs in subprocesses: SIGKILL then resume ends where an uninterrupted
run ends; two processes under jax.distributed match one process."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from w2s_jax.data import testbed
from w2s_jax.infra import checkpoints, configs
from w2s_jax.models import transformer

ROOT = Path(__file__).resolve().parents[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(ROOT),
    **extra,
  )
  return env


def _command(config_arg: str, out: Path) -> list[str]:
  return [
    sys.executable,
    str(ROOT / "experiments" / "train.py"),
    "--config",
    f"{ROOT / 'configs' / 'scale.py'}:{config_arg}",
    "--out",
    str(out),
    "--xla-cache",
    "",
    "--no-progress",
  ]


def _run(config_arg, out, devices, **env):
  done = subprocess.run(
    _command(config_arg, out), env=_env(devices, **env), capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads((out / "results.json").read_text())


def _final_params(config_arg, out):
  cfg = configs.load(f"{ROOT / 'configs' / 'scale.py'}:{config_arg}")
  vocab = len(testbed.make_world(cfg.world).vocab)
  model_cfg = cfg.model_config(vocab)
  like = jax.eval_shape(lambda: transformer.init_params(model_cfg, jax.random.key(0)))
  return jax.device_get(checkpoints.load_params(out / "params", like))


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


@pytest.mark.slow  # three training runs in subprocesses
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
  arg = "tiny,size=mini,steps=150"
  whole = tmp_path / "whole"
  _run(arg, whole, devices=2)

  killed = tmp_path / "killed"
  proc = subprocess.Popen(
    _command(arg, killed), env=_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  deadline = time.monotonic() + 300
  try:
    # Kill once a few checkpoints are committed: mid-run, maybe mid-save.
    while not any(
      p.name.isdigit() and int(p.name) >= 40 for p in (killed / "checkpoints").glob("*")
    ):
      assert proc.poll() is None, (
        f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
      )
      assert time.monotonic() < deadline
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL
  assert not (killed / "results.json").exists()

  resumed = _run(arg, killed, devices=2)
  assert 40 <= resumed["resumed_from_step"] < 150
  assert resumed["steps_run"] == 150 - resumed["resumed_from_step"]
  diff = _max_diff(_final_params(arg, killed), _final_params(arg, whole))
  print(
    f"resumed at step {resumed['resumed_from_step']}: max |params - uninterrupted| = {diff:.2e}"
  )
  assert diff <= 1e-6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # three training runs in subprocesses
def test_two_processes_match_one_process(tmp_path):
  """2 processes x 2 devices under jax.distributed, with FSDP across each
  process's devices, against 1 process x 4 devices: same final params."""
  arg = "tiny,size=mini,fsdp=2"
  single = _run(arg, tmp_path / "single", devices=4)

  out = tmp_path / "multi"
  address = f"127.0.0.1:{_free_port()}"
  procs = [
    subprocess.Popen(
      _command(arg, out),
      env=_env(2, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid)),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for pid in range(2)
  ]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  multi = json.loads((out / "results.json").read_text())
  assert multi["processes"] == 2 and multi["devices"] == 4 and single["processes"] == 1
  assert multi["mesh"] == single["mesh"] == {"data": 2, "fsdp": 2}
  # Only process 0 writes results and logs. Gloo's own connection messages are
  # removed first; its threads write them in pieces that can interleave mid-line.
  gloo = re.compile(
    r"\[Gloo\]( Rank)?|\d+ is connected to \d+ peer ranks\. "
    r"Expected number of connected peer ranks is : \d+"
  )
  ours = lambda text: [l for l in gloo.sub("", text).splitlines() if l.strip()]
  assert any("final LM loss" in l for l in ours(outputs[0][0])) and ours(outputs[1][0]) == []
  diff = _max_diff(_final_params(arg, out), _final_params(arg, tmp_path / "single"))
  print(
    f"2 processes vs 1: max |params diff| = {diff:.2e}; "
    f"loss {multi['final_lm_loss']:.6f} vs {single['final_lm_loss']:.6f}"
  )
  assert diff <= 1e-5
  assert abs(multi["final_lm_loss"] - single["final_lm_loss"]) <= 1e-5
  assert multi["facts_known"] == single["facts_known"]
