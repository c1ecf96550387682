"""The data set's own ids of a model's users and items: what serving needs to speak in raw ids."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from transformers.utils import cached_file

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
        if len(self.item_texts) != len(self.items):
            raise ValueError(f"{len(self.items)} items but {len(self.item_texts)} item texts.")
        if self.histories and len(self.histories) != len(self.users):
            raise ValueError(f"{len(self.users)} users but {len(self.histories)} histories.")

    @classmethod
    def from_data(cls, data, include_histories: bool = True) -> IdMappings:
        """The mappings of a prepared [`RecommendationData`], with its training histories unless told otherwise."""
        histories = [history.tolist() for history in data.histories("train")] if include_histories else []
        return cls(list(data.user_raw_ids), list(data.item_raw_ids), list(data.item_texts()), histories)

    @classmethod
    def load(cls, path_or_repo_id: str | os.PathLike, **hub_kwargs) -> IdMappings:
        """Reads `id_mappings.json` from a checkpoint folder or Hub repository (`revision`, `token`, ... allowed)."""
        path = cached_file(str(path_or_repo_id), ID_MAPPINGS_NAME, **hub_kwargs)
        stored = json.loads(Path(path).read_text())
        return cls(stored["users"], stored["items"], stored["item_texts"], stored.get("histories", []))

    def save(self, folder: str | os.PathLike) -> Path:
        """Writes `id_mappings.json` into `folder`."""
        path = Path(folder) / ID_MAPPINGS_NAME
        stored = {"users": self.users, "items": self.items, "item_texts": self.item_texts}
        if self.histories:
            stored["histories"] = self.histories
        path.write_text(json.dumps(stored))
        return path

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

    @cached_property
    def _user_indices(self) -> dict[str, int]:
        return {raw_id: index for index, raw_id in enumerate(self.users)}

    @cached_property
    def _item_indices(self) -> dict[str, int]:
        return {raw_id: index for index, raw_id in enumerate(self.items)}


__all__ = ["ID_MAPPINGS_NAME", "IdMappings"]
