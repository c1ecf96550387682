"""The serving path: batching by prompt length, the ensemble over history orders, exclusions, raw ids."""

import itertools
import zlib

import numpy as np
import pytest
import torch
from tiny_checkpoints import tiny_data, tiny_item_prediction_model
from tiny_models import tiny_model, tiny_word_tokenizer

from hf_cllm4rec import (
    CLLM4RecForCollaborativeLM,
    CLLM4RecForItemPrediction,
    CLLM4RecTokenizer,
    IdMappings,
    Recommender,
)
from hf_cllm4rec.serving import length_grouped_batches

MODEL_CLASSES = (CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction)


def tiny_recommender(model_class=CLLM4RecForItemPrediction, **settings):
    model = tiny_model(model_class, id_std=1.0, num_users=30, num_items=40)
    return Recommender(model, CLLM4RecTokenizer(tiny_word_tokenizer(), model.config), **settings)


def random_histories(seed: int, count: int, longest: int = 10, num_items: int = 40) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(num_items)[: rng.integers(1, longest + 1)].tolist() for _ in range(count)]


def prompt_scores(recommender, user_ids, histories):
    """The model's item logits of the prompts of `histories` in the order given: one forward pass, no Recommender."""
    encoding = recommender.tokenizer(user_ids, histories, prompt=recommender.prompt)
    return recommender.model.score_items(**encoding)


@pytest.fixture(scope="module")
def served():
    data = tiny_data()
    model, tokenizer = tiny_item_prediction_model(data)
    return Recommender(model, tokenizer, IdMappings.from_data(data)), data


# Batching


def test_length_grouped_batches():
    lengths = np.random.default_rng(0).integers(1, 60, size=500)
    for max_batch_size, max_tokens in [(64, None), (1000, 1000), (16, 300), (1000, 30)]:
        batches = length_grouped_batches(lengths, max_batch_size, max_tokens)
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(lengths)))
        assert np.all(np.diff(lengths[np.concatenate(batches)]) >= 0), "ascending lengths"
        for batch in batches:
            assert 1 <= len(batch) <= max_batch_size
            padded = len(batch) * lengths[batch].max()
            assert max_tokens is None or padded <= max_tokens or len(batch) == 1
        # greedy: each batch stops only where the next prompt would break a limit
        for batch, following in itertools.pairwise(batches):
            grown = len(batch) + 1
            assert grown > max_batch_size or (max_tokens is not None and grown * lengths[following[0]] > max_tokens)
    assert [len(batch) for batch in length_grouped_batches([5, 1, 50, 2], 10, 20)] == [3, 1]
    assert [list(batch) for batch in length_grouped_batches([5, 1, 2], 2)] == [[1, 2], [0]]
    assert length_grouped_batches([], 4, 10) == []
    with pytest.raises(ValueError, match="max_batch_size"):
        length_grouped_batches([1], 0)
    with pytest.raises(ValueError, match="max_tokens"):
        length_grouped_batches([1], 1, 0)


