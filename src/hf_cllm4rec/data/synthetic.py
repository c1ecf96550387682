"""A small built-in data set with planted structure, for demos and tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
    for name, value in (("num_users", num_users), ("num_items", num_items)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not 1 <= value <= MAX_SYNTHETIC_COUNT
        ):
            raise ValueError(f"{name} must be a whole number from 1 to {MAX_SYNTHETIC_COUNT:,}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative whole number, got {seed!r}")
    if not 1 <= num_clusters <= len(THEMES):
        raise ValueError(f"num_clusters must be between 1 and {len(THEMES)}, got {num_clusters}")
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
