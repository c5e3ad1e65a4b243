"""The task an experiment runs on, from its config."""

from w2s_jax.data import testbed
from w2s_jax.tasks import classification, generation


def make_task(*, world: testbed.WorldConfig, text=None, gen_cfg=None):
  """A `base.Task`: the testbed or a text task (text: a TextTaskConfig or a
  GenTextTaskConfig), classifying, or generating with gen_cfg (a
  generation.GenerationConfig)."""
  if isinstance(text, generation.GenTextTaskConfig):
    return generation.text_generative_task(text)
  if text is not None:
    return classification.text_task(text)
  if gen_cfg is not None:
    return generation.testbed_generative_task(world, gen_cfg)
  return classification.testbed_task(world)
