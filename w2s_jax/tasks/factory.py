"""The task an experiment runs on, from its config."""

from w2s_jax.data import testbed
from w2s_jax.tasks import classification, generation


def make_task(*, world: testbed.WorldConfig, text=None, gen_cfg=None):
  """The task an experiment runs on.

  Args:
    world: the testbed world (used when text is None).
    text: a classification.TextTaskConfig or a generation.GenTextTaskConfig.
    gen_cfg: a generation.GenerationConfig: the testbed's generative task.

  Returns:
    A base.Task: a ClassificationTask or a GenerationTask.
  """
  if isinstance(text, generation.GenTextTaskConfig):
    return generation.text_generative_task(text)
  if text is not None:
    return classification.text_task(text)
  if gen_cfg is not None:
    return generation.testbed_generative_task(world, gen_cfg)
  return classification.testbed_task(world)
