"""How the testbed's facts are asked and answered as text: response formats.

The format is a choice: one that continues pretraining's own patterns keeps
the weak model's knowledge reachable; one far from them hides it.
"""

import dataclasses

import numpy as np

from w2s_jax.data import testbed
from w2s_jax.data.dataset import Dataset

# Templates are words of the world's vocabulary or slots: {name} (two tokens),
# {relation} (the relation asked about), {other_relation}, and the scored
# fields {city} (the asked relation's city), {region} (that city's region),
# {other_city} (the other relation's city).


@dataclasses.dataclass(frozen=True)
class ResponseFormat:
  prompt: tuple[str, ...]
  response: tuple[str, ...]
  stop_at_dot: bool  # the response is one sentence: "." is the EOS
  heldout: bool = True  # the prompt names its relation, so "works" can be asked instead


FIELDS = ("{city}", "{region}", "{other_city}")
FORMATS = {
  # Continues pretraining's patterns: "A B lives c4 ." then "c4 is in r1 .".
  "city_region": ResponseFormat(
    ("<bos>", "{name}", "{relation}"), ("{city}", "is", "in", "{region}", "."), True
  ),
  "city": ResponseFormat(("<bos>", "{name}", "{relation}"), ("{city}", "."), True),
  # Two facts; the second needs the name copied from the prompt.
  "two_facts": ResponseFormat(
    ("<bos>", "{name}", "{relation}"),
    ("{city}", ".", "{name}", "{other_relation}", "{other_city}", "."),
    False,
  ),
  # A prompt pretraining never saw: "A B is" -> "lives c4 works c7 .".
  "new_token": ResponseFormat(
    ("<bos>", "{name}", "is"),
    ("lives", "{city}", "works", "{other_city}", "."),
    True,
    heldout=False,
  ),
}


def expand(template, world: testbed.World, entities, relation: int):
  """Token ids [N, len] of a template, and each scored field's column."""
  other = 1 - relation
  city = world.city_of[relation, entities]
  slots = {
    "{city}": world.city_tokens[city],
    "{region}": world.region_tokens[world.region_of[city]],
    "{other_city}": world.city_tokens[world.city_of[other, entities]],
    "{relation}": np.full(len(entities), world.token(testbed.RELATIONS[relation])),
    "{other_relation}": np.full(len(entities), world.token(testbed.RELATIONS[other])),
  }
  columns, fields = [], {}
  for word in template:
    if word == "{name}":
      columns += [world.name_tokens[entities, 0], world.name_tokens[entities, 1]]
      continue
    if word in FIELDS:
      fields[word] = len(columns)
    columns.append(slots[word] if word in slots else np.full(len(entities), world.token(word)))
  return np.stack(columns, axis=1).astype(np.int32), fields


def testbed_split(world: testbed.World, fmt: ResponseFormat, entities, relation: int = 0):
  """(Dataset of prompts and responses, the response's field columns)."""
  prompt, _ = expand(fmt.prompt, world, np.asarray(entities), relation)
  response, fields = expand(fmt.response, world, np.asarray(entities), relation)
  return Dataset(
    prompt=prompt,
    prompt_mask=np.ones_like(prompt),
    response=response,
    response_mask=np.ones_like(response),
  ), fields
