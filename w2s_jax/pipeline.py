"""One W2S experiment: its config, and the run from pretraining to results.json.

pretrain (cached) -> weak on ground truth -> weak supervision on train_w2s
(soft labels, or generated responses) -> strong on it, once per loss ->
ceiling on ground truth -> metrics with intervals. The stages themselves
are in stages.py, shared with sweeps and curation.
"""

import dataclasses
import time
from pathlib import Path

import jax
from tqdm.auto import tqdm

from w2s_jax import hf_files, hf_import, models, stages, testbed
from w2s_jax import sharding as shd
from w2s_jax.distributed import DistributedConfig
from w2s_jax.gen_tasks import GenerationConfig, GenTextTaskConfig
from w2s_jax.sharding import MeshConfig
from w2s_jax.tasks import Task, TextTaskConfig
from w2s_jax.objectives import LossConfig
from w2s_jax.results import (package_versions, prepare_out_dir, remove_stale_temp_files,
                             summary_table, write_json_atomic)
from w2s_jax.train import OptimConfig


# The 60-entity world and its short pretraining that the smoke-run configs
# (`:small`, `:tiny`) share: seconds to run, yet weak and strong models that
# differ, and one pretrained cache entry per size for all of them.
SMALL_WORLD = testbed.WorldConfig(num_entities=60, entities_per_split=20, corpus_docs=400,
                                  syllables=8)
SMALL_PRETRAIN = OptimConfig(steps=400, batch_size=64, lr=1e-2, warmup_frac=0.02)
# Fine-tuning on testbed.CUE_WORLD: body and head both learn. At the shared
# default's body lr 3e-5 the student reads its knowledge through the head
# and barely imitates the weak model (naive KD's PGR 0.96-1.00 on the pairs
# tried; docs/sweeps.md).
CUE_FINETUNE = OptimConfig(steps=300, batch_size=32, lr=3e-4, head_lr=5e-2)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  name: str = "default"
  world: testbed.WorldConfig = testbed.WorldConfig()
  weak_size: str = "pico"
  strong_size: str = "mini"
  use_pretraining: bool = True   # False: the no-pretraining ablation
  pretrain: OptimConfig = OptimConfig(steps=6000, batch_size=32, lr=3e-3, warmup_frac=0.02,
                                      weight_decay=0.0)
  pretrain_seed: int = 0
  finetune: OptimConfig = OptimConfig(steps=50, batch_size=32, lr=3e-5, head_lr=5e-2)
  # The weak model's own schedule on ground truth (None: `finetune`), for a
  # weak model trained from scratch beside a pretrained strong one.
  weak_finetune: OptimConfig | None = None
  losses: tuple[LossConfig, ...] = (LossConfig("xent"), LossConfig("logconf"))
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  eval_batch_size: int = 200
  bootstrap_resamples: int = 2000
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedConfig = DistributedConfig()  # or JAX_COORDINATOR_ADDRESS etc.
  checkpoint_every: int = 1000   # pretraining steps between checkpoints
  # A real text task instead of the testbed world: classification
  # (TextTaskConfig) or prompt -> response (GenTextTaskConfig, with generation set).
  text_task: TextTaskConfig | GenTextTaskConfig | None = None
  generation: GenerationConfig | None = None  # set: a generative experiment
  head_input: str = "lm_probs"   # ModelConfig.head_input; "hidden" as GPT2ForSequenceClassification
  # (name, local Hugging Face folder): models imported pretrained, named by
  # weak_size/strong_size, instead of pretrained here.
  pretrained_dirs: tuple[tuple[str, str], ...] = ()
  # How imported encoders pool ("mean", "cls"); None: as the folder declares
  # (1_Pooling/config.json), else BERT's pooler ("cls").
  pooling: str | None = None
  # Every model's compute dtype (params stay float32) and per-block
  # rematerialisation: ModelConfig.dtype and .remat, for large models on accelerators.
  dtype: str = "float32"
  remat: bool = False

  def __post_init__(self):
    for field in ("weak_size", "strong_size"):
      if getattr(self, field) in dict(self.pretrained_dirs):
        continue
      try:
        models.decode_size(getattr(self, field), vocab_size=1)
      except ValueError as e:
        raise ValueError(f"ExperimentConfig.{field}: {e} (or a name in pretrained_dirs)") from None
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"ExperimentConfig.seeds={self.seeds!r}: expected distinct ints, at least one")
    tags = [l.tag for l in self.losses]
    if not tags or len(set(tags)) != len(tags):
      raise ValueError(f"ExperimentConfig.losses={tags}: expected distinct losses, at least one")
    if isinstance(self.text_task, GenTextTaskConfig) and self.generation is None:
      raise ValueError("ExperimentConfig.text_task is a GenTextTaskConfig but generation=None: "
                       "expected a GenerationConfig for a generative task")
    if isinstance(self.text_task, TextTaskConfig) and self.generation is not None:
      raise ValueError("ExperimentConfig.generation is set but text_task is a (classification) "
                       "TextTaskConfig: expected a GenTextTaskConfig")
    for i, loss in enumerate(self.losses):
      loss.check_kind(self.generative, f"ExperimentConfig.losses[{i}].name")
    if self.dtype not in models.DTYPES:
      raise ValueError(f"ExperimentConfig.dtype={self.dtype!r}: expected one of {models.DTYPES}")
    if self.bootstrap_resamples < 100:
      raise ValueError(
          f"ExperimentConfig.bootstrap_resamples={self.bootstrap_resamples}: expected >= 100")

  @property
  def generative(self) -> bool:
    return self.generation is not None

  def model_config(self, size: str, task: Task) -> models.ModelConfig:
    cfg = self._model_config(size, task)
    if (self.dtype, self.remat) == (cfg.dtype, cfg.remat):
      return cfg
    return dataclasses.replace(cfg, dtype=self.dtype, remat=self.remat)

  def _model_config(self, size: str, task: Task) -> models.ModelConfig:
    if size in dict(self.pretrained_dirs):
      folder = dict(self.pretrained_dirs)[size]
      encoder = hf_import.read_config(folder).get("model_type") == "bert"
      return hf_import.folder_config(folder, head_input="hidden" if encoder else self.head_input,
                                     max_len=task.max_len,
                                     pooling=self.pooling if encoder else None)
    return models.decode_size(size, vocab_size=task.vocab_size, max_len=task.max_len,
                              head_input=self.head_input)


