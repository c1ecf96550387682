"""
The prepared data set: split interactions, users, items and reviews as a `DatasetDict` on disk.

What `RecommendationData.save` and `load` promise: a save is atomic (the data set appears at its path complete or not
at all; an interrupted or failed save, SIGTERM included, leaves the previous contents of the path as they were and
no staging folder behind). The path may be new or an empty folder; `overwrite=True` replaces only a folder that
`save` wrote, recognized by its manifest, and only while it holds nothing else: a folder with any other file, or
without this package's manifest, is never deleted.
`load` checks the manifest's format version, that every table is present, that the manifest's counts match the
tables, and that user and item ids run 0..n-1 in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from datasets import Dataset, DatasetDict, DatasetInfo, Features, Value, load_from_disk
from datasets.fingerprint import generate_random_fingerprint

from ..writing import foreign_entries, listed, replaced_folder

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_KEYS = (
    "format_version",
    "name",
    "num_users",
    "num_items",
    "num_interactions",
    "num_reviews",
    "protocol",
    "sources",
)
SPLITS = ("train", "validation", "test")
TABLES = (*SPLITS, "users", "items", "reviews")
# The files `save` writes, by path in the data set's folder: the manifest and `DatasetDict.save_to_disk`'s own beside
# the tables, in each table its shards and metadata, and the cache files that `datasets` adds there when a loaded
# table is mapped.
DATA_SET_FOLDERS = re.compile("|".join(TABLES))
DATA_SET_FILES = re.compile(
    rf"manifest\.json|dataset_dict\.json|({DATA_SET_FOLDERS.pattern})/"
    r"(data-\d{5}-of-\d{5}\.arrow|dataset_info\.json|state\.json|cache-[0-9a-f]+\.arrow)"
)

USER_FEATURES = Features({"user_id": Value("int64"), "raw_id": Value("string")})
ITEM_FEATURES = Features({"item_id": Value("int64"), "raw_id": Value("string"), "text": Value("string")})
REVIEW_FEATURES = Features({"user_id": Value("int64"), "item_id": Value("int64"), "text": Value("string")})
INTERACTION_FEATURES = Features(
    {"user_id": Value("int64"), "item_id": Value("int64"), "rating": Value("float32"), "timestamp": Value("int64")}
)


class DataFormatError(ValueError):
    """Raised when an input file or a prepared data set is malformed."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class RecommendationData:
    """
    A recommendation data set after the protocol: users and items numbered from 0, interactions split into
    `train`, `validation` and `test`, item texts and training reviews.

    Args:
        tables (`DatasetDict`):
            `train`, `validation`, `test` (`user_id`, `item_id`, and `rating`, `timestamp` where the source has
            them), `users` (`user_id`, `raw_id`), `items` (`item_id`, `raw_id`, `text`) and `reviews`
            (`user_id`, `item_id`, `text`, from training pairs only).
        manifest (`dict`):
            Name, counts, protocol parameters and SHA-256 of the source files, saved as `manifest.json`.

    Example:

    ```python
    >>> data = RecommendationData.load("data/beauty")
    >>> train_histories = data.histories("train")
    >>> train_histories[data.user_index("A3CIUOJXQ5VDQ2")]
    ```
    """

    tables: DatasetDict
    manifest: dict

    @classmethod
    def from_frames(
        cls,
        name: str,
        splits: Mapping[str, pd.DataFrame],
        user_raw_ids: Sequence[str],
        item_raw_ids: Sequence[str],
        item_texts: Sequence[str],
        reviews: pd.DataFrame | None = None,
        protocol: Mapping | None = None,
        sources: Mapping[str, str] | None = None,
    ) -> RecommendationData:
        """
        Builds the tables and the manifest from id-numbered frames: `splits` maps each split name to a frame with
        `user_id`, `item_id` and optionally `rating`, `timestamp`; `reviews` has `user_id`, `item_id`, `text`.
        """
        return cls.from_tables(
            name=name,
            splits={split: pa.Table.from_pandas(frame, preserve_index=False) for split, frame in splits.items()},
            user_raw_ids=pa.array(user_raw_ids, pa.string()),
            item_raw_ids=pa.array(item_raw_ids, pa.string()),
            item_texts=pa.array(item_texts, pa.string()),
            reviews=None if reviews is None else pa.Table.from_pandas(reviews, preserve_index=False),
            protocol=protocol,
            sources=sources,
        )

    @classmethod
    def from_tables(
        cls,
        name: str,
        splits: Mapping[str, pa.Table],
        user_raw_ids: pa.Array,
        item_raw_ids: pa.Array,
        item_texts: pa.Array,
        reviews: pa.Table | None = None,
        protocol: Mapping | None = None,
        sources: Mapping[str, str] | None = None,
    ) -> RecommendationData:
        """
        `from_frames` for Arrow tables and arrays, without a copy to Python objects: the way large data sets are built.
        """
        tables = DatasetDict()
        for split in SPLITS:
            features = Features({column: INTERACTION_FEATURES[column] for column in splits[split].column_names})
            tables[split] = _dataset(splits[split], features)
        users = {"user_id": np.arange(len(user_raw_ids)), "raw_id": user_raw_ids}
        tables["users"] = _dataset(pa.table(users), USER_FEATURES)
        items = {"item_id": np.arange(len(item_raw_ids)), "raw_id": item_raw_ids, "text": item_texts}
        tables["items"] = _dataset(pa.table(items), ITEM_FEATURES)
        if reviews is None:
            reviews = REVIEW_FEATURES.arrow_schema.empty_table()
        tables["reviews"] = _dataset(reviews, REVIEW_FEATURES)
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "num_users": len(user_raw_ids),
            "num_items": len(item_raw_ids),
            "num_interactions": {split: tables[split].num_rows for split in SPLITS},
            "num_reviews": tables["reviews"].num_rows,
            "protocol": dict(protocol or {}),
            "sources": dict(sources or {}),
        }
        return cls(tables=tables, manifest=manifest)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def num_users(self) -> int:
        return self.manifest["num_users"]

    @property
    def num_items(self) -> int:
        return self.manifest["num_items"]

    @cached_property
    def user_raw_ids(self) -> list[str]:
        """The source's own user ids, indexed by `user_id`."""
        return self.tables["users"]["raw_id"][:]

    @cached_property
    def item_raw_ids(self) -> list[str]:
        """The source's own item ids, indexed by `item_id`."""
        return self.tables["items"]["raw_id"][:]

    def item_texts(self) -> list[str]:
        """Item-side text (title, tags, categories, genres), indexed by `item_id`; `""` where there is none."""
        return self.tables["items"]["text"][:]

    def user_index(self, raw_id: str) -> int:
        """The `user_id` of the user the source calls `raw_id`."""
        return _lookup(self._user_indices, raw_id, "user", self.name)

    def item_index(self, raw_id: str) -> int:
        """The `item_id` of the item the source calls `raw_id`."""
        return _lookup(self._item_indices, raw_id, "item", self.name)

    @cached_property
    def _user_indices(self) -> dict[str, int]:
        return {raw_id: index for index, raw_id in enumerate(self.user_raw_ids)}

    @cached_property
    def _item_indices(self) -> dict[str, int]:
        return {raw_id: index for index, raw_id in enumerate(self.item_raw_ids)}

    def to_sparse(self, split: str) -> sp.csr_matrix:
        """Binary users x items `float32` matrix of one split's interactions, with sorted indices."""
        pairs = self._split(split).with_format("numpy", columns=["user_id", "item_id"])[:]
        matrix = sp.csr_matrix(
            (np.ones(len(pairs["user_id"]), dtype=np.float32), (pairs["user_id"], pairs["item_id"])),
            shape=(self.num_users, self.num_items),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def item_counts(self, split: str) -> np.ndarray:
        """Per item (indexed by `item_id`), the `int64` number of users who interacted with it in one split."""
        return np.diff(self.to_sparse(split).tocsc().indptr).astype(np.int64)

    def histories(self, split: str) -> list[np.ndarray]:
        """Per user (indexed by `user_id`), the sorted `int64` item ids of one split; empty for users with none."""
        matrix = self.to_sparse(split)
        return np.split(matrix.indices.astype(np.int64), matrix.indptr[1:-1])

    def _split(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return self.tables[split]

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """
        Writes the tables and `manifest.json` to the directory `path`, atomically: everything goes into a hidden
        sibling staging directory that is renamed into place once complete, and is removed if the save fails or is
        interrupted (SIGTERM, in the main thread, cleans up and then ends the process as it would have). Staging
        directories of `path` left by a killed save are removed first.

        `path` may be new or an empty folder. With `overwrite=True`, a prepared data set at `path` is replaced, but only
        if it holds nothing but what `save` writes; a folder that is not one, or that holds other files, is never
        replaced (`FileExistsError`).
        """
        check_writable(path, overwrite)
        with replaced_folder(path, check=lambda: check_writable(path, overwrite)) as staging:
            # An empty table needs one explicit (empty) shard, or `load_from_disk` cannot read it back.
            empty_tables = {name: 1 for name, table in self.tables.items() if table.num_rows == 0}
            self.tables.save_to_disk(staging, num_shards=empty_tables or None)
            (staging / MANIFEST_NAME).write_text(json.dumps(self.manifest, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> RecommendationData:
        """Loads a data set written by `save`, checking that the manifest agrees with the tables."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no prepared data set at {path}: the path does not exist")
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise DataFormatError(f"{path} is not a prepared data set: it has no {MANIFEST_NAME}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{manifest_path} is not valid JSON: {error}") from None
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            found = manifest.get("format_version") if isinstance(manifest, dict) else None
            raise DataFormatError(
                f"{manifest_path}: format_version {found!r} is not supported (expected {FORMAT_VERSION})"
            )
        try:
            tables = load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as error:
            raise DataFormatError(f"{path} is not a prepared data set: {error}") from None
        data = cls(tables=tables, manifest=manifest)
        data._check_consistency(path)
        return data

    def _check_consistency(self, path: Path) -> None:
        missing = [table for table in TABLES if table not in self.tables]
        if missing:
            raise DataFormatError(f"{path} is not a prepared data set: missing tables {', '.join(missing)}")
        found = {
            "num_users": self.tables["users"].num_rows,
            "num_items": self.tables["items"].num_rows,
            "num_interactions": {split: self.tables[split].num_rows for split in SPLITS},
            "num_reviews": self.tables["reviews"].num_rows,
        }
        for key, value in found.items():
            if self.manifest.get(key) != value:
                raise DataFormatError(
                    f"{path}: the manifest says {key} = {self.manifest.get(key)}, the tables hold {value}"
                )
        for table, column in (("users", "user_id"), ("items", "item_id")):
            ids = self.tables[table].with_format("numpy", columns=[column])[:][column]
            if not np.array_equal(ids, np.arange(len(ids))):
                raise DataFormatError(f"{path}: {table}.{column} is not 0..{len(ids) - 1} in order")


def check_writable(path: str | os.PathLike, overwrite: bool) -> None:
    """
    Raises a `FileExistsError` unless `save` may write to `path`: new or an empty folder, or (with `overwrite`) a data
    set it wrote.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()) or (path.is_dir() and not any(path.iterdir())):
        return
    # what is never replaced is said first: advice to pass `overwrite` would only lead to this refusal
    problem = _manifest_problem(path)
    if problem:
        raise FileExistsError(f"{path} exists and is not a prepared data set: {problem}; refusing to replace it")
    others = foreign_entries(path, DATA_SET_FILES, DATA_SET_FOLDERS)
    if others:
        raise FileExistsError(
            f"{path} holds files that are not part of a prepared data set: {listed(others)}; refusing to replace it"
        )
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")


def _manifest_problem(path: Path) -> str | None:
    """Why `path` is not a folder that `save` wrote, judging by its manifest; `None` if it is one."""
    if path.is_symlink() or not path.is_dir():
        return "it is not a directory"
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file() or manifest_path.is_symlink():
        return f"it has no {MANIFEST_NAME}"
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (ValueError, RecursionError):
        return f"its {MANIFEST_NAME} is not valid JSON"
    if (
        not isinstance(manifest, dict)
        or manifest.get("format_version") != FORMAT_VERSION
        or not all(key in manifest for key in MANIFEST_KEYS)
    ):
        return f"its {MANIFEST_NAME} is not one this package wrote"
    return None


def _dataset(table: pa.Table, features: Features) -> Dataset:
    """A `Dataset` over an Arrow table, its columns cast to `features`."""
    table = table.select(list(features)).cast(features.arrow_schema)
    # A fingerprint of its own: `datasets` would otherwise hash the whole table to make one.
    return Dataset(table, info=DatasetInfo(features=features), fingerprint=generate_random_fingerprint())


def _lookup(indices: dict[str, int], raw_id: str, kind: str, name: str) -> int:
    try:
        return indices[raw_id]
    except KeyError:
        raise KeyError(f"unknown {kind} id {raw_id!r}: not in data set {name!r}") from None
