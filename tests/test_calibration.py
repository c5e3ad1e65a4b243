"""Temperature scaling, calibration error and FLOP accounting against hand numbers."""

import jax
import numpy as np
import pytest

from w2s_jax.cascade import calibration
from w2s_jax.models import flops
from w2s_jax.models.model_config import ModelConfig


def test_expected_calibration_error():
  probs = np.array([[0.9, 0.1], [0.15, 0.85], [0.7, 0.3], [0.35, 0.65]])
  labels = [0, 0, 0, 1]  # correct, wrong, correct, correct
  # 5 bins: (0.8, 1] holds 0.9 and 0.85 (acc 0.5, conf 0.875); (0.6, 0.8] holds 0.7, 0.65.
  assert calibration.expected_calibration_error(
    probs=probs, labels=labels, num_bins=5
  ) == pytest.approx(0.5 * 0.375 + 0.5 * 0.325)
  # 15 bins: each alone -> mean |correct - conf| = (0.1 + 0.85 + 0.3 + 0.35) / 4.
  assert calibration.expected_calibration_error(probs=probs, labels=labels) == pytest.approx(0.4)
  edge = np.array([[0.6, 0.4], [0.55, 0.45]])  # bins are (i/B, (i+1)/B]: 0.6 joins 0.55
  assert calibration.expected_calibration_error(
    probs=edge, labels=[0, 1], num_bins=5
  ) == pytest.approx(abs(1 - 1.15) / 2)
  calibrated = np.array([[0.7, 0.3]] * 10 + [[0.1, 0.9]] * 10)
  labels = [0] * 7 + [1] * 3 + [1] * 9 + [0]
  assert calibration.expected_calibration_error(probs=calibrated, labels=labels) == pytest.approx(
    0, abs=1e-12
  )


@pytest.mark.parametrize("k", [3.0, 0.5])
def test_fit_temperature_recovers_known_scale(k):
  rng = np.random.default_rng(0)
  true_logits = 2.0 * rng.normal(size=(4000, 4))
  p = np.exp(true_logits - true_logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  labels = (rng.random((4000, 1)) > np.cumsum(p, 1)).sum(1)
  logits = true_logits * k
  t = calibration.fit_temperature(logits=logits, labels=labels)
  assert t == pytest.approx(k, rel=0.1)
  softmax = lambda z: np.asarray(jax.nn.softmax(z, -1))
  before = calibration.expected_calibration_error(probs=softmax(logits), labels=labels)
  after = calibration.expected_calibration_error(probs=softmax(logits / t), labels=labels)
  assert after < 0.5 * before and after < 0.03
  assert calibration.fit_temperature(logits=true_logits, labels=labels) == pytest.approx(1, rel=0.1)


def test_flops():
  np.testing.assert_allclose(flops.forward_flops(num_params=10, tokens=[1, 2]), [20, 40])
  cfg = ModelConfig(vocab_size=10, width=8, depth=1, heads=2, max_len=4, mlp_dim=32)
  # block 872 (2 LNs 32, attn 216, proj 72, mlp 288 + 264), final LN 16, lm_probs head 22;
  # embeddings: tokens 80 + positions 32.
  assert cfg.num_params == 910 + 112
  np.testing.assert_allclose(flops.model_flops(config=cfg, tokens=[3, 5]), [5460, 9100])
  np.testing.assert_allclose(
    flops.model_flops(config=cfg, tokens=[3], include_embeddings=True), [2 * 1022 * 3]
  )
  untied = ModelConfig(
    vocab_size=10,
    width=8,
    depth=1,
    heads=1,
    max_len=4,
    mlp_dim=32,
    positions="rotary",
    tie_embeddings=False,
  )
  np.testing.assert_allclose(flops.model_flops(config=untied, tokens=[1]), [2 * 910])


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"labels \(2,\) int64"):
    calibration.fit_temperature(logits=np.zeros((2, 3)), labels=[0, 3])
  with pytest.raises(ValueError, match=r"probs \(3,\)"):
    calibration.expected_calibration_error(probs=np.zeros(3), labels=[0, 1, 0])
  with pytest.raises(ValueError, match="tokens"):
    flops.forward_flops(num_params=10, tokens=[-1])
