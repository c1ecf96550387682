"""Serving and fine-tuning at catalogue scale: items scored in chunks, id mappings stored as columns."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from tiny_checkpoints import tiny_data
from tiny_models import tiny_model, tiny_word_tokenizer

from hf_cllm4rec import (
    CLLM4RecForCollaborativeLM,
    CLLM4RecForItemPrediction,
    CLLM4RecTokenizer,
    IdMappings,
    Recommender,
    modeling_cllm4rec,
)
from hf_cllm4rec.modeling_cllm4rec import chunked_top_k_items, top_k_items
from hf_cllm4rec.serving.id_mappings import ID_MAPPINGS_NAME

NUM_ITEMS = 40


def histories_of(seed: int, count: int, longest: int = 10) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(NUM_ITEMS)[: rng.integers(1, longest + 1)].tolist() for _ in range(count)]


def padded(histories) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence([torch.tensor(h) for h in histories], batch_first=True, padding_value=-1)


def chunked(scores: torch.Tensor, k: int, exclude, chunk_size: int, seen: list | None = None):
    def score_chunk(start, stop):
        if seen is not None:
            seen.append(stop - start)
        return scores[:, start:stop]

    return chunked_top_k_items(score_chunk, len(scores), scores.shape[1], k, exclude, chunk_size)


# The running top k


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 39, 40, 64])
@pytest.mark.parametrize("k", [1, 5, 17, 28])
def test_chunked_top_k_equals_one_top_k_over_all_items(chunk_size, k):
    scores = torch.randn(6, NUM_ITEMS, generator=torch.Generator().manual_seed(k))
    histories = histories_of(chunk_size, 6, longest=12)
    for exclude in (None, padded(histories)):
        expected = top_k_items(scores, k, exclude)
        seen = []
        output = chunked(scores, k, exclude, chunk_size, seen)
        assert torch.equal(output.item_ids, expected.item_ids)
        assert torch.equal(output.scores, expected.scores)
        assert max(seen) == min(chunk_size, NUM_ITEMS) and sum(seen) == NUM_ITEMS  # one pass, chunk by chunk
        if exclude is not None:
            for row, history in enumerate(histories):
                assert not set(output.item_ids[row].tolist()) & set(history)


def test_chunked_top_k_of_every_item_and_of_the_items_a_history_leaves():
    scores = torch.randn(2, NUM_ITEMS, generator=torch.Generator().manual_seed(1))
    everything = chunked(scores, NUM_ITEMS, None, 6)
    assert torch.equal(everything.item_ids, scores.argsort(-1, descending=True))
    exclude = torch.tensor([[0, 5, 5, 39, -1], [1, 2, 3, 4, 6]])  # a repeated id takes room once
    left = chunked(scores, NUM_ITEMS - 5, exclude, 6)
    assert set(left.item_ids[1].tolist()) == set(range(NUM_ITEMS)) - {1, 2, 3, 4, 6}  # every item it leaves
    assert not set(left.item_ids[0].tolist()) & {0, 5, 39}
    assert torch.equal(left.item_ids, top_k_items(scores, NUM_ITEMS - 5, exclude).item_ids)
    with pytest.raises(ValueError, match=r"k=36, but a user has only 35 items outside their history"):
        chunked(scores, NUM_ITEMS - 4, exclude, 6)
    for k in (0, NUM_ITEMS + 1, True, 2.0):
        with pytest.raises(ValueError, match=r"k must lie in \[1, 40\]"):
            chunked(scores, k, None, 6)
    with pytest.raises(ValueError, match=r"item ids in \[0, 40\)"):
        chunked(scores, 2, torch.tensor([[40], [0]]), 6)
    with pytest.raises(ValueError, match=r"batch size of the prompts \(2\)"):
        chunked(scores, 2, torch.tensor([[1]]), 6)


def test_chunked_top_k_keeps_tied_scores_and_refuses_nan():
    scores = torch.zeros(3, NUM_ITEMS)
    scores[:, [4, 17, 30]] = 1.0
    output = chunked(scores, 5, padded([[17], [0], [30, 4]]), 7)
    assert output.scores.tolist()[0] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert set(output.item_ids[0, :2].tolist()) == {4, 30} and set(output.item_ids[1, :3].tolist()) == {4, 17, 30}
    assert output.item_ids[2, 0] == 17 and output.scores[2, 1] == 0
    scores[1, 33] = torch.nan
    with pytest.raises(ValueError, match="item scores are NaN"):
        chunked(scores, 2, None, 7)


@pytest.mark.parametrize("model_class", [CLLM4RecForItemPrediction, CLLM4RecForCollaborativeLM])
def test_model_recommend_scores_a_chunk_of_items_at_a_time(model_class, monkeypatch):
    model = tiny_model(model_class, id_std=1.0, num_users=30, num_items=NUM_ITEMS)
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    histories = histories_of(5, 5)
    encoding = tokenizer(list(range(5)), histories)
    expected = model.recommend(**encoding, k=10, exclude_item_ids=padded(histories))
    widest = []
    item_scores = model.item_scores
    monkeypatch.setattr(modeling_cllm4rec, "ITEM_CHUNK_SIZE", 6)
    monkeypatch.setattr(
        model,
        "item_scores",
        lambda queries, start=0, stop=None: widest.append(stop - start) or item_scores(queries, start, stop),
    )
    output = model.recommend(**encoding, k=10, exclude_item_ids=padded(histories))
    assert max(widest) == 6 and sum(widest) == NUM_ITEMS
    assert torch.equal(output.item_ids, expected.item_ids)
    torch.testing.assert_close(output.scores, expected.scores)


@pytest.mark.parametrize("item_bias", [False, True])
@pytest.mark.parametrize("history_permutations", [1, 3])
def test_recommender_ranks_a_large_catalogue_in_chunks_as_in_one(history_permutations, item_bias, monkeypatch):
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0, num_users=30, num_items=NUM_ITEMS, item_bias=item_bias)
    recommender = Recommender(
        model, CLLM4RecTokenizer(tiny_word_tokenizer(), model.config), history_permutations=history_permutations
    )
    user_ids, histories = [0, None, 7, 12, 29], histories_of(9, 5)
    expected = recommender.recommend(user_ids, histories, k=12)
    monkeypatch.setattr(modeling_cllm4rec, "ITEM_CHUNK_SIZE", 9)
    monkeypatch.setattr(model, "score_items", None)  # no full score matrix
    output = recommender.recommend(user_ids, histories, k=12)
    assert torch.equal(output.item_ids, expected.item_ids)
    torch.testing.assert_close(output.scores, expected.scores)
    with pytest.raises(ValueError, match="only 30 items outside their history"):
        recommender.recommend([0], [list(range(10))], k=31)


# The fine-tuning loss over item chunks


@pytest.mark.parametrize("head", [{"tie_item_head": True}, {"tie_item_head": False}, {"item_bias": True}])
def test_the_chunked_loss_and_its_gradients_equal_the_full_ones(head, monkeypatch):
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0, num_users=30, num_items=NUM_ITEMS, **head)
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    encoding = tokenizer([1, None, 8], histories_of(2, 3))
    labels = torch.tensor([[3, 5, -100], [0, 39, 2], [6, -100, -100]])

    def loss_and_gradients():
        model.zero_grad()
        output = model(**encoding, labels=labels)
        output.loss.backward()
        gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return output, gradients

    full, full_gradients = loss_and_gradients()
    assert full.logits.shape == (3, NUM_ITEMS)
    monkeypatch.setattr(modeling_cllm4rec, "ITEM_CHUNK_SIZE", 7)
    chunks, chunk_gradients = loss_and_gradients()
    assert chunks.logits is None  # not kept: the point of the chunks
    torch.testing.assert_close(chunks.recommendation_loss, full.recommendation_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunks.loss, full.loss, rtol=1e-6, atol=1e-6)
    assert chunk_gradients.keys() == full_gradients.keys()
    for name, gradient in full_gradients.items():
        torch.testing.assert_close(
            chunk_gradients[name], gradient, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )


# Id mappings in columns


def test_id_mappings_are_saved_in_columns_and_load_back(tmp_path):
    data = tiny_data()
    mappings = IdMappings.from_data(data)
    assert list(mappings.histories) == [history.tolist() for history in data.histories("train")]
    assert mappings.users == data.user_raw_ids and mappings.item_texts == data.item_texts()
    path = mappings.save(tmp_path)
    assert path.name == ID_MAPPINGS_NAME and [entry.name for entry in tmp_path.iterdir()] == [ID_MAPPINGS_NAME]
    with safe_open(path, framework="np") as file:
        assert file.metadata()["format"] == "cllm4rec-id-mappings"
        assert set(file.keys()) == {
            *(f"{name}_{part}" for name in ("users", "items", "item_texts") for part in ("bytes", "offsets")),
            "history_indptr",
            "history_indices",
        }
        assert file.get_tensor("history_indptr").dtype == np.int64 and len(file.get_tensor("users_offsets")) == 25
    loaded = IdMappings.load(tmp_path)
    assert loaded == mappings and loaded.history(3) == mappings.history(3)
    assert loaded.user_index(data.user_raw_ids[7]) == 7
    assert loaded.item_indices([data.item_raw_ids[4], "nope", data.item_raw_ids[4]]) == ([4], ["nope"])
    without = IdMappings.from_data(data, include_histories=False)
    without.save(tmp_path)
    assert IdMappings.load(tmp_path) == without and not IdMappings.load(tmp_path).histories


def test_id_mappings_of_earlier_versions_load_and_are_replaced_by_a_save(tmp_path):
    stored = {"users": ["u1", "ü2"], "items": ["i1", "i2", "i3"], "item_texts": ["rouge à lèvres", "", "x"]}
    (tmp_path / "id_mappings.json").write_text(json.dumps({**stored, "histories": [[2, 0], []]}))
    legacy = IdMappings.load(tmp_path)
    assert legacy == IdMappings.from_columns(*stored.values(), np.array([0, 2, 2]), np.array([2, 0]))
    assert legacy.history(0) == [2, 0] and legacy.users_with_histories().tolist() == [0]
    legacy.save(tmp_path)
    assert [entry.name for entry in tmp_path.iterdir()] == [ID_MAPPINGS_NAME]
    assert IdMappings.load(tmp_path) == legacy


@pytest.mark.parametrize(
    "indptr, indices, message",
    [
        ([0, 1], [0], "3 users but 1 histories"),
        ([0, 2, 1, 3], [0, 1, 2], "must rise from 0 to the 3 history entries"),
        ([0, 1, 2, 4], [0, 1, 2], "must rise from 0 to the 3 history entries"),
        ([0, 1, 2, 3], [0, 1, 3], "history of user 'c' holds item id 3, outside \\[0, 3\\)"),
        ([0, 1, 2, 3], [0, -1, 2], "history of user 'b' holds item id -1"),
        ([0, 1, 2, 3], [0.0, 1.0, 2.0], "`history_indices` must be a 1-D array of integers"),
        ([0, 1, 2, 3], None, "need both `history_indptr` and `history_indices`"),
    ],
)
def test_histories_as_csr_are_checked(indptr, indices, message):
    with pytest.raises(ValueError, match=message):
        IdMappings.from_columns(
            ["a", "b", "c"],
            ["x", "y", "z"],
            ["", "", ""],
            np.array(indptr),
            None if indices is None else np.array(indices),
        )


def test_damaged_columns_are_named(tmp_path):
    IdMappings(["a", "b"], ["x"], ["t"]).save(tmp_path)
    path = tmp_path / ID_MAPPINGS_NAME
    with safe_open(path, framework="np") as file:
        tensors, metadata = {key: file.get_tensor(key) for key in file.keys()}, file.metadata()
    tensors["users_bytes"] = np.array([0xFF, 0xFE], dtype=np.uint8)  # not UTF-8
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(ValueError, match=f"{ID_MAPPINGS_NAME} is not valid id mappings: `users` is damaged"):
        IdMappings.load(tmp_path)
    del tensors["items_offsets"]
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(ValueError, match="lacks the tensors items_offsets"):
        IdMappings.load(tmp_path)
    save_file(tensors, path)
    with pytest.raises(ValueError, match="does not name the format"):
        IdMappings.load(tmp_path)
