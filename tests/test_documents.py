import re

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from tiny_models import tiny_cllm4rec_config

from hf_cllm4rec import CLLM4RecTokenizer
from hf_cllm4rec.data import (
    CLLM4RecDataCollator,
    CollaborativeDocuments,
    ContentDocuments,
    RecommendationData,
    RecommendationDocuments,
    ScheduledDocuments,
    make_synthetic_data,
    make_synthetic_tokenizer,
)


@pytest.fixture(scope="module")
def data() -> RecommendationData:
    return make_synthetic_data(num_users=12, num_items=20)


@pytest.fixture(scope="module")
def tokenizer(data) -> CLLM4RecTokenizer:
    base_tokenizer = make_synthetic_tokenizer(data)
    config = tiny_cllm4rec_config(num_users=data.num_users, num_items=data.num_items, vocab_size=len(base_tokenizer))
    return CLLM4RecTokenizer(base_tokenizer, config)


@pytest.fixture(scope="module")
def histories(data) -> list[np.ndarray]:
    return data.histories("train")


def with_tables(data: RecommendationData, **tables) -> RecommendationData:
    """A copy of `data` with some tables replaced."""
    return RecommendationData(tables=DatasetDict({**data.tables, **tables}), manifest=dict(data.manifest))


def item_ids_of(tokenizer, token_ids) -> list[int]:
    kinds = [tokenizer.token_kind(token_id) for token_id in token_ids]
    assert all(kind == "item" for kind, _ in kinds), "expected item tokens only"
    return [index for _, index in kinds]


def normalized(text: str) -> str:
    """Decoded text with one space around every ID token, so that checks do not depend on the decoder's spacing."""
    return re.sub(r"\s+", " ", re.sub(r"(<(?:user|item)_\d+>)", r" \1 ", text)).strip()


# Collaborative documents


def test_collaborative_document_is_the_prompt_then_the_training_items(tokenizer, histories):
    documents = CollaborativeDocuments(histories, tokenizer, max_length=None, seed=0)
    assert len(documents) == sum(len(items) > 0 for items in histories)
    for index, user in enumerate(documents.users):
        document = documents[0, index]
        prompt = tokenizer.render("collaborative_prompt", user=int(user))
        input_ids, labels = document["input_ids"], document["labels"]
        assert document["document_type"] == "collaborative"
        assert input_ids[: len(prompt)] == prompt
        assert labels[: len(prompt)] == [-100] * len(prompt)
        assert labels[len(prompt) :] == input_ids[len(prompt) :]
        items = item_ids_of(tokenizer, input_ids[len(prompt) :])
        assert len(items) == len(histories[user]) and set(items) == set(histories[user].tolist())


def test_collaborative_order_is_new_on_every_draw_and_the_same_for_the_same_key(tokenizer, histories):
    documents = CollaborativeDocuments(histories, tokenizer, max_length=None, seed=0)
    index = int(np.argmax([len(histories[user]) for user in documents.users]))
    orders = {tuple(documents[draw, index]["input_ids"]) for draw in range(6)}
    assert len(orders) == 6
    again = CollaborativeDocuments(histories, tokenizer, max_length=None, seed=0)
    assert all(documents[draw, index] == again[draw, index] for draw in range(6))
    other_seed = CollaborativeDocuments(histories, tokenizer, max_length=None, seed=1)
    assert documents[0, index]["input_ids"] != other_seed[0, index]["input_ids"]
    # the order is a function of the user, not of where the user sits among the documents
    user = int(documents.users[index])
    assert user > 0
    without_first_user = [np.array([], dtype=np.int64), *histories[1:]]
    shifted = CollaborativeDocuments(without_first_user, tokenizer, max_length=None, seed=0)
    shifted_index = int(np.flatnonzero(shifted.users == user)[0])
    assert shifted_index == index - 1 and shifted[2, shifted_index] == documents[2, index]


def test_collaborative_truncation_keeps_the_prompt(tokenizer, histories):
    documents = CollaborativeDocuments(histories, tokenizer, max_length=8, seed=0)
    full = CollaborativeDocuments(histories, tokenizer, max_length=None, seed=0)
    for index, user in enumerate(documents.users):
        prompt = tokenizer.render("collaborative_prompt", user=int(user))
        document = documents[3, index]
        assert len(document["input_ids"]) == min(8, len(prompt) + len(histories[user]))
        assert document["input_ids"][: len(prompt)] == prompt
        assert document["input_ids"] == full[3, index]["input_ids"][:8]
        assert document["labels"] == full[3, index]["labels"][:8]


