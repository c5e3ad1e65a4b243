"""The W2S stages, shared by single runs, sweeps and curation: weak model on
ground truth, strong model on the weak model's supervision, ceiling.

Two task kinds run through the same stages. Classification: the weak model's
supervision is soft labels; models are scored by accuracy. Generation: the
weak model writes a response to each train_w2s prompt (with its per-token
log-probs), and the strong model learns from the responses (`sft`) or, for
token-level KD, from the frozen weak model itself inside its train step;
models are scored on their greedy generations (gen_tasks). All seeds of a
stage train together under jax.vmap, as one compiled program.
"""

import hashlib
from pathlib import Path

import numpy as np

from w2s_jax import gen_tasks, inference, metrics, sampling, scores
from w2s_jax import pretrain, tasks, tokenize, train, weak_curation
from w2s_jax import sharding as shd
from w2s_jax.checkpoints import PretrainedCache
from w2s_jax.data import Dataset, one_hot
from w2s_jax.finetune import (  # noqa: F401 -- re-exported: callers know stages.finetune
    finetune_step, seed_stream, finetune, seed_stacked_abstract)
from w2s_jax.objectives import LossConfig
from w2s_jax.results import remove_stale_temp_files
from w2s_jax.selection import FilterConfig
from w2s_jax.train import OptimConfig


def check_mesh(cfg):
  """The experiment's mesh, once every batch size is checked against it."""
  mesh = cfg.mesh.make()
  shd.check_batch_size(cfg.finetune.batch_size, mesh, "finetune.batch_size")
  if cfg.weak_finetune is not None:
    shd.check_batch_size(cfg.weak_finetune.batch_size, mesh, "weak_finetune.batch_size")
  shd.check_batch_size(cfg.pretrain.batch_size, mesh, "pretrain.batch_size")
  shd.check_batch_size(cfg.eval_batch_size, mesh, "eval_batch_size")
  return mesh


