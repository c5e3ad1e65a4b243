"""Pretraining as a standalone job (experiments/train.py): one model, any mesh,
one process or many, resumable; for meshes, pods and scaling studies."""

import dataclasses
import json
import time
from pathlib import Path

import jax

from w2s_jax.data import testbed
from w2s_jax.infra import checkpoints, integrity, memory
from w2s_jax.infra import sharding as shd
from w2s_jax.infra.distributed import DistributedConfig
from w2s_jax.infra.files import check_run_name, package_versions, prepare_out_dir, write_json_atomic
from w2s_jax.infra.sharding import MeshConfig
from w2s_jax.models import transformer
from w2s_jax.models.model_config import ModelConfig, decode_size
from w2s_jax.tasks import classification
from w2s_jax.training.pretrain import train_lm
from w2s_jax.training.train import OptimConfig


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """A standalone pretraining run on the testbed corpus."""

  name: str = "pretrain"
  size: str = "tiny"
  world: testbed.WorldConfig = testbed.WorldConfig()
  optim: OptimConfig = OptimConfig(
    steps=2000, batch_size=32, lr=3e-3, warmup_frac=0.02, weight_decay=0.0
  )
  dtype: str = "float32"  # "bfloat16": bf16 compute, float32 master params
  remat: bool = False
  seed: int = 0
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedConfig = DistributedConfig()
  checkpoint_every: int = 200
  checkpoint_keep: int = 2

  def __post_init__(self):
    check_run_name(self.name, "PretrainConfig.name")
    try:
      self.model_config(vocab_size=1)
    except ValueError as e:
      raise ValueError(f"PretrainConfig: {e}") from None

  def model_config(self, vocab_size: int) -> ModelConfig:
    return decode_size(
      self.size,
      vocab_size=vocab_size,
      max_len=self.world.doc_len,
      dtype=self.dtype,
      remat=self.remat,
    )


def run(cfg: PretrainConfig, *, out_dir: str | Path, progress: bool = True) -> dict:
  """Pretrains, saves the final params (orbax) and results.json under out_dir.

  Every process runs this; only process 0 writes results.json. Rerunning
  with the same out_dir resumes from the last checkpoint.
  """
  out_dir = prepare_out_dir(out_dir)
  finished = _finished_results(cfg, out_dir)
  if finished is not None:
    return finished
  started, meter = time.perf_counter(), memory.Peak().start()
  mesh = cfg.mesh.make()
  shd.check_batch_size(cfg.optim.batch_size, mesh, "optim.batch_size")
  task = classification.testbed_task(cfg.world)
  model_cfg = cfg.model_config(task.vocab_size)
  state, record, resumed_from = train_lm(
    model_cfg,
    task.corpus,
    cfg.optim,
    seed=cfg.seed,
    mesh=mesh,
    checkpoint_dir=out_dir / "checkpoints",
    checkpoint_every=cfg.checkpoint_every,
    checkpoint_keep=cfg.checkpoint_keep,
    progress=progress,
    desc=f"pretrain {cfg.size}",
  )
  seconds = time.perf_counter() - started
  checkpoints.save_params(out_dir / "params", state.params)
  steps_run = cfg.optim.steps - resumed_from
  results = {
    "config": dataclasses.asdict(cfg),
    "versions": package_versions(),
    "processes": jax.process_count(),
    "devices": len(jax.devices()),
    "mesh": dict(mesh.shape),
    "params": transformer.count_params(state.params),
    "resumed_from_step": resumed_from,
    "final_lm_loss": record["loss"],
    "seconds": seconds,
    "tokens_per_second": steps_run * cfg.optim.batch_size * cfg.world.doc_len / seconds,
    "steps_run": steps_run,
    "facts_known": task.probe(state.params, model_cfg, mesh),
    "memory": meter.report(),
  }
  meter.stop()
  if shd.is_main_process():
    write_json_atomic(out_dir / "results.json", results)
  return results


def _finished_results(cfg: PretrainConfig, out_dir: Path) -> dict | None:
  """The results of a finished run in out_dir, which a rerun returns untouched.
  A run directory of another config is refused rather than overwritten."""
  path = out_dir / "results.json"
  if not path.exists():
    return None
  results = integrity.read_json(path, "results")
  wanted = json.loads(json.dumps(dataclasses.asdict(cfg)))
  if results["config"] != wanted:
    changed = sorted(k for k in wanted if results["config"].get(k) != wanted[k])
    raise ValueError(
      f"{out_dir} holds a finished run of another config (differs in {changed}); "
      f"choose another --out"
    )
  return results


def format_results(results: dict) -> str:
  facts = results["facts_known"]
  return (
    f"{results['config']['size']}: {results['params']:,} params on {results['devices']} "
    f"devices ({results['processes']} processes, mesh {results['mesh']})\n"
    f"final LM loss {results['final_lm_loss']:.4f}; facts known: lives {facts['lives']:.0%}, "
    f"works {facts['works']:.0%}\n"
    f"{results['seconds']:.0f}s, {results['tokens_per_second']:,.0f} tokens/s; "
    f"{memory.summary_line(results.get('memory'))}"
    + (f" (resumed at step {results['resumed_from_step']})" if results["resumed_from_step"] else "")
  )
