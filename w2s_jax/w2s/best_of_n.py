"""What a reward model buys at generation time: best-of-n on the testbed.

The weak policy (the reward experiment's weak size, fine-tuned on the
ground-truth responses of the generative testbed's `city` format, '<bos> aX
bY lives' -> 'cK .') writes n candidates per test prompt: its greedy
response first, then n - 1 samples at `temperature`. Each reward model
scores every candidate as the pointwise sequence it learnt from (prompt, then
response) and picks the highest (ties: the earliest, so the greedy response);
a pick is right when it names the right city. Three reward models, those of
the preference experiment: the weak RM (ground-truth pairs), the W2S strong
RM (the weak RM's soft preferences, with `loss`) and the ceiling RM (strong,
ground truth); beside them the oracle pick (right when any candidate is)
and a random pick (the mean over the candidates). Per n, with intervals over
pretraining draws, fine-tuning seeds and prompts.

With n = 1 every pick is the greedy response; no pick beats the oracle.
"""

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from w2s_jax.data.dataset import Dataset
from w2s_jax.infra.files import prepare_out_dir, write_json_atomic
from w2s_jax.infra.fingerprint import KEY_SCHEME, fingerprint
from w2s_jax.infra.store import claim_folder
from w2s_jax.models import inference
from w2s_jax.tasks.generation import GenerationConfig
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.generative_losses import Sft
from w2s_jax.training.objectives import Loss
from w2s_jax.w2s import metrics, report
from w2s_jax.w2s import parts as parts_lib
from w2s_jax.w2s.experiment import ExperimentConfig, check_mesh

PICKERS = ("weak RM", "W2S RM", "ceiling RM", "oracle", "random")


@dataclasses.dataclass(frozen=True)
class BestOfNConfig:
  """Best-of-n for a pointwise testbed preference experiment (configs/reward.py)."""

  reward: ExperimentConfig
  ns: tuple[int, ...] = (1, 2, 4, 8, 16)
  temperature: float = 1.0  # the policy's samples after its greedy response
  loss: Loss = Xent()  # the W2S strong RM's loss
  split: str = "test"

  def __post_init__(self):
    pref = self.reward.preference
    if pref is None or pref.format != "pointwise" or self.reward.text_task is not None:
      raise ValueError(
        f"BestOfNConfig.reward: preference={pref!r}, text_task={self.reward.text_task!r}: "
        "expected a pointwise preference experiment on the testbed (its RMs score the "
        "policy's responses one by one)"
      )
    if not self.ns or list(self.ns) != sorted(set(self.ns)) or self.ns[0] < 1:
      raise ValueError(f"BestOfNConfig.ns={self.ns!r}: expected increasing ints >= 1")
    if not self.temperature > 0:
      raise ValueError(f"BestOfNConfig.temperature={self.temperature!r}: expected > 0")
    if self.split not in ("test", "heldout"):
      raise ValueError(f"BestOfNConfig.split={self.split!r}: expected 'test' or 'heldout'")
    self.loss.check_kind(False, "BestOfNConfig.loss")


# ------------------------------------------------------- picks, by hand


def picked_correct(*, rewards, correct, n: int) -> np.ndarray:
  """[..., N] whether the highest-reward candidate among the first n is right
  (ties: the earliest). rewards, correct: [..., N, candidates]."""
  r, c = np.asarray(rewards)[..., :n], np.asarray(correct)[..., :n]
  return np.take_along_axis(c, r.argmax(-1)[..., None], -1)[..., 0].astype(np.float64)


def oracle_correct(*, correct, n: int) -> np.ndarray:
  """[..., N] whether any of the first n candidates is right."""
  return np.asarray(correct)[..., :n].max(-1).astype(np.float64)


def random_correct(*, correct, n: int) -> np.ndarray:
  """[..., N] a uniform pick's chance of being right among the first n."""
  return np.asarray(correct)[..., :n].mean(-1, dtype=np.float64)


