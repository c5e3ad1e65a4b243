"""What survives what: one flipped byte in each kind of stored artefact is
caught and named, and the run rebuilds or falls back; nothing is ever trained
on from a corrupt file. Also: a kill between the last checkpoint and the cache
record, checks before compute, and two processes sharing a cache."""

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from w2s_jax.data.dataset import Dataset, shuffled_batches
from w2s_jax.infra import checkpoints, configs, integrity, locks, sharding
from w2s_jax.infra.sharding import MeshConfig
from w2s_jax.models import model_config, transformer
from w2s_jax.training import loop, objectives, train
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import engine
from w2s_jax.w2s import grid as sweep_grid
from w2s_jax.w2s import parts as parts_lib

ROOT = Path(__file__).resolve().parents[1]
SMALL = f"{ROOT / 'configs/default.py'}:small,seeds=2"


def flip_byte(path: Path, at: float = 0.5) -> None:
  data = bytearray(path.read_bytes())
  data[int(len(data) * at)] ^= 0x10
  path.write_bytes(bytes(data))


def largest_file(folder: Path) -> Path:
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _same(a, b) -> bool:
  return all(
    np.array_equal(x, y)
    for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)))
  )


def test_tree_checksum_ignores_sharding_and_catches_one_bit(mesh1):
  cfg = model_config.decode_size("mini", vocab_size=50, max_len=8)
  params = transformer.init_params(cfg, jax.random.key(0))
  fsdp = sharding.make_mesh(8, fsdp=8)
  spread = jax.device_put(params, sharding.state_sharding(params, fsdp))
  assert integrity.tree_checksum(params) == integrity.tree_checksum(spread)
  kernel = np.asarray(params["block_1"]["mlp_out"]["kernel"]).copy()
  kernel.view(np.uint32)[7, 3] ^= 1  # the lowest mantissa bit of one weight
  flipped = {
    **params,
    "block_1": {**params["block_1"], "mlp_out": {**params["block_1"]["mlp_out"], "kernel": kernel}},
  }
  assert integrity.tree_checksum(flipped) != integrity.tree_checksum(params)
  rows = np.asarray(params["embed"]["embedding"])
  swapped = {**params, "embed": {"embedding": rows[[1, 0, *range(2, len(rows))]]}}
  before, after = integrity.tree_checksum(params), integrity.tree_checksum(swapped)
  assert after[0] == before[0] and after[1] != before[1]  # same words, other places


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """The small config on one device, pretrained once into a cache."""
  root = tmp_path_factory.mktemp("integrity")
  cfg = dataclasses.replace(configs.load(SMALL), mesh=MeshConfig(devices=1))
  ctx = parts_lib.build(cfg, cache_dir=root / "cache", progress=False)
  params, _, info = ctx.models.get("pico")
  return cfg, root, jax.device_get(params), info


def test_flipped_byte_in_the_pretrained_cache_is_rebuilt(small, tmp_path):
  cfg, root, params, info = small
  cache = tmp_path / "cache"
  subprocess.run(["cp", "-r", str(root / "cache"), str(cache)], check=True)
  entry = next(cache.glob("pico-*"))
  flip_byte(largest_file(entry / "params"))
  ctx = parts_lib.build(cfg, cache_dir=cache, progress=False)
  with pytest.warns(UserWarning, match=f"{entry.name}: corrupt cache entry"):
    rebuilt, _, rebuilt_info = ctx.models.get("pico")
  assert _same(rebuilt, params)  # retrained from scratch: the same weights
  assert rebuilt_info["final_lm_loss"] == info["final_lm_loss"]
  # and the rebuilt entry is read back intact
  again = parts_lib.build(cfg, cache_dir=cache, progress=False).models.get("pico")
  assert again[2]["cached"] and _same(again[0], params)


def test_truncated_cache_info_is_rebuilt(small, tmp_path):
  cfg, root, params, _ = small
  cache = tmp_path / "cache"
  subprocess.run(["cp", "-r", str(root / "cache"), str(cache)], check=True)
  info = next(cache.glob("pico-*")) / "info.json"
  info.write_text(info.read_text()[:40])
  with pytest.warns(UserWarning, match="unreadable cache info"):
    rebuilt = parts_lib.build(cfg, cache_dir=cache, progress=False).models.get("pico")[0]
  assert _same(rebuilt, params)


