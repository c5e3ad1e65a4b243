"""An offline world with hidden facts, where pretraining is what W2S elicits.

Every entity lives in a city and works in a city; every city lies in a region.
The pretraining corpus states these facts as plain sentences ("e17 lives c3 ."). The binary task asks for the region of an entity's home, prompted as
"e17 lives in", so answering needs the entity->city fact from pretraining
(the city->region hop is learned from the task labels). Splits are by entity:
a test entity is never asked about in training, so an un-pretrained model sits
at chance on it. The held-out test asks about the other relation ("works in"),
which no training question ever asks about.
"""

import dataclasses

import numpy as np

from w2s_jax.data.dataset import Dataset
from w2s_jax.infra.fingerprint import WHEN_SET

PAD, BOS, DOT, IN, IS = "<pad>", "<bos>", ".", "in", "is"
RELATIONS = ("lives", "works")
SENTENCE_LEN = 5  # "a3 b17 lives c3 ." and "c3 is in r1 ."
CITY_SENTENCE_RATE = 0.1
SPLITS = ("train_gt", "train_w2s", "test")
SPLIT_BY = ("random", "frequency")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  num_entities: int = 1200
  # Entity names are two tokens, a first and a last syllable, so a fact lives
  # in the model's body rather than in one embedding row: that is what makes
  # knowledge grow with model size.
  syllables: int = 40
  num_cities: int = 10
  num_regions: int = 2
  entities_per_split: int = 400
  corpus_docs: int = 20_000
  # Entity frequency in the corpus falls as rank^-zipf (rank drawn at random),
  # as facts do in real text: small models learn the frequent entities, larger
  # ones reach further into the tail, so knowledge grows smoothly with size.
  zipf: float = 1.0
  doc_len: int = 21
  # Share of entities whose cities follow a surface cue: each first syllable
  # has a cue region, and this share of the entities starting with it live
  # and work in a city of that region (the rest anywhere). A model that does
  # not know an entity can still guess from its name, so weak errors are
  # systematic (the cue's exceptions) and imitable, not random. 0: no cue.
  cue: float = 0.0
  seed: int = 0
  # How entities fall into the task's splits. "random": a seeded shuffle.
  # "frequency": a shift from easy to hard, test the n entities the corpus
  # mentions least, train_gt and train_w2s a seeded split of the 2n it
  # mentions most. (The heldout split, "works in" of test's entities, is the
  # held-out relation in either.) The corpus and the world are the same.
  split_by: str = dataclasses.field(default="random", metadata=WHEN_SET)

  def __post_init__(self):
    for name in (
      "num_entities",
      "num_cities",
      "num_regions",
      "entities_per_split",
      "corpus_docs",
      "doc_len",
    ):
      if getattr(self, name) < 1:
        raise ValueError(f"WorldConfig.{name}={getattr(self, name)}: expected >= 1")
    if self.zipf < 0:
      raise ValueError(f"WorldConfig.zipf={self.zipf}: expected >= 0")
    if not 0 <= self.cue <= 1:
      raise ValueError(f"WorldConfig.cue={self.cue}: expected in [0, 1]")
    if self.split_by not in SPLIT_BY:
      raise ValueError(f"WorldConfig.split_by={self.split_by!r}: expected one of {SPLIT_BY}")
    if self.num_regions < 2:
      raise ValueError(
        f"WorldConfig.num_regions={self.num_regions}: expected >= 2 (the task's classes)"
      )
    if self.syllables**2 < self.num_entities:
      raise ValueError(
        f"WorldConfig.syllables={self.syllables}: {self.syllables}**2 names cannot "
        f"cover num_entities={self.num_entities}"
      )
    if self.num_cities < self.num_regions:
      raise ValueError(
        f"WorldConfig.num_cities={self.num_cities}: expected >= num_regions={self.num_regions}"
      )
    needed = len(SPLITS) * self.entities_per_split
    if self.num_entities < needed:
      raise ValueError(
        f"WorldConfig.num_entities={self.num_entities}: expected >= {needed} "
        f"(3 splits of entities_per_split={self.entities_per_split})"
      )
    if self.doc_len < 1 + SENTENCE_LEN:
      raise ValueError(
        f"WorldConfig.doc_len={self.doc_len}: expected >= {1 + SENTENCE_LEN} to hold a sentence"
      )

  def corpus_fields(self) -> dict:
    """The fields that determine the world and its corpus (not the task splits)."""
    fields = dataclasses.asdict(self)
    del fields["entities_per_split"], fields["split_by"]
    if not self.cue:
      del fields["cue"]  # the worlds from before the cue keep their cache entries
    return fields


