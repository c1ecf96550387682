"""
The data set's own ids of a model's users and items: what serving needs to speak in raw ids.

They are saved as `id_mappings.safetensors`, in columns: each list of strings (user ids, item ids, item texts) as one
buffer of UTF-8 bytes with `int64` offsets (Arrow's layout), the training histories as a CSR matrix (`history_indptr`,
`history_indices`), so that a million users load in a second or two with NumPy and Arrow, and nothing is a pickle.
`id_mappings.json`, which earlier versions wrote, still loads.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from transformers.utils import cached_file

from ..writing import replaced_files

ID_MAPPINGS_NAME = "id_mappings.safetensors"
# The format of earlier versions: one JSON object with lists `users`, `items`, `item_texts` and `histories`.
LEGACY_ID_MAPPINGS_NAME = "id_mappings.json"
FORMAT = "cllm4rec-id-mappings"
FORMAT_VERSION = "1"
STRING_COLUMNS = ("users", "items", "item_texts")


class IdMappings:
    """
    The data set's own ids of a model's users and items, indexed by the model's 0-based ids, with the item texts and
    each user's training history (0-based item ids): what serving needs to speak in raw ids.

    Args:
        users (`Sequence[str]`): raw user id of each user token.
        items (`Sequence[str]`): raw item id of each item token.
        item_texts (`Sequence[str]`): text of each item (`""` where there is none).
        histories (`Sequence[Sequence[int]]`, *optional*): each user's training items; `None` or `[]` when not
            shipped. Large mappings are built from a CSR matrix instead, with [`from_columns`].
    """

    def __init__(
        self,
        users: Sequence[str],
        items: Sequence[str],
        item_texts: Sequence[str],
        histories: Sequence[Sequence[int]] | None = None,
    ):
        self._set_columns(users, items, item_texts)
        if histories is not None and not (isinstance(histories, list) and not histories):  # [] ships none
            self._set_histories(*histories_as_csr(histories, self.users))

    @classmethod
    def from_columns(
        cls,
        users: Sequence[str] | pa.Array,
        items: Sequence[str] | pa.Array,
        item_texts: Sequence[str] | pa.Array,
        history_indptr: np.ndarray | None = None,
        history_indices: np.ndarray | None = None,
    ) -> IdMappings:
        """
        Mappings of string columns (lists or Arrow arrays) and, optionally, the histories as a CSR matrix: user `u`'s
        items are `history_indices[history_indptr[u]:history_indptr[u + 1]]`. Checked without a loop over users.
        """
        mappings = cls.__new__(cls)
        mappings._set_columns(users, items, item_texts)
        mappings._set_histories(history_indptr, history_indices)
        return mappings

    def _set_columns(self, users, items, item_texts) -> None:
        """Sets the string columns; a `ValueError` naming what does not fit: non-strings, duplicate ids, texts."""
        users, items, item_texts = (
            string_column(values, name)
            for values, name in zip((users, items, item_texts), STRING_COLUMNS, strict=True)
        )
        if len(item_texts) != len(items):
            raise ValueError(f"{len(items)} items but {len(item_texts)} item texts: one text per item.")
        self.users, self.items, self.item_texts = users.to_pylist(), items.to_pylist(), item_texts.to_pylist()
        self._user_index = unique_index(self.users, "user")
        self._item_index = unique_index(self.items, "item")
        self.history_indptr = self.history_indices = None

    def _set_histories(self, indptr: np.ndarray | None, indices: np.ndarray | None) -> None:
        """Sets the CSR histories (both `None` for none); a `ValueError` naming what does not fit."""
        if (indptr is None) != (indices is None):
            raise ValueError("The histories need both `history_indptr` and `history_indices`, or neither.")
        if indptr is not None:
            indptr, indices = np.asarray(indptr), np.asarray(indices)
            check_csr(indptr, indices, len(self.users), len(self.items), self.users)
            indptr, indices = indptr.astype(np.int64, copy=False), indices.astype(np.int64, copy=False)
        self.history_indptr, self.history_indices = indptr, indices

    @classmethod
    def from_data(cls, data, include_histories: bool = True) -> IdMappings:
        """The mappings of a prepared [`RecommendationData`], with its training histories unless told otherwise."""
        histories = data.to_sparse("train") if include_histories else None
        users, items = (data.tables[name].with_format("arrow") for name in ("users", "items"))
        return cls.from_columns(
            users["raw_id"],
            items["raw_id"],
            items["text"],
            None if histories is None else histories.indptr,
            None if histories is None else histories.indices,
        )

    @property
    def histories(self) -> Histories:
        """Each user's training items, as a read-only sequence of lists; empty when the mappings ship none."""
        return Histories(self.history_indptr, self.history_indices)

    @classmethod
    def load(cls, path_or_repo_id: str | os.PathLike, **hub_kwargs) -> IdMappings:
        """
        Reads `id_mappings.safetensors` (or the `id_mappings.json` of earlier versions) from a checkpoint folder or Hub
        repository (`revision`, `token`, ... allowed).
        """
        folder = Path(path_or_repo_id)
        if folder.is_dir() and not any(
            (folder / name).is_file() for name in (ID_MAPPINGS_NAME, LEGACY_ID_MAPPINGS_NAME)
        ):
            raise FileNotFoundError(
                f"{folder} has no {ID_MAPPINGS_NAME}, the data set's own ids of the model's users and items: training "
                "and `save_for_hub` write it beside the model; build one with `IdMappings.from_data` and save it there."
            )
        options = {**hub_kwargs, "_raise_exceptions_for_missing_entries": False}
        path = cached_file(str(path_or_repo_id), ID_MAPPINGS_NAME, **options)
        if path is None:
            return cls._load_legacy(cached_file(str(path_or_repo_id), LEGACY_ID_MAPPINGS_NAME, **hub_kwargs))
        try:
            columns, metadata = read_safetensors(path)
            if metadata.get("format") != FORMAT:
                raise ValueError(f"its metadata does not name the format {FORMAT!r}")
            expected = {f"{name}_{part}" for name in STRING_COLUMNS for part in ("bytes", "offsets")}
            missing = sorted(expected - set(columns))
            if missing:
                raise ValueError(f"it lacks the tensors {', '.join(missing)}")
            strings = [
                decoded_strings(columns[f"{name}_bytes"], columns[f"{name}_offsets"], name) for name in STRING_COLUMNS
            ]
            return cls.from_columns(*strings, columns.get("history_indptr"), columns.get("history_indices"))
        except ValueError as error:
            raise ValueError(f"{path} is not valid id mappings: {error}") from None

    @classmethod
    def _load_legacy(cls, path: str) -> IdMappings:
        """Reads the `id_mappings.json` of earlier versions."""
        try:
            stored = json.loads(Path(path).read_text(encoding="utf-8"))
        except RecursionError:
            raise ValueError(f"{path} is not valid id mappings: its JSON is nested too deeply.") from None
        except ValueError as error:  # JSON and Unicode decoding errors
            raise ValueError(f"{path} is not valid id mappings: not a JSON file ({error}).") from None
        if not isinstance(stored, dict) or not all(key in stored for key in STRING_COLUMNS):
            keys = ", ".join(STRING_COLUMNS)
            raise ValueError(f"{path} is not valid id mappings: it must hold a JSON object with {keys}.")
        try:
            return cls(*(stored[key] for key in STRING_COLUMNS), stored.get("histories"))
        except ValueError as error:
            raise ValueError(f"{path} is not valid id mappings: {error}") from None

    def save(self, folder: str | os.PathLike) -> Path:
        """
        Writes `id_mappings.safetensors` into `folder`, whole or not at all: a failure leaves an earlier file as it
        was. An `id_mappings.json` of an earlier version there is removed.
        """
        tensors = {}
        for name in STRING_COLUMNS:
            tensors[f"{name}_bytes"], tensors[f"{name}_offsets"] = encoded_strings(getattr(self, name))
        if self.history_indptr is not None:
            index_type = np.int32 if len(self.items) <= np.iinfo(np.int32).max else np.int64
            tensors["history_indptr"] = self.history_indptr
            tensors["history_indices"] = self.history_indices.astype(index_type)
        metadata = {"format": FORMAT, "format_version": FORMAT_VERSION}
        with replaced_files(folder, superseded=re.compile(re.escape(LEGACY_ID_MAPPINGS_NAME))) as staging:
            save_file(tensors, staging / ID_MAPPINGS_NAME, metadata=metadata)
        return Path(folder) / ID_MAPPINGS_NAME

    def __eq__(self, other) -> bool:
        if not isinstance(other, IdMappings):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in STRING_COLUMNS) and all(
            (mine is None and theirs is None)
            or (mine is not None and theirs is not None and np.array_equal(mine, theirs))
            for mine, theirs in (
                (self.history_indptr, other.history_indptr),
                (self.history_indices, other.history_indices),
            )
        )

    def __repr__(self) -> str:
        shipped = "with" if self.history_indptr is not None else "without"
        return f"IdMappings({len(self.users)} users, {len(self.items)} items, {shipped} histories)"

    def check_fits(self, config) -> None:
        """Raises a `ValueError` unless the mappings hold as many users and items as the model of `config`."""
        if (len(self.users), len(self.items)) != (config.num_users, config.num_items):
            raise ValueError(
                f"The id mappings hold {len(self.users)} users and {len(self.items)} items, but the model has "
                f"{config.num_users} users and {config.num_items} items: they do not belong together."
            )

    def check_matches(self, data) -> None:
        """
        Raises a `ValueError` naming the first id that differs unless the mappings hold the raw user and item ids of
        the prepared [`RecommendationData`] `data`, in its order: equal counts alone would let a model of another
        catalogue score items under the wrong ids.
        """
        for kind, ours, theirs in (("user", self.users, data.user_raw_ids), ("item", self.items, data.item_raw_ids)):
            if ours == theirs:
                continue
            index = next(
                (index for index, (mine, other) in enumerate(zip(ours, theirs, strict=False)) if mine != other),
                min(len(ours), len(theirs)),
            )
            mapped, prepared = (repr(ids[index]) if index < len(ids) else "nothing" for ids in (ours, theirs))
            raise ValueError(
                f"{kind.capitalize()} {index} is {mapped} in the id mappings but {prepared} in the data set "
                f"{data.name!r}: the model belongs to another data set."
            )

    def user_index(self, raw_id) -> int:
        """The 0-based id of the user the data set calls `raw_id`; a `KeyError` naming it when unknown."""
        position = self._user_index.get_indexer([str(raw_id)])[0]
        if position < 0:
            raise KeyError(f"unknown user id {str(raw_id)!r}: not one of the model's {len(self.users)} users")
        return int(position)

    def item_indices(self, raw_ids: Iterable) -> tuple[list[int], list[str]]:
        """The 0-based ids of the known items among `raw_ids` (first occurrences, in order), and the unknown ones."""
        raw_ids = [str(raw_id) for raw_id in raw_ids]
        positions = self._item_index.get_indexer(raw_ids) if raw_ids else np.empty(0, dtype=np.int64)
        known = pd.unique(positions[positions >= 0]).tolist()
        return known, [raw_id for raw_id, position in zip(raw_ids, positions, strict=True) if position < 0]

    def history(self, user: int) -> list[int]:
        """The training history shipped for user `user` (0-based); a `KeyError` when the mappings hold none."""
        if self.history_indptr is None:
            raise KeyError("these id mappings hold no training histories: give the user's history explicitly")
        return self.histories[user]

    def users_with_histories(self) -> np.ndarray:
        """The 0-based ids of the users with at least one training item (none when no histories are shipped)."""
        if self.history_indptr is None:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(np.diff(self.history_indptr))

    def ranked_items(self, item_ids: Sequence[int], scores: Sequence[float]) -> list[dict]:
        """`[{"item_id": raw id, "score": float, "text": str}, ...]` for 0-based items ranked best first."""
        return [
            {"item_id": self.items[item], "score": float(score), "text": self.item_texts[item]}
            for item, score in zip(np.asarray(item_ids).tolist(), np.asarray(scores).tolist(), strict=True)
        ]