def test_kill_between_last_checkpoint_and_cache_record_keeps_the_record(
  small, tmp_path, monkeypatch
):
  cfg, _, params, info = small
  real_save = checkpoints.PretrainedCache.save
  meant = {}

  def killed(cache, name, key, params, info):
    meant.update(info)  # the record the killed run was about to write
    raise KeyboardInterrupt  # as a kill right after the final checkpoint

  monkeypatch.setattr(checkpoints.PretrainedCache, "save", killed)
  with pytest.raises(KeyboardInterrupt):
    parts_lib.build(cfg, cache_dir=tmp_path, progress=False).models.get("pico")
  monkeypatch.setattr(checkpoints.PretrainedCache, "save", real_save)
  resumed, _, resumed_info = parts_lib.build(cfg, cache_dir=tmp_path, progress=False).models.get(
    "pico"
  )
  assert _same(resumed, params)
  assert resumed_info["final_lm_loss"] == info["final_lm_loss"]  # not NaN
  assert resumed_info["seconds"] == meant["seconds"] > 0.1  # the killed run's time, not 0


MODEL = model_config.decode_size("pico", vocab_size=16, max_len=8)


def _train(tmp_path, steps, *, keep=3):
  optim = OptimConfig(steps=9, batch_size=8, lr=1e-2, warmup_frac=0.0)
  optimizer = train.make_optimizer(optim)
  mesh = sharding.make_mesh(1)
  key = jax.random.key(0)
  state = train.initial_state(
    lambda k: transformer.init_params(MODEL, k),
    key,
    optimizer=optimizer,
    mesh=mesh,
    rng=jax.random.key_data(key),
  )
  ckpts = checkpoints.TrainCheckpoints(tmp_path / "ckpt", every=3, keep=keep, data={"seed": 0})
  state = ckpts.restore(state)
  start = loop.first_step(state)
  rng = np.random.default_rng(0)
  data = Dataset(
    tokens=rng.integers(1, 16, (64, 8)).astype(np.int32), mask=np.ones((64, 8), np.int32)
  )
  step = train.compile_train_step(
    loss_fn=objectives.lm_objective(MODEL),
    optimizer=optimizer,
    total_steps=9,
    mesh=mesh,
    state_sharding=train.sharding_of(state),
  )
  state, _ = loop.fit(
    state,
    step,
    shuffled_batches(data, batch_size=8, seed=0, start_step=start),
    num_steps=steps,
    mesh=mesh,
    desc="t",
    progress=False,
    checkpoints=ckpts,
  )
  ckpts.close()
  return state, start


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_latest_train_checkpoint_falls_back_to_the_one_before(tmp_path, damage):
  whole, _ = _train(tmp_path / "whole", 9)
  _train(tmp_path / "cut", 9)  # checkpoints at 3, 6 and 9
  latest = largest_file(tmp_path / "cut" / "ckpt" / "9")
  if damage == "flip":
    flip_byte(latest)
  else:
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
  with pytest.warns(UserWarning, match=r"ckpt/9: corrupt checkpoint.*falling back"):
    resumed, start = _train(tmp_path / "cut", 9)
  assert start == 6  # the step-9 checkpoint was not trusted
  assert _same(resumed.params, whole.params)  # and training from 6 ends where it should


def test_another_entry_copied_over_this_one_is_rebuilt_not_used(small, tmp_path):
  """Issue 28's probe: another config's entry copied over pico-<key>. Each
  entry records its name and key; a mismatch is corruption, named both ways."""
  cfg, root, params, info = small
  cache = tmp_path / "cache"
  subprocess.run(["cp", "-r", str(root / "cache"), str(cache)], check=True)
  entry = next(cache.glob("pico-*"))
  other = dataclasses.replace(cfg, pretrain_seeds=(1,))
  wanted = parts_lib.build(other, cache_dir=tmp_path / "c1", progress=False).models.get("pico")
  target = next((tmp_path / "c1").glob("pico-*")).name
  subprocess.run(["cp", "-r", str(entry), str(cache / target)], check=True)
  with pytest.warns(UserWarning, match=f"it holds {entry.name}, this run asks for {target}"):
    got = parts_lib.build(other, cache_dir=cache, progress=False).models.get("pico")
  assert not got[2]["cached"] and _same(got[0], wanted[0]) and not _same(got[0], params)


def test_a_read_only_cache_serves_complete_entries_without_a_lock(small, tmp_path, monkeypatch):
  """Labs share caches read-only: a complete entry is read without taking
  its write lock; building a missing one names the folder it cannot write."""
  cfg, root, params, _ = small
  cache = tmp_path / "cache"
  subprocess.run(["cp", "-r", str(root / "cache"), str(cache)], check=True)
  for lock in cache.glob(".*.lock"):
    lock.unlink()
  real_open = locks.os.open

  def read_only(path, flags, *a):
    if flags & locks.os.O_CREAT:
      raise PermissionError(13, "Permission denied", str(path))
    return real_open(path, flags, *a)

  monkeypatch.setattr(locks.os, "open", read_only)
  got = parts_lib.build(cfg, cache_dir=cache, progress=False).models.get("pico")
  assert got[2]["cached"] and _same(got[0], params)
  assert not list(cache.glob(".*.lock"))
  other = dataclasses.replace(cfg, pretrain_seeds=(1,))
  with pytest.raises(PermissionError, match=r"pico-\w+: cannot write here .*use a writable folder"):
    parts_lib.build(other, cache_dir=cache, progress=False).models.get("pico")


