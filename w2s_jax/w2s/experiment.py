"""What one W2S experiment is: `ExperimentConfig`, a frozen dataclass.

The world or text task, the weak and strong models (sizes of the model table,
or imported checkpoints), pretraining, fine-tuning, the losses, the seeds and
the mesh. Sweeps (grid.py) vary some of it per cell; presets live with the
configs (configs/common.py), not here.
"""

import dataclasses

from w2s_jax.data import testbed
from w2s_jax.infra import sharding as shd
from w2s_jax.infra.distributed import DistributedConfig
from w2s_jax.infra.files import check_run_name
from w2s_jax.infra.fingerprint import CONTENTS, IGNORED, WHEN_SET
from w2s_jax.infra.sharding import MeshConfig
from w2s_jax.models import hf_files, hf_import
from w2s_jax.models.model_config import DTYPES, ModelConfig, decode_size
from w2s_jax.tasks.base import Task
from w2s_jax.tasks.classification import TextTaskConfig
from w2s_jax.tasks.generation import GenerationConfig, GenTextTaskConfig
from w2s_jax.tasks.preference import PreferenceConfig, PreferenceTextConfig

# Every built-in loss module, so that each loss is known by its name (Loss.from_string).
from w2s_jax.training import combined, generative_losses, live  # noqa: F401
from w2s_jax.training.classifier_losses import LogConf, Xent
from w2s_jax.training.objectives import Loss
from w2s_jax.training.train import OptimConfig


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  name: str = "default"
  world: testbed.WorldConfig = testbed.WorldConfig()
  weak_size: str = "pico"
  strong_size: str = "mini"
  use_pretraining: bool = True  # False: the no-pretraining ablation
  pretrain: OptimConfig = OptimConfig(
    steps=6000, batch_size=32, lr=3e-3, warmup_frac=0.02, weight_decay=0.0
  )
  # Pretraining draws: each size is pretrained once per seed, and every
  # fine-tuning seed runs on each draw, so intervals cover pretraining too.
  pretrain_seeds: tuple[int, ...] = (0,)
  finetune: OptimConfig = OptimConfig(steps=50, batch_size=32, lr=3e-5, head_lr=5e-2)
  # The weak model's own schedule on ground truth (None: `finetune`), for a
  # weak model trained from scratch beside a pretrained strong one.
  # What the run prints before any compute (a preset's purpose and expected
  # time); not part of the experiment's identity.
  note: str = dataclasses.field(default="", metadata=IGNORED)
  weak_finetune: OptimConfig | None = None
  losses: tuple[Loss, ...] = (Xent(), LogConf())
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  eval_batch_size: int = 200
  # Each fine-tune's training curve: this many evenly spaced evaluations of
  # the evaluation splits (w2s/curves.py); 0: none.
  curve_points: int = 10
  bootstrap_resamples: int = 2000
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedConfig = DistributedConfig()  # or JAX_COORDINATOR_ADDRESS etc.
  checkpoint_every: int = 1000  # pretraining steps between checkpoints
  # A real text task instead of the testbed world: classification
  # (TextTaskConfig) or prompt -> response (GenTextTaskConfig, with generation set).
  text_task: TextTaskConfig | GenTextTaskConfig | PreferenceTextConfig | None = None
  generation: GenerationConfig | None = None  # set: a generative experiment
  # Set: a preference task (reward models; tasks/preference.py), of the
  # testbed's fact pairs, or of text_task's pairs (a PreferenceTextConfig).
  preference: PreferenceConfig | None = dataclasses.field(default=None, metadata=WHEN_SET)
  head_input: str = "lm_probs"  # ModelConfig.head_input; "hidden" as GPT2ForSequenceClassification
  # (name, local Hugging Face folder): models imported pretrained, named by
  # weak_size/strong_size, instead of pretrained here.
  pretrained_dirs: tuple[tuple[str, str], ...] = dataclasses.field(default=(), metadata=CONTENTS)
  # How imported encoders pool ("mean", "cls"); None: as the folder declares
  # (1_Pooling/config.json), else BERT's pooler ("cls").
  pooling: str | None = None
  # Every model's compute dtype (params stay float32) and per-block
  # rematerialisation: ModelConfig.dtype and .remat, for large models on accelerators.
  dtype: str = "float32"
  remat: bool = False

  def __post_init__(self):
    check_run_name(self.name, "ExperimentConfig.name")
    for field in ("weak_size", "strong_size"):
      if getattr(self, field) in dict(self.pretrained_dirs):
        continue
      try:
        decode_size(getattr(self, field), vocab_size=1)
      except ValueError as e:
        raise ValueError(f"ExperimentConfig.{field}: {e} (or a name in pretrained_dirs)") from None
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(
        f"ExperimentConfig.seeds={self.seeds!r}: expected distinct ints, at least one"
      )
    if not self.pretrain_seeds or len(set(self.pretrain_seeds)) != len(self.pretrain_seeds):
      raise ValueError(
        f"ExperimentConfig.pretrain_seeds={self.pretrain_seeds!r}: expected distinct ints, "
        "at least one"
      )
    tags = [l.tag for l in self.losses]
    if not tags or len(set(tags)) != len(tags):
      raise ValueError(f"ExperimentConfig.losses={tags}: expected distinct losses, at least one")
    if isinstance(self.text_task, GenTextTaskConfig) and self.generation is None:
      raise ValueError(
        "ExperimentConfig.text_task is a GenTextTaskConfig but generation=None: "
        "expected a GenerationConfig for a generative task"
      )
    if isinstance(self.text_task, TextTaskConfig) and self.generation is not None:
      raise ValueError(
        "ExperimentConfig.generation is set but text_task is a (classification) "
        "TextTaskConfig: expected a GenTextTaskConfig"
      )
    if isinstance(self.text_task, PreferenceTextConfig) and self.preference is None:
      raise ValueError(
        "ExperimentConfig.text_task is a PreferenceTextConfig but preference=None: "
        "expected a PreferenceConfig (its format)"
      )
    if self.preference is not None and (
      self.generation is not None or isinstance(self.text_task, TextTaskConfig)
    ):
      raise ValueError(
        "ExperimentConfig.preference is set with a generative or classification task: "
        "expected text_task=None (the testbed's fact pairs) or a PreferenceTextConfig"
      )
    for i, loss in enumerate(self.losses):
      loss.check_kind(self.generative, f"ExperimentConfig.losses[{i}]")
    if self.dtype not in DTYPES:
      raise ValueError(f"ExperimentConfig.dtype={self.dtype!r}: expected one of {DTYPES}")
    if self.curve_points < 0:
      raise ValueError(
        f"ExperimentConfig.curve_points={self.curve_points}: expected evaluations "
        "per fine-tune >= 0 (0: no training curves)"
      )
    if self.bootstrap_resamples < 100:
      raise ValueError(
        f"ExperimentConfig.bootstrap_resamples={self.bootstrap_resamples}: expected >= 100"
      )

  @property
  def generative(self) -> bool:
    return self.generation is not None

  @property
  def pretraining_varies(self) -> bool:
    """Whether the intervals cover pretraining: more than one draw of a model
    pretrained here (imported models and the no-pretraining ablation are one
    fixed draw each, however many seeds)."""
    return len(self.pretrain_seeds) > 1 and self.use_pretraining

  def model_config(self, size: str, task: Task) -> ModelConfig:
    cfg = self._model_config(size, task)
    if (self.dtype, self.remat) == (cfg.dtype, cfg.remat):
      return cfg
    return dataclasses.replace(cfg, dtype=self.dtype, remat=self.remat)

  def _model_config(self, size: str, task: Task) -> ModelConfig:
    # The classification head's width; a generative task's models have one
    # unused; a pointwise reward model's is one score per sequence.
    num_classes = 2 if task.generative else (1 if task.per_choice else task.num_classes)
    if size in dict(self.pretrained_dirs):
      folder = dict(self.pretrained_dirs)[size]
      encoder = hf_files.read_config(folder).get("model_type") == "bert"
      return hf_import.folder_config(
        folder,
        num_classes=num_classes,
        head_input="hidden" if encoder else self.head_input,
        max_len=task.max_len,
        pooling=self.pooling if encoder else None,
      )
    return decode_size(
      size,
      vocab_size=task.vocab_size,
      max_len=task.max_len,
      head_input=self.head_input,
      num_classes=num_classes,
    )