def scratch_text_experiment(name: str, text_task: TextTaskConfig, *, weak: str, strong: str,
                            pretrain_steps: int, finetune_steps: int, seeds: int
                            ) -> "ExperimentConfig":
  """A text classification experiment with weak and strong models pretrained
  from scratch on the task's own train text: the schedule measured on SST-2
  (configs/sst2.py), which configs/text.py offers for any file."""
  return ExperimentConfig(
      name=name, text_task=text_task, head_input="hidden", weak_size=weak, strong_size=strong,
      pretrain=OptimConfig(steps=pretrain_steps, batch_size=32, lr=1e-3, warmup_frac=0.02,
                           weight_decay=0.01),
      finetune=OptimConfig(steps=finetune_steps, batch_size=32, lr=3e-4, head_lr=3e-3,
                           warmup_frac=0.05),
      losses=(LossConfig("xent"), LossConfig("logconf")), seeds=tuple(range(seeds)),
      eval_batch_size=64, checkpoint_every=500)


def minilm_text_experiment(name: str, text_task: TextTaskConfig, *, weak: str, models_dir: str,
                           steps: int, seeds: int, probe: bool = False,
                           pooling: str | None = None) -> "ExperimentConfig":
  """A from-scratch weak model (the schedule of scratch_text_experiment)
  supervising all-MiniLM-L6-v2, unpacked from its PyPI package into
  models_dir: the schedule measured on SST-2 (configs/sst2_minilm.py), which
  configs/text.py offers for any file with `strong=minilm`. probe: train the
  head only, on the frozen encoder."""
  strong = hf_files.MINILM_NAME
  finetune = OptimConfig(steps=steps, batch_size=32, lr=3e-5, head_lr=1e-3, warmup_frac=0.1,
                         weight_decay=0.01)
  if probe:
    finetune = dataclasses.replace(finetune, linear_probe=True, head_lr=1e-2, weight_decay=0.0)
  scratch = scratch_text_experiment(name, text_task, weak=weak, strong=weak, pretrain_steps=4000,
                                    finetune_steps=400, seeds=seeds)
  return dataclasses.replace(
      scratch, strong_size=strong, pooling=pooling,
      pretrained_dirs=((strong, str(hf_files.packaged_minilm(models_dir))),),
      weak_finetune=scratch.finetune, finetune=finetune)