def test_batches_group_users_by_prompt_tokens():
    recommender = tiny_recommender(batch_size=4, max_tokens=60)
    user_ids, histories = [0, None, 2, 3, None, 5, 6, 7], random_histories(0, 8, longest=15)
    lengths = recommender.tokenizer(user_ids, histories, return_tensors="np")["attention_mask"].sum(-1)
    batches = recommender.batches(user_ids, histories)
    assert sorted(np.concatenate(batches).tolist()) == list(range(8))
    assert all(len(batch) <= 4 and (len(batch) * lengths[batch].max() <= 60 or len(batch) == 1) for batch in batches)
    widths = [lengths[batch].max() for batch in batches]
    assert widths == sorted(widths), "shortest prompts first"
    # without a token limit the history lengths order the users; the batches only respect batch_size
    assert [len(batch) for batch in tiny_recommender(batch_size=3).batches(user_ids, histories)] == [3, 3, 2]


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_scores_of_a_user_do_not_depend_on_the_batch(model_class):
    """Batch size, token limit and the other users of a batch change how users are padded, not their scores."""
    user_ids = [3, 5, 1, 8, 9, 0] if model_class is CLLM4RecForCollaborativeLM else [3, 5, None, 8, 9, None]
    histories = random_histories(2, 6)
    for permutations in (1, 4):
        alone = torch.cat(
            [
                tiny_recommender(model_class, history_permutations=permutations).score_batch([user], [history])
                for user, history in zip(user_ids, histories, strict=True)
            ]
        )
        for settings in ({"batch_size": 64}, {"batch_size": 2}, {"batch_size": 6, "max_tokens": 40}):
            recommender = tiny_recommender(model_class, history_permutations=permutations, **settings)
            torch.testing.assert_close(recommender.score(user_ids, histories), alone, rtol=1e-5, atol=1e-5)
        # scored twice, the same: the orders are drawn per user and history, not from a global state
        torch.testing.assert_close(recommender.score(user_ids, histories), recommender.score(user_ids, histories))


# The ensemble over history orders


def test_history_permutations_average_the_probabilities_of_the_orders():
    recommender = tiny_recommender(history_permutations=16)
    # a one-item history has one order: the average is that order's probabilities
    single = tiny_recommender(history_permutations=5).score_batch([3], [[7]])
    torch.testing.assert_close(single, prompt_scores(recommender, [3], [[7]]).log_softmax(-1))
    # a two-item history has two orders: the average is a mixture of both with a weight k / 16
    mixed = recommender.score_batch([3], [[7, 9]]).exp()
    forward, backward = (prompt_scores(recommender, [3], [order]).softmax(-1) for order in ([7, 9], [9, 7]))
    assert not torch.allclose(forward, backward)
    errors = [float(((k * forward + (16 - k) * backward) / 16 - mixed).abs().max()) for k in range(17)]
    assert min(errors) < 1e-6
    assert 0 < errors.index(min(errors)) < 16  # both orders were drawn
    torch.testing.assert_close(mixed.sum(-1), torch.ones(1))


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_history_orders_are_drawn_from_the_user_and_the_history(model_class):
    """The orders, and so the scores, are reproducible: each user's generator is seeded with the user id and a
    checksum of the history (as the scores of earlier versions were)."""
    user_ids = [4, 11] if model_class is CLLM4RecForCollaborativeLM else [4, None]
    histories = random_histories(3, 2)
    recommender = tiny_recommender(model_class, history_permutations=3)
    probabilities = 0
    generators = [
        np.random.default_rng([0 if user is None else user + 1, zlib.crc32(np.asarray(history, np.int64).tobytes())])
        for user, history in zip(user_ids, histories, strict=True)
    ]
    for _ in range(3):
        orders = [generator.permutation(history) for generator, history in zip(generators, histories, strict=True)]
        probabilities = probabilities + prompt_scores(recommender, user_ids, orders).softmax(-1)
    torch.testing.assert_close(recommender.score_batch(user_ids, histories), (probabilities / 3).log())
    in_given_order = tiny_recommender(model_class).score_batch(user_ids, histories)
    torch.testing.assert_close(in_given_order, prompt_scores(recommender, user_ids, histories))


def test_recommender_settings_are_checked():
    for permutations, message in ((0, "positive integer"), (2.5, "positive integer"), (65, "at most 64")):
        with pytest.raises(ValueError, match=f"`history_permutations` .*{message}"):
            tiny_recommender(history_permutations=permutations)
    for name in ("batch_size", "max_tokens", "max_length"):
        with pytest.raises(ValueError, match=f"`{name}` must be a positive integer"):
            tiny_recommender(**{name: 0})
    with pytest.raises(ValueError, match="exceeds the backbone's context of 256 tokens"):
        tiny_recommender(max_length=300)  # up front, before any user is scored


