import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch
from benchmarks.baselines import (
    EASE,
    MultiVAE,
    MultiVAERecommender,
    PopularityRecommender,
    evaluate_baseline,
    run_baselines,
    tune_ease,
)

from hf_cllm4rec.evaluation import evaluate_recommender, model_selection_score

ROOT = Path(__file__).resolve().parents[1]
BEAUTY_DIR = ROOT.parent / "shared" / "data" / "amazon-beauty"


def clustered_split(num_users=240, num_items=60, num_clusters=4, seed=0):
    """Users who mostly interact inside their cluster's block of items, split into train and held-out matrices."""
    rng = np.random.default_rng(seed)
    items_per_cluster = num_items // num_clusters
    train_rows, heldout_rows = [], []
    for user in range(num_users):
        cluster_items = np.arange(items_per_cluster) + (user % num_clusters) * items_per_cluster
        items = np.concatenate([rng.choice(cluster_items, 8, replace=False), rng.choice(num_items, 1)])
        items = rng.permutation(np.unique(items))
        heldout_rows.append(items[:2])
        train_rows.append(items[2:])

    def to_csr(rows):
        indices = np.concatenate(rows)
        indptr = np.concatenate([[0], np.cumsum([len(row) for row in rows])])
        return scipy.sparse.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), (num_users, num_items))

    return to_csr(train_rows), to_csr(heldout_rows)


def test_popularity_scores_are_training_counts():
    train, heldout = clustered_split()
    scores = PopularityRecommender().fit(train).score(train[:3])
    expected = np.asarray(train.sum(axis=0)).ravel()
    assert scores.shape == (3, train.shape[1])
    for user_scores in scores:
        np.testing.assert_allclose(user_scores.numpy(), expected)


def test_ease_matches_the_closed_form():
    train, _ = clustered_split(num_users=40, num_items=12, num_clusters=1)
    dense_train = train.toarray().astype(np.float64)
    precision = np.linalg.inv(dense_train.T @ dense_train + 5.0 * np.eye(12))
    item_weights = np.eye(12) - precision / np.diag(precision)
    assert np.allclose(np.diag(item_weights), 0.0)

    ease = EASE(l2=5.0).fit(train)
    np.testing.assert_allclose(ease.item_weights, item_weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ease.score(train[:5]).numpy(), dense_train[:5] @ item_weights, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        EASE(l2=0.0)


def test_tune_ease_selects_the_best_validation_score():
    train, validation = clustered_split()
    best, validation_metrics = tune_ease(train, validation, l2_grid=(0.1, 10.0, 1000.0))
    assert set(validation_metrics) == {0.1, 10.0, 1000.0}
    assert best.l2 == max(validation_metrics, key=lambda l2: model_selection_score(validation_metrics[l2]))


def test_multi_vae_forward():
    model = MultiVAE(num_items=10, hidden_size=8, latent_size=4).eval()
    item_ids, offsets = torch.tensor([1, 4, 7, 2]), torch.tensor([0, 3])  # users {1, 4, 7} and {2}
    logits, mean, log_variance = model(item_ids, offsets)
    assert logits.shape == (2, 10) and mean.shape == log_variance.shape == (2, 4)
    # In evaluation the latent is the mean and there is no dropout: deterministic.
    assert torch.equal(model(item_ids, offsets)[0], logits)


def test_multi_vae_trains_and_beats_random():
    train, heldout = clustered_split()
    vae = MultiVAERecommender(hidden_size=32, latent_size=8, batch_size=40, num_epochs=20, seed=0)
    vae.fit(train, validation=heldout)
    losses = [record["loss"] for record in vae.history]
    assert losses[-1] < 0.95 * losses[0]
    # The epoch with the best validation NDCG@100 is the one kept.
    best_ndcg = max(record["ndcg@100"] for record in vae.history)
    assert evaluate_baseline(vae, train, heldout)["ndcg@100"] == pytest.approx(best_ndcg)

    cut_offs = {"recall_ks": (5,), "ndcg_ks": (10,), "exclude": train}
    generator = torch.Generator().manual_seed(0)
    random_metrics = evaluate_recommender(
        lambda users: torch.rand(len(users), train.shape[1], generator=generator), heldout, **cut_offs
    )
    vae_metrics = evaluate_recommender(lambda users: vae.score(train[users]), heldout, **cut_offs)
    assert vae_metrics["recall@5"] > random_metrics["recall@5"] + 0.2
    assert vae_metrics["ndcg@10"] > random_metrics["ndcg@10"] + 0.2

    same_seed = MultiVAERecommender(hidden_size=32, latent_size=8, batch_size=40, num_epochs=2, seed=0).fit(train)
    again = MultiVAERecommender(hidden_size=32, latent_size=8, batch_size=40, num_epochs=2, seed=0).fit(train)
    assert torch.equal(same_seed.score(train[:5]), again.score(train[:5]))


@pytest.mark.skipif(not BEAUTY_DIR.is_dir(), reason=f"the CLLM4Rec Beauty split is not available at {BEAUTY_DIR}")
def test_reference_numbers_on_beauty():
    # Reference figures of the paper's protocol on the authors' Beauty split (test set, training items excluded).
    train, test = (scipy.sparse.load_npz(BEAUTY_DIR / f"{split}_matrix.npz").tocsr() for split in ("train", "test"))
    assert train.shape == test.shape == (10553, 6086)

    popularity = evaluate_baseline(PopularityRecommender().fit(train), train, test)
    assert popularity["num_users"] == 10553
    assert popularity["recall@20"] == pytest.approx(0.0407, abs=5e-4)
    assert popularity["recall@40"] == pytest.approx(0.0708, abs=5e-4)
    assert popularity["ndcg@100"] == pytest.approx(0.0303, abs=5e-4)

    ease = evaluate_baseline(EASE(l2=100.0).fit(train), train, test)
    assert ease["recall@20"] == pytest.approx(0.1768, abs=5e-4)
    assert ease["recall@40"] == pytest.approx(0.2252, abs=5e-4)
    assert ease["ndcg@100"] == pytest.approx(0.1153, abs=5e-4)


def test_run_baselines_reports_what_each_chose():
    train, heldout = clustered_split()
    results = run_baselines(["popularity", "ease", "multivae"], train, heldout, heldout, vae_epochs=3)
    assert list(results) == ["popularity", "ease", "multivae"]
    assert results["ease"]["l2"] in (1.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
    assert len(results["multivae"]["validation_per_epoch"]) == 3
    best = max(results["multivae"]["validation_per_epoch"], key=lambda record: record["ndcg@100"])
    assert results["multivae"]["best_epoch"] == best["epoch"]
    assert results["multivae"]["test"]["ndcg@100"] == pytest.approx(best["ndcg@100"])  # test split = validation here
    with pytest.raises(ValueError, match="Unknown baselines \\['knn'\\]"):
        run_baselines(["popularity", "knn"], train, heldout, heldout)


def test_baselines_script_writes_a_result_file(tmp_path):
    command = [sys.executable, "-m", "benchmarks.baselines", "--data", "builtin", "--name", "smoke"]
    command += ["--baselines", "popularity,multivae", "--vae_epochs", "2", "--results_dir", str(tmp_path)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    result = json.loads((tmp_path / "baselines-smoke.json").read_text())
    assert result["benchmark"] == "baselines" and result["data"] == "builtin"
    assert set(result["baselines"]) == {"popularity", "multivae"}
    assert 0 < result["baselines"]["multivae"]["test"]["recall@20"] <= 1
    assert result["git_commit"] and result["versions"]["torch"]