class Context:
  """What every stage of one experiment shares: the task and its splits, the
  mesh and the pretrained models (pretrained lazily, once, through the cache)."""

  def __init__(self, cfg, *, cache_dir, progress=True):
    self.cfg, self.progress = cfg, progress
    self.mesh = check_mesh(cfg)
    self.task = tasks.make_task(world=cfg.world, text=cfg.text_task, generation=cfg.generation)
    self.generative = self.task.generative
    self.splits = self.task.splits
    self.eval_splits = self.task.eval_splits
    self.cache = PretrainedCache(cache_dir)
    if shd.is_main_process():
      remove_stale_temp_files(cache_dir)  # a cache record whose writer was killed
    self.seeds = tuple(cfg.seeds)
    self._pretrained, self._corpus_of, self._encoded, self._view = {}, {}, {}, {}
    if self.generative:
      self.sampling = self.sampling_config()

  def check_models(self, sizes) -> None:
    """Before any compute: an imported model's vocabulary holds every id of
    its tokenizer (its own tokenizer.json, else the task's), each model's
    splits encode, and (generation) each model's context holds the prompts
    plus max_new_tokens, with the EOS and pad ids in its vocabulary."""
    width = max(d["prompt"].shape[1] for d in self.splits.values()) if self.generative else 0
    for size in sizes:
      model_cfg = self.cfg.model_config(size, self.task)
      if size in dict(self.cfg.pretrained_dirs):
        self.splits_of(size)   # an encoding the model can't read fails here, named
        own = self.tokenizer_file(size)
        folder = dict(self.cfg.pretrained_dirs)[size]
        tokenize.check_vocabulary(
            tokenizer_vocab_size=self.task.vocab_size if own is None else
            tokenize.HFTokenizer.from_file(own).vocab_size,
            model_vocab_size=model_cfg.vocab_size,
            model=f"{size} ({Path(folder) / 'config.json'})",
            tokenizer=own or getattr(self.cfg.text_task, "tokenizer", "the task's tokenizer"))
      if self.generative:
        try:
          self.sampling.check(model_cfg, width)
        except ValueError as e:
          raise ValueError(f"model {size!r}: {e}") from None

  # --- Each model's view of the task ----------------------------------------------

  def tokenizer_file(self, size) -> str | None:
    """The tokenizer.json an imported model brings, or None: it reads the
    task's tokenizer, as every from-scratch size does."""
    folder = dict(self.cfg.pretrained_dirs).get(size)
    if folder is None or not (Path(folder) / "tokenizer.json").exists():
      return None
    return str(Path(folder) / "tokenizer.json")

  def splits_of(self, size) -> dict[str, Dataset]:
    """The task's splits as `size` reads them: through its own tokenizer
    (encoded once per tokenizer), else the task's. The same examples in the
    same order either way, so labels and selections pass by index."""
    if size not in self._view:
      self._view[size] = self._encode_for(size)
    return self._view[size][0]

  def _encode_for(self, size) -> tuple[dict, dict | None]:
    """(splits, {tokenizer, per-split counts} or None when the task's own)."""
    own = self.tokenizer_file(size)
    encoder = not self.cfg.model_config(size, self.task).causal
    if own is None:
      if encoder:
        raise ValueError(f"model {size!r} is an encoder without a tokenizer.json in "
                         f"{dict(self.cfg.pretrained_dirs).get(size)}: expected its own tokenizer "
                         "(an encoder reads [CLS] text [SEP] in its own vocabulary)")
      return self.splits, None
    key = (_file_digest(own), encoder)
    task_file = self.task.tokenizer
    if (not encoder and task_file and Path(task_file).is_file()
        and _file_digest(task_file) == key[0]):
      return self.splits, None   # the task's tokenizer is this model's own
    if key not in self._encoded:   # models sharing a tokenizer share its encoding
      if self.task.encode_with is None:
        raise ValueError(
            f"model {size!r} brings its own tokenizer {own}, but the {self.task.name} task "
            f"({self.task.kind}) encodes every model with one tokenizer "
            f"({self.task.tokenizer or 'its own vocabulary'}): expected models that share it "
            "(per-model tokenizers are supported for text classification tasks)")
      self._encoded[key] = self.task.encode_with(own, encoder=encoder)
    splits, report = self._encoded[key]
    return splits, {"tokenizer": own, **report}

  def data(self, size, split) -> Dataset:
    return self.splits_of(size)[split]

  def encodings(self, sizes) -> dict:
    """{size: {tokenizer, per-split counts}} for the models that read the task
    through their own tokenizer."""
    for size in sizes:
      self.splits_of(size)
    return {size: self._view[size][1] for size in sizes if self._view[size][1] is not None}

  def eval_key(self, split, metric) -> str:
    """A split scored by the task's headline metric is keyed by the split alone,
    by a further metric as "split:metric"."""
    return split if metric == self.task.metrics[0] else f"{split}:{metric}"

  @property
  def eval_keys(self) -> tuple[str, ...]:
    """What evaluate() returns: every evaluation split under its headline
    metric, then under each further metric (generation)."""
    metrics_ = self.task.metrics if self.generative else self.task.metrics[:1]
    return tuple(self.eval_key(s, m) for m in metrics_ for s in self.eval_splits)

  @property
  def world(self):
    if self.task.world is None:
      raise ValueError(f"the {self.task.name} task has no testbed world")
    return self.task.world

  @property
  def corpus(self) -> Dataset:
    return self.task.corpus

  def pretrain_on(self, size, corpus: Dataset, tag: str):
    """Pretrain `size` on another corpus (a curated pool) from now on."""
    self._corpus_of[size] = (tag, corpus)
    self._pretrained.pop(size, None)

  def pretrained(self, size):
    """(params, model_cfg, info) for a size, pretrained once per process."""
    if size not in self._pretrained:
      tag, corpus = self._corpus_of.get(size, ("clean", None))
      if (corpus is None and self.cfg.use_pretraining
          and size not in dict(self.cfg.pretrained_dirs)):
        corpus = self.corpus
      self._pretrained[size] = pretrain.pretrained_model(self.cfg, size, self.task, corpus,
                                                         self.mesh, self.cache, self.progress,
                                                         corpus_tag=tag,
                                                         splits=self.splits_of(size))
    return self._pretrained[size]

  # --- Training data ----------------------------------------------------------

  def sampling_config(self, **overrides) -> sampling.SamplingConfig:
    gen = self.cfg.generation
    longest = max(int(d["response_mask"].sum(1).max()) for d in self.splits.values())
    return sampling.SamplingConfig(
        max_new_tokens=gen.max_new_tokens or longest, eos_id=self.task.eos_id,
        pad_id=self.task.pad_id, **overrides)

  def supervised(self, split, targets=None, subsets=None, *, size) -> list[Dataset]:
    """Per seed, what model `size` trains on for `split`: its ground truth, or
    targets from the weak stage (soft labels, or generated responses with
    their masks), restricted per seed to subsets (a filter's selection)."""
    data = self.data(size, split)
    if self.generative:
      if targets is None:
        per_seed = [gen_tasks.sequences(data)] * len(self.seeds)
      else:
        prompts = data.take(np.repeat(np.arange(len(data)), self.cfg.generation.weak_samples))
        per_seed = [gen_tasks.sequences(prompts, r, m) for r, m in zip(*targets)]
    else:
      labels = (one_hot(data["labels"], 2)[None].repeat(len(self.seeds), 0)
                if targets is None else targets)
      per_seed = [data.with_fields(labels=labels[i]) for i in range(len(self.seeds))]
    if subsets is not None:
      if len(subsets) != len(self.seeds):
        raise ValueError(f"subsets: {len(subsets)} given for {len(self.seeds)} seeds")
      per_seed = [d.take(idx) for d, idx in zip(per_seed, subsets)]
    return per_seed

  def tune(self, size, per_seed, loss_cfg, desc, finetune_cfg=None, teacher=None):
    params, model_cfg, _ = self.pretrained(size)
    gt_data = None
    if loss_cfg.needs_gt_data:
      if loss_cfg.gt_examples > len(self.splits["train_gt"]):
        raise ValueError(f"LossConfig.gt_examples={loss_cfg.gt_examples}: train_gt has only "
                         f"{len(self.splits['train_gt'])} examples")
      gt_data = self.supervised("train_gt", size=size)[0].take(np.arange(loss_cfg.gt_examples))
    return finetune(params, model_cfg, per_seed, loss_cfg=loss_cfg,
                    optim_cfg=finetune_cfg or self.cfg.finetune, seeds=self.seeds,
                    mesh=self.mesh, desc=desc, progress=self.progress, gt_data=gt_data,
                    generative=self.generative, teacher=teacher,
                    sampling_cfg=self.sampling if self.generative else None)

  def ground_truth_loss(self) -> LossConfig:
    return LossConfig("sft" if self.generative else "xent")

  # --- Inference and evaluation ----------------------------------------------

  def predict(self, size, params, split):
    return inference.soft_labels(params, self.pretrained(size)[1], self.data(size, split),
                                 batch_size=self.cfg.eval_batch_size, mesh=self.mesh,
                                 seed_axis=True)

  def generate(self, size, params, split, sampling_cfg=None, samples=1, rng_offset=0):
    """Every seed's generations for the split's prompts: (tokens, mask,
    logprobs), each [seeds, N * samples, max_new_tokens]."""
    keys = train.seed_keys([s + rng_offset for s in self.seeds])
    return sampling.generate(params, self.pretrained(size)[1], self.data(size, split),
                             cfg=sampling_cfg or self.sampling, mesh=self.mesh,
                             batch_size=self.cfg.eval_batch_size, rng=keys, seed_axis=True,
                             samples=samples)

  def score(self, split, tokens, mask) -> dict:
    """{metric: [seeds, N]} for generations with a seed axis."""
    per_seed = [self.task.score(split, t, m) for t, m in zip(tokens, mask)]
    return {m: np.stack([s[m] for s in per_seed]) for m in self.task.metrics}

  def evaluate(self, size, params) -> dict:
    """Per seed and example, the score on every evaluation key: {key: [seeds, examples]}."""
    if not self.generative:
      return {split: metrics.correct(probs=self.predict(size, params, split),
                                     labels=self.splits[split]["labels"])
              for split in self.eval_splits}
    out = {}
    for split in self.eval_splits:
      tokens, mask, _ = self.generate(size, params, split)
      for metric, values in self.score(split, tokens, mask).items():
        out[self.eval_key(split, metric)] = values
    return out