# Recommendations


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_recommend_ranks_the_ensembles_scores_outside_the_history(model_class, capsys):
    user_ids, histories = list(range(7)), random_histories(4, 7, longest=12)
    if model_class is CLLM4RecForItemPrediction:
        user_ids[2] = None
    recommender = tiny_recommender(model_class, history_permutations=2, batch_size=3, disable_tqdm=False)
    output = recommender.recommend(user_ids, histories, k=10)
    assert output.item_ids.device.type == "cpu" and output.item_ids.shape == output.scores.shape == (7, 10)
    scores = recommender.score(user_ids, histories)
    torch.testing.assert_close(output.scores, scores.gather(1, output.item_ids))
    for row, history in enumerate(histories):
        assert not set(output.item_ids[row].tolist()) & set(history)
        best_outside = scores[row].index_fill(0, torch.tensor(history), -torch.inf).topk(10).indices
        assert output.item_ids[row].tolist() == best_outside.tolist()
    assert "Recommending: 100%" in capsys.readouterr().err
    # one history order: the model's own `recommend` on the tokenized prompts
    recommender = tiny_recommender(model_class, disable_tqdm=True)
    exclude = torch.nn.utils.rnn.pad_sequence([torch.tensor(h) for h in histories], True, padding_value=-1)
    expected = recommender.model.recommend(
        **recommender.tokenizer(user_ids, histories, prompt=recommender.prompt), k=10, exclude_item_ids=exclude
    )
    output = recommender.recommend(user_ids, histories, k=10)
    assert torch.equal(output.item_ids, expected.item_ids)
    torch.testing.assert_close(output.scores, expected.scores)


def test_a_k_no_history_leaves_room_for_fails_before_any_forward_pass(monkeypatch):
    recommender = tiny_recommender()
    calls = []
    score_items = recommender.model.score_items
    monkeypatch.setattr(recommender.model, "score_items", lambda *args: calls.append(1) or score_items(*args))
    histories = [[1], [2, 3], list(range(35)), [4]]
    with pytest.raises(ValueError, match=r"k=6, but a user has only 5 items outside their history"):
        recommender.recommend([0, 1, 2, 3], histories, k=6)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 40\]"):
        recommender.recommend([0], [[1]], k=41)
    assert not calls
    assert recommender.recommend([0, 1, 2, 3], histories, k=5).item_ids.shape == (4, 5)
    assert calls


def test_a_collaborative_lm_has_no_prompt_for_new_users():
    recommender = tiny_recommender(CLLM4RecForCollaborativeLM)
    assert recommender.prompt == "collaborative"
    with pytest.raises(ValueError, match="collaborative prompt needs a user id"):
        recommender.recommend([0, None], [[1], [2]], k=3)


# The data set's own ids


def test_requests_in_raw_ids_resolve_to_users_and_histories(served):
    recommender, data = served
    histories = data.histories("train")
    raw_items = data.item_raw_ids
    assert recommender.resolve(data.user_raw_ids[4]) == (4, histories[4].tolist())
    assert recommender.resolve({"user": data.user_raw_ids[4]}) == (4, histories[4].tolist())
    assert recommender.resolve({"user": data.user_raw_ids[4], "history": None}) == (4, histories[4].tolist())
    assert recommender.resolve({"history": [raw_items[3], raw_items[7], raw_items[3]]}) == (None, [3, 7])
    assert recommender.resolve({"user": data.user_raw_ids[2], "history": [raw_items[5]]}) == (2, [5])
    with pytest.warns(UserWarning, match="Unknown item ids left out of the history: nope, gone"):
        assert recommender.resolve({"history": ["nope", raw_items[1], "gone"]}) == (None, [1])


