"""
Synthetic data: a small built-in data set with planted structure, for demos and tests, and interaction logs of any
size with power-law skew, for measuring cost at scale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from tokenizers import Tokenizer, decoders
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from .prepared import RecommendationData
from .protocol import apply_protocol

# One theme per cluster: a genre word, adjectives and nouns that describe its items in plain English.
THEMES = (
    ("jazz", ("smooth", "soulful", "mellow", "improvised"), ("saxophone", "trumpet", "piano", "vinyl")),
    ("hiking", ("rugged", "waterproof", "lightweight", "durable"), ("boots", "backpack", "trail", "tent")),
    ("baking", ("sweet", "buttery", "fluffy", "golden"), ("bread", "cake", "flour", "oven")),
    ("astronomy", ("celestial", "distant", "bright", "cosmic"), ("telescope", "planet", "star", "galaxy")),
    ("gardening", ("green", "organic", "blooming", "fresh"), ("seeds", "tulips", "soil", "compost")),
    ("chess", ("strategic", "classic", "tactical", "clever"), ("board", "knight", "bishop", "opening")),
    ("painting", ("colorful", "vivid", "abstract", "bold"), ("canvas", "brush", "watercolor", "easel")),
    ("cycling", ("fast", "aerodynamic", "sturdy", "sleek"), ("bicycle", "helmet", "pedals", "wheels")),
)
# The most users or items of the built-in data set: a demo, built in memory in seconds.
MAX_SYNTHETIC_COUNT = 100_000
# Rating shares of 1..5 stars, skewed to the top as in Amazon reviews.
RATING_SHARES = (0.06, 0.05, 0.09, 0.2, 0.6)
# Timestamps of generated logs: Unix seconds spread over ten years from 2010.
FIRST_TIMESTAMP, TIMESTAMP_SPAN = 1_262_304_000, 10 * 365 * 86_400
REVIEW_TEMPLATES = (
    "I love this {noun}, so {adjective}.",
    "A {adjective} {noun} for any {genre} fan.",
    "Great {genre} pick: {adjective} and well made.",
    "The {noun} is {adjective}, exactly what I wanted.",
)


def make_synthetic_data(
    num_users: int = 300,
    num_items: int = 120,
    num_clusters: int = 6,
    seed: int = 0,
    interactions_per_user: tuple[int, int] | None = None,
    in_cluster_probability: float = 0.85,
    popularity_exponent: float = 1.0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> RecommendationData:
    """
    Builds a small data set, identical for the same arguments, where structure beats popularity.

    Every item belongs to one of `num_clusters` themes (jazz, hiking, baking, ...) and has a skewed popularity
    (`rank ** -popularity_exponent`); every user has one favourite theme. Each user draws a number of items in
    `interactions_per_user` (default: 8 to 24, at most `num_items`) without replacement, each from the favourite
    theme with probability `in_cluster_probability` and otherwise from the whole catalogue, by popularity. Item
    text lists the theme and four words from its vocabulary; every interaction carries a short review in the item's
    words. The split is the paper's per-user split, without rating filter or k-core; items nobody drew are left out.

    Example:

    ```python
    >>> data = make_synthetic_data(seed=0)
    >>> data.num_users, data.num_items
    (300, 120)
    ```
    """
    # every user draws at least 3 items
    for name, value, least in (("num_users", num_users, 1), ("num_items", num_items, 3)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not least <= value <= MAX_SYNTHETIC_COUNT
        ):
            raise ValueError(f"{name} must be a whole number from {least} to {MAX_SYNTHETIC_COUNT:,}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative whole number, got {seed!r}")
    if not 1 <= num_clusters <= len(THEMES):
        raise ValueError(f"num_clusters must be between 1 and {len(THEMES)}, got {num_clusters}")
    if num_clusters > num_items:
        raise ValueError(f"num_clusters={num_clusters} exceeds num_items={num_items}: every theme needs an item")
    low, high = interactions_per_user or (min(8, num_items), min(24, num_items))
    if not 3 <= low <= high <= num_items:
        raise ValueError(
            f"interactions_per_user must satisfy 3 <= low <= high <= num_items={num_items}, got {(low, high)}"
        )
    rng = np.random.default_rng(seed)

    item_clusters = rng.permutation(np.arange(num_items) % num_clusters)
    popularity = rng.permutation(np.arange(1, num_items + 1) ** -float(popularity_exponent))
    in_cluster = popularity * (item_clusters[None, :] == np.arange(num_clusters)[:, None])
    item_probabilities = in_cluster_probability * in_cluster / in_cluster.sum(axis=1, keepdims=True)
    item_probabilities += (1 - in_cluster_probability) * popularity / popularity.sum()

    item_words = []  # (genre, two adjectives, two nouns) per item
    for cluster in item_clusters:
        genre, adjectives, nouns = THEMES[cluster]
        item_words.append((genre, rng.choice(adjectives, 2, replace=False), rng.choice(nouns, 2, replace=False)))
    item_text = {
        f"item_{item}": ", ".join([genre, *adjectives, *nouns])
        for item, (genre, adjectives, nouns) in enumerate(item_words)
    }

    rows = []
    for user, cluster in enumerate(rng.integers(num_clusters, size=num_users)):
        count = rng.integers(low, high + 1)
        for item in rng.choice(num_items, size=count, replace=False, p=item_probabilities[cluster]):
            genre, adjectives, nouns = item_words[item]
            template = REVIEW_TEMPLATES[rng.integers(len(REVIEW_TEMPLATES))]
            review = template.format(genre=genre, adjective=rng.choice(adjectives), noun=rng.choice(nouns))
            rows.append((f"user_{user}", f"item_{item}", review))
    data = apply_protocol(
        pd.DataFrame(rows, columns=["user", "item", "text"]),
        item_text,
        min_rating=None,
        k_core=0,
        seed=seed,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        name="synthetic",
    )
    data.manifest["protocol"] |= {
        "num_users": num_users,
        "num_items": num_items,
        "num_clusters": num_clusters,
        "interactions_per_user": [low, high],
        "in_cluster_probability": in_cluster_probability,
        "popularity_exponent": popularity_exponent,
    }
    return data


def make_power_law_interactions(
    num_users: int,
    num_items: int,
    num_interactions: int,
    *,
    seed: int = 0,
    user_exponent: float = 0.5,
    item_exponent: float = 0.8,
    min_per_user: int = 5,
) -> pa.Table:
    """
    An interaction log with the skew of real ones, built with vectorized NumPy, identical for the same arguments.

    Realistic skew means power laws on both sides, as in Amazon and MovieLens logs. User activity: every user has
    `min_per_user` interactions, and the rest are shared out in proportion to `rank ** -user_exponent` (users ranked
    in a seeded random order). Item popularity: each interaction draws its item with probability proportional to
    `rank ** -item_exponent`. A rank-size exponent `s` means a degree distribution `P(degree = d) ~ d ** -(1 + 1/s)`:
    the defaults give users a tail exponent of 3 (most users have a handful of interactions, a few have thousands)
    and items one of 2.25 (a few items are in a large share of all interactions, most are rare), close to what is
    measured on Amazon review data. A user may draw the same item twice, as a repeat purchase; the protocol keeps the
    latest. Rows come in a random order, with ratings 1..5 skewed to the top (`RATING_SHARES`) and timestamps spread
    over ten years.

    Returns:
        `pyarrow.Table` with `num_interactions` rows: int64 `user` (0..num_users-1), `item` (0..num_items-1) and
        `timestamp` (Unix seconds), float32 `rating`.

    Example:

    ```python
    >>> table = make_power_law_interactions(1_000, 500, 20_000, seed=0)
    >>> table.num_rows, table.column_names
    (20000, ['user', 'item', 'rating', 'timestamp'])
    ```
    """
    for name, value in (("num_users", num_users), ("num_items", num_items), ("min_per_user", min_per_user)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    if min_per_user > num_items:
        raise ValueError(f"min_per_user={min_per_user} exceeds num_items={num_items}")
    if not isinstance(num_interactions, (int, np.integer)) or num_interactions < num_users * min_per_user:
        raise ValueError(
            f"num_interactions must be at least num_users * min_per_user = {num_users * min_per_user:,}, "
            f"got {num_interactions!r}"
        )
    for name, value in (("user_exponent", user_exponent), ("item_exponent", item_exponent)):
        if not 0 <= value <= 4:
            raise ValueError(f"{name} must be between 0 and 4, got {value!r}")
    rng = np.random.default_rng(seed)

    activity = _power_law_weights(num_users, user_exponent)[rng.permutation(num_users)]
    counts = min_per_user + rng.multinomial(num_interactions - num_users * min_per_user, activity)
    users = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    popularity = np.cumsum(_power_law_weights(num_items, item_exponent))
    ranks = np.searchsorted(popularity, rng.random(num_interactions) * popularity[-1], side="right")
    items = rng.permutation(num_items).astype(np.int64)[np.minimum(ranks, num_items - 1)]
    order = rng.permutation(num_interactions)
    ratings = (rng.choice(5, size=num_interactions, p=RATING_SHARES) + 1).astype(np.float32)
    timestamps = FIRST_TIMESTAMP + rng.integers(TIMESTAMP_SPAN, size=num_interactions, dtype=np.int64)
    return pa.table({"user": users[order], "item": items[order], "rating": ratings, "timestamp": timestamps})


def _power_law_weights(count: int, exponent: float) -> np.ndarray:
    """`rank ** -exponent` for ranks 1..count, summing to 1."""
    weights = np.arange(1, count + 1, dtype=np.float64) ** -float(exponent)
    return weights / weights.sum()


def make_synthetic_tokenizer(data: RecommendationData, extra_texts: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """
    A word-level tokenizer covering the built-in data set's texts and the default prompt templates, so that the
    demo model needs no download: every word and punctuation mark is one token, unknown words map to `<unk>`.
    """
    from ..configuration_cllm4rec import TEMPLATE_PLACEHOLDERS, CLLM4RecConfig

    defaults = CLLM4RecConfig()
    texts = [*data.item_texts(), *data.tables["reviews"]["text"], *extra_texts]
    texts += [getattr(defaults, name).format(user="", item="", history="") for name in TEMPLATE_PLACEHOLDERS]
    pre_tokenizer = Whitespace()
    words = sorted({word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(text)})
    vocabulary = {token: index for index, token in enumerate(["<pad>", "<unk>", "</s>", *words])}
    backend = Tokenizer(WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