def schedule_lines(cfg) -> list[str]:
  """What an experiment trains, printed before its first step: its note (a
  preset's purpose and expected time) and its step counts."""
  weak = cfg.weak_finetune or cfg.finetune
  draws = len(cfg.pretrain_seeds)
  return [
    *([cfg.note] if cfg.note else []),
    (
      f"schedule: {len(cfg.seeds)} seeds"
      + (f" x {draws} pretraining draws" if draws > 1 else "")
      + (
        f"; pretraining {cfg.pretrain.steps} steps per model trained from scratch"
        if cfg.use_pretraining
        else ""
      )
      + f"; weak {cfg.weak_size} {weak.steps} steps; strong {cfg.strong_size} "
      f"{cfg.finetune.steps} steps for the ceiling and for each of {len(cfg.losses)} "
      f"W2S losses (batch {cfg.finetune.batch_size})"
    ),
  ]


def check_mesh(cfg: ExperimentConfig):
  """The experiment's mesh, once every batch size is checked against it."""
  mesh = cfg.mesh.make()
  shd.check_batch_size(cfg.finetune.batch_size, mesh, "finetune.batch_size")
  if cfg.weak_finetune is not None:
    shd.check_batch_size(cfg.weak_finetune.batch_size, mesh, "weak_finetune.batch_size")
  shd.check_batch_size(cfg.pretrain.batch_size, mesh, "pretrain.batch_size")
  shd.check_batch_size(cfg.eval_batch_size, mesh, "eval_batch_size")
  return mesh