@dataclasses.dataclass(frozen=True)
class World:
  cfg: WorldConfig
  vocab: tuple[str, ...]
  name_tokens: np.ndarray  # [entity, 2] token ids of its name
  frequency_rank: np.ndarray  # [entity] 0 = most frequent in the corpus
  city_of: np.ndarray  # [relation, entity] -> city
  region_of: np.ndarray  # [city] -> region
  split_entities: dict  # split name -> entity ids

  def token(self, word: str) -> int:
    return self.vocab.index(word)

  def decode(self, ids) -> str:
    return " ".join(self.vocab[i] for i in ids)

  @property
  def entity_frequency(self) -> np.ndarray:
    """Probability that a fact sentence in the corpus is about each entity."""
    weight = (self.frequency_rank + 1.0) ** -self.cfg.zipf
    return weight / weight.sum()

  @property
  def city_tokens(self) -> np.ndarray:
    return np.array([self.token(f"c{c}") for c in range(self.cfg.num_cities)])

  @property
  def region_tokens(self) -> np.ndarray:
    return np.array([self.token(f"r{r}") for r in range(self.cfg.num_regions)])


# The default testbed since the cue (configs/default.py, configs/sweep.py): twice
# the entities over twice the corpus, so knowledge keeps growing up to the 5th
# size, and a cue that 70% of names follow (0.4 + 0.6 / 2), so a model that
# does not know an entity guesses systematically rather than at random. Every
# entity is in a split (800 each), so the test intervals are tight enough to
# tell losses apart.
# WorldConfig() itself is the world from before (the `facts` configs).
CUE_WORLD = WorldConfig(
  num_entities=2400, syllables=50, corpus_docs=40_000, cue=0.4, entities_per_split=800
)


def make_world(cfg: WorldConfig) -> World:
  rng = np.random.default_rng(cfg.seed)
  vocab = (
    (PAD, BOS, DOT, IN, IS)
    + RELATIONS
    + tuple(f"r{r}" for r in range(cfg.num_regions))
    + tuple(f"c{c}" for c in range(cfg.num_cities))
    + tuple(f"a{i}" for i in range(cfg.syllables))
    + tuple(f"b{i}" for i in range(cfg.syllables))
  )
  names = rng.permutation(cfg.syllables**2)[: cfg.num_entities]
  # Half the cities per region keeps the labels balanced.
  region_of = rng.permutation(np.arange(cfg.num_cities) % cfg.num_regions)
  city_of = rng.integers(0, cfg.num_cities, size=(len(RELATIONS), cfg.num_entities))
  order = rng.permutation(cfg.num_entities)
  n = cfg.entities_per_split
  split_entities = {name: np.sort(order[i * n : (i + 1) * n]) for i, name in enumerate(SPLITS)}
  name_tokens = np.stack(
    [
      [vocab.index(f"a{n // cfg.syllables}") for n in names],
      [vocab.index(f"b{n % cfg.syllables}") for n in names],
    ],
    axis=1,
  )
  frequency_rank = rng.permutation(cfg.num_entities)
  if cfg.split_by == "frequency":  # no draw of its own: the world stays the same
    by_frequency = np.argsort(frequency_rank, kind="stable")  # most mentioned first
    frequent = order[np.isin(order, by_frequency[: 2 * n])]  # in the seeded order
    split_entities = {
      "train_gt": np.sort(frequent[:n]),
      "train_w2s": np.sort(frequent[n:]),
      "test": np.sort(by_frequency[-n:]),
    }
  if cfg.cue:  # drawn after everything else, so cue=0 is the world from before the cue
    city_of = _follow_cue(rng, cfg, names, region_of, city_of)
  return World(
    cfg, vocab, name_tokens.astype(np.int32), frequency_rank, city_of, region_of, split_entities
  )


def cue_region(cfg: WorldConfig, first_syllable) -> np.ndarray:
  """The region an entity's first syllable suggests (balanced over syllables)."""
  return np.asarray(first_syllable) % cfg.num_regions


