"""The pod planner (w2s_jax/plans): programs compiled for a TPU topology by
libtpu with no TPU attached, and what it reads off them."""

import json
import os

import pytest

from w2s_jax.plans import chips, compiled, planner, programs
from w2s_jax.tasks.generation import GenerationConfig
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.generative_losses import Sft
from w2s_jax.training.live import Live
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s.experiment import ExperimentConfig

import common

needs_libtpu = pytest.mark.skipif(
  not chips.libtpu_available(), reason=f"needs libtpu, the `tpu` extra: {chips.EXTRA_HINT}"
)

HLO = """
ENTRY %main {
  %p = bf16[256,64]{1,0} parameter(0)
  %all-gather.1 = bf16[1024,64]{1,0:T(8,128)} all-gather(%p), channel_id=1, dimensions={0}
  %all-gather-start.2 = (bf16[16,8]{1,0}, bf16[64,8]{1,0}) all-gather-start(%q), dimensions={0}
  %all-gather-done.2 = bf16[64,8]{1,0} all-gather-done(%all-gather-start.2)
  %reduce-scatter.3 = f32[64,64]{1,0} reduce-scatter(%g), dimensions={0}
  %all-reduce-start.4 = f32[10]{0} all-reduce-start(%x), to_apply=%add
  %all-reduce-done.4 = f32[10]{0} all-reduce-done(%all-reduce-start.4)
  ROOT %all-reduce.5 = (f32[3]{0}, s32[2]{0}) all-reduce(%a, %b), to_apply=%add
  %fusion.6 = f32[8]{0} fusion(%all-reduce.5), kind=kLoop, calls=%all-reduce-like
}
"""


def test_collectives_are_counted_and_sized_by_hand():
  out = compiled.collectives(HLO)
  assert out["all-gather"] == {"count": 2, "bytes": 1024 * 64 * 2 + 64 * 8 * 2}
  assert out["reduce-scatter"] == {"count": 1, "bytes": 64 * 64 * 4}
  assert out["all-reduce"] == {"count": 2, "bytes": 10 * 4 + 3 * 4 + 2 * 4}
  assert out["all-to-all"] == out["collective-permute"] == {"count": 0, "bytes": 0}


def test_captured_stderr_holds_what_native_code_writes_to_fd_2():
  with compiled.captured_stderr() as lines:
    os.write(2, b"Involuntary full rematerialization of %x\nother\n")
  assert lines == ["Involuntary full rematerialization of %x", "other"]


def test_bad_topology_and_mesh_choices_are_named_before_any_compile():
  with pytest.raises(ValueError, match=r"--topology='v5p'.*expected a TPU topology"):
    chips.topology_devices("v5p")
  with pytest.raises(ValueError, match=r"--fsdp=\[3\].*divisors of the topology's 8 devices"):
    planner.check_choices("fsdp", (3,), 8)
  with pytest.raises(ValueError, match=r"--per-device-batch=\[0\]"):
    planner.check_choices("per-device-batch", (0,))


def tiny_config(**kwargs) -> ExperimentConfig:
  base = dict(
    name="plan-test",
    world=common.SMALL_WORLD,
    weak_size="pico",
    strong_size="mini",  # the smallest size with leaves FSDP splits (MIN_SHARDED_SIZE)
    finetune=OptimConfig(steps=10, batch_size=8),
    losses=(Xent(),),
    seeds=(0, 1),
  )
  return ExperimentConfig(**{**base, **kwargs})


@needs_libtpu
def test_bad_topology_name_is_libtpus_message():
  with pytest.raises(ValueError, match=r"--topology='v5e:3x7': libtpu cannot build it"):
    chips.topology_devices("v5e:3x7")


