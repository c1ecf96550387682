"""The data set's own ids of a model's users and items: what serving needs to speak in raw ids."""

from __future__ import annotations

import json
import os
import reprlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers.utils import cached_file

from ..writing import replaced_file

ID_MAPPINGS_NAME = "id_mappings.json"


@dataclass
class IdMappings:
    """
    The data set's own ids of a model's users and items, indexed by the model's 0-based ids, with the item texts and
    each user's training history (0-based item ids): what serving needs to speak in raw ids.

    Args:
        users (`list[str]`): raw user id of each user token.
        items (`list[str]`): raw item id of each item token.
        item_texts (`list[str]`): text of each item (`""` where there is none).
        histories (`list[list[int]]`, *optional*): each user's training items; empty when not shipped.
    """

    users: list[str]
    items: list[str]
    item_texts: list[str]
    histories: list[list[int]] = field(default_factory=list)

    def __post_init__(self):
        """Raises a `ValueError` naming what does not fit: ids that are not unique strings, texts, histories."""
        for name in ("users", "items", "item_texts"):
            values = getattr(self, name)
            if not isinstance(values, list):
                raise ValueError(f"`{name}` must be a list of strings, got {type(values).__name__}.")
            wrong = next((index for index, value in enumerate(values) if not isinstance(value, str)), None)
            if wrong is not None:
                raise ValueError(f"`{name}` must hold strings, got {reprlib.repr(values[wrong])} at index {wrong}.")
        if len(self.item_texts) != len(self.items):
            raise ValueError(f"{len(self.items)} items but {len(self.item_texts)} item texts: one text per item.")
        self._user_indices = unique_indices(self.users, "user")
        self._item_indices = unique_indices(self.items, "item")
        if not isinstance(self.histories, list):
            raise ValueError(f"`histories` must be a list of lists, got {type(self.histories).__name__}.")
        if self.histories and len(self.histories) != len(self.users):
            raise ValueError(f"{len(self.users)} users but {len(self.histories)} histories: one history per user.")
        num_items = len(self.items)
        for user, history in enumerate(self.histories):
            if not isinstance(history, list) or not all(type(item) is int for item in history):
                raise ValueError(
                    f"The history of user {self.users[user]!r} must be a list of 0-based item ids (integers), got "
                    f"{reprlib.repr(history)}."
                )
            if history and not 0 <= min(history) <= max(history) < num_items:
                outside = next(item for item in history if not 0 <= item < num_items)
                raise ValueError(
                    f"The history of user {self.users[user]!r} holds item id {outside}, outside [0, {num_items}): "
                    f"there are {num_items} items."
                )

    @classmethod
    def from_data(cls, data, include_histories: bool = True) -> IdMappings:
        """The mappings of a prepared [`RecommendationData`], with its training histories unless told otherwise."""
        histories = [history.tolist() for history in data.histories("train")] if include_histories else []
        return cls(list(data.user_raw_ids), list(data.item_raw_ids), list(data.item_texts()), histories)

    @classmethod
    def load(cls, path_or_repo_id: str | os.PathLike, **hub_kwargs) -> IdMappings:
        """Reads `id_mappings.json` from a checkpoint folder or Hub repository (`revision`, `token`, ... allowed)."""
        folder = Path(path_or_repo_id)
        if folder.is_dir() and not (folder / ID_MAPPINGS_NAME).is_file():
            raise FileNotFoundError(
                f"{folder} has no {ID_MAPPINGS_NAME}, the data set's own ids of the model's users and items: training "
                "and `save_for_hub` write it beside the model; build one with `IdMappings.from_data` and save it there."
            )
        path = cached_file(str(path_or_repo_id), ID_MAPPINGS_NAME, **hub_kwargs)
        try:
            stored = json.loads(Path(path).read_text(encoding="utf-8"))
        except RecursionError:
            raise ValueError(f"{path} is not valid id mappings: its JSON is nested too deeply.") from None
        except ValueError as error:  # JSON and Unicode decoding errors
            raise ValueError(f"{path} is not valid id mappings: not a JSON file ({error}).") from None
        keys = ("users", "items", "item_texts")
        if not isinstance(stored, dict) or not all(key in stored for key in keys):
            raise ValueError(f"{path} is not valid id mappings: it must hold a JSON object with {', '.join(keys)}.")
        try:
            return cls(*(stored[key] for key in keys), stored.get("histories", []))
        except ValueError as error:
            raise ValueError(f"{path} is not valid id mappings: {error}") from None

    def save(self, folder: str | os.PathLike) -> Path:
        """Writes `id_mappings.json` into `folder`, whole or not at all: a failure leaves an earlier file as it was."""
        path = Path(folder) / ID_MAPPINGS_NAME
        stored = {"users": self.users, "items": self.items, "item_texts": self.item_texts}
        if self.histories:
            stored["histories"] = self.histories
        with replaced_file(path) as file:
            json.dump(stored, file)
        return path

    def check_fits(self, config) -> None:
        """Raises a `ValueError` unless the mappings hold as many users and items as the model of `config`."""
        if (len(self.users), len(self.items)) != (config.num_users, config.num_items):
            raise ValueError(
                f"The id mappings hold {len(self.users)} users and {len(self.items)} items, but the model has "
                f"{config.num_users} users and {config.num_items} items: they do not belong together."
            )

    def user_index(self, raw_id) -> int:
        """The 0-based id of the user the data set calls `raw_id`; a `KeyError` naming it when unknown."""
        index = self._user_indices.get(str(raw_id))
        if index is None:
            raise KeyError(f"unknown user id {str(raw_id)!r}: not one of the model's {len(self.users)} users")
        return index

    def item_indices(self, raw_ids: Iterable) -> tuple[list[int], list[str]]:
        """The 0-based ids of the known items among `raw_ids` (first occurrences, in order), and the unknown ones."""
        known: dict[int, None] = {}
        unknown: list[str] = []
        for raw_id in raw_ids:
            index = self._item_indices.get(str(raw_id))
            if index is None:
                unknown.append(str(raw_id))
            else:
                known[index] = None
        return list(known), unknown

    def history(self, user: int) -> list[int]:
        """The training history shipped for user `user` (0-based); a `KeyError` when the mappings hold none."""
        if not self.histories:
            raise KeyError("these id mappings hold no training histories: give the user's history explicitly")
        return self.histories[user]

    def ranked_items(self, item_ids: Sequence[int], scores: Sequence[float]) -> list[dict]:
        """`[{"item_id": raw id, "score": float, "text": str}, ...]` for 0-based items ranked best first."""
        return [
            {"item_id": self.items[item], "score": float(score), "text": self.item_texts[item]}
            for item, score in zip(np.asarray(item_ids).tolist(), np.asarray(scores).tolist(), strict=True)
        ]


def unique_indices(raw_ids: list[str], kind: str) -> dict[str, int]:
    """The 0-based index of each raw id; a `ValueError` naming a raw id that appears twice."""
    indices: dict[str, int] = {}
    for index, raw_id in enumerate(raw_ids):
        first = indices.setdefault(raw_id, index)
        if first != index:
            raise ValueError(
                f"The {kind} id {raw_id!r} appears twice ({kind}s {first} and {index}): raw ids must be unique."
            )
    return indices


__all__ = ["ID_MAPPINGS_NAME", "IdMappings"]
