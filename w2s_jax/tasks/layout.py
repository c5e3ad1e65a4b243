"""How a generative task's examples are laid out for the LM objectives.

Prompts are LEFT-padded and responses RIGHT-padded, so prompt + response is
laid out exactly as the sampler writes its tokens after a left-padded
prompt, and a weak model's generations drop into the response fields
unchanged.
"""

import numpy as np

from w2s_jax.data.dataset import Dataset


def sequences(data: Dataset, response=None, response_mask=None) -> Dataset:
  """prompt + response as one row: tokens, mask (real tokens) and loss_mask
  (the response tokens, which the objectives train on). response /
  response_mask replace the data's own (a weak model's generations).

  The row also keeps its left-padded prompt (prompt, prompt_mask) and an
  example_id (the data's own, else the row index), so an objective can
  sample a fresh response to it inside the train step (live.py)."""
  response = data["response"] if response is None else np.asarray(response)
  response_mask = data["response_mask"] if response_mask is None else np.asarray(response_mask)
  prompt_mask = data["prompt_mask"]
  example_id = data["example_id"] if "example_id" in data else np.arange(len(prompt_mask))
  return Dataset(
    tokens=np.concatenate([data["prompt"], response], axis=1).astype(np.int32),
    mask=np.concatenate([prompt_mask, response_mask], axis=1).astype(np.int32),
    loss_mask=np.concatenate([np.zeros_like(prompt_mask), response_mask], axis=1).astype(np.int32),
    prompt=np.asarray(data["prompt"], np.int32),
    prompt_mask=np.asarray(prompt_mask, np.int32),
    example_id=np.asarray(example_id, np.int32),
  )