def config_to_dict(cfg) -> dict:
  return dataclasses.asdict(cfg)


def run(cfg: ExperimentConfig, *, out_dir: str | Path, cache_dir: str | Path,
        progress: bool = True) -> dict:
  """Runs the whole pipeline and writes out_dir/results.json. Returns the results.
  The output folder, the task's data and the models' fit to it are checked
  before any training."""
  started = time.perf_counter()
  stages.check_mesh(cfg)  # a config error leaves no folder behind
  out_dir = prepare_out_dir(out_dir)
  remove_stale_temp_files(out_dir)  # left by a run killed inside a write
  ctx = stages.Context(cfg, cache_dir=cache_dir, progress=progress)
  ctx.check_models((cfg.weak_size, cfg.strong_size))
  bar = tqdm(total=4 + len(cfg.losses), desc="w2s pipeline", unit="stage",
             disable=not progress or not shd.is_main_process(), dynamic_ncols=True)
  for size in (cfg.weak_size, cfg.strong_size):
    ctx.pretrained(size)
    bar.update(1)
  weak = stages.weak_stage(ctx, cfg.weak_size)
  bar.update(1)
  ceiling = stages.ceiling_stage(ctx, cfg.strong_size)
  bar.update(1)
  w2s = {}
  for loss_cfg in cfg.losses:
    w2s[loss_cfg.tag] = stages.w2s_stage(ctx, cfg.strong_size, weak, loss_cfg,
                                         weak_size=cfg.weak_size)
    bar.update(1)
  bar.close()

  summary = {key: {} for key in ctx.eval_keys}
  for tag, result in w2s.items():
    for key, stats in stages.summarize(weak, result, ceiling, splits=ctx.eval_keys,
                                       num_resamples=cfg.bootstrap_resamples).items():
      summary[key][tag] = stats
  per_seed = {key: {"weak": weak[key].mean(1).tolist(),
                    "ceiling": ceiling[key].mean(1).tolist(),
                    **{tag: r[key].mean(1).tolist() for tag, r in w2s.items()}}
              for key in ctx.eval_keys}
  results = {
      "config": config_to_dict(cfg),
      "versions": package_versions(),
      "devices": [str(d) for d in jax.devices()],
      "pretraining": {role: {**ctx.pretrained(size)[2], "size": size}
                      for role, size in (("weak", cfg.weak_size), ("strong", cfg.strong_size))},
      "per_seed": {"seeds": list(ctx.seeds),
                   "weak_label_accuracy_train_w2s": weak["label_accuracy"].tolist(),
                   **per_seed},
      "summary": summary,
      "encoding": ctx.task.encoding,
      # Models that read the task through their own tokenizer, and its counts.
      "model_encoding": ctx.encodings((cfg.weak_size, cfg.strong_size)),
      "seconds": time.perf_counter() - started,
  }
  if shd.is_main_process():
    write_json_atomic(out_dir / "results.json", results)
  return results


def format_results(results: dict) -> str:
  lines = []
  for role, info in results["pretraining"].items():
    if "lives" in info:
      facts = f"facts known: lives {info['lives']:.0%}, works {info['works']:.0%}"
    else:
      facts = ", ".join(f"{k} {v:.3f}" for k, v in info.items() if k.startswith("test_lm"))
    if not info.get("pretrained"):
      origin = "not pretrained"
    elif isinstance(info["pretrained"], str):
      origin = "imported"
    elif info.get("cached"):
      origin = "pretrained (cached)"
    else:
      origin = f"pretrained in {info['seconds']:.0f}s"
    lines.append(f"{role:6s} {info['size']:8s} {origin:22s} {facts}")
  for split, counts in results.get("encoding", {}).items():
    lines.append(f"{split:9s} {counts}")
  for size, info in results.get("model_encoding", {}).items():
    lines.append(f"{size} reads the task through {info['tokenizer']}")
    lines.extend(f"  {split:9s} {counts}" for split, counts in info.items() if split != "tokenizer")
  seeds = results["per_seed"]["seeds"]
  for split, per_loss in results["summary"].items():
    lines.append(f"\n{split} ({len(seeds)} seeds; mean [95% bootstrap interval over seeds and examples])")
    lines.append(summary_table([{"name": name, **stats} for name, stats in per_loss.items()]))
  lines.append(f"\ntotal {results['seconds']:.0f}s")
  return "\n".join(lines)