def test_checkpoint_of_another_model_is_refused_not_deleted(tmp_path):
  _train(tmp_path, 3)
  state = train.init_state(
    transformer.init_params(
      model_config.decode_size("nano", vocab_size=16, max_len=8), jax.random.key(0)
    ),
    train.make_optimizer(OptimConfig()),
  )
  ckpts = checkpoints.TrainCheckpoints(tmp_path / "ckpt", every=3, data={"seed": 0})
  with pytest.raises(ValueError, match="other shapes"):
    ckpts.restore(state)
  assert ckpts.latest_step() == 3
  ckpts.close()


@pytest.mark.slow  # a sweep run three times
def test_stage_cell_and_rows_corruption_is_recomputed_with_warnings(tmp_path):
  grid = configs.load_sweep(f"{ROOT / 'configs/sweep.py'}:tiny,seeds=2")
  small_grid = sweep_grid.SweepConfig(
    dataclasses.replace(grid.base, mesh=MeshConfig(devices=1)), grid.cells[:2]
  )
  run = lambda: (
    engine.run_sweep(
      small_grid, out_dir=tmp_path / "s", cache_dir=tmp_path / "c", progress=False
    ).rows
  )
  rows = run()
  values = [r["test/w2s/mean"] for r in rows] + [rows[0]["test/weak/mean"]]
  assert len(set(values)) > 1  # the tiny sweep's numbers vary: equality below means something
  out = tmp_path / "s"
  flip_byte(out / "shared" / "pretrain0" / f"weak-{small_grid.cells[0].weak}.npz", at=0.7)
  cell = out / "cells" / small_grid.cells[1].id / "results.json"
  cell.write_text(cell.read_text()[:100])
  (out / "sweep.jsonl").write_text((out / "sweep.jsonl").read_text()[:50])
  with pytest.warns(UserWarning) as caught:
    again = run()
  messages = "\n".join(str(w.message) for w in caught)
  assert "weak-pico.npz" in messages and "computing it again" in messages
  assert small_grid.cells[1].id in messages
  assert "sweep.jsonl: unreadable rows; rebuilding" in messages
  assert json.dumps(again) == json.dumps(rows)
  assert [json.loads(l) for l in (out / "sweep.jsonl").read_text().splitlines()] == json.loads(
    json.dumps(rows)
  )


def test_output_that_cannot_be_written_fails_before_any_training(tmp_path):
  out = tmp_path / "taken"
  out.write_text("a file, not a folder")
  cfg = configs.load(SMALL)
  started = time.perf_counter()
  with pytest.raises(NotADirectoryError, match="is an existing file"):
    engine.run_experiment(cfg, out_dir=out, cache_dir=tmp_path / "cache", progress=False)
  assert time.perf_counter() - started < 5
  assert not (tmp_path / "cache").exists()


def test_two_runs_sharing_one_cache_build_it_once(tmp_path):
  """Started together on an empty cache: one pretrains, the other waits and
  reads the entry; both end with the weights of a run alone."""
  script = (
    "import sys; from w2s_jax.infra import configs; "
    "from w2s_jax.w2s import parts as parts_lib; "
    f"cfg = configs.load({SMALL!r}); "
    "ctx = parts_lib.build(cfg, cache_dir=sys.argv[1], progress=False); "
    "p, _, info = ctx.models.get('pico'); print(info['cached'])"
  )
  env = {"XLA_FLAGS": "", "PATH": "/usr/bin:/bin"}  # one device, as a user runs it
  start = lambda cache: subprocess.Popen(
    [sys.executable, "-c", script, str(cache)],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  procs = [start(tmp_path / "cache") for _ in range(2)]
  outs = [p.communicate() for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert sorted(o[0].split()[-1] for o in outs) == ["False", "True"]  # built once, read once
  assert any("another process holds it; waiting" in o[0] for o in outs)
  alone = start(tmp_path / "alone")
  assert alone.wait() == 0, alone.stderr.read()
  read = lambda cache: parts_lib.build(
    configs.load(SMALL), cache_dir=cache, progress=False
  ).models.get("pico")
  shared, alone = read(tmp_path / "cache"), read(tmp_path / "alone")
  assert shared[2]["cached"] and alone[2]["cached"]
  assert _same(shared[0], alone[0])
