"""
The paper's data protocol: keep positive ratings, iterative k-core, shuffle users, number users and items by first
appearance, and hold out a share of every user's items for validation and test.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real

import numpy as np
import pandas as pd

from .prepared import SPLITS, RecommendationData


def deduplicate_pairs(interactions: pd.DataFrame) -> pd.DataFrame:
    """Keeps one row per user-item pair: the latest (by `timestamp` when present, else the last in file order)."""
    interactions = interactions.reset_index(drop=True)
    if "timestamp" in interactions:
        interactions = interactions.sort_values("timestamp", kind="stable")
    return interactions.drop_duplicates(["user", "item"], keep="last").sort_index()


def filter_k_core(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Repeatedly drops users and items with fewer than `k` interactions until every one has at least `k`."""
    while len(interactions):
        user_counts = interactions.groupby("user")["item"].transform("size")
        item_counts = interactions.groupby("item")["user"].transform("size")
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            break
        interactions = interactions[keep]
    return interactions


def apply_protocol(
    interactions: pd.DataFrame,
    item_text: Mapping[str, str] | None = None,
    *,
    min_rating: float | None = 3.0,
    k_core: int = 5,
    seed: int = 98765,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    name: str = "interactions",
    sources: Mapping[str, str] | None = None,
) -> RecommendationData:
    """
    Filters and splits raw interactions as the CLLM4Rec paper does; the defaults reproduce its protocol.

    1. One row per user-item pair (the latest); keep ratings above `min_rating` (`None` keeps every rating).
    2. Iterative `k_core`-core on users and items: each keeps at least `k_core` interactions (0 keeps all).
    3. Shuffle the users (sorted raw ids, permuted with `seed`); users are numbered in that order, and items by their
       first appearance while walking the shuffled users' interactions in file order.
    4. Per user, shuffle the items: the first `max(1, int(validation_fraction * n))` go to validation, the next
       `max(1, int(test_fraction * n))` to test, the rest to train (a fraction of 0 holds out nothing).
    5. Review documents (the `text` column, when present and not blank) come from training pairs only.

    Args:
        interactions (`pd.DataFrame`):
            `user`, `item` (string ids) and optionally `rating`, `timestamp`, `text`, as the readers in
            `hf_cllm4rec.data.sources` return them.
        item_text (`Mapping[str, str]`, *optional*):
            Item-side text keyed by raw item id; items without one get `""`.
        name (`str`), sources (`Mapping[str, str]`, *optional*):
            The data set's name and the SHA-256 of its source files, recorded in the manifest.

    A parameter out of range, an id that is not a string or an integer, or a rating that is not finite raises
    `ValueError` naming it.
    """
    _check_parameters(min_rating, k_core, seed, validation_fraction, test_fraction)
    _check_interactions(interactions)

    interactions = deduplicate_pairs(interactions)
    if min_rating is not None:
        if "rating" not in interactions:
            raise ValueError(f"min_rating={min_rating} needs a 'rating' column; pass min_rating=None to keep all")
        interactions = interactions[interactions["rating"] > min_rating]
    interactions = filter_k_core(interactions, k_core)
    if interactions.empty:
        raise ValueError(
            f"no interactions left after filtering (min_rating={min_rating}, k_core={k_core}); "
            "lower min_rating or k_core"
        )

    rng = np.random.RandomState(seed)
    user_raw_ids = np.sort(np.asarray(interactions["user"].unique(), dtype=object))
    user_raw_ids = user_raw_ids[rng.permutation(len(user_raw_ids))]
    user_ids = pd.Series(np.arange(len(user_raw_ids)), index=user_raw_ids)
    interactions = interactions.assign(user_id=interactions["user"].map(user_ids))
    interactions = interactions.sort_values("user_id", kind="stable", ignore_index=True)
    item_raw_ids = np.asarray(interactions["item"].unique(), dtype=object)
    item_ids = pd.Series(np.arange(len(item_raw_ids)), index=item_raw_ids)
    interactions["item_id"] = interactions["item"].map(item_ids)

    shuffled = np.lexsort((rng.random_sample(len(interactions)), interactions["user_id"].to_numpy()))
    interactions = interactions.iloc[shuffled].reset_index(drop=True)
    per_user = interactions.groupby("user_id")["item_id"]
    position, count = per_user.cumcount().to_numpy(), per_user.transform("size").to_numpy()
    num_validation = _holdout_sizes(count, validation_fraction)
    num_test = _holdout_sizes(count, test_fraction)
    without_training = count - num_validation - num_test < 1
    if without_training.any():
        raise ValueError(
            f"validation_fraction={validation_fraction} and test_fraction={test_fraction} leave users with "
            f"{int(count[without_training].min())} interactions no training item; raise k_core (now {k_core})"
        )
    split_index = np.where(position < num_validation, 1, np.where(position < num_validation + num_test, 2, 0))

    columns = ["user_id", "item_id", *(column for column in ("rating", "timestamp") if column in interactions)]
    splits = {
        split: interactions.loc[split_index == index, columns].sort_values(["user_id", "item_id"], ignore_index=True)
        for index, split in enumerate(SPLITS)
    }
    reviews = None
    if "text" in interactions:
        train = interactions[(split_index == 0) & (interactions["text"].str.strip() != "")]
        reviews = train[["user_id", "item_id", "text"]].sort_values(["user_id", "item_id"], ignore_index=True)
    item_text = item_text or {}
    protocol = {
        "min_rating": min_rating,
        "k_core": k_core,
        "seed": seed,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
    }
    return RecommendationData.from_frames(
        name=name,
        splits=splits,
        user_raw_ids=list(user_raw_ids),
        item_raw_ids=list(item_raw_ids),
        item_texts=[item_text.get(raw_id, "") for raw_id in item_raw_ids],
        reviews=reviews,
        protocol=protocol,
        sources=sources,
    )


