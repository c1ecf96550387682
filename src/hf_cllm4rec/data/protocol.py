"""
The paper's data protocol: keep positive ratings, iterative k-core, shuffle users, number users and items by first
appearance, and hold out a share of every user's items for validation and test.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .prepared import SPLITS, RecommendationData


def deduplicate_pairs(interactions: pd.DataFrame) -> pd.DataFrame:
    """Keeps one row per user-item pair: the latest (by `timestamp` when present, else the last in file order)."""
    interactions = interactions.reset_index(drop=True)
    users, _ = _codes(interactions["user"])
    items, _ = _codes(interactions["item"])
    return interactions.iloc[_latest_rows(users, items, _timestamps(interactions))]


def filter_k_core(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Repeatedly drops users and items with fewer than `k` interactions until every one has at least `k`."""
    users, _ = _codes(interactions["user"])
    items, _ = _codes(interactions["item"])
    return interactions[_k_core_mask(users, items, k)]


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
    check_protocol_parameters(min_rating, k_core, seed, validation_fraction, test_fraction)
    _check_interactions(interactions)
    users, user_raw_ids = _codes(interactions["user"])
    items, item_raw_ids = _codes(interactions["item"])
    ratings = _ratings(interactions)

    rows = _latest_rows(users, items, _timestamps(interactions))
    if min_rating is not None:
        if ratings is None:
            raise ValueError(f"min_rating={min_rating} needs a 'rating' column; pass min_rating=None to keep all")
        rows = rows[ratings[rows] > min_rating]
    rows = rows[_k_core_mask(users[rows], items[rows], k_core)]
    if not len(rows):
        raise ValueError(
            f"no interactions left after filtering (min_rating={min_rating}, k_core={k_core}); "
            "lower min_rating or k_core"
        )

    # Users: the kept ones in raw-id order (codes follow it), shuffled; rows then walk them in that order.
    rng = np.random.RandomState(seed)
    user_order = np.unique(users[rows])
    user_order = user_order[rng.permutation(len(user_order))]
    user_ids = _numbering(user_order, len(user_raw_ids))[users[rows]]
    by_user = np.argsort(user_ids, kind="stable")
    rows, user_ids = rows[by_user], user_ids[by_user]
    del by_user
    # Items: numbered by first appearance along that walk.
    item_codes, first_rows = np.unique(items[rows], return_index=True)
    item_order = item_codes[np.argsort(first_rows, kind="stable")]
    del item_codes, first_rows
    item_ids = _numbering(item_order, len(item_raw_ids))[items[rows]]

    # Per user, the items in a random order: the first ones held out.
    shuffled = np.lexsort((rng.random_sample(len(rows)), user_ids))
    rows, user_ids, item_ids = rows[shuffled], user_ids[shuffled], item_ids[shuffled]
    del shuffled
    counts = np.bincount(user_ids)
    position = np.arange(len(rows), dtype=rows.dtype) - (np.cumsum(counts) - counts)[user_ids]
    count = counts[user_ids]
    num_validation = _holdout_sizes(count, validation_fraction)
    num_test = _holdout_sizes(count, test_fraction)
    without_training = count - num_validation - num_test < 1
    if without_training.any():
        raise ValueError(
            f"validation_fraction={validation_fraction} and test_fraction={test_fraction} leave users with "
            f"{int(count[without_training].min())} interactions no training item; raise k_core (now {k_core})"
        )
    split_index = np.where(position < num_validation, 1, np.where(position < num_validation + num_test, 2, 0))
    split_index = split_index.astype(np.int8)
    del position, count, num_validation, num_test, without_training

    values = {"rating": ratings, "timestamp": _timestamps(interactions)}
    values = {name: column for name, column in values.items() if column is not None}
    splits = {}
    for index, split in enumerate(SPLITS):
        chosen = _by_user_and_item(np.flatnonzero(split_index == index), user_ids, item_ids, len(item_order))
        columns = {"user_id": user_ids[chosen], "item_id": item_ids[chosen]}
        splits[split] = pa.table(columns | {name: column[rows[chosen]] for name, column in values.items()})
    reviews = None
    if "text" in interactions:
        train = _by_user_and_item(np.flatnonzero(split_index == 0), user_ids, item_ids, len(item_order))
        text = _strings(interactions["text"].fillna("")).take(rows[train])
        written = pc.not_equal(pc.utf8_trim_whitespace(text), "")
        reviews = pa.table({"user_id": user_ids[train], "item_id": item_ids[train], "text": text}).filter(written)
    protocol = {
        "min_rating": min_rating,
        "k_core": k_core,
        "seed": seed,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
    }
    user_raw_ids, item_raw_ids = user_raw_ids.take(user_order), item_raw_ids.take(item_order)
    return RecommendationData.from_tables(
        name=name,
        splits=splits,
        user_raw_ids=user_raw_ids,
        item_raw_ids=item_raw_ids,
        item_texts=_item_texts(item_raw_ids, item_text or {}),
        reviews=reviews,
        protocol=protocol,
        sources=sources,
    )


