"""The "item-recommendation" pipeline over a tiny saved checkpoint."""

import pytest
import torch
from tiny_checkpoints import save_tiny_checkpoint
from transformers import pipeline

from hf_cllm4rec import (
    CLLM4RecForCollaborativeLM,
    CLLM4RecTokenizer,
    IdMappings,
    ItemRecommendationPipeline,
    Recommender,
    save_for_hub,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline") / "checkpoint"
    model, tokenizer, data = save_tiny_checkpoint(folder)
    return folder, model, tokenizer, data


@pytest.fixture(scope="module")
def recommender(checkpoint):
    return pipeline("item-recommendation", model=str(checkpoint[0]), device="cpu")


def expected_items(model, tokenizer, data, user, history, k, **settings):
    output = Recommender(model, tokenizer, **settings).recommend([user], [history], k=k)
    return [data.item_raw_ids[item] for item in output.item_ids[0].tolist()], output.scores[0]


def test_loads_the_model_tokenizer_and_mappings_of_the_folder(recommender, checkpoint):
    assert isinstance(recommender, ItemRecommendationPipeline)
    assert isinstance(recommender.tokenizer, CLLM4RecTokenizer)
    assert recommender.id_mappings == IdMappings.load(checkpoint[0])
    assert type(recommender.model).__name__ == "CLLM4RecForItemPrediction"


def test_a_known_user_by_raw_id_gets_the_models_top_items_with_text(recommender, checkpoint):
    _, model, tokenizer, data = checkpoint
    user = 4
    history = data.histories("train")[user]
    ranked = recommender(data.user_raw_ids[user], top_k=5)
    items, scores = expected_items(model, tokenizer, data, user, history, k=5)
    assert [entry["item_id"] for entry in ranked] == items
    torch.testing.assert_close(torch.tensor([entry["score"] for entry in ranked]), scores)
    texts = data.item_texts()
    assert [entry["text"] for entry in ranked] == [texts[data.item_index(item)] for item in items]
    assert all(isinstance(entry["score"], float) for entry in ranked)
    assert len(recommender(data.user_raw_ids[user])) == 10  # default top_k


def test_a_history_of_raw_item_ids_is_a_new_user(recommender, checkpoint):
    _, model, tokenizer, data = checkpoint
    raw_history = [data.item_raw_ids[item] for item in (3, 7, 1)]
    ranked = recommender({"history": raw_history}, top_k=4)
    items, _ = expected_items(model, tokenizer, data, None, [3, 7, 1], k=4)
    assert [entry["item_id"] for entry in ranked] == items
    assert not set(items) & set(raw_history)


def test_a_known_user_with_an_explicit_history(recommender, checkpoint):
    _, model, tokenizer, data = checkpoint
    ranked = recommender({"user": data.user_raw_ids[2], "history": [data.item_raw_ids[5]]}, top_k=3)
    items, _ = expected_items(model, tokenizer, data, 2, [5], k=3)
    assert [entry["item_id"] for entry in ranked] == items


def test_a_list_of_inputs_gives_one_ranking_each(recommender, checkpoint):
    data = checkpoint[3]
    inputs = [data.user_raw_ids[0], {"history": [data.item_raw_ids[0]]}, data.user_raw_ids[1]]
    rankings = recommender(inputs, top_k=2)
    assert len(rankings) == 3 and all(len(ranking) == 2 for ranking in rankings)
    assert rankings[2] == recommender(data.user_raw_ids[1], top_k=2)


def test_batch_size_scores_several_inputs_per_forward_pass(recommender, checkpoint, monkeypatch):
    data = checkpoint[3]
    inputs = [*data.user_raw_ids[:6], {"history": [data.item_raw_ids[0], data.item_raw_ids[9]]}]
    one_by_one = recommender(inputs, top_k=3)
    batch_sizes = []
    score_items = recommender.model.score_items

    def counting_score_items(input_ids, attention_mask):
        batch_sizes.append(len(input_ids))
        return score_items(input_ids, attention_mask)

    monkeypatch.setattr(recommender.model, "score_items", counting_score_items)
    batched = recommender(inputs, top_k=3, batch_size=4)
    assert batch_sizes == [4, 3]
    assert [[entry["item_id"] for entry in ranking] for ranking in batched] == [
        [entry["item_id"] for entry in ranking] for ranking in one_by_one
    ]
    for ranking, expected in zip(batched, one_by_one, strict=True):
        assert [entry["score"] for entry in ranking] == pytest.approx([entry["score"] for entry in expected], abs=1e-5)
    streamed = list(recommender((value for value in inputs), top_k=3, batch_size=4))  # an iterable of inputs
    assert [ranking[0]["item_id"] for ranking in streamed] == [ranking[0]["item_id"] for ranking in one_by_one]


def test_unknown_items_are_reported_and_left_out(recommender, checkpoint):
    data = checkpoint[3]
    with pytest.warns(UserWarning, match="Unknown item ids left out of the history: nope, gone"):
        ranked = recommender({"history": ["nope", data.item_raw_ids[3], "gone"]}, top_k=3)
    assert ranked == recommender({"history": [data.item_raw_ids[3]]}, top_k=3)


def test_bad_inputs(recommender, checkpoint):
    data = checkpoint[3]
    with pytest.raises(KeyError, match="unknown user id 'nobody'"):
        recommender("nobody")
    with pytest.raises(ValueError, match=r"no item the model knows \(unknown: nope\)"):
        recommender({"history": ["nope"]})
    with pytest.raises(ValueError, match="'user' and/or 'history'"):
        recommender({"items": [data.item_raw_ids[0]]})
    with pytest.raises(ValueError, match="needs a 'user' or a 'history'"):
        recommender({"history": None})
    with pytest.raises(ValueError, match="a raw user id or a dict"):
        recommender(None)
    for no_inputs in ([], ()):
        with pytest.raises(ValueError, match="empty list of inputs"):
            recommender(no_inputs)
    with pytest.raises(ValueError, match="k="):
        recommender(data.user_raw_ids[0], top_k=data.num_items)
    with pytest.raises(ValueError, match="at most 64"):
        recommender(data.user_raw_ids[0], history_permutations=65)
    with pytest.raises(ValueError, match="exceeds the backbone's context"):
        recommender(data.user_raw_ids[0], max_length=100_000)
    with pytest.raises(TypeError, match="Unknown arguments"):
        recommender(data.user_raw_ids[0], k=3)


def test_history_orders_and_prompt_length_are_call_settings(recommender, checkpoint):
    _, model, tokenizer, data = checkpoint
    history = data.histories("train")[6]
    ranked = recommender(data.user_raw_ids[6], top_k=5, history_permutations=3, max_length=14)
    items, scores = expected_items(model, tokenizer, data, 6, history, k=5, history_permutations=3, max_length=14)
    assert [entry["item_id"] for entry in ranked] == items
    torch.testing.assert_close(torch.tensor([entry["score"] for entry in ranked]), scores)
    assert [entry["item_id"] for entry in recommender(data.user_raw_ids[6], top_k=5)] == expected_items(
        model, tokenizer, data, 6, history, k=5
    )[0], "the call's settings do not stay"


def test_a_pretraining_checkpoint_loads_as_saved_and_ranks_as_evaluation_does(checkpoint, tmp_path):
    _, item_predictor, tokenizer, data = checkpoint
    model = CLLM4RecForCollaborativeLM(item_predictor.config).eval()
    model.load_state_dict(item_predictor.state_dict())
    save_for_hub(model, tokenizer, tmp_path, data=data)
    recommender = pipeline("item-recommendation", model=str(tmp_path), device="cpu")
    assert type(recommender.model) is CLLM4RecForCollaborativeLM
    user = 4
    ranked = recommender(data.user_raw_ids[user], top_k=5)
    items, scores = expected_items(model, tokenizer, data, user, data.histories("train")[user], k=5)
    assert [entry["item_id"] for entry in ranked] == items
    torch.testing.assert_close(torch.tensor([entry["score"] for entry in ranked]), scores)
    # read with the recommendation prompt, as an item predictor, the same weights rank otherwise
    assert expected_items(item_predictor, tokenizer, data, user, data.histories("train")[user], k=5)[0] != items
    with pytest.raises(ValueError, match="a new user needs a fine-tuned model"):
        recommender({"history": [data.item_raw_ids[3]]})
