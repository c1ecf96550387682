"""Exported embeddings, and query vectors whose inner products with the exported items are the model's scores."""

import json

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_checkpoints import tiny_data, tiny_item_prediction_model

from hf_cllm4rec import IdMappings, Recommender
from hf_cllm4rec.serving.embeddings import (
    EMBEDDINGS_NAME,
    TABLES_NAME,
    check_exportable,
    export_embeddings,
    user_query_vectors,
)


@pytest.fixture(
    scope="module",
    params=[{}, {"tie_item_head": False}, {"item_bias": True}],
    ids=["tied-head", "untied-head", "item-bias"],
)
def exported(tmp_path_factory, request):
    data = tiny_data()
    model, tokenizer = tiny_item_prediction_model(data, **request.param)
    folder = export_embeddings(model, tmp_path_factory.mktemp("embeddings"), IdMappings.from_data(data))
    return folder, model, tokenizer, data


def test_safetensors_hold_the_four_tables_and_the_item_head_with_raw_ids(exported):
    folder, model, _, data = exported
    tensors = load_file(folder / EMBEDDINGS_NAME)
    biased = model.config.item_bias
    expected = {"user_collaborative", "user_content", "item_collaborative", "item_content", "item_head"}
    assert set(tensors) == expected | ({"item_bias"} if biased else set())
    if biased:
        torch.testing.assert_close(tensors["item_bias"], model.base_model.item_bias, rtol=0, atol=0)
    for side in ("collaborative", "content"):
        users, items = model.base_model.id_embedding_tables(side)
        torch.testing.assert_close(tensors[f"user_{side}"], users.weight, rtol=0, atol=0)
        torch.testing.assert_close(tensors[f"item_{side}"], items.weight, rtol=0, atol=0)
    tied = model.config.tie_item_head
    assert torch.equal(tensors["item_head"], tensors["item_collaborative"]) == tied
    with safe_open(folder / EMBEDDINGS_NAME, "pt") as file:
        metadata = file.metadata()
    assert json.loads(metadata["user_raw_ids"]) == data.user_raw_ids
    assert json.loads(metadata["item_raw_ids"]) == data.item_raw_ids


def test_datasets_tables_hold_the_same_vectors_by_raw_id(exported):
    folder, model, _, data = exported
    tables = load_from_disk(str(folder / TABLES_NAME))
    items = tables["items"].with_format("numpy")
    assert list(items["raw_id"]) == data.item_raw_ids and list(items["text"]) == data.item_texts()
    np.testing.assert_array_equal(
        np.stack(items["collaborative"]), model.base_model.item_collaborative_embeddings.weight.detach().numpy()
    )
    np.testing.assert_array_equal(np.stack(items["head"]), model.base_model.item_head_weight().detach().numpy())
    if model.config.item_bias:
        np.testing.assert_array_equal(items["bias"], model.base_model.item_bias.detach().numpy())
    else:
        assert "bias" not in items.column_names
    users = tables["users"].with_format("numpy")
    assert list(users["raw_id"]) == data.user_raw_ids
    np.testing.assert_array_equal(
        np.stack(users["content"]), model.base_model.user_content_embeddings.weight.detach().numpy()
    )


def test_query_vectors_times_exported_items_are_the_models_logits(exported):
    folder, model, tokenizer, data = exported
    histories = data.histories("train")
    users = [0, 3, 7, None, None]
    inputs = [histories[0], histories[3], histories[7], [1, 4], histories[7]]
    queries = user_query_vectors(model, tokenizer, users, inputs, batch_size=2)
    tensors = load_file(folder / EMBEDDINGS_NAME)
    # an inner-product index: the query with a 1 appended, each item with its bias
    if "item_bias" in tensors:
        queries = torch.cat([queries, torch.ones(len(queries), 1)], -1)
        items = torch.cat([tensors["item_head"], tensors["item_bias"][:, None]], -1)
    else:
        items = tensors["item_head"]

    with torch.no_grad():
        logits = model(**tokenizer(users, inputs)).logits
    torch.testing.assert_close(queries @ items.T, logits)
    # the same ranking as the Recommender's once the history is removed
    top = Recommender(model, tokenizer).recommend(users, inputs, k=5)
    scores = queries @ items.T
    for row, history in enumerate(inputs):
        scores[row, torch.as_tensor(np.asarray(history))] = -torch.inf
    assert torch.equal(scores.topk(5).indices, top.item_ids)


def test_mappings_of_another_catalogue_are_refused(tmp_path):
    data = tiny_data()
    model, _ = tiny_item_prediction_model(data)
    mappings = IdMappings.from_data(data)
    mappings.items, mappings.item_texts = mappings.items[:-1], mappings.item_texts[:-1]
    with pytest.raises(ValueError, match=str(data.num_items)):
        export_embeddings(model, tmp_path, mappings)
    assert not list(tmp_path.iterdir()), "nothing is written"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_never_replaced_is_refused_as_such_with_or_without_overwrite(tmp_path, overwrite):
    (tmp_path / "file").write_text("mine")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileExistsError, match="file exists and is not a folder; refusing to replace it"):
        check_exportable(tmp_path / "file", overwrite)
    with pytest.raises(FileExistsError, match="not part of exported embeddings: todo.txt; refusing to replace it"):
        check_exportable(tmp_path / "notes", overwrite)
    check_exportable(tmp_path / "empty", overwrite)
    check_exportable(tmp_path / "new", overwrite)
