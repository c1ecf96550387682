"""
User and item embeddings of a CLLM4Rec model, for approximate-nearest-neighbour serving.

A fine-tuned model scores item `j` for a prompt as `q @ z_j`, where `q` is the hidden state of the prompt's last
token ([`user_query_vectors`]) and `z_j` the item's row of the item head: its collaborative embedding, or with
`tie_item_head=False` its row of the head's own table; with `item_bias=True` the score is `q @ z_j + b_j`. An ANN
index over the exported `item_head` vectors (each with its `item_bias` appended, and `q` with a 1), queried with `q` by
inner product, returns the model's own top items (before the user's history is removed).

```python
>>> from hf_cllm4rec.serving.embeddings import export_embeddings, user_query_vectors
>>> export_embeddings(model, "embeddings/", IdMappings.load("runs/beauty-finetune"))
>>> queries = user_query_vectors(model, tokenizer, user_ids=[0, None], histories=[[3, 17], [5, 8]])
```
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import save_file

from ..writing import foreign_entries, listed, replaced_folder
from .id_mappings import IdMappings

EMBEDDINGS_NAME = "embeddings.safetensors"
TABLES_NAME = "tables"
SIDES = ("collaborative", "content")
# What an export holds, by path in its folder: the tensors, and the tables as `DatasetDict.save_to_disk` writes them
# (with the cache files that `datasets` adds when a loaded table is mapped).
EXPORT_FOLDERS = re.compile(rf"{TABLES_NAME}(/(users|items))?")
EXPORT_FILES = re.compile(
    rf"{re.escape(EMBEDDINGS_NAME)}|{TABLES_NAME}/dataset_dict\.json|{TABLES_NAME}/(users|items)/"
    r"(data-\d{5}-of-\d{5}\.arrow|dataset_info\.json|state\.json|cache-[0-9a-f]+\.arrow)"
)


def id_embeddings(model) -> dict[str, torch.Tensor]:
    """
    The four ID tables (`user_collaborative`, `user_content`, `item_collaborative`, `item_content`), the item head
    (`item_head`, the same as `item_collaborative` where tied) and, where the model has one, the item bias
    (`item_bias`) as float32 CPU tensors.
    """
    base_model = model.base_model
    weights = {}
    for side in SIDES:
        users, items = base_model.id_embedding_tables(side)
        weights[f"user_{side}"], weights[f"item_{side}"] = users.weight, items.weight
    weights["item_head"] = base_model.item_head_weight()
    if base_model.item_bias is not None:
        weights["item_bias"] = base_model.item_bias
    # copies, so that a tied head is written as a tensor of its own
    return {name: weight.detach().to("cpu", torch.float32, copy=True).contiguous() for name, weight in weights.items()}


def export_embeddings(model, folder: str | os.PathLike, mappings: IdMappings, overwrite: bool = False) -> Path:
    """
    Writes a model's collaborative and content user and item embeddings, with the data set's raw ids, to `folder`:

    - `embeddings.safetensors`: tensors `user_collaborative`, `user_content` (`num_users x hidden`),
      `item_collaborative`, `item_content`, `item_head` (`num_items x hidden`), and `item_bias` (`num_items`) where
      the model has one, row `i` being 0-based id `i`; the metadata holds `user_raw_ids` and `item_raw_ids` (JSON
      lists in row order);
    - `tables/`: a `DatasetDict` (`datasets.load_from_disk`) with a `users` table (`id`, `raw_id`, `collaborative`,
      `content`) and an `items` table (the same, `head`, `text` and `bias` where there is one), ready for
      `Dataset.add_faiss_index(column=...)`.

    The folder appears whole or not at all (see [`hf_cllm4rec.writing`]); it must be new or empty, or with
    `overwrite=True` an export to replace (see [`check_exportable`]). Returns the folder.
    """
    from datasets import Dataset, DatasetDict

    config = model.config
    mappings.check_fits(config)
    check_exportable(folder, overwrite)
    tables = id_embeddings(model)
    metadata = {
        "format": "pt",
        "hidden_size": str(config.hidden_size),
        "user_raw_ids": json.dumps(mappings.users),
        "item_raw_ids": json.dumps(mappings.items),
    }
    # Arrow columns built from the arrays themselves: no Python object per row or per number
    users = Dataset(
        pa.table(
            {"id": np.arange(config.num_users), "raw_id": pa.array(mappings.users, pa.string())}
            | {side: vectors(tables[f"user_{side}"]) for side in SIDES}
        )
    )
    items = Dataset(
        pa.table(
            {
                "id": np.arange(config.num_items),
                "raw_id": pa.array(mappings.items, pa.string()),
                "text": pa.array(mappings.item_texts, pa.string()),
            }
            | {name: vectors(tables[f"item_{name}"]) for name in (*SIDES, "head")}
            | ({"bias": tables["item_bias"].numpy()} if "item_bias" in tables else {})
        )
    )
    with replaced_folder(folder, check=lambda: check_exportable(folder, overwrite)) as staging:
        save_file(tables, staging / EMBEDDINGS_NAME, metadata=metadata)
        DatasetDict({"users": users, "items": items}).save_to_disk(str(staging / TABLES_NAME))
    return Path(folder)


def vectors(matrix: torch.Tensor):
    """The rows of a float32 matrix as an Arrow column of fixed-size lists (`List(Value("float32"), length=...)`)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.numpy().reshape(-1)), matrix.shape[1])


def check_exportable(folder: str | os.PathLike, overwrite: bool) -> None:
    """
    Raises a `FileExistsError` unless [`export_embeddings`] may write `folder`: a new or empty folder, or with
    `overwrite` a folder that holds an export and nothing else (another file in it is never deleted).
    """
    folder = Path(folder)
    if not (folder.exists() or folder.is_symlink()) or (folder.is_dir() and not any(folder.iterdir())):
        return
    # what is never replaced is said first: advice to pass `overwrite` would only lead to this refusal
    if folder.is_symlink() or not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; refusing to replace it")
    others = foreign_entries(folder, EXPORT_FILES, EXPORT_FOLDERS)
    if others:
        raise FileExistsError(
            f"{folder} holds files that are not part of exported embeddings: {listed(others)}; refusing to replace it"
        )
    if not overwrite:
        raise FileExistsError(f"{folder} already exists and is not an empty folder; pass overwrite=True to replace it")


@torch.no_grad()
def user_query_vectors(
    model,
    tokenizer,
    user_ids: list[int | None],
    histories: list,
    *,
    max_length: int | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """
    The query vector of each user from the recommendation prompt (the cold-start prompt for a `None` user id), read
    as the model's `config.read_out` says, float32 `(len(user_ids), hidden)` on the model's device.

    `query @ item_head.T` (plus `item_bias`, where the model has one) equals the model's item logits for that prompt.
    """
    user_ids, histories = tokenizer.as_batch(user_ids, histories)
    was_training = model.training
    model.eval()
    queries = []
    for start in range(0, len(user_ids), batch_size):
        encoding = tokenizer(
            user_ids[start : start + batch_size], histories[start : start + batch_size], max_length=max_length
        ).to(model.device)
        queries.append(model.base_model.read_out_hidden_states(**encoding).float())
    model.train(was_training)
    return torch.cat(queries)


__all__ = [
    "check_exportable",
    "export_embeddings",
    "user_query_vectors",
    "id_embeddings",
    "EMBEDDINGS_NAME",
    "TABLES_NAME",
]