def test_users_without_training_items_have_no_collaborative_document(tokenizer, histories):
    emptied = [np.array([], dtype=np.int64) if user in (0, 5) else items for user, items in enumerate(histories)]
    documents = CollaborativeDocuments(emptied, tokenizer, max_length=None)
    assert 0 not in documents.users and 5 not in documents.users
    assert len(documents) == len(histories) - 2
    with pytest.raises(IndexError):
        documents[0, len(documents)]


# Content documents


def test_user_item_documents_hold_the_review_prompt_and_the_review(data, tokenizer):
    documents = ContentDocuments(data, tokenizer, max_length=None, kinds=("user_item",))
    train, reviews = data.tables["train"], data.tables["reviews"]
    assert len(documents) == train.num_rows
    review_of = {(row["user_id"], row["item_id"]): row["text"] for row in reviews}
    for index in range(0, train.num_rows, 7):
        user, item = train[index]["user_id"], train[index]["item_id"]
        document = documents[0, index]
        prompt = tokenizer.render("review_prompt", user=user, item=item)
        main = tokenizer.encode_text([" " + review_of[user, item].strip()])[0]
        assert document == {
            "input_ids": prompt + main,
            "labels": [-100] * len(prompt) + main,
            "document_type": "content",
        }


def test_user_item_documents_fall_back_to_item_text_without_a_review(data, tokenizer):
    reviews = data.tables["reviews"]
    kept = reviews.select(range(0, reviews.num_rows, 2))
    documents = ContentDocuments(with_tables(data, reviews=kept), tokenizer, max_length=None, kinds=("user_item",))
    review_of = {(row["user_id"], row["item_id"]): row["text"] for row in kept}
    item_texts = data.item_texts()
    train = data.tables["train"]
    used_item_text = 0
    for index in range(train.num_rows):
        user, item = train[index]["user_id"], train[index]["item_id"]
        text = review_of.get((user, item))
        used_item_text += text is None
        prompt = tokenizer.render("review_prompt", user=user, item=item)
        main = tokenizer.encode_text([" " + (text or item_texts[item]).strip()])[0]
        assert documents[0, index]["input_ids"] == prompt + main
    assert used_item_text == train.num_rows - kept.num_rows > 0


def test_item_documents_hold_the_item_text(data, tokenizer):
    documents = ContentDocuments(data, tokenizer, max_length=None, kinds=("item",))
    assert len(documents) == data.num_items
    for item, text in enumerate(data.item_texts()):
        document = documents[0, item]
        prompt = tokenizer.render("item_text_prompt", item=item)
        main = tokenizer.encode_text([" " + text])[0]
        assert document["input_ids"] == prompt + main
        assert document["labels"] == [-100] * len(prompt) + main
        assert "<user_" not in tokenizer.decode(document["input_ids"])


def test_both_kinds_and_items_without_text(data, tokenizer):
    texts = data.item_texts()
    texts[3] = ""
    items = data.tables["items"].remove_columns("text").add_column("text", texts)
    documents = ContentDocuments(with_tables(data, items=items), tokenizer, None, kinds=("user_item", "item"))
    # every training pair has a review; the item without text has no item document
    assert len(documents) == data.tables["train"].num_rows + data.num_items - 1
    first_item_document = documents[0, data.tables["train"].num_rows]
    assert first_item_document["input_ids"][: len(tokenizer.render("item_text_prompt", item=0))] == (
        tokenizer.render("item_text_prompt", item=0)
    )


def test_content_truncation_cuts_the_main_text_and_keeps_the_prompt(data, tokenizer):
    documents = ContentDocuments(data, tokenizer, max_length=10, kinds=("user_item", "item"))
    full = ContentDocuments(data, tokenizer, max_length=None, kinds=("user_item", "item"))
    train_pairs = data.tables["train"].num_rows
    for index in [*range(0, train_pairs, 9), train_pairs, len(documents) - 1]:
        document, untruncated = documents[0, index], full[0, index]
        prompt_length = untruncated["labels"].count(-100)
        assert len(untruncated["input_ids"]) > 10 > prompt_length
        assert document["input_ids"] == untruncated["input_ids"][:10]
        assert document["labels"] == untruncated["labels"][:10]


def test_content_documents_need_text(data, tokenizer):
    items = data.tables["items"].remove_columns("text").add_column("text", [""] * data.num_items)
    no_text = with_tables(data, items=items, reviews=data.tables["reviews"].select([]))
    for kinds in (("user_item",), ("item",), ("user_item", "item")):
        with pytest.raises(ValueError, match="no review or item text"):
            ContentDocuments(no_text, tokenizer, max_length=None, kinds=kinds)
    with pytest.raises(ValueError, match="content document kinds"):
        ContentDocuments(data, tokenizer, max_length=None, kinds=("reviews",))
    with pytest.raises(ValueError, match="content document kinds"):
        ContentDocuments(data, tokenizer, max_length=None, kinds=())