def _follow_cue(rng, cfg, names, region_of, city_of):
  """city_of with a cfg.cue share of each relation's entities moved to a city of their cue region."""
  cue = cue_region(cfg, names // cfg.syllables)
  follows = rng.random(city_of.shape) < cfg.cue
  pick = rng.integers(0, cfg.num_cities, size=city_of.shape)
  # Row r lists region r's cities (repeated to a common length); an entity
  # takes the (pick mod count)-th city of its cue region.
  counts = np.bincount(region_of, minlength=cfg.num_regions)
  cities_in = np.stack(
    [np.resize(np.flatnonzero(region_of == r), counts.max()) for r in range(cfg.num_regions)]
  )
  cue_city = cities_in[cue, pick % counts[cue]]
  return np.where(follows, cue_city, city_of)


def pretraining_corpus(world: World, *, seed: int | None = None) -> Dataset:
  """Documents of random fact sentences after <bos>, doc_len tokens each.

  Entity facts are drawn by entity frequency, including the test entities':
  pretraining sees the whole world; only fine-tuning is split by entity.
  """
  cfg = world.cfg
  rng = np.random.default_rng(cfg.seed + 1 if seed is None else seed)
  shape = (cfg.corpus_docs, (cfg.doc_len - 1) // SENTENCE_LEN)
  entity = rng.choice(cfg.num_entities, size=shape, p=world.entity_frequency)
  relation = rng.integers(len(RELATIONS), size=shape)
  city = world.city_of[relation, entity]
  relation_token = np.array([world.token(r) for r in RELATIONS])[relation]
  entity_sentences = np.stack(
    [
      world.name_tokens[entity, 0],
      world.name_tokens[entity, 1],
      relation_token,
      world.city_tokens[city],
      np.full(shape, world.token(DOT)),
    ],
    axis=-1,
  )
  some_city = rng.integers(cfg.num_cities, size=shape)
  city_sentences = np.stack(
    [
      world.city_tokens[some_city],
      np.full(shape, world.token(IS)),
      np.full(shape, world.token(IN)),
      world.region_tokens[world.region_of[some_city]],
      np.full(shape, world.token(DOT)),
    ],
    axis=-1,
  )
  is_city = rng.random(shape) < CITY_SENTENCE_RATE
  sentences = np.where(is_city[..., None], city_sentences, entity_sentences)
  body = sentences.reshape(cfg.corpus_docs, -1)
  tokens = np.zeros((cfg.corpus_docs, cfg.doc_len), np.int32)
  tokens[:, 0] = world.token(BOS)
  tokens[:, 1 : 1 + body.shape[1]] = body
  mask = np.zeros_like(tokens)
  mask[:, : 1 + body.shape[1]] = 1
  return Dataset(tokens=tokens, mask=mask)


def question_dataset(world: World, entities, relation: int = 0) -> Dataset:
  """'<bos> eX lives' -> region of X's home city (or work city, relation=1)."""
  entities = np.asarray(entities)
  tokens = np.stack(
    [
      np.full_like(entities, world.token(BOS)),
      world.name_tokens[entities, 0],
      world.name_tokens[entities, 1],
      np.full_like(entities, world.token(RELATIONS[relation])),
    ],
    axis=1,
  ).astype(np.int32)
  labels = world.region_of[world.city_of[relation, entities]].astype(np.int32)
  return Dataset(tokens=tokens, mask=np.ones_like(tokens), labels=labels)


REJECTED = ("any", "same_region", "other_region")


def false_cities(world: World, true_city, *, rejected: str, rng) -> np.ndarray:
  """For each true city, a different one: any other city, another in the
  same region (the harder fact to rule out: region knowledge and the cue do
  not tell them apart), or one in another region (the easier)."""
  if rejected not in REJECTED:
    raise ValueError(f"rejected={rejected!r}: expected one of {REJECTED}")
  true_city = np.asarray(true_city)
  region = world.region_of
  out = np.empty_like(true_city)
  for i, c in enumerate(true_city):
    others = np.flatnonzero(np.arange(world.cfg.num_cities) != c)
    if rejected == "same_region":
      others = others[region[others] == region[c]]
    elif rejected == "other_region":
      others = others[region[others] != region[c]]
    if not len(others):
      raise ValueError(
        f"rejected={rejected!r}: city c{c} has no such other city "
        f"({world.cfg.num_cities} cities in {world.cfg.num_regions} regions)"
      )
    out[i] = rng.choice(others)
  return out


def fact_pairs(
  world: World, entities, *, relation: int = 0, rejected: str = "any", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Preference pairs over facts: the prompt '<bos> aX bY lives' [N, 4], the
  true city [N] (the preferred response 'cK .') and a false one [N]
  (false_cities), drawn with `seed`."""
  prompts = question_dataset(world, entities, relation)["tokens"]
  true_city = world.city_of[relation, np.asarray(entities)]
  rng = np.random.default_rng([world.cfg.seed, 17, seed])
  return prompts, true_city, false_cities(world, true_city, rejected=rejected, rng=rng)


def task_splits(world: World) -> dict[str, Dataset]:
  """train_gt, train_w2s and test ask 'lives in'; heldout asks 'works in' of test entities."""
  splits = {name: question_dataset(world, world.split_entities[name]) for name in SPLITS}
  splits["heldout"] = question_dataset(world, world.split_entities["test"], relation=1)
  return splits


def fact_probe(world: World) -> tuple[Dataset, np.ndarray]:
  """Prompts for every (relation, entity) fact and the city token that completes it."""
  entities = np.arange(world.cfg.num_entities)
  prompts, answers = [], []
  for relation in range(len(RELATIONS)):
    prompts.append(question_dataset(world, entities, relation))
    answers.append(world.city_tokens[world.city_of[relation]])
  return Dataset.concatenate(prompts), np.concatenate(answers)


BAD_KINDS = ("shuffled", "random", "false_facts")


def corrupted_pool(
  world: World, corpus: Dataset, *, bad_frac: float = 0.2, seed: int = 0
) -> tuple[Dataset, np.ndarray]:
  """The corpus plus planted bad documents, so that bad_frac of the pool is bad.

  Bad documents come in three kinds, equally often: a real document with its
  tokens shuffled (corrupted), uniformly random tokens (off-distribution), and
  well-formed fact sentences with the wrong city (false facts). Returns the
  shuffled pool and, per document, -1 if clean or its index in BAD_KINDS.
  """
  if not 0 < bad_frac < 1:
    raise ValueError(f"bad_frac={bad_frac}: expected in (0, 1)")
  rng = np.random.default_rng(seed)
  tokens, mask = corpus["tokens"], corpus["mask"]
  n_bad = int(round(bad_frac * len(tokens) / (1 - bad_frac)))
  kind = np.arange(n_bad) % len(BAD_KINDS)
  source = rng.integers(len(tokens), size=n_bad)
  bad_tokens, bad_mask = tokens[source].copy(), mask[source].copy()
  for i in np.flatnonzero(kind == 0):
    real = np.flatnonzero(bad_mask[i])[1:]  # keep <bos> first
    bad_tokens[i, real] = rng.permutation(bad_tokens[i, real])
  random_rows = np.flatnonzero(kind == 1)
  body = rng.integers(len(world.vocab), size=(len(random_rows), tokens.shape[1] - 1))
  bad_tokens[random_rows, 1:] = np.where(bad_mask[random_rows, 1:] > 0, body, 0)
  false_rows = np.flatnonzero(kind == 2)
  is_city = np.isin(bad_tokens[false_rows], world.city_tokens)
  # Shift every stated city (entity facts and city->region lines alike) to another city.
  city_index = np.searchsorted(world.city_tokens, bad_tokens[false_rows])
  shift = rng.integers(1, world.cfg.num_cities, size=city_index.shape)
  wrong = world.city_tokens[
    (np.clip(city_index, 0, world.cfg.num_cities - 1) + shift) % world.cfg.num_cities
  ]
  bad_tokens[false_rows] = np.where(is_city, wrong, bad_tokens[false_rows])
  all_tokens = np.concatenate([tokens, bad_tokens])
  all_mask = np.concatenate([mask, bad_mask])
  label = np.concatenate([np.full(len(tokens), -1), kind])
  order = rng.permutation(len(all_tokens))
  return Dataset(tokens=all_tokens[order], mask=all_mask[order]), label[order]