@pytest.mark.parametrize(
    "request_, error, message",
    [
        ("nobody", KeyError, "unknown user id 'nobody'"),
        ({"user": "nobody", "history": []}, KeyError, "unknown user id 'nobody'"),
        ({"history": ["nope"]}, ValueError, r"no item the model knows \(unknown: nope\)"),
        ({"history": []}, ValueError, "no item the model knows"),
        ({"history": None}, ValueError, "needs a 'user' or a 'history'"),
        ({}, ValueError, "'user' and/or 'history'"),
        ({"items": ["x"]}, ValueError, "'user' and/or 'history'"),
        ({"history": "item"}, ValueError, "'history' is a list of raw item ids"),
        (None, ValueError, "a raw user id or a dict"),
        ([1, 2], ValueError, "a raw user id or a dict"),
    ],
)
def test_bad_requests_are_refused_naming_the_problem(served, request_, error, message):
    recommender, _ = served
    with pytest.raises(error, match=message):
        recommender.resolve(request_)


def test_users_without_training_items_and_mappings_without_histories(served):
    recommender, data = served
    histories = list(IdMappings.from_data(data).histories)
    histories[3] = []
    mappings = IdMappings(data.user_raw_ids, data.item_raw_ids, data.item_texts(), histories)
    without_items = Recommender(recommender.model, recommender.tokenizer, mappings)
    with pytest.raises(ValueError, match=f"User '{data.user_raw_ids[3]}' has no training items"):
        without_items.resolve(data.user_raw_ids[3])
    assert without_items.resolve({"user": data.user_raw_ids[3], "history": [data.item_raw_ids[0]]}) == (3, [0])
    mappings = IdMappings.from_data(data, include_histories=False)
    with pytest.raises(KeyError, match="no training histories"):
        Recommender(recommender.model, recommender.tokenizer, mappings).resolve(data.user_raw_ids[3])
    with pytest.raises(ValueError, match="need the model's id mappings"):
        Recommender(recommender.model, recommender.tokenizer).resolve(data.user_raw_ids[3])


def test_recommend_raw_ranks_items_in_raw_ids_with_their_text(served):
    recommender, data = served
    requests = [data.user_raw_ids[0], {"history": [data.item_raw_ids[2], data.item_raw_ids[9]]}]
    ranked = recommender.recommend_raw(requests, k=4)
    expected = recommender.recommend([0, None], [data.histories("train")[0], [2, 9]], k=4)
    texts = data.item_texts()
    for row, ranking in enumerate(ranked):
        items = expected.item_ids[row].tolist()
        assert [entry["item_id"] for entry in ranking] == [data.item_raw_ids[item] for item in items]
        assert [entry["text"] for entry in ranking] == [texts[item] for item in items]
        assert [entry["score"] for entry in ranking] == pytest.approx(expected.scores[row].tolist())
    for requests in ([], "A3CIUOJXQ5VDQ2"):
        with pytest.raises(ValueError, match="non-empty list of requests"):
            recommender.recommend_raw(requests)


def test_id_mappings_of_another_catalogue_are_refused(served):
    recommender, data = served
    mappings = IdMappings.from_data(data)
    mappings.items, mappings.item_texts = mappings.items[:-1], mappings.item_texts[:-1]
    with pytest.raises(ValueError, match=str(data.num_items)):
        Recommender(recommender.model, recommender.tokenizer, mappings)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_a_history_longer_than_the_context_is_served_from_its_latest_items(model_class):
    model = tiny_model(model_class, id_std=1.0, num_users=30, num_items=40, text_overrides={"n_positions": 16})
    recommender = Recommender(model, CLLM4RecTokenizer(tiny_word_tokenizer(), model.config))
    history = list(range(30))  # a prompt of more than 16 tokens
    output = recommender.recommend([3], [history], k=5)
    assert not set(output.item_ids[0].tolist()) & set(history), "the whole history stays out of the recommendations"
    encoding = recommender.tokenizer([3], [history], prompt=recommender.prompt)
    assert encoding["input_ids"].shape[1] == 16 and encoding["input_ids"][0, -1] != recommender.tokenizer.pad_token_id
    torch.testing.assert_close(recommender.score([3], [history]), model.score_items(**encoding))