class Histories(Sequence):
    """Read-only view of CSR histories: `histories[u]` is user `u`'s list of 0-based item ids; empty for none."""

    def __init__(self, indptr: np.ndarray | None, indices: np.ndarray | None):
        self.indptr, self.indices = indptr, indices

    def __len__(self) -> int:
        return 0 if self.indptr is None else len(self.indptr) - 1

    def __getitem__(self, user):
        if isinstance(user, slice):
            return [self[position] for position in range(*user.indices(len(self)))]
        if self.indptr is None:
            raise IndexError("these id mappings hold no training histories")
        user = range(len(self))[user]  # IndexError out of range; negative indices count from the end
        return self.indices[self.indptr[user] : self.indptr[user + 1]].tolist()


def string_column(values, name: str) -> pa.LargeStringArray:
    """`values` as an Arrow string array; a `ValueError` naming a value that is not a string, with its index."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)) or values.null_count:
            raise ValueError(
                f"`{name}` must hold strings, got an Arrow array of {values.type} with nulls or non-strings."
            )
        values = values.cast(pa.large_string())
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ValueError(f"`{name}` must be a list of strings, got {type(values).__name__}.")
    try:
        column = pa.array(values, type=pa.large_string(), from_pandas=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        column = None
    if column is None or column.null_count:
        wrong = next(index for index, value in enumerate(values) if not isinstance(value, str))
        raise ValueError(f"`{name}` must hold strings, got {reprlib.repr(values[wrong])} at index {wrong}.")
    return column


def unique_index(raw_ids: list[str], kind: str) -> pd.Index:
    """A lookup of the 0-based index of each raw id; a `ValueError` naming a raw id that appears twice."""
    index = pd.Index(raw_ids, dtype=object)
    if not index.is_unique:
        second = int(np.flatnonzero(index.duplicated())[0])
        raw_id = raw_ids[second]
        first = raw_ids.index(raw_id)
        raise ValueError(
            f"The {kind} id {raw_id!r} appears twice ({kind}s {first} and {second}): raw ids must be unique."
        )
    return index


def histories_as_csr(histories, users: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """
    Per-user lists of 0-based item ids as a CSR matrix `(indptr, indices)`; a `ValueError` naming a user whose history
    is not a list of integers, or that does not have one history per user.
    """
    if isinstance(histories, (str, bytes, dict)) or not isinstance(histories, Sequence):
        raise ValueError(f"`histories` must be a list of lists, got {type(histories).__name__}.")
    if len(histories) != len(users):
        raise ValueError(f"{len(users)} users but {len(histories)} histories: one history per user.")
    for user, history in enumerate(histories):
        if not isinstance(history, (list, np.ndarray)) or not all(
            type(item) is int or isinstance(item, np.integer) for item in history
        ):
            raise ValueError(
                f"The history of user {users[user]!r} must be a list of 0-based item ids (integers), got "
                f"{reprlib.repr(history)}."
            )
    lengths = np.fromiter((len(history) for history in histories), dtype=np.int64, count=len(histories))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.fromiter((item for history in histories for item in history), dtype=np.int64, count=int(indptr[-1]))
    return indptr, indices


def check_csr(indptr: np.ndarray, indices: np.ndarray, num_users: int, num_items: int, users=None) -> None:
    """Raises a `ValueError` unless `(indptr, indices)` holds one history per user, of item ids in `[0, num_items)`."""
    for name, array in (("history_indptr", indptr), ("history_indices", indices)):
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"`{name}` must be a 1-D array of integers, got {array.dtype} of shape {array.shape}.")
    if len(indptr) != num_users + 1:
        raise ValueError(f"{num_users} users but {len(indptr) - 1} histories: one history per user.")
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise ValueError(
            f"`history_indptr` must rise from 0 to the {len(indices)} history entries, never falling: it does not."
        )
    if len(indices) and not 0 <= indices.min() <= indices.max() < num_items:
        position = int(np.flatnonzero((indices < 0) | (indices >= num_items))[0])
        user = int(np.searchsorted(indptr, position, side="right")) - 1
        name = repr(users[user]) if users is not None else user
        raise ValueError(
            f"The history of user {name} holds item id {int(indices[position])}, outside [0, {num_items}): "
            f"there are {num_items} items."
        )


def encoded_strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`values` as one buffer of UTF-8 bytes (`uint8`) and the `int64` offsets of each string in it."""
    column = pa.array(values, type=pa.large_string())
    _, offsets, data = column.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64, count=len(column) + 1)
    data = np.frombuffer(data, dtype=np.uint8, count=int(offsets[-1])) if data is not None else np.empty(0, np.uint8)
    return data, offsets