@needs_libtpu
def test_train_step_sampler_and_live_step_compile_for_v5e_2x2():
  """A tiny run's programs on a v5e 2x2 slice: memory within HBM, MFU in (0, 1),
  parameters gathered under FSDP and not without it, no involuntary remat."""
  devices = chips.topology_devices("v5e:2x2")
  assert len(devices) == 4 and chips.describe(devices).chip.name == "v5e"
  gen = tiny_config(generation=GenerationConfig(), losses=(Sft(), Live()))
  found = {p.name: p for p in programs.run_programs(gen)}
  assert set(found) == {"weak sft (ground truth)", "weak sampler", "strong sft (w2s, ceiling)",
                        "strong live (w2s)"}  # fmt: skip
  plans = {}
  for name in ("weak sampler", "strong live (w2s)"):
    for fsdp in (1, 4):
      plans[name, fsdp] = planner.plan_program(
        found[name], devices, topology="v5e:2x2", fsdp=fsdp, per_device_batch=2
      )
  classification = {p.name: p for p in programs.run_programs(tiny_config())}
  assert set(classification) == {"weak xent (ground truth)", "weak soft labels",
                                 "strong xent (w2s, ceiling)", "cascade weak step (serving)",
                                 "cascade strong step, every query deferred (serving)"}  # fmt: skip
  step = classification["strong xent (w2s, ceiling)"]
  serving = planner.plan_program(
    classification["cascade strong step, every query deferred (serving)"],
    devices,
    topology="v5e:2x2",
    fsdp=4,
    per_device_batch=2,
  )
  assert serving.fits and 0 < serving.mfu < 1 and serving.parts["params"] > 0
  for fsdp in (1, 4):
    plans["xent", fsdp] = planner.plan_program(
      step, devices, topology="v5e:2x2", fsdp=fsdp, per_device_batch=2
    )
  for (name, fsdp), plan in plans.items():
    record = plan.record()
    json.dumps(record)  # every field is JSON
    assert 0 < plan.peak_bytes <= plan.device.hbm_bytes and plan.fits, (name, fsdp)
    assert 0 < plan.mfu < 1, (name, fsdp, plan.mfu)
    assert plan.compiled.remat_warnings == (), (name, fsdp)
    assert plan.batch == 8 and record["mesh"] == {"data": 4 // fsdp, "fsdp": fsdp}
    gathers = plan.compiled.collectives["all-gather"]["count"]
    sharded = plan.parts["params"] < plans[name, 1].parts["params"] if fsdp == 4 else False
    if sharded:
      assert gathers > 0, name  # sharded params are gathered for the forward pass
    else:  # replicated params (pico's leaves are all below MIN_SHARDED_SIZE): nothing to gather
      assert gathers == 0, name
  for name in ("strong live (w2s)", "xent"):  # gradients are reduced across data replicas
    assert plans[name, 1].compiled.collectives["all-reduce"]["count"] > 0
  # The live step holds the frozen teacher (the weak model), undonated, beside the student.
  live = plans["strong live (w2s)", 4]
  assert live.parts["teacher"] > 0 and live.parts["frozen base"] == 0
  # Adam's two moments, plus a few step counters.
  assert 0 <= live.parts["optimizer"] - 2 * live.parts["params"] < 1024
  # FSDP splits the students' state over the 4 devices (small leaves stay whole).
  for name in ("strong live (w2s)", "xent"):
    assert plans[name, 4].parts["params"] < plans[name, 1].parts["params"] / 2
    assert plans[name, 4].compiled.collectives["all-gather"]["count"] > 0


@needs_libtpu
def test_plan_command_prints_a_table_and_writes_json(tmp_path, capsys):
  from w2s_jax import cli

  out = tmp_path / "plan.json"
  cli.main(
    ["plan", "--config", "configs/default.py:small", "--topology", "v5e:2x2", "--fsdp", "4",
     "--per-device-batch", "2", "--programs", "weak", "--json", str(out)]
  )  # fmt: skip
  text = capsys.readouterr().out
  assert "| program | mesh (data x fsdp) |" in text and "**(recommended)**" in text
  record = json.loads(out.read_text())
  assert [p["program"] for p in record["plans"]] == [
    "weak xent (ground truth)",
    "weak soft labels",
    "cascade weak step (serving)",
  ]
  assert all(p["fits"] and p["mesh"] == {"data": 1, "fsdp": 4} for p in record["plans"])


def test_train_flops_by_hand():
  """PaLM's accounting on a hand-sized config: non-embedding params, the
  unembedding only when the LM head runs, attention's 2 x depth x T x d."""
  from w2s_jax.models import flops
  from w2s_jax.models.model_config import ModelConfig

  cfg = ModelConfig(vocab_size=100, width=8, depth=2, heads=2, max_len=16, positions="learned",
                    tie_embeddings=True)  # fmt: skip
  non_embedding = cfg.num_params - 100 * 8 - 16 * 8
  attention = 2 * 2 * 16 * 8
  assert flops.train_flops(config=cfg, rows=3, seq_len=16, lm_head=False) == pytest.approx(
    6 * (non_embedding + attention) * 3 * 16
  )
  assert flops.train_flops(config=cfg, rows=3, seq_len=16, lm_head=True, passes=1) == pytest.approx(
    2 * (non_embedding + 100 * 8 + attention) * 3 * 16
  )
  lora = flops.train_flops(config=cfg, rows=3, seq_len=16, lm_head=False, passes=2)
  assert lora == pytest.approx(4 * (non_embedding + attention) * 3 * 16)
  with pytest.raises(ValueError, match="passes=4"):
    flops.train_flops(config=cfg, rows=1, seq_len=1, lm_head=False, passes=4)


def test_new_log_lines_reads_this_process_libtpu_warning_log(tmp_path, monkeypatch):
  """libtpu logs the partitioner's warnings to its own files, never stderr."""
  monkeypatch.setenv("TPU_LOG_DIR", str(tmp_path))
  log = tmp_path / f"tpu_driver.host.user.log.WARNING.20261207-000000.{os.getpid()}"
  other = tmp_path / "tpu_driver.host.user.log.WARNING.20261207-000000.1"  # another process's
  log.write_text("old line\n")
  with compiled.new_log_lines() as lines:
    with open(log, "a") as f:
      f.write("W [SPMD] Involuntary full rematerialization of %reshape.1\n")
    other.write_text("W [SPMD] Involuntary full rematerialization of %theirs\n")
  assert lines == ["W [SPMD] Involuntary full rematerialization of %reshape.1"]


@needs_libtpu
def test_an_involuntary_rematerialisation_is_reported():
  """Not vacuous: a reshape the partitioner cannot reshard efficiently (split
  examples -> a transposed split) is found in the compile's log."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = chips.topology_mesh(chips.topology_devices("v5e:2x2"), fsdp=4)
  split = lambda *spec: NamedSharding(mesh, P(*spec))
  fn = lambda x: jax.lax.with_sharding_constraint(
    x.reshape(2, 4, 4, 2).transpose(1, 0, 2, 3).reshape(8, 8), split(None, "fsdp")
  )
  lowered = jax.jit(fn, in_shardings=split("fsdp")).lower(jax.ShapeDtypeStruct((8, 8), jnp.float32))
  found = compiled.compile_and_read(lowered).remat_warnings
  assert len(found) == 1 and compiled.REMAT_MARK in found[0]
