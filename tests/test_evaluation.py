import math

import evaluate
import numpy as np
import pytest
import scipy.sparse
import torch
from tiny_checkpoints import tiny_data, tiny_item_prediction_model

from hf_cllm4rec import Recommender
from hf_cllm4rec.evaluation import (
    RankingMetrics,
    evaluate_model,
    evaluate_recommender,
    items_to_mask,
    model_selection_score,
    ranking_metrics,
    rows_to_mask,
)
from hf_cllm4rec.metrics import RANKING_METRIC_PATH

# Three users, six items. After excluding the training items the rankings are
#   user 0: [1, 2, 3, 4, 5, 0], held out {1, 4} -> hits at ranks 0 and 3
#   user 1: [3, 5, 2, 4, 0, 1], held out {0}    -> hit at rank 4
#   user 2: no held-out item                     -> skipped
SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.1, 0.6, 0.3, 0.5, 0.2, 0.4],
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],
    ]
)
HELDOUT_ITEMS = [[1, 4], [0], []]
TRAIN_ITEMS = [[0], [1], [2]]


def random_case(num_users=50, num_items=30, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(num_users, num_items, generator=generator)
    heldout = torch.rand(num_users, num_items, generator=generator) < 0.1
    heldout[::5] = False  # some users have nothing held out
    exclude = (torch.rand(num_users, num_items, generator=generator) < 0.2) & ~heldout
    return scores, heldout, exclude


def test_hand_computed_metrics():
    heldout = items_to_mask(HELDOUT_ITEMS, num_items=6)
    exclude = items_to_mask(TRAIN_ITEMS, num_items=6)
    metrics = ranking_metrics(SCORES, heldout, exclude, recall_ks=(1, 3), ndcg_ks=(3, 5))

    # recall@1: user 0 hits 1 of min(1, 2); user 1 hits 0 of 1.
    assert metrics["recall@1"] == pytest.approx((1 / 1 + 0 / 1) / 2)
    # recall@3: user 0 hits 1 of min(3, 2); user 1 hits 0.
    assert metrics["recall@3"] == pytest.approx((1 / 2 + 0) / 2)
    # ndcg@3: user 0 has DCG 1 over an ideal of 2 positions; user 1 has no hit.
    ideal_two_hits = 1 + 1 / math.log2(3)
    assert metrics["ndcg@3"] == pytest.approx((1 / ideal_two_hits + 0) / 2)
    # ndcg@5: user 0 adds its hit at rank 3; user 1 scores its hit at rank 4 against an ideal of 1.
    user_0_ndcg = (1 + 1 / math.log2(5)) / ideal_two_hits
    user_1_ndcg = (1 / math.log2(6)) / 1
    assert metrics["ndcg@5"] == pytest.approx((user_0_ndcg + user_1_ndcg) / 2)
    assert metrics["num_users"] == 2


def test_exclusion_changes_the_ranking():
    heldout = items_to_mask(HELDOUT_ITEMS, num_items=6)
    # Without exclusion user 0 ranks [0, 1, ...]: item 0 takes the first slot and item 1 is no longer a top-1 hit.
    without_exclusion = ranking_metrics(SCORES, heldout, recall_ks=(1,), ndcg_ks=(1,))
    assert without_exclusion["recall@1"] == 0.0
    with_exclusion = ranking_metrics(SCORES, heldout, items_to_mask(TRAIN_ITEMS, 6), recall_ks=(1,), ndcg_ks=(1,))
    assert with_exclusion["recall@1"] == pytest.approx(0.5)


def test_cut_off_beyond_the_number_of_items():
    # Without exclusion user 0 ranks [0, 1, 2, 3, 4, 5] (hits at ranks 1 and 4), user 1 ranks [1, 3, 5, 2, 4, 0]
    # (hit at rank 5); K = 10 > 6 items ranks everything.
    heldout = items_to_mask(HELDOUT_ITEMS, num_items=6)
    metrics = ranking_metrics(SCORES, heldout, recall_ks=(10,), ndcg_ks=(10,))
    assert metrics["recall@10"] == pytest.approx(1.0)
    user_0_ndcg = (1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    user_1_ndcg = 1 / math.log2(7)
    assert metrics["ndcg@10"] == pytest.approx((user_0_ndcg + user_1_ndcg) / 2)


def test_perfect_ranking_scores_one():
    heldout = torch.tensor([[True, True, False, False, False], [False, False, False, False, True]])
    scores = heldout.float() + 0.01 * torch.arange(5.0)
    metrics = ranking_metrics(scores, heldout, recall_ks=(1, 2), ndcg_ks=(1, 3))
    assert metrics == {"recall@1": 1.0, "recall@2": 1.0, "ndcg@1": 1.0, "ndcg@3": 1.0, "num_users": 2}


def test_default_cut_offs_and_model_selection_score():
    scores, heldout, exclude = random_case(num_items=150)
    metrics = ranking_metrics(scores, heldout, exclude)
    assert set(metrics) == {"recall@20", "recall@40", "ndcg@100", "num_users"}
    assert model_selection_score(metrics) == pytest.approx(
        metrics["recall@20"] + metrics["recall@40"] + metrics["ndcg@100"]
    )
    with pytest.raises(KeyError, match="recall@40"):
        model_selection_score({"recall@20": 0.1, "ndcg@100": 0.1})


def test_users_without_heldout_items_are_skipped():
    scores, heldout, exclude = random_case()
    kept = heldout.any(dim=1)
    metrics = ranking_metrics(scores, heldout, exclude)
    only_kept = ranking_metrics(scores[kept], heldout[kept], exclude[kept])
    assert metrics == only_kept
    assert metrics["num_users"] == int(kept.sum()) < len(scores)


def test_no_user_with_heldout_items_reports_zeros():
    metrics = RankingMetrics(recall_ks=(2,), ndcg_ks=(2,))
    metrics.update(torch.rand(3, 6), torch.zeros(3, 6, dtype=torch.bool))
    with pytest.warns(UserWarning, match="No user with held-out items"):
        result = metrics.compute()
    assert result == {"recall@2": 0.0, "ndcg@2": 0.0, "num_users": 0}


def test_chunked_accumulation_equals_one_shot():
    scores, heldout, exclude = random_case(num_users=53)
    one_shot = ranking_metrics(scores, heldout, exclude, recall_ks=(5, 10), ndcg_ks=(10,))
    metrics = RankingMetrics(recall_ks=(5, 10), ndcg_ks=(10,))
    for start in range(0, len(scores), 7):
        chunk = slice(start, start + 7)
        metrics.update(scores[chunk], heldout[chunk], exclude[chunk])
    chunked = metrics.compute()
    assert chunked.keys() == one_shot.keys()
    for name in one_shot:
        assert chunked[name] == pytest.approx(one_shot[name])

    metrics.reset()
    metrics.update(scores[:10], heldout[:10], exclude[:10])
    assert metrics.compute() == ranking_metrics(scores[:10], heldout[:10], exclude[:10], (5, 10), (10,))


def test_sparse_rows_and_dense_masks_agree():
    scores, heldout, exclude = random_case()
    heldout_matrix = scipy.sparse.csr_matrix(heldout.numpy().astype(np.float32))
    exclude_matrix = scipy.sparse.csr_matrix(exclude.numpy().astype(np.float32))
    assert torch.equal(rows_to_mask(heldout_matrix), heldout)
    assert torch.equal(rows_to_mask(heldout_matrix, rows=[3, 1]), heldout[[3, 1]])
    assert torch.equal(rows_to_mask(heldout_matrix, rows=slice(10, 20)), heldout[10:20])
    dense = ranking_metrics(scores, heldout, exclude)
    assert ranking_metrics(scores, heldout_matrix, exclude_matrix) == dense
    assert ranking_metrics(scores, heldout.numpy(), exclude.float()) == dense

    by_user = evaluate_recommender(lambda users: scores[users], heldout_matrix, exclude_matrix, batch_size=8)
    shuffled = np.random.default_rng(0).permutation(heldout_matrix.shape[0])
    reordered = evaluate_recommender(
        lambda users: scores[users], heldout_matrix, exclude_matrix, user_batches=np.array_split(shuffled, 5)
    )
    for name in dense:
        assert by_user[name] == pytest.approx(dense[name])
        assert reordered[name] == pytest.approx(dense[name])
    assert reordered["num_users"] == by_user["num_users"]


def test_user_batches_must_hold_every_user_with_heldout_items_once():
    scores, heldout, exclude = random_case()
    heldout_matrix = scipy.sparse.csr_matrix(heldout.numpy().astype(np.float32))
    users = np.arange(heldout_matrix.shape[0])
    with_heldout = np.flatnonzero(heldout.any(1).numpy())

    def evaluate(batches):
        return evaluate_recommender(lambda batch: scores[batch], heldout_matrix, user_batches=batches)

    with pytest.raises(ValueError, match=f"leaves out 1 users with held-out items, e.g. user {with_heldout[-1]}"):
        evaluate([users[users != with_heldout[-1]]])
    with pytest.raises(ValueError, match="user 3 more than once"):
        evaluate([users, [3]])
    with pytest.raises(ValueError, match="outside"):
        evaluate([users, [len(users)]])


def test_progress_bar_counts_the_users_with_heldout_items(capsys):
    scores, heldout, _ = random_case()
    heldout_matrix = scipy.sparse.csr_matrix(heldout.numpy().astype(np.float32))
    with_heldout = int(heldout.any(1).sum())
    evaluate_recommender(lambda users: scores[users], heldout_matrix, batch_size=7, disable_tqdm=False)
    progress = capsys.readouterr().err
    assert "Ranking: 100%" in progress and f"| {with_heldout}/{with_heldout} [" in progress
    evaluate_recommender(lambda users: scores[users], heldout_matrix, batch_size=7, disable_tqdm=True)
    assert capsys.readouterr().err == ""


def test_items_to_mask():
    mask = items_to_mask([[0, 2], np.array([3]), torch.tensor([], dtype=torch.long)], num_items=4)
    expected = torch.tensor([[True, False, True, False], [False, False, False, True], [False, False, False, False]])
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match="Item ids must lie in"):
        items_to_mask([[4]], num_items=4)


def test_invalid_inputs():
    scores, heldout, _ = random_case()
    with pytest.raises(ValueError, match="positive"):
        RankingMetrics(recall_ks=(0,))
    with pytest.raises(TypeError, match="integers"):
        RankingMetrics(ndcg_ks=(True,))
    with pytest.raises(TypeError):
        RankingMetrics(recall_ks=(2.5,))
    with pytest.raises(ValueError, match="At least one cut-off"):
        RankingMetrics(recall_ks=(), ndcg_ks=())
    with pytest.raises(ValueError, match="`heldout` has shape"):
        ranking_metrics(scores, heldout[:, :-1])
    with pytest.raises(ValueError, match="`exclude` has shape"):
        ranking_metrics(scores, heldout, heldout[:-1])
    with pytest.raises(ValueError, match="batch_size, num_items"):
        ranking_metrics(scores[0], heldout[0])
    with pytest.raises(TypeError, match="floating-point"):
        ranking_metrics(heldout.long(), heldout)
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(torch.full_like(scores, math.nan), heldout)
    with pytest.raises(TypeError, match="scipy sparse"):
        rows_to_mask(heldout)


def test_evaluate_module_matches_ranking_metrics():
    scores, heldout, exclude = random_case(num_users=20)
    ranking = evaluate.load(RANKING_METRIC_PATH)
    item_ids = [[int(item) for item in torch.nonzero(row).flatten()] for row in heldout]
    excluded_ids = [[int(item) for item in torch.nonzero(row).flatten()] for row in exclude]

    result = ranking.compute(
        predictions=scores.tolist(), references=item_ids, excluded_items=excluded_ids, recall_ks=[3, 5], ndcg_ks=[10]
    )
    expected = ranking_metrics(scores, heldout, exclude, recall_ks=(3, 5), ndcg_ks=(10,))
    assert result.keys() == expected.keys()
    for name in expected:
        assert result[name] == pytest.approx(expected[name])

    for start in range(0, 20, 6):
        chunk = slice(start, start + 6)
        ranking.add_batch(
            predictions=scores[chunk].tolist(), references=item_ids[chunk], excluded_items=excluded_ids[chunk]
        )
    streamed = ranking.compute()
    default_cut_offs = ranking_metrics(scores, heldout, exclude)
    for name in default_cut_offs:
        assert streamed[name] == pytest.approx(default_cut_offs[name])


# A CLLM4Rec model on a split of a prepared data set


@pytest.fixture(scope="module")
def tiny_run():
    data = tiny_data()
    model, tokenizer = tiny_item_prediction_model(data)
    return model, tokenizer, data


def test_evaluate_model_scores_through_the_recommender(tiny_run):
    """The metrics of `evaluate_model` are those of the Recommender's scores, over one or several history orders,
    with the user token or without it (the cold-start prompt)."""
    model, tokenizer, data = tiny_run
    histories = data.histories("train")
    train, test = data.to_sparse("train"), data.to_sparse("test")
    for permutations, cold_start in ((1, False), (3, False), (2, True)):
        recommender = Recommender(model, tokenizer, history_permutations=permutations)
        expected = evaluate_recommender(
            lambda users, recommender=recommender, cold_start=cold_start: recommender.score(
                [None] * len(users) if cold_start else users.tolist(), [histories[user] for user in users]
            ),
            test,
            exclude=train,
        )
        measured = evaluate_model(
            model, tokenizer, data, "test", batch_size=5, history_permutations=permutations, cold_start=cold_start
        )
        assert {name: measured[name] for name in expected} == pytest.approx(expected)
    with pytest.raises(ValueError, match="at most 64"):
        evaluate_model(model, tokenizer, data, "test", history_permutations=100)


def test_evaluate_model_batches_by_prompt_tokens(tiny_run, monkeypatch):
    """A token limit changes how users are batched (short prompts in larger batches), not the metrics."""
    model, tokenizer, data = tiny_run
    score_items, batches = model.score_items, []

    def recording_score_items(input_ids, attention_mask):
        batches.append(tuple(input_ids.shape))
        return score_items(input_ids, attention_mask)

    monkeypatch.setattr(model, "score_items", recording_score_items)
    by_users = evaluate_model(model, tokenizer, data, "validation", batch_size=4)
    users_batches, batches[:] = list(batches), []
    by_tokens = evaluate_model(model, tokenizer, data, "validation", batch_size=1000, max_tokens=150)
    assert by_tokens == pytest.approx(by_users)
    assert all(rows <= 4 for rows, _ in users_batches)
    assert all(rows * width <= 150 or rows == 1 for rows, width in batches)
    assert sum(rows for rows, _ in batches) == sum(rows for rows, _ in users_batches)
    assert batches[0][0] > 4 and len(batches) < len(users_batches), "short prompts share larger batches"
    assert [width for _, width in batches] == sorted(width for _, width in batches), "shortest prompts first"


def test_evaluate_model_excludes_training_items(tiny_run, monkeypatch):
    """A model that scores the training items highest, then the held-out ones, is perfect once training items go."""
    model, tokenizer, data = tiny_run
    train, validation = data.to_sparse("train").toarray(), data.to_sparse("validation").toarray()
    noise = torch.rand(data.num_users, data.num_items, generator=torch.Generator().manual_seed(0))
    scores = torch.as_tensor(10 * train + 5 * validation, dtype=torch.float32) + noise
    histories = data.histories("train")

    def score_batch(recommender, user_ids, user_histories):
        for user, history in zip(user_ids, user_histories, strict=True):
            assert np.array_equal(history, histories[user])
        return scores[list(user_ids)]

    monkeypatch.setattr(Recommender, "score_batch", score_batch)
    metrics = evaluate_model(model, tokenizer, data, "validation", batch_size=6, recall_ks=(1, 20), ndcg_ks=(20,))
    assert metrics["recall@1"] == metrics["recall@20"] == metrics["ndcg@20"] == 1.0
    assert metrics["num_users"] == (validation.sum(1) > 0).sum()


def test_evaluate_model_scores_users_without_history_without_a_forward_pass(tiny_run, monkeypatch):
    """Users with no training item join a batch of prompted users: no batch of theirs alone, no extra forward pass."""
    model, tokenizer, data = tiny_run
    histories = data.histories("train")
    validation_users = np.unique(data.tables["validation"]["user_id"])
    for user in validation_users[:3]:
        histories[user] = histories[user][:0]
    monkeypatch.setattr(data, "histories", lambda split: histories)
    score_items, calls = model.score_items, []
    monkeypatch.setattr(model, "score_items", lambda *args: calls.append(len(args[0])) or score_items(*args))
    metrics = evaluate_model(model, tokenizer, data, "validation", batch_size=1, lockstep=True)
    assert calls == [1] * (len(validation_users) - 3), "one forward pass per prompted user, none for the others"
    assert metrics["num_users"] == len(validation_users)


HELDOUT_MATRIX = scipy.sparse.csr_matrix(items_to_mask(HELDOUT_ITEMS, 6).numpy())


def test_per_user_metrics_are_each_users_and_average_to_the_metrics():
    """Each user's metrics, by user id whatever the batches' order; their mean is what `compute` reports."""
    per_user = evaluate_recommender(lambda users: SCORES[users], HELDOUT_MATRIX, per_user=True)
    metrics = RankingMetrics(keep_per_user=True)
    metrics.update(SCORES, items_to_mask(HELDOUT_ITEMS, 6), items_to_mask(TRAIN_ITEMS, 6), user_ids=[0, 1, 2])
    kept = metrics.per_user()
    assert kept["user_id"].tolist() == [0, 1]  # user 2 has nothing held out
    assert kept["recall@20"].tolist() == [1.0, 1.0]
    ideal = 1 + 1 / math.log2(3)
    assert kept["ndcg@100"] == pytest.approx([(1 + 1 / math.log2(5)) / ideal, 1 / math.log2(6)])
    assert per_user["per_user"]["user_id"].tolist() == [0, 1]

    scores, heldout, exclude = random_case(num_users=41)
    batches = [np.arange(40, -1, -1)[start : start + 6] for start in range(0, 41, 6)]  # descending ids
    results = evaluate_recommender(
        lambda users: scores[users],
        scipy.sparse.csr_matrix(heldout.numpy()),
        exclude=scipy.sparse.csr_matrix(exclude.numpy()),
        user_batches=batches,
        per_user=True,
    )
    users = results["per_user"]["user_id"]
    assert users.tolist() == sorted(np.flatnonzero(heldout.any(dim=1).numpy()).tolist())
    for name in ("recall@20", "recall@40", "ndcg@100"):
        assert results["per_user"][name].mean() == pytest.approx(results[name])
        one_user = ranking_metrics(scores[users[3:4]], heldout[users[3:4]], exclude[users[3:4]])
        assert results["per_user"][name][3] == pytest.approx(one_user[name])


def test_per_user_metrics_refuse_what_they_cannot_keep():
    with pytest.raises(ValueError, match="needs the `user_ids`"):
        RankingMetrics(keep_per_user=True).update(SCORES, items_to_mask(HELDOUT_ITEMS, 6))
    with pytest.raises(ValueError, match="2 `user_ids` for 3 rows"):
        RankingMetrics(keep_per_user=True).update(SCORES, items_to_mask(HELDOUT_ITEMS, 6), user_ids=[0, 1])
    with pytest.raises(ValueError, match="keep_per_user=True"):
        RankingMetrics().per_user()
    twice = RankingMetrics(keep_per_user=True)
    for _ in range(2):
        twice.update(SCORES, items_to_mask(HELDOUT_ITEMS, 6), user_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="User 0 was added more than once"):
        twice.per_user()
    with pytest.raises(ValueError, match="without `distributed`"):
        evaluate_recommender(lambda users: SCORES[users], HELDOUT_MATRIX, distributed=True, per_user=True)


def test_evaluate_model_gives_each_users_metrics(tiny_run):
    model, tokenizer, data = tiny_run
    results = evaluate_model(model, tokenizer, data, "test", batch_size=5, per_user=True)
    per_user = results.pop("per_user")
    assert per_user["user_id"].tolist() == np.flatnonzero(np.diff(data.to_sparse("test").indptr)).tolist()
    assert per_user["ndcg@100"].mean() == pytest.approx(results["ndcg@100"])
    assert results == evaluate_model(model, tokenizer, data, "test", batch_size=5)
