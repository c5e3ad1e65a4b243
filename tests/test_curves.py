"""Training curves (w2s/curves.py, loop.Watch): hand-computed point values,
the points a loop takes (at the right steps, whole after a resume), the
oracle's pick, the files (read back with tensorboard's own reader)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.data.dataset import Dataset, shuffled_batches
from w2s_jax.infra import checkpoints, sharding
from w2s_jax.models import model_config, transformer
from w2s_jax.training import loop, objectives, train
from w2s_jax.training.train import OptimConfig
from w2s_jax.w2s import curves

# --- What a point measures -------------------------------------------------------------


def test_classification_sums_by_hand():
  probs = np.array(
    [
      [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]],  # seed 0
      [[0.3, 0.7], [0.4, 0.6], [0.1, 0.9], [0.5, 0.5]],  # seed 1
    ],
    np.float32,
  )
  labels = np.array([0, 1, 1, 0])
  weight = np.array([1, 1, 1, 0], np.float32)  # the last row pads the batch
  reference = np.array([[0, 0, 0, 1], [1, 1, 1, 1]])
  sums = jax.device_get(
    curves.classification_sums(probs=probs, labels=labels, weight=weight, reference=reference)
  )
  np.testing.assert_allclose(sums["count"], [3, 3])
  # seed 0 predicts 0, 1, 0: right on rows 0 and 1; seed 1 predicts 1, 1, 1: rows 1 and 2
  np.testing.assert_allclose(sums["correct"], [2, 2])
  np.testing.assert_allclose(
    sums["xent"],
    [-np.log(0.9) - np.log(0.8) - np.log(0.4), -np.log(0.3) - np.log(0.6) - np.log(0.9)],
    rtol=1e-6,
  )
  # seed 0 agrees with [0, 0, 0] on rows 0 and 2; seed 1 with [1, 1, 1] on all three
  np.testing.assert_allclose(sums["agree"], [2, 3])
  point = jax.device_get(curves.finish(sums, "test", generative=False))
  np.testing.assert_allclose(point["test/accuracy"], [2 / 3, 2 / 3], rtol=1e-6)
  np.testing.assert_allclose(point["test/agreement"], [2 / 3, 1.0], rtol=1e-6)
  assert "agree" not in curves.classification_sums(probs=probs, labels=labels, weight=weight)


def test_response_sums_by_hand():
  # One sequence: prompt token 1, response tokens 2, 3; logits[t] predicts tokens[t + 1].
  tokens = np.array([[1, 2, 3]])
  loss_mask = np.array([[0, 1, 1]])
  logits = np.log(
    np.array(
      [
        [[0.1, 0.1, 0.7, 0.1], [0.1, 0.5, 0.1, 0.3], [0.25, 0.25, 0.25, 0.25]],  # seed 0
        [[0.1, 0.1, 0.1, 0.7], [0.1, 0.1, 0.1, 0.7], [0.25, 0.25, 0.25, 0.25]],  # seed 1
      ],
      np.float32,
    )
  )[:, None]
  sums = jax.device_get(curves.response_sums(logits=logits, tokens=tokens, loss_mask=loss_mask))
  np.testing.assert_allclose(sums["count"], [2, 2])
  np.testing.assert_allclose(
    sums["nll"], [-np.log(0.7) - np.log(0.3), -np.log(0.1) - np.log(0.7)], rtol=1e-5
  )
  # seed 0's greedy tokens 2, 1 (right, wrong); seed 1's 3, 3 (wrong, right)
  np.testing.assert_allclose(sums["correct"], [1, 1])
  point = jax.device_get(curves.finish(sums, "test", generative=True))
  np.testing.assert_allclose(point["test/token_accuracy"], [0.5, 0.5])


def test_oracle_picks_the_best_mean_point_and_says_where():
  curve = {
    curves.STEP: np.array([10, 20, 30]),
    curves.PREFIX + "test/accuracy": np.array([[0.5, 0.7], [0.9, 0.7], [0.6, 0.6]]),
  }
  assert curves.oracle(curve, "test/accuracy") == {"final": 0.6, "best": 0.8, "best_step": 20}
  flat = {**curve, curves.PREFIX + "test/accuracy": np.full((3, 2), 0.5)}
  assert curves.oracle(flat, "test/accuracy")["best_step"] == 10  # a tie: the earliest


def test_pooled_and_split_back_per_draw():
  a = {curves.STEP: np.array([5, 10]), curves.PREFIX + "loss": np.array([[1.0, 2.0], [3.0, 4.0]])}
  b = {curves.STEP: np.array([5, 10]), curves.PREFIX + "loss": np.array([[5.0, 6.0], [7.0, 8.0]])}
  both = curves.pooled([a, b])
  np.testing.assert_array_equal(both[curves.PREFIX + "loss"], [[1, 2, 5, 6], [3, 4, 7, 8]])
  record = {
    "id": "c",
    "cell": {"weak": "pico", "strong": "nano"},
    "runs": [[0, 0], [0, 1], [1, 0], [1, 1]],
    "curves": {"w2s": {k[len(curves.PREFIX) :]: v.tolist() for k, v in both.items()}},
  }
  runs = curves.of_cells([record])
  assert list(runs) == ["pretrain0/w2s-c", "pretrain1/w2s-c"]
  curve, seeds = runs["pretrain1/w2s-c"]
  assert seeds == [0, 1]
  np.testing.assert_array_equal(curve[curves.PREFIX + "loss"], b[curves.PREFIX + "loss"])
  with pytest.raises(ValueError, match="differ between draws"):
    curves.pooled([a, {**b, curves.STEP: np.array([5, 11])}])


# --- The loop's points -------------------------------------------------------------------

MODEL = model_config.decode_size("pico", vocab_size=16, max_len=8)


def _run(tmp_path, steps, *, watch_every=2, total=9, killed_at=None):
  """An LM trained to `steps` of `total`, checkpointed every 3 steps (resumes
  from the folder's latest), watched every `watch_every` steps; killed_at:
  the loop dies when it asks for that step's batch."""
  optim = OptimConfig(steps=total, batch_size=8, lr=1e-2, warmup_frac=0.0)
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
  ckpts = checkpoints.TrainCheckpoints(tmp_path / "ckpt", every=3, data={"seed": 0})
  state = ckpts.restore(state)
  rng = np.random.default_rng(0)
  data = Dataset(
    tokens=rng.integers(1, 16, (64, 8)).astype(np.int32), mask=np.ones((64, 8), np.int32)
  )
  step = train.compile_train_step(
    loss_fn=objectives.lm_objective(MODEL),
    optimizer=optimizer,
    total_steps=total,
    mesh=mesh,
    state_sharding=train.sharding_of(state),
  )
  seen = []  # the steps measured in this process (a resumed run's earlier ones are not)

  def measure(state):
    seen.append(state.step + 0)  # a copy: the state itself is donated to the next step
    return {
      "embed_norm": jnp.linalg.norm(state.params["embed"]["embedding"]),
      "state_step": state.step.astype(jnp.float32),
    }

  start = loop.first_step(state)

  def batches():
    for i, batch in enumerate(shuffled_batches(data, batch_size=8, seed=0, start_step=start)):
      if start + i == killed_at:
        raise KeyboardInterrupt
      yield batch

  try:
    state, metrics = loop.fit(
      state,
      step,
      batches(),
      num_steps=steps,
      mesh=mesh,
      desc="t",
      progress=False,
      checkpoints=ckpts,
      watch=loop.Watch(every=watch_every, measure=measure),
    )
  finally:
    ckpts.close()
  return state, metrics["curve"], [int(s) for s in jax.device_get(seen)]


def test_points_at_every_k_steps_and_the_last_with_the_state_of_that_step(tmp_path):
  state, curve, seen = _run(tmp_path, 9)
  assert [p["step"] for p in curve] == [2, 4, 6, 8, 9]
  assert seen == [2, 4, 6, 8, 9]
  assert [p["state_step"] for p in curve] == [2, 4, 6, 8, 9]  # the state after its step
  assert curve[-1]["embed_norm"] == pytest.approx(
    float(jnp.linalg.norm(state.params["embed"]["embedding"]))
  )
  assert len({p["loss"] for p in curve}) == len(curve)  # the loss at each point, not the last


def test_a_resumed_loop_has_the_whole_curve(tmp_path):
  _, whole, _ = _run(tmp_path / "whole", 9)
  with pytest.raises(KeyboardInterrupt):  # killed after step 7; its last checkpoint is step 6
    _run(tmp_path / "cut", 9, killed_at=7)
  _, resumed, seen = _run(tmp_path / "cut", 9)
  assert seen == [8, 9]  # the points before step 6 came from the checkpoint's record
  assert [p["step"] for p in resumed] == [2, 4, 6, 8, 9]
  for a, b in zip(resumed, whole):
    assert a == pytest.approx(b, rel=1e-6)


def test_watch_every_must_be_a_step_count():
  with pytest.raises(ValueError, match=r"Watch.every=0: expected a step count >= 1"):
    loop.Watch(every=0, measure=lambda s: {})


# --- Files ----------------------------------------------------------------------------------


def _curve():
  return {
    curves.STEP: np.array([3, 6]),
    curves.PREFIX + "loss": np.array([[0.9, 0.8], [0.5, 0.4]], np.float32),
    curves.PREFIX + "test/accuracy": np.array([[0.6, 0.625], [0.75, 0.875]], np.float32),
  }


def test_jsonl_and_tensorboard_events_read_back(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator

  written = curves.write(tmp_path, {"pretrain0/weak-pico": (_curve(), [4, 7])})
  assert [p.name for p in written] == ["seed4", "seed7"]
  seed7 = tmp_path / "pretrain0" / "weak-pico" / "seed7"
  rows = [json.loads(l) for l in (seed7 / "curve.jsonl").read_text().splitlines()]
  assert rows == [
    {"step": 3, "loss": pytest.approx(0.8), "test/accuracy": 0.625},
    {"step": 6, "loss": pytest.approx(0.4), "test/accuracy": 0.875},
  ]
  events = event_accumulator.EventAccumulator(str(seed7))
  events.Reload()
  assert sorted(events.Tags()["tensors"]) == ["loss", "test/accuracy"]
  read = [
    (e.step, float(np.asarray(e.tensor_proto.float_val)[0]))
    for e in events.Tensors("test/accuracy")
  ]
  assert read == [(3, 0.625), (6, 0.875)]


def test_rewriting_keeps_equal_curves_and_leaves_foreign_folders_alone(tmp_path):
  curves.write(tmp_path, {"run": (_curve(), [0])})
  seed0 = tmp_path / "run" / "seed0"
  before = sorted(p.name for p in seed0.iterdir())
  curves.write(tmp_path, {"run": (_curve(), [0])})  # the same rows: nothing rewritten
  assert sorted(p.name for p in seed0.iterdir()) == before
  changed = {**_curve(), curves.PREFIX + "loss": np.zeros((2, 1), np.float32)}
  curves.write(tmp_path, {"run": (changed, [0])})  # other rows: replaced whole, one event file
  assert len(list(seed0.glob("events.out.tfevents*"))) == 1
  assert json.loads((seed0 / "curve.jsonl").read_text().splitlines()[0])["loss"] == 0.0
  foreign = tmp_path / "other" / "seed0"
  foreign.mkdir(parents=True)
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="without a curve.jsonl"):
    curves.write(tmp_path, {"other": (_curve(), [0])})
  assert (foreign / "notes.txt").read_text() == "mine"