def _file_digest(path) -> str:
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- The stages -----------------------------------------------------------------

def weak_stage(ctx: Context, size: str) -> dict:
  """The weak model trained on ground truth, and what it hands the strong
  model: soft labels (classification), or responses with their masks and
  log-probs and, for token-level KD, its params (generation). Also the
  supervision's own accuracy on train_w2s, (generation) each response's
  correctness and curation scores (weak_curation.score_responses), and the
  weak model's scores on the evaluation splits."""
  params = ctx.tune(size, ctx.supervised("train_gt", size=size), ctx.ground_truth_loss(),
                    f"weak {size} on ground truth", ctx.cfg.weak_finetune)
  if ctx.generative:
    gen = ctx.cfg.generation
    weak_sampling = ctx.sampling_config(temperature=gen.weak_temperature, top_p=gen.weak_top_p)
    tokens, mask, logprobs = ctx.generate(size, params, "train_w2s", weak_sampling,
                                          samples=gen.weak_samples, rng_offset=104729)
    curation = weak_curation.score_responses(ctx, size, params, tokens, mask)
    return {"responses": tokens, "response_mask": mask, "logprobs": logprobs,
            "label_accuracy": curation["response_correct"].mean(1), **curation,
            "params": params, **ctx.evaluate(size, params)}
  labels = ctx.predict(size, params, "train_w2s")
  label_acc = metrics.correct(probs=labels, labels=ctx.splits["train_w2s"]["labels"]).mean(1)
  pretrained, model_cfg, _ = ctx.pretrained(size)
  if model_cfg.causal:
    likelihood = scores.sequence_log_likelihood(pretrained, model_cfg, ctx.data(size, "train_w2s"),
                                                batch_size=ctx.cfg.eval_batch_size, mesh=ctx.mesh)
  else:   # an encoder has no LM head: a likelihood filter then says so (weak_curation.py)
    likelihood = np.full(len(labels[0]), np.nan, np.float32)
  return {"labels": labels, "label_accuracy": label_acc, "likelihood": likelihood,
          **ctx.evaluate(size, params)}