def decoded_strings(data: np.ndarray, offsets: np.ndarray, name: str) -> pa.LargeStringArray:
    """The strings of a buffer of UTF-8 bytes and their offsets; a `ValueError` naming the column that is damaged."""
    if data.dtype != np.uint8 or offsets.dtype != np.int64 or data.ndim != 1 or offsets.ndim != 1 or not len(offsets):
        raise ValueError(f"`{name}` must be stored as 1-D uint8 bytes and int64 offsets.")
    column = pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        column.validate(full=True)  # offsets within the bytes and rising, valid UTF-8
    except pa.ArrowInvalid as error:
        raise ValueError(f"`{name}` is damaged: {error}") from None
    return column


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata of a safetensors file; a `ValueError` when it is not one."""
    try:
        with safe_open(path, framework="np") as file:
            return {key: file.get_tensor(key) for key in file.keys()}, file.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"not a safetensors file ({error})") from None


def check_checkpoint_ids(path_or_repo_id: str | os.PathLike, data) -> bool:
    """
    Raises a `ValueError` unless the prepared [`RecommendationData`] `data` holds the raw user and item ids that the
    checkpoint's id mappings record ([`IdMappings.check_matches`]); returns False, having checked nothing, for a
    checkpoint that ships no id mappings (an intermediate `checkpoint-N`).
    """
    try:
        mappings = IdMappings.load(path_or_repo_id)
    except OSError:
        return False
    mappings.check_matches(data)
    return True


__all__ = ["ID_MAPPINGS_NAME", "LEGACY_ID_MAPPINGS_NAME", "IdMappings", "check_checkpoint_ids"]
