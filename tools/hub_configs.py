"""Writes the config.json of the models the docs plan for, so the pod planner
can compile their programs without their weights (it reads nothing else).

  python tools/hub_configs.py --out /tmp/models          # then, for example:
  python -m w2s_jax plan --config configs/qwen_w2s.py:models=/tmp/models --topology v5p:2x2x2

The fields are those of each model's config.json on the Hugging Face Hub
(architecture only: sizes, heads, vocabulary, positions, tying), copied
here by hand; a folder that already has a config.json is left alone (a real
checkpoint's own file wins). Folders: DIR/<name>/config.json.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from w2s_jax.infra import files


def gpt2(width, depth, heads):
  return dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=width, n_layer=depth,
              n_head=heads, activation_function="gelu_new", layer_norm_epsilon=1e-5,
              tie_word_embeddings=True)  # fmt: skip


def pythia(width, depth, heads, vocab):
  return dict(model_type="gpt_neox", vocab_size=vocab, hidden_size=width, num_hidden_layers=depth,
              num_attention_heads=heads, intermediate_size=4 * width, hidden_act="gelu",
              rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048,
              layer_norm_eps=1e-5, use_parallel_residual=True, tie_word_embeddings=False)  # fmt: skip


def qwen2(width, depth, heads, kv_heads, mlp, tie):
  return dict(model_type="qwen2", vocab_size=151936, hidden_size=width, num_hidden_layers=depth,
              num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=mlp,
              hidden_act="silu", max_position_embeddings=32768, rope_theta=1000000.0,
              rms_norm_eps=1e-6, tie_word_embeddings=tie, use_sliding_window=False)  # fmt: skip


def llama3(width, depth, heads, kv_heads, mlp, tie, factor):
  return dict(model_type="llama", vocab_size=128256, hidden_size=width, num_hidden_layers=depth,
              num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=mlp,
              hidden_act="silu", max_position_embeddings=131072, rope_theta=500000.0,
              rope_scaling=dict(rope_type="llama3", factor=factor, high_freq_factor=4.0,
                                low_freq_factor=1.0, original_max_position_embeddings=8192),
              rms_norm_eps=1e-5, tie_word_embeddings=tie, attention_bias=False,
              mlp_bias=False)  # fmt: skip


MODELS = {
  "gpt2": gpt2(768, 12, 12),
  "gpt2-medium": gpt2(1024, 24, 16),
  "gpt2-large": gpt2(1280, 36, 20),
  "gpt2-xl": gpt2(1600, 48, 25),
  "pythia-70m": pythia(512, 6, 8, 50304),
  "pythia-160m": pythia(768, 12, 12, 50304),
  "pythia-410m": pythia(1024, 24, 16, 50304),
  "pythia-1b": pythia(2048, 16, 8, 50304),
  "pythia-1.4b": pythia(2048, 24, 16, 50304),
  "pythia-2.8b": pythia(2560, 32, 32, 50304),
  "pythia-6.9b": pythia(4096, 32, 32, 50432),
  "pythia-12b": pythia(5120, 36, 40, 50688),
  "Qwen2.5-0.5B": qwen2(896, 24, 14, 2, 4864, True),
  "Qwen2.5-1.5B": qwen2(1536, 28, 12, 2, 8960, True),
  "Qwen2.5-7B": qwen2(3584, 28, 28, 4, 18944, False),
  "Llama-3.2-1B": llama3(2048, 16, 32, 8, 8192, True, 32.0),
  "Llama-3.1-8B": llama3(4096, 32, 32, 8, 14336, False, 8.0),
}


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--out", required=True, help="the models folder (models=DIR of the configs)")
  args = parser.parse_args(argv)
  for name, config in MODELS.items():
    target = Path(args.out) / name / "config.json"
    if target.exists():
      print(f"kept {target} (already there)")
      continue
    target.parent.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(target, config)
    print(f"wrote {target}")


if __name__ == "__main__":
  main()