def curves(*, rewards: dict, correct, ns, draws=None, num_resamples=2000) -> dict:
  """{picker: {n: accuracy with its interval}} over runs and prompts.

  Args:
    rewards: {RM name: [runs, N, candidates]} each RM's scores.
    correct: [runs, N, candidates] 0/1, whether each candidate is right.
    ns: the n to report (each <= candidates).
    draws: [runs] each run's pretraining draw (the interval resamples them).
  """
  out = {}
  for name in (*rewards, "oracle", "random"):
    out[name] = {}
    for n in ns:
      if name == "oracle":
        c = oracle_correct(correct=correct, n=n)
      elif name == "random":
        c = random_correct(correct=correct, n=n)
      else:
        c = picked_correct(rewards=rewards[name], correct=correct, n=n)
      out[name][n] = metrics.accuracy_interval(c, pretraining=draws, num_resamples=num_resamples)
  return out


# ------------------------------------------------------- the experiment


def policy_config(reward: ExperimentConfig) -> ExperimentConfig:
  """The generative testbed of the reward experiment's world and models
  (the same pretrained cache entries), in the `city` format: its pointwise
  pairs' sequences are prompt + response there."""
  return dataclasses.replace(
    reward, preference=None, generation=GenerationConfig(format="city"), losses=(Sft(),)
  )


def candidates(parts, size: str, cfg: BestOfNConfig):
  """The weak policy's n_max candidates per prompt of the split: (tokens,
  mask) [seeds, N, n, T], greedy first, and whether each is right [seeds, N, n]."""
  trainer, evaluator = parts.trainer, parts.evaluator
  params, _ = trainer.tune(
    size, trainer.supervised("train_gt", size=size), Sft(), f"policy {size} on ground truth"
  )
  greedy_t, greedy_m, _ = evaluator.generate(size, params, cfg.split)
  tokens, mask = [greedy_t[:, :, None]], [greedy_m[:, :, None]]
  if cfg.ns[-1] > 1:
    sampler = dataclasses.replace(evaluator.sampling, temperature=cfg.temperature)
    more = cfg.ns[-1] - 1
    t, m, _ = evaluator.generate(size, params, cfg.split, sampler, samples=more, rng_offset=7841)
    s, _, width = t.shape  # prompt-major: [seeds, N * more, T]
    tokens.append(t.reshape(s, -1, more, width))
    mask.append(m.reshape(s, -1, more, width))
  tokens, mask = np.concatenate(tokens, 2), np.concatenate(mask, 2)
  correct = np.stack(
    [
      evaluator.score(cfg.split, tokens[:, :, j], mask[:, :, j])["fields"]
      for j in range(tokens.shape[2])
    ],
    axis=2,
  )
  return tokens, mask, correct


def reward_models(parts, cfg: BestOfNConfig) -> dict:
  """{RM name: params stacked per seed}: the preference experiment's three RMs."""
  trainer, evaluator, rcfg = parts.trainer, parts.evaluator, parts.cfg
  weak, strong = rcfg.weak_size, rcfg.strong_size
  weak_params, _ = trainer.tune(
    weak, trainer.supervised("train_gt", size=weak), Xent(), f"weak RM {weak}", rcfg.weak_finetune
  )
  soft = evaluator.predict(weak, weak_params, "train_w2s")
  w2s_params, _ = trainer.tune(
    strong, trainer.supervised("train_w2s", soft, size=strong), cfg.loss, f"W2S RM {strong}"
  )
  ceiling_params, _ = trainer.tune(
    strong, trainer.supervised("train_gt", size=strong), Xent(), f"ceiling RM {strong}"
  )
  return {
    "weak RM": (weak, weak_params),
    "W2S RM": (strong, w2s_params),
    "ceiling RM": (strong, ceiling_params),
  }


