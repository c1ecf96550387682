"""
What a CLLM4Rec checkpoint carries besides its weights, and how it goes to the Hub.

A checkpoint folder (or Hub repository) written by [`save_for_hub`] holds:

- `config.json`, `model.safetensors`: the model, with an `auto_map` and the code files it names
  (`configuration_cllm4rec.py`, `modeling_cllm4rec.py`, `tokenization_cllm4rec.py`), so that it loads with
  `trust_remote_code=True` where the package is not installed;
- the backbone tokenizer's files, which [`CLLM4RecTokenizer`] wraps;
- `id_mappings.json` ([`IdMappings`]): the data set's own user and item ids, item texts and the users' training
  histories, so that users and items can be named as the data set names them;
- `README.md`: the model card, generated from what was measured ([`hf_cllm4rec.modelcard`]).

[`push_to_hub`] writes exactly that into a temporary folder and uploads it with `huggingface_hub`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from huggingface_hub import HfApi
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import cached_file

from .modeling_cllm4rec import CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction, CLLM4RecModel

ID_MAPPINGS_NAME = "id_mappings.json"
# The auto class each model class answers to in a checkpoint loaded with `trust_remote_code=True`.
AUTO_CLASSES = {
    CLLM4RecModel: "AutoModel",
    CLLM4RecForCollaborativeLM: "AutoModelForCausalLM",
    CLLM4RecForItemPrediction: "AutoModel",
}


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


@contextmanager
def _code_in_checkpoint(model):
    """Registers the config and model classes for their auto classes while a checkpoint is written, then undoes it."""
    model_class = type(model)
    auto_class = next((name for cls, name in AUTO_CLASSES.items() if issubclass(model_class, cls)), None)
    if auto_class is None:
        raise TypeError(f"save_for_hub writes CLLM4Rec models, got {model_class.__name__}.")
    classes = (type(model.config), model_class)
    previous = [cls.__dict__.get("_auto_class") for cls in classes]
    type(model.config).register_for_auto_class("AutoConfig")
    model_class.register_for_auto_class(auto_class)
    try:
        yield
    finally:
        for cls, value in zip(classes, previous, strict=True):
            cls._auto_class = value


def save_for_hub(
    model,
    tokenizer,
    folder: str | os.PathLike,
    *,
    data=None,
    mappings: IdMappings | None = None,
    metrics: dict[str, float] | None = None,
    training_args=None,
    model_id: str | None = None,
    license: str = "apache-2.0",
    dataset_id: str | None = None,
) -> Path:
    """
    Writes into `folder` exactly what [`push_to_hub`] uploads: the model with its code files and `auto_map`, the
    tokenizer, `id_mappings.json` and the model card `README.md`.

    Args:
        model: a CLLM4Rec model ([`CLLM4RecForItemPrediction`] after fine-tuning).
        tokenizer: its [`CLLM4RecTokenizer`].
        folder: where to write; created if needed.
        data (`RecommendationData`, *optional*): the prepared data set it was trained on: gives the id mappings
            (with training histories) and the card's data section.
        mappings (`IdMappings`, *optional*): id mappings to ship instead of those of `data`.
        metrics (`dict`, *optional*): the measured test metrics (`test_recall@20`, ...) for the card.
        training_args (*optional*): the `CLLM4RecTrainingArguments` of the run, for the card.
        model_id (`str`, *optional*): the Hub repository id the card refers to; defaults to the folder's name.
        license, dataset_id: card metadata (see [`hf_cllm4rec.modelcard.model_card`]).

    Returns:
        The folder.
    """
    from .modelcard import model_card

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # the tokenizer saves a copy of the config: write it first, so the model's config (with `auto_map`) wins
    tokenizer.save_pretrained(folder)
    custom_object_save(tokenizer, folder)
    with _code_in_checkpoint(model):
        model.save_pretrained(folder)
    if mappings is None and data is not None:
        mappings = IdMappings.from_data(data)
    if mappings is not None:
        mappings.save(folder)
    card = model_card(
        model.config,
        model_id=model_id or folder.resolve().name,
        data=data,
        mappings=mappings,
        metrics=metrics,
        training_args=training_args,
        license=license,
        dataset_id=dataset_id,
    )
    card.save(folder / "README.md")
    return folder


def push_to_hub(
    model,
    tokenizer,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload CLLM4Rec model",
    **save_kwargs,
):
    """
    Uploads a CLLM4Rec model to the Hub repository `repo_id` (created if needed): what [`save_for_hub`] writes, with
    `save_kwargs` (`data`, `metrics`, `training_args`, ...) passed to it. Returns the `CommitInfo`.

    `model.push_to_hub()` alone uploads the weights and config only, without tokenizer, id mappings or card.
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        save_for_hub(model, tokenizer, folder, model_id=repo_id, **save_kwargs)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision)


__all__ = ["IdMappings", "ID_MAPPINGS_NAME", "save_for_hub", "push_to_hub"]
