"""The task an experiment runs on, from its config."""

from w2s_jax.data import testbed
from w2s_jax.tasks import classification, generation, preference


def make_task(*, world: testbed.WorldConfig, text=None, gen_cfg=None, preference_cfg=None):
  """The task an experiment runs on.

  Args:
    world: the testbed world (used when text is None).
    text: a classification.TextTaskConfig, a generation.GenTextTaskConfig or
      a preference.PreferenceTextConfig.
    gen_cfg: a generation.GenerationConfig: the testbed's generative task.
    preference_cfg: a preference.PreferenceConfig: a preference task, of
      text's pairs or the testbed's.

  Returns:
    A base.Task: a ClassificationTask (preferences are one) or a GenerationTask.
  """
  if preference_cfg is not None:
    if isinstance(text, preference.PreferenceTextConfig):
      return preference.text_preference_task(text, preference_cfg)
    return preference.testbed_preference_task(world, preference_cfg)
  if isinstance(text, generation.GenTextTaskConfig):
    return generation.text_generative_task(text)
  if text is not None:
    return classification.text_task(text)
  if gen_cfg is not None:
    return generation.testbed_generative_task(world, gen_cfg)
  return classification.testbed_task(world)