def candidate_rewards(parts, size, params, *, prompts, tokens, mask) -> np.ndarray:
  """[seeds, N, n] each seed's RM scores of that seed's candidates, read as
  prompt + response (one sequence per candidate)."""
  n = tokens.shape[2]
  p = np.broadcast_to(prompts[:, None], (len(prompts), n, prompts.shape[1]))
  out = []
  for s in range(tokens.shape[0]):
    data = Dataset(
      tokens=np.concatenate([p, tokens[s]], -1).astype(np.int32),
      mask=np.concatenate([np.ones_like(p), mask[s]], -1).astype(np.int32),
    )
    one_seed = jax.tree.map(lambda x, s=s: x[s], params)
    out.append(
      inference.class_scores(
        one_seed,
        parts.models.get(size).model_cfg,
        data,
        batch_size=parts.cfg.eval_batch_size,
        mesh=parts.mesh,
      )
    )
  return np.stack(out)


def run(cfg: BestOfNConfig, *, out_dir, cache_dir, progress=True, overwrite=False) -> dict:
  """Every pretraining draw's policy, candidates and RMs, then the curves;
  writes out_dir/best_of_n.json and best_of_n.png. Returns the results."""
  started = time.perf_counter()
  check_mesh(cfg.reward)
  out = prepare_out_dir(out_dir)
  identity = {"key_scheme": KEY_SCHEME, **json.loads(json.dumps(fingerprint(cfg)))}
  claim_folder(
    out,
    record="best_of_n_config.json",
    identity=identity,
    what="a best-of-n run",
    overwrite=overwrite,
  )
  policy_all = parts_lib.build(policy_config(cfg.reward), cache_dir=cache_dir, progress=progress)
  reward_all = parts_lib.build(cfg.reward, cache_dir=cache_dir, progress=progress)
  rewards, correct, draws = {}, [], []
  for draw in cfg.reward.pretrain_seeds:
    policy, reward = policy_all.for_draw(draw), reward_all.for_draw(draw)
    tokens, mask, right = candidates(policy, cfg.reward.weak_size, cfg)
    prompts = policy.views.data(cfg.reward.weak_size, cfg.split)["prompt"]
    for name, (size, params) in reward_models(reward, cfg).items():
      rewards.setdefault(name, []).append(
        candidate_rewards(reward, size, params, prompts=prompts, tokens=tokens, mask=mask)
      )
    correct.append(right)
    draws += [draw] * len(right)
  results = {
    "ns": list(cfg.ns),
    "split": cfg.split,
    "draws": len(cfg.reward.pretrain_seeds),
    "seeds": len(cfg.reward.seeds),
    "curves": {
      name: {str(n): v for n, v in per_n.items()}
      for name, per_n in curves(
        rewards={k: np.concatenate(v) for k, v in rewards.items()},
        correct=np.concatenate(correct),
        ns=cfg.ns,
        draws=np.asarray(draws),
        num_resamples=cfg.reward.bootstrap_resamples,
      ).items()
    },
    "seconds": time.perf_counter() - started,
  }
  write_json_atomic(Path(out) / "best_of_n.json", results)
  report.best_of_n_chart(results, out)
  return results


def format_results(results: dict) -> str:
  """The curves as a table: picker x n, mean [interval]."""
  ns = results["ns"]
  head = ["picker", *[f"n={n}" for n in ns]]
  rows = [
    [name, *[f"{c[str(n)]['mean']:.3f} [{c[str(n)]['lo']:.3f}, {c[str(n)]['hi']:.3f}]" for n in ns]]
    for name, c in results["curves"].items()
  ]
  widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
  line = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths))
  return "\n".join(
    [
      f"best-of-n on {results['split']}: accuracy of the picked response, mean [95% bootstrap "
      f"interval over {results['draws']} pretraining draw(s), {results['seeds']} seeds and prompts]",
      line(head),
      line(["-" * w for w in widths]),
      *map(line, rows),
    ]
  )