def _codes(ids: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """
    Dictionary-encodes ids: int32 codes (int64 past 2**31 distinct ids) into the distinct ids as strings, whose
    order is that of the ids (string ids by code point, integer ids by value), so that a code's rank is its id's.
    """
    if pd.api.types.is_string_dtype(ids.dtype) and not pd.api.types.is_object_dtype(ids.dtype):
        encoded = pc.dictionary_encode(pa.array(ids))
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.unify_dictionaries()
            distinct = encoded.chunk(0).dictionary if encoded.num_chunks else pa.array([], pa.string())
            indices = np.concatenate([chunk.indices.to_numpy() for chunk in encoded.chunks] or [[]])
        else:
            distinct, indices = encoded.dictionary, encoded.indices.to_numpy()
        order = pc.sort_indices(distinct).to_numpy()
        codes, distinct = _numbering(order, len(order))[indices], distinct.take(order)
    else:
        codes, distinct = pd.factorize(ids, sort=True)
        distinct = pa.array(distinct)
    distinct = distinct.cast(pa.string())
    return codes.astype(np.int32 if len(distinct) < 2**31 else np.int64), distinct


def _latest_rows(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None) -> np.ndarray:
    """The rows (in file order) left when each user-item pair keeps its latest row: by timestamp, then file order."""
    pairs = users.astype(np.int64) * (int(items.max(initial=0)) + 1) + items
    by_pair = np.argsort(pairs)
    pairs = pairs[by_pair]
    repeated = np.zeros(len(pairs), dtype=bool)
    repeated[1:] = pairs[1:] == pairs[:-1]
    repeated[:-1] |= repeated[1:]
    keep = np.ones(len(pairs), dtype=bool)
    if repeated.any():  # only the rows of repeated pairs are sorted further
        rows, pairs = by_pair[repeated], pairs[repeated]
        latest = np.lexsort((rows, np.zeros(len(rows)) if timestamps is None else timestamps[rows], pairs))
        rows, pairs = rows[latest], pairs[latest]
        keep[rows[np.append(pairs[1:] == pairs[:-1], False)]] = False
    return np.flatnonzero(keep)


def _by_user_and_item(rows: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray, num_items: int) -> np.ndarray:
    """`rows` ordered by user and item (each user-item pair is in one row at most)."""
    return rows[np.argsort(user_ids[rows].astype(np.int64) * num_items + item_ids[rows])]


def _k_core_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Which rows survive the iterative `k`-core on users and items."""
    keep = np.ones(len(users), dtype=bool)
    while keep.any():
        user_counts = np.bincount(users[keep], minlength=len(users) and int(users.max()) + 1)
        item_counts = np.bincount(items[keep], minlength=len(items) and int(items.max()) + 1)
        survivors = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if np.array_equal(survivors, keep):
            break
        keep = survivors
    return keep


def _numbering(order: np.ndarray, num_codes: int) -> np.ndarray:
    """Maps each code in `order` to its position there."""
    numbers = np.full(num_codes, -1, dtype=np.int32 if num_codes < 2**31 else np.int64)
    numbers[order] = np.arange(len(order))
    return numbers


def _timestamps(interactions: pd.DataFrame) -> np.ndarray | None:
    return interactions["timestamp"].to_numpy() if "timestamp" in interactions else None


def _ratings(interactions: pd.DataFrame) -> np.ndarray | None:
    if "rating" not in interactions:
        return None
    return pd.to_numeric(interactions["rating"]).to_numpy(np.float32)


def _strings(values: pd.Series) -> pa.ChunkedArray:
    strings = pa.array(values, from_pandas=True)
    strings = strings if isinstance(strings, pa.ChunkedArray) else pa.chunked_array([strings])
    return strings if pa.types.is_string(strings.type) else strings.cast(pa.string())


def _item_texts(item_raw_ids: pa.Array, item_text: Mapping[str, str]) -> pa.Array:
    """Each item's text, `""` for items without one."""
    if not item_text:
        return pa.array([""] * len(item_raw_ids), pa.string())
    known = pc.index_in(item_raw_ids, value_set=pa.array(list(item_text), pa.string()))
    return pc.fill_null(pa.array(list(item_text.values()), pa.string()).take(known), "")


def check_protocol_parameters(
    min_rating: float | None, k_core: int, seed: int, validation_fraction: float, test_fraction: float
) -> None:
    """Raises a `ValueError` naming a parameter of [`apply_protocol`] that is out of range."""
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
        ids = interactions[column]
        if pd.api.types.is_integer_dtype(ids.dtype) and not pd.api.types.is_bool_dtype(ids.dtype):
            continue
        if ids.dtype == object:  # a frame built by hand: each value is checked
            bad = ~ids.map(lambda value: isinstance(value, str) or _is_integer(value)).to_numpy(bool)
        elif pd.api.types.is_string_dtype(ids.dtype):
            bad = ids.isna().to_numpy(bool)
        else:
            bad = np.ones(len(ids), dtype=bool)
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
    return np.maximum(1, (fraction * num_interactions).astype(num_interactions.dtype))