# Masked-history (recommendation) documents


def recommendation_parts(tokenizer, document, user) -> tuple[list[int], list[int]]:
    """The history items of a recommendation prompt, and its target items."""
    input_ids = document["input_ids"]
    prefix = tokenizer.render("recommendation_prompt", user=user, history=[0])
    start = prefix.index(tokenizer.item_token_ids([0])[0])
    suffix_length = len(prefix) - start - 1
    assert input_ids[:start] == prefix[:start] and input_ids[len(input_ids) - suffix_length :] == prefix[start + 1 :]
    return item_ids_of(tokenizer, input_ids[start : len(input_ids) - suffix_length]), document["labels"]


@pytest.mark.parametrize("mask_ratio", [0.2, 0.5])
def test_masked_history_splits_the_training_items(tokenizer, histories, mask_ratio):
    documents = RecommendationDocuments(histories, tokenizer, mask_ratio=mask_ratio, max_length=None, seed=0)
    held_out_total = items_total = 0
    for draw in range(3):
        for index, user in enumerate(documents.users):
            document = documents[draw, index]
            assert document["document_type"] == "recommendation"
            kept, targets = recommendation_parts(tokenizer, document, int(user))
            items = histories[user].tolist()
            assert set(kept).isdisjoint(targets)
            assert sorted(kept + targets) == sorted(items)
            assert len(targets) >= 1 and len(kept) >= 1
            assert len(targets) == min(max(1, round(mask_ratio * len(items))), len(items) - 1)
            held_out_total += len(targets)
            items_total += len(items)
    assert held_out_total / items_total == pytest.approx(mask_ratio, abs=0.05)


def test_masked_history_is_new_on_every_draw_and_the_same_for_the_same_key(tokenizer, histories):
    documents = RecommendationDocuments(histories, tokenizer, mask_ratio=0.2, max_length=None, seed=0)
    again = RecommendationDocuments(histories, tokenizer, mask_ratio=0.2, max_length=None, seed=0)
    index = int(np.argmax([len(histories[user]) for user in documents.users]))
    targets = {tuple(documents[draw, index]["labels"]) for draw in range(6)}
    assert len(targets) > 1
    assert all(documents[draw, index] == again[draw, index] for draw in range(6))


def test_masked_history_leaves_out_users_with_fewer_than_two_items(tokenizer, histories):
    changed = list(histories)
    changed[0], changed[1] = np.array([], dtype=np.int64), histories[1][:1]
    documents = RecommendationDocuments(changed, tokenizer, mask_ratio=0.2, max_length=None)
    assert 0 not in documents.users and 1 not in documents.users and len(documents) == len(histories) - 2
    two_items = [items[:2] for items in histories]
    documents = RecommendationDocuments(two_items, tokenizer, mask_ratio=0.9, max_length=None)
    assert all(len(documents[0, index]["labels"]) == 1 for index in range(len(documents)))
    with pytest.raises(ValueError, match="two or more training items"):
        RecommendationDocuments([items[:1] for items in histories], tokenizer, mask_ratio=0.2, max_length=None)


@pytest.mark.parametrize("mask_ratio", [0.0, 1.0, -0.2, 1.5, float("nan"), float("inf")])
def test_a_mask_ratio_outside_the_open_unit_interval_is_refused(tokenizer, histories, mask_ratio):
    with pytest.raises(ValueError, match="mask_ratio must lie in"):
        RecommendationDocuments(histories, tokenizer, mask_ratio=mask_ratio, max_length=None)


def test_long_histories_lose_items_from_their_start_and_keep_the_prompt_end(tokenizer, histories):
    max_length = 12
    documents = RecommendationDocuments(histories, tokenizer, mask_ratio=0.2, max_length=max_length, seed=0)
    full = RecommendationDocuments(histories, tokenizer, mask_ratio=0.2, max_length=None, seed=0)
    truncated = 0
    for index, user in enumerate(documents.users):
        user = int(user)
        document, untruncated = documents[1, index], full[1, index]
        assert len(document["input_ids"]) <= max_length
        kept, targets = recommendation_parts(tokenizer, document, user)
        all_kept, same_targets = recommendation_parts(tokenizer, untruncated, user)
        assert targets == same_targets and kept == all_kept[len(all_kept) - len(kept) :]
        truncated += len(kept) < len(all_kept)
        assert normalized(tokenizer.decode(document["input_ids"])).endswith(f", <user_{user}> will interact with")
    assert truncated > 0