def weak_stage_fields(ctx: Context) -> tuple[str, ...]:
  """The arrays a stored weak stage must hold (its params are stored apart)."""
  if ctx.generative:
    return ("responses", "response_mask", "logprobs", "label_accuracy",
            *weak_curation.response_fields(ctx.task, ctx.cfg.generation), *ctx.eval_keys)
  return ("labels", "label_accuracy", "likelihood", *ctx.eval_keys)


def ceiling_stage(ctx: Context, size: str) -> dict:
  params = ctx.tune(size, ctx.supervised("train_gt", size=size), ctx.ground_truth_loss(),
                    f"ceiling {size} on ground truth")
  return ctx.evaluate(size, params)


def w2s_stage(ctx: Context, strong: str, weak: dict, loss_cfg: LossConfig,
              finetune_cfg: OptimConfig | None = None,
              filter_cfg: FilterConfig | None = None, weak_size: str | None = None) -> dict:
  """The strong model trained on the weak stage's supervision, evaluated.
  weak_size names the weak model, for token-level KD (its params are in weak)."""
  loss_cfg.check_kind(ctx.generative)
  subsets = None
  if filter_cfg is not None:  # per seed, the rows kept (weak_curation.py)
    weak_curation.check_filter(filter_cfg, generative=ctx.generative, weak_samples=(
        ctx.cfg.generation.weak_samples if ctx.generative else 1))
    subsets = weak_curation.filter_subsets(weak, filter_cfg, ctx.generative)
  tag = loss_cfg.tag + (f", {filter_cfg.tag}" if filter_cfg else "")
  targets = ((weak["responses"], weak["response_mask"]) if ctx.generative else weak["labels"])
  teacher = None
  if loss_cfg.needs_teacher:
    if weak_size is None or "params" not in weak:
      raise ValueError(f"LossConfig.name={loss_cfg.name!r} trains against the weak model itself: "
                       "expected weak_size and the weak stage's params")
    if ctx.splits_of(weak_size) is not ctx.splits_of(strong):
      raise ValueError(f"LossConfig.name={loss_cfg.name!r} feeds the strong model's tokens to the "
                       f"weak model, but {weak_size!r} and {strong!r} read the task through "
                       "different tokenizers: expected models that share one")
    teacher = (ctx.pretrained(weak_size)[1], weak["params"])
  what = "responses" if ctx.generative else "labels"
  params = ctx.tune(strong, ctx.supervised("train_w2s", targets, subsets, size=strong), loss_cfg,
                    f"strong {strong} on weak {what} ({tag})", finetune_cfg, teacher=teacher)
  out = ctx.evaluate(strong, params)
  if subsets is not None:  # how right the kept weak labels (or responses) are, per seed
    out["kept_label_accuracy"] = weak_curation.kept_label_accuracy(
        weak, subsets, generative=ctx.generative,
        truth=None if ctx.generative else ctx.splits["train_w2s"]["labels"])
  return out


def summarize(weak: dict, w2s: dict, ceiling: dict, *, splits, num_resamples: int) -> dict:
  return {split: metrics.bootstrap_w2s(weak_correct=weak[split], w2s_correct=w2s[split],
                                       ceiling_correct=ceiling[split], num_resamples=num_resamples)
          for split in splits}