def _check_parameters(
    min_rating: float | None, k_core: int, seed: int, validation_fraction: float, test_fraction: float
) -> None:
    if min_rating is not None and not (isinstance(min_rating, Real) and np.isfinite(min_rating)):
        raise ValueError(f"min_rating must be a finite number or None, got {min_rating!r}")
    if not _is_integer(k_core) or k_core < 0:
        raise ValueError(f"k_core must be a non-negative integer, got {k_core!r}")
    if not _is_integer(seed) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    for parameter, fraction in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not (isinstance(fraction, Real) and 0 <= fraction < 1):
            raise ValueError(f"{parameter} must be in [0, 1), got {fraction}")
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            f"validation_fraction + test_fraction must be below 1, got {validation_fraction} + {test_fraction}"
        )


def _check_interactions(interactions: pd.DataFrame) -> None:
    """Ids must be strings or integers and ratings finite numbers, as the readers give them."""
    missing = {"user", "item"} - set(interactions.columns)
    if missing:
        raise ValueError(f"interactions need the columns 'user' and 'item'; missing {sorted(missing)}")
    for column in ("user", "item"):
        bad = ~interactions[column].map(lambda value: isinstance(value, str) or _is_integer(value)).to_numpy(bool)
        if bad.any():
            _refuse_value(interactions, column, bad, "is not a string or an integer id")
    if "rating" in interactions:
        ratings = pd.to_numeric(interactions["rating"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        bad = ~np.isfinite(ratings)
        if bad.any():
            _refuse_value(interactions, "rating", bad, "is not a finite number")


def _refuse_value(interactions: pd.DataFrame, column: str, bad: np.ndarray, problem: str) -> None:
    position = int(np.flatnonzero(bad)[0])
    value = interactions[column].iloc[position]
    value = value.tolist() if isinstance(value, (np.generic, np.ndarray)) else value
    raise ValueError(f"interactions: {column!r} at row {position} {problem} ({value!r})")


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _holdout_sizes(num_interactions: np.ndarray, fraction: float) -> np.ndarray:
    """Held-out items per user: `max(1, int(fraction * n))`, or none when `fraction` is 0."""
    if fraction == 0:
        return np.zeros_like(num_interactions)
    return np.maximum(1, (fraction * num_interactions).astype(np.int64))