def test_scheduled_documents_route_keys_to_their_source(tokenizer, histories, data):
    collaborative = CollaborativeDocuments(histories, tokenizer, max_length=None)
    content = ContentDocuments(data, tokenizer, max_length=None, kinds=("item",))
    scheduled = ScheduledDocuments([collaborative, content])
    assert len(scheduled) == len(collaborative) + len(content)
    assert scheduled[0, 2, 3] == collaborative[2, 3]
    assert scheduled[1, 0, 5] == content[0, 5]


@pytest.mark.parametrize("max_length", [None, 12])
def test_documents_fetched_as_a_batch_are_those_fetched_alone(tokenizer, histories, data, max_length):
    sources = [
        CollaborativeDocuments(histories, tokenizer, max_length=max_length, seed=1),
        RecommendationDocuments(histories, tokenizer, mask_ratio=0.3, max_length=max_length, seed=1),
        ContentDocuments(data, tokenizer, max_length=max_length, kinds=("user_item", "item")),
    ]
    for source in sources:
        indices = np.random.default_rng(0).permutation(len(source))[:7]
        assert source.documents(4, indices) == [source[4, int(index)] for index in indices]
        assert source.documents(4, []) == []
        with pytest.raises(IndexError, match=f"index {len(source)} out of range"):
            source.documents(4, [0, len(source)])
    # a loader's batch may mix sources and passes: each document comes back in its place
    keys = [(1, 2, 3), (0, 5, 1), (2, 0, 4), (0, 5, 0), (1, 3, 3)]
    assert ScheduledDocuments(sources).__getitems__(keys) == [sources[s][d, i] for s, d, i in keys]


def test_data_loader_fetches_whole_batches(tokenizer, histories):
    class CountingDocuments(CollaborativeDocuments):
        def _documents(self, draw, indices):
            self.fetches.append(len(indices))
            return super()._documents(draw, indices)

    documents = CountingDocuments(histories, tokenizer, max_length=None)
    documents.fetches = []
    batches = [[(0, 0, index) for index in range(start, min(start + 4, len(documents)))] for start in (0, 4)]
    loader = torch.utils.data.DataLoader(
        ScheduledDocuments([documents]),
        batch_sampler=batches,
        collate_fn=CLLM4RecDataCollator(pad_token_id=tokenizer.pad_token_id),
    )
    assert len(list(loader)) == 2 and documents.fetches == [4, 4]


def test_collaborative_documents_need_room_for_items(tokenizer, histories):
    prompt_length = len(tokenizer.render("collaborative_prompt", user=0))
    with pytest.raises(ValueError, match=f"max_length={prompt_length} leaves no room for items"):
        CollaborativeDocuments(histories, tokenizer, max_length=prompt_length)


# Collator


def test_collator_right_pads_one_document_type(tokenizer, histories):
    documents = CollaborativeDocuments(histories, tokenizer, max_length=None)
    features = [documents[0, index] for index in range(4)]
    lengths = [len(feature["input_ids"]) for feature in features]
    assert len(set(lengths)) > 1, "the test needs documents of different lengths"
    pad = tokenizer.pad_token_id
    batch = CLLM4RecDataCollator(pad_token_id=pad)(features)
    assert batch["document_type"] == "collaborative"
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape == (4, max(lengths))
    for row, (feature, length) in enumerate(zip(features, lengths, strict=True)):
        assert batch["input_ids"][row, :length].tolist() == feature["input_ids"]
        assert batch["labels"][row, :length].tolist() == feature["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (max(lengths) - length)
        assert (batch["input_ids"][row, length:] == pad).all() and (batch["labels"][row, length:] == -100).all()


def test_collator_pads_target_items_of_recommendation_documents(tokenizer, histories):
    documents = RecommendationDocuments(histories, tokenizer, mask_ratio=0.3, max_length=None)
    features = [documents[0, index] for index in range(5)]
    batch = CLLM4RecDataCollator(pad_token_id=tokenizer.pad_token_id)(features)
    assert batch["document_type"] == "recommendation"
    most_targets = max(len(feature["labels"]) for feature in features)
    assert batch["labels"].shape == (5, most_targets)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    for row, feature in enumerate(features):
        targets = batch["labels"][row]
        assert targets[targets != -100].tolist() == feature["labels"]
        assert int(batch["attention_mask"][row].sum()) == len(feature["input_ids"])
    assert batch["labels"].dtype == batch["input_ids"].dtype == torch.long


def test_collator_rejects_a_batch_of_mixed_document_types(tokenizer, histories, data):
    collaborative = CollaborativeDocuments(histories, tokenizer, max_length=None)
    content = ContentDocuments(data, tokenizer, max_length=None, kinds=("item",))
    with pytest.raises(ValueError, match="one type"):
        CLLM4RecDataCollator(pad_token_id=tokenizer.pad_token_id)([collaborative[0, 0], content[0, 0]])
