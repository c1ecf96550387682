"""
What a CLLM4Rec checkpoint carries besides its weights, and how it goes to the Hub.

A checkpoint folder (or Hub repository) written by [`save_for_hub`] holds:

- `config.json`, `model.safetensors`: the model, with an `auto_map` and the code files it names
  (`configuration_cllm4rec.py`, `modeling_cllm4rec.py`, `tokenization_cllm4rec.py`), so that it loads with
  `trust_remote_code=True` where the package is not installed;
- the backbone tokenizer's files, which [`CLLM4RecTokenizer`] wraps;
- `id_mappings.safetensors` ([`IdMappings`]): the data set's own user and item ids, item texts and the users' training
  histories, so that users and items can be named as the data set names them;
- `README.md`: the model card, generated from what was measured ([`hf_cllm4rec.hub.modelcard`]).

[`push_to_hub`] writes exactly that into a temporary folder and uploads it with `huggingface_hub`.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import HfApi
from transformers.dynamic_module_utils import custom_object_save

from ..configuration_cllm4rec import CLLM4RecConfig
from ..modeling_cllm4rec import CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction
from ..serving.id_mappings import IdMappings
from ..writing import replaced_files, sigterm_raises
from .modelcard import model_card


def _code_name(cls) -> str:
    """`module.Class` as an `auto_map` names a class of the code files a checkpoint carries."""
    return f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}"


# Both heads keep their weights under `model.*`: `AutoModel` loads either checkpoint as the item predictor, which
# serves recommendations (the collaborative LM's logits are over items, so it is no `AutoModelForCausalLM`).
AUTO_MAP = {"AutoConfig": _code_name(CLLM4RecConfig), "AutoModel": _code_name(CLLM4RecForItemPrediction)}


# The weights files of a checkpoint: one file, or shards and their index.
WEIGHT_FILES = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


@contextmanager
def _code_in_checkpoint(model):
    """Gives the model's config the `auto_map` of [`AUTO_MAP`] while a checkpoint is written, then undoes it."""
    if not isinstance(model, (CLLM4RecForItemPrediction, CLLM4RecForCollaborativeLM)):
        raise TypeError(
            f"save_for_hub writes CLLM4RecForItemPrediction or CLLM4RecForCollaborativeLM models, got "
            f"{type(model).__name__}."
        )
    config = model.config
    previous = config.__dict__.get("auto_map")
    config.auto_map = dict(AUTO_MAP)
    try:
        yield
    finally:
        if previous is None:
            config.__dict__.pop("auto_map", None)
        else:
            config.auto_map = previous


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
    tokenizer, `id_mappings.safetensors` and the model card `README.md`.

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
        license, dataset_id: card metadata (see [`hf_cllm4rec.hub.modelcard.model_card`]).

    Returns:
        The folder.
    """

    folder = Path(folder)
    if mappings is None and data is not None:
        mappings = IdMappings.from_data(data)
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
    # no file of the folder is ever half-written, and weights saved there earlier in other shards do not stay
    with replaced_files(folder, superseded=WEIGHT_FILES) as staging:
        # the tokenizer saves a copy of the config: write it first, so the model's config (with `auto_map`) wins
        tokenizer.save_pretrained(staging)
        with _code_in_checkpoint(model):
            model.save_pretrained(staging)
        # the code files `auto_map` names, with the modules they import
        for code in (model, tokenizer):
            custom_object_save(code, staging)
        if mappings is not None:
            mappings.save(staging)
        card.save(staging / "README.md")
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

    `revision` names the branch to commit to (created from `main` where it does not exist yet), or a pull request
    (`refs/pr/N`). `model.push_to_hub()` alone uploads the weights and config only, without tokenizer, id mappings
    or card.
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with sigterm_raises(), tempfile.TemporaryDirectory() as folder:  # removed on SIGTERM too
        save_for_hub(model, tokenizer, folder, model_id=repo_id, **save_kwargs)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision)


__all__ = ["save_for_hub", "push_to_hub"]
