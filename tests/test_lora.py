"""LoRA: at init the model is the base exactly; only the adapters and the head
train, the base is bitwise unchanged and has no optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.infra.fingerprint import fingerprint
from w2s_jax.models import model_config, transformer
from w2s_jax.training import finetune, lora, train
from w2s_jax.training.classifier_losses import Xent
from w2s_jax.training.train import OptimConfig

from fakes import finetune_setup


def _gqa_cfg():
  return model_config.ModelConfig(
    vocab_size=11,
    width=32,
    depth=2,
    heads=4,
    kv_heads=2,
    max_len=6,
    norm="rmsnorm",
    mlp="swiglu",
    positions="rotary",
    rotary_frac=1.0,
    qkv_bias=False,
    attn_out_bias=False,
    mlp_bias=False,
    head_input="hidden",
  )


@pytest.mark.parametrize("targets", [("q", "v"), lora.TARGETS])
@pytest.mark.parametrize("make_cfg", [lambda: finetune_setup()[0], _gqa_cfg])
def test_at_init_the_model_is_the_base_exactly(make_cfg, targets):
  cfg = make_cfg()
  base = transformer.init_params(cfg, jax.random.key(0))
  trainable = lora.trainable_params(base, cfg, rank=4, targets=targets, rng=jax.random.key(1))
  merged = lora.merge(base, trainable, model_cfg=cfg, alpha=16.0)
  jax.tree.map(np.testing.assert_array_equal, merged, base)
  # ...and a non-zero B moves exactly the targeted columns.
  moved = jax.tree.map(lambda x: x + 1.0, trainable)
  merged = lora.merge(base, moved, model_cfg=cfg, alpha=16.0)
  kernel, base_kernel = merged["block_0"]["qkv"]["kernel"], base["block_0"]["qkv"]["kernel"]
  changed = np.abs(np.asarray(kernel - base_kernel)).max(0) > 0
  for part in lora.QKV_PARTS:
    start, end = lora.qkv_columns(cfg, part)
    assert changed[start:end].all() == (part in targets) and changed[start:end].any() == (
      part in targets
    )


def test_only_adapters_and_head_train_and_the_base_is_untouched(mesh4):
  cfg, data, labels, _ = finetune_setup()
  optim = OptimConfig(steps=4, batch_size=8, lr=1e-2, head_lr=1e-1, warmup_frac=0.0, lora_rank=2)
  base = jax.device_get(transformer.init_params(cfg, jax.random.key(0)))
  before = jax.tree.map(np.array, base)
  per_seed = [data.with_fields(labels=l) for l in labels[:2]]
  merged = jax.device_get(
    finetune.finetune(
      base,
      cfg,
      per_seed,
      seeds=(0, 1),
      loss_cfg=Xent(),
      optim_cfg=optim,
      mesh=mesh4,
      desc="t",
      progress=False,
    )[0]
  )
  jax.tree.map(np.testing.assert_array_equal, base, before)  # the base itself: bitwise
  q_end = cfg.heads * cfg.head_dim
  for i in range(cfg.depth):
    block, old = merged[f"block_{i}"], before[f"block_{i}"]
    for name in ("attn_out", "mlp_in", "mlp_out", "ln_attn", "ln_mlp"):
      jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[0], b), block[name], old[name])
    np.testing.assert_array_equal(block["qkv"]["bias"][0], old["qkv"]["bias"])
    k = slice(q_end, 2 * q_end)  # keys are not a default target
    np.testing.assert_array_equal(block["qkv"]["kernel"][0][:, k], old["qkv"]["kernel"][:, k])
    for part in (slice(0, q_end), slice(2 * q_end, 3 * q_end)):  # q and v moved
      assert np.abs(block["qkv"]["kernel"][:, :, part] - old["qkv"]["kernel"][:, part]).max() > 0
  assert np.abs(merged["cls_head"]["kernel"] - before["cls_head"]["kernel"]).max() > 0
  np.testing.assert_array_equal(merged["embed"]["embedding"][1], before["embed"]["embedding"])
  # The seeds' adapters differ (their own keys, labels and batch orders).
  assert (
    np.abs(merged["block_0"]["qkv"]["kernel"][0] - merged["block_0"]["qkv"]["kernel"][1]).max() > 0
  )


def test_the_optimizer_holds_no_base_sized_state():
  cfg = _gqa_cfg()
  optim = OptimConfig(lora_rank=4, lora_targets=lora.TARGETS)
  base = transformer.init_params(cfg, jax.random.key(0))
  trainable = lora.trainable_params(
    base, cfg, rank=4, targets=optim.lora_targets, rng=jax.random.key(1)
  )
  state = train.init_state(trainable, train.make_optimizer(optim))
  trainable_shapes = {x.shape for x in jax.tree.leaves(trainable)}
  opt_shapes = {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim}
  assert opt_shapes <= trainable_shapes
  opt_size = sum(x.size for x in jax.tree.leaves(state.opt_state))
  assert opt_size < 0.5 * transformer.count_params(base)
  kernels = {
    x.shape
    for path, x in jax.tree_util.tree_leaves_with_path(base)
    if "kernel" in jax.tree_util.keystr(path) and "cls_head" not in jax.tree_util.keystr(path)
  }
  assert not opt_shapes & kernels


def test_lora_targets_that_name_no_layer_are_refused():
  with pytest.raises(
    ValueError,
    match=r"OptimConfig.lora_targets=\('q', 'o_proj'\): \['o_proj'\] "
    "names no layer",
  ):
    OptimConfig(lora_rank=8, lora_targets=("q", "o_proj"))
  with pytest.raises(ValueError, match="OptimConfig.lora_rank=-1: expected an int >= 0"):
    OptimConfig(lora_rank=-1)
  with pytest.raises(ValueError, match="lora_rank > 0 with linear_probe=True"):
    OptimConfig(lora_rank=4, linear_probe=True)
  # Unset LoRA fields stay out of the repr, hence out of pretrained-cache keys.
  assert "lora_rank" not in fingerprint(OptimConfig())
  assert fingerprint(OptimConfig(lora_rank=4))["lora_rank"] == 4


def test_alpha_over_rank_scales_the_update():
  # alpha / rank scales the update: with the same A and B, alpha 2x doubles the delta.
  cfg = finetune_setup()[0]
  base = transformer.init_params(cfg, jax.random.key(0))
  t = lora.trainable_params(base, cfg, rank=2, targets=("mlp_in",), rng=jax.random.key(3))
  t = jax.tree.map(lambda x: x, t)  # a copy of the dicts
  t["lora"]["block_0"]["mlp_in"]["b"] = jnp.ones_like(t["lora"]["block_0"]["mlp_in"]["b"])
  delta = lambda alpha: (
    lora.merge(base, t, model_cfg=cfg, alpha=alpha)["block_0"]["mlp_in"]["kernel"]
    - base["block_0"]["mlp_in"]["kernel"]
  )
  np.testing.assert_allclose(delta(8.0), 2 * delta(4.0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    delta(4.0),
    2.0 * np.asarray(t["lora"]["block_0"]["mlp_in"]["a"] @ t["lora"]["block_0"]["mlp_in"]["b"]),
    rtol=1e-5,
  )


def test_a_lora_checkpoint_holds_adapters_and_head_and_names_its_base(tmp_path):
  cfg = _gqa_cfg()
  base = transformer.init_params(cfg, jax.random.key(0))
  trainable = lora.trainable_params(base, cfg, rank=4, targets=("q", "v"), rng=jax.random.key(1))
  trainable = jax.tree.map(lambda x: x + 0.5, trainable)  # as if trained
  lora.save(
    tmp_path / "run",
    trainable,
    base=base,
    base_name="Qwen2.5-7B",
    rank=4,
    alpha=8.0,
    targets=("q", "v"),
  )
  restored, record = lora.load(tmp_path / "run", base=base, model_cfg=cfg)
  jax.tree.map(np.testing.assert_array_equal, restored, trainable)
  assert (record["base"], record["rank"], record["alpha"]) == ("Qwen2.5-7B", 4, 8.0)
  stored = sum(f.stat().st_size for f in (tmp_path / "run").rglob("*") if f.is_file())
  base_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(base))
  adapter_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainable))
  assert adapter_bytes < base_bytes / 4 and stored < base_bytes / 2  # no base inside
  other = transformer.init_params(cfg, jax.random.key(7))
  with pytest.raises(
    ValueError,
    match="adapters trained on base 'Qwen2.5-7B'.*expected the base they were trained on",
  ):
    lora.load(tmp_path / "run", base=other, model_cfg=cfg)
