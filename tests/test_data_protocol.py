import gzip
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from datasets import DatasetDict

from hf_cllm4rec.data import (
    DataFormatError,
    RecommendationData,
    apply_protocol,
    deduplicate_pairs,
    filter_k_core,
    make_synthetic_data,
    read_amazon_reviews,
)


def grid_interactions(num_users: int = 12, num_items: int = 10, seed: int = 0) -> pd.DataFrame:
    """Every user rates 6-10 items, ratings 1-5, one review text per rating."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(num_users):
        for item in rng.choice(num_items, size=rng.integers(6, num_items + 1), replace=False):
            rows.append(
                (f"u{user}", f"i{item}", float(rng.integers(1, 6)), int(rng.integers(1e9)), f"review {user} {item}")
            )
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp", "text"])


def split_pairs(data: RecommendationData, split: str) -> set[tuple[str, str]]:
    users, items = data.user_raw_ids, data.item_raw_ids
    table = data.tables[split]
    return {(users[user], items[item]) for user, item in zip(table["user_id"], table["item_id"], strict=True)}


class TestProtocol:
    def test_rating_filter_and_k_core(self):
        interactions = grid_interactions()
        data = apply_protocol(interactions, min_rating=2.0, k_core=3)
        kept = interactions[interactions["rating"] > 2.0]
        all_pairs = set().union(*(split_pairs(data, split) for split in ("train", "validation", "test")))
        assert all_pairs <= set(zip(kept["user"], kept["item"], strict=True))
        users, items = Counter(user for user, _ in all_pairs), Counter(item for _, item in all_pairs)
        assert min(users.values()) >= 3 and min(items.values()) >= 3
        assert data.manifest["protocol"] == {
            "min_rating": 2.0, "k_core": 3, "seed": 98765, "validation_fraction": 0.1, "test_fraction": 0.1
        }  # fmt: skip

    def test_k_core_is_iterative(self):
        # Dropping user c (2 items) leaves item y with one user, so y and then user b (left with 1 item) go too.
        pairs = [("a", "x"), ("a", "z"), ("b", "x"), ("b", "y"), ("c", "y"), ("c", "z"), ("d", "x"), ("d", "z")]
        interactions = pd.DataFrame(pairs + [("c", "w")], columns=["user", "item"])
        interactions = interactions[~((interactions["user"] == "c") & (interactions["item"] == "z"))]
        kept = filter_k_core(interactions, 2)
        assert sorted(zip(kept["user"], kept["item"], strict=True)) == [("a", "x"), ("a", "z"), ("d", "x"), ("d", "z")]

    def test_duplicates_keep_the_latest(self):
        interactions = pd.DataFrame(
            {"user": ["u", "u", "u"], "item": ["a", "a", "b"], "rating": [5.0, 1.0, 4.0], "timestamp": [30, 10, 20]}
        )
        assert deduplicate_pairs(interactions)["rating"].tolist() == [5.0, 4.0]
        assert deduplicate_pairs(interactions.drop(columns="timestamp"))["rating"].tolist() == [1.0, 4.0]

    def test_ids_and_split(self):
        interactions = grid_interactions(num_users=40, num_items=30)
        data = apply_protocol(interactions, min_rating=None, k_core=0, seed=7)
        # Users in the order of the seeded shuffle of the sorted raw ids.
        sorted_users = np.sort(interactions["user"].unique())
        assert data.user_raw_ids == sorted_users[np.random.RandomState(7).permutation(len(sorted_users))].tolist()
        # Items numbered by first appearance while walking the users in that order, in file order.
        walk = interactions.assign(rank=interactions["user"].map({u: i for i, u in enumerate(data.user_raw_ids)}))
        assert data.item_raw_ids == walk.sort_values("rank", kind="stable")["item"].drop_duplicates().tolist()
        # Per user: max(1, int(0.1 n)) items in validation and in test, the rest in train, no overlap.
        sizes = interactions.groupby("user").size()
        for split in ("train", "validation", "test"):
            assert data.tables[split].column_names == ["user_id", "item_id", "rating", "timestamp"]
        histories = {split: data.histories(split) for split in ("train", "validation", "test")}
        for user, raw_id in enumerate(data.user_raw_ids):
            held_out = max(1, int(0.1 * sizes[raw_id]))
            assert len(histories["validation"][user]) == len(histories["test"][user]) == held_out
            assert len(histories["train"][user]) == sizes[raw_id] - 2 * held_out
            assert len(np.unique(np.concatenate([h[user] for h in histories.values()]))) == sizes[raw_id]

    def test_reviews_come_from_training_pairs(self):
        interactions = grid_interactions()
        interactions.loc[::5, "text"] = "  "
        data = apply_protocol(interactions, min_rating=None, k_core=0)
        reviews = data.tables["reviews"]
        review_pairs = {
            (data.user_raw_ids[user], data.item_raw_ids[item])
            for user, item in zip(reviews["user_id"], reviews["item_id"], strict=True)
        }
        train_pairs = split_pairs(data, "train")
        non_blank = interactions[interactions["text"].str.strip() != ""]
        assert review_pairs == train_pairs & set(zip(non_blank["user"], non_blank["item"], strict=True))
        for user, item, text in zip(reviews["user_id"], reviews["item_id"], reviews["text"], strict=True):
            assert text == f"review {data.user_raw_ids[user][1:]} {data.item_raw_ids[item][1:]}"

    def test_seed_decides_the_split(self):
        interactions = grid_interactions()
        first, again = (apply_protocol(interactions, min_rating=None, k_core=0, seed=1) for _ in range(2))
        other = apply_protocol(interactions, min_rating=None, k_core=0, seed=2)
        assert first.tables["test"].to_pandas().equals(again.tables["test"].to_pandas())
        assert split_pairs(first, "test") != split_pairs(other, "test")

    def test_errors_name_the_parameter(self):
        interactions = grid_interactions()
        with pytest.raises(ValueError, match="no interactions left.*k_core"):
            apply_protocol(interactions, k_core=50)
        with pytest.raises(ValueError, match=r"validation_fraction \+ test_fraction must be below 1, got 0.5 \+ 0.5"):
            apply_protocol(interactions, min_rating=None, k_core=0, validation_fraction=0.5, test_fraction=0.5)
        two_items = pd.DataFrame({"user": ["a", "a"], "item": ["x", "y"]})
        with pytest.raises(ValueError, match="leave users with 2 interactions no training item; raise k_core"):
            apply_protocol(two_items, min_rating=None, k_core=0)
        with pytest.raises(ValueError, match="min_rating=3.0 needs a 'rating' column"):
            apply_protocol(interactions.drop(columns="rating"))
        with pytest.raises(ValueError, match="test_fraction must be in"):
            apply_protocol(interactions, test_fraction=1.5)

    def test_real_all_beauty_matches_an_independent_count(self, shared_data):
        path = shared_data / "amazon-all-beauty-2018" / "All_Beauty_5.json.gz"
        latest = {}
        with gzip.open(path, "rt") as file:
            for line in file:
                review = json.loads(line)
                pair = (review["reviewerID"], review["asin"])
                if pair not in latest or review["unixReviewTime"] >= latest[pair][1]:
                    latest[pair] = (review["overall"], review["unixReviewTime"])
        pairs = {pair for pair, (rating, _) in latest.items() if rating > 3}
        while True:
            users, items = Counter(u for u, _ in pairs), Counter(i for _, i in pairs)
            kept = {(u, i) for u, i in pairs if users[u] >= 5 and items[i] >= 5}
            if kept == pairs:
                break
            pairs = kept
        assert (len({u for u, _ in pairs}), len({i for _, i in pairs}), len(pairs)) == (134, 24, 671)

        raw = read_amazon_reviews(path)
        data = apply_protocol(raw.interactions, raw.item_text, name="All_Beauty_5", sources=raw.sources)
        assert (data.num_users, data.num_items) == (134, 24)
        assert sum(data.manifest["num_interactions"].values()) == 671
        all_pairs = set().union(*(split_pairs(data, split) for split in ("train", "validation", "test")))
        assert all_pairs == pairs
        assert data.manifest["num_reviews"] == data.manifest["num_interactions"]["train"]


class TestRecommendationData:
    @pytest.fixture
    def data(self):
        return apply_protocol(grid_interactions(), {"i1": "red shoes"}, min_rating=None, k_core=0, name="grid")

    def test_views(self, data):
        matrix = data.to_sparse("train")
        assert matrix.shape == (data.num_users, data.num_items) and matrix.dtype == np.float32
        assert matrix.nnz == data.tables["train"].num_rows and set(matrix.data) == {1.0}
        for user, history in enumerate(data.histories("train")):
            assert history.dtype == np.int64 and history.tolist() == sorted(matrix[user].indices.tolist())
        texts = data.item_texts()
        assert texts[data.item_index("i1")] == "red shoes" and texts.count("") == data.num_items - 1
        assert data.user_raw_ids[data.user_index("u3")] == "u3"
        with pytest.raises(KeyError, match="unknown user id 'nobody'"):
            data.user_index("nobody")
        with pytest.raises(KeyError, match="unknown item id 'i99'"):
            data.item_index("i99")
        with pytest.raises(ValueError, match="unknown split 'dev'"):
            data.histories("dev")

    def test_empty_tables(self, tmp_path):
        interactions = pd.DataFrame({"user": ["a", "a", "a", "b", "b", "b"], "item": ["x", "y", "z", "x", "y", "w"]})
        data = apply_protocol(interactions, min_rating=None, k_core=0, validation_fraction=0)
        assert [len(history) for history in data.histories("validation")] == [0, 0]
        assert data.tables["validation"].num_rows == data.tables["reviews"].num_rows == 0
        data.save(tmp_path / "small")
        loaded = RecommendationData.load(tmp_path / "small")
        assert loaded.tables["reviews"].features == data.tables["reviews"].features
        assert loaded.manifest["num_interactions"] == {"train": 4, "validation": 0, "test": 2}

    def test_save_load_round_trip(self, data, tmp_path):
        data.save(tmp_path / "grid")
        loaded = RecommendationData.load(tmp_path / "grid")
        assert loaded.manifest == data.manifest
        assert json.loads((tmp_path / "grid" / "manifest.json").read_text())["format_version"] == 1
        for table in data.tables:
            assert loaded.tables[table].features == data.tables[table].features
            assert loaded.tables[table].to_pandas().equals(data.tables[table].to_pandas())
        assert [h.tolist() for h in loaded.histories("test")] == [h.tolist() for h in data.histories("test")]

    def test_overwrite(self, data, tmp_path):
        data.save(tmp_path / "grid")
        with pytest.raises(FileExistsError, match="already exists"):
            data.save(tmp_path / "grid")
        other = make_synthetic_data(num_users=20, num_items=10, num_clusters=2)
        other.save(tmp_path / "grid", overwrite=True)
        assert RecommendationData.load(tmp_path / "grid").manifest == other.manifest
        (tmp_path / "notes").mkdir()
        (tmp_path / "notes" / "todo.txt").write_text("mine")
        with pytest.raises(FileExistsError, match="not a prepared data set"):
            data.save(tmp_path / "notes", overwrite=True)
        assert sorted(path.name for path in tmp_path.iterdir()) == ["grid", "notes"]

    def test_failed_save_leaves_nothing(self, data, tmp_path, monkeypatch):
        def fail_midway(tables, path, **kwargs):
            (path / "train").mkdir()
            raise OSError("disk full")

        monkeypatch.setattr(DatasetDict, "save_to_disk", fail_midway)
        with pytest.raises(OSError, match="disk full"):
            data.save(tmp_path / "grid")
        assert list(tmp_path.iterdir()) == []

    def test_load_errors(self, data, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            RecommendationData.load(tmp_path / "absent")
        tmp_path.joinpath("plain").mkdir()
        with pytest.raises(DataFormatError, match="not a prepared data set: it has no manifest.json"):
            RecommendationData.load(tmp_path / "plain")
        data.save(tmp_path / "grid")
        manifest_path = tmp_path / "grid" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["num_interactions"]["test"] += 1
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(DataFormatError, match="the manifest says num_interactions"):
            RecommendationData.load(tmp_path / "grid")
        manifest_path.write_text(json.dumps({**manifest, "format_version": 7}))
        with pytest.raises(DataFormatError, match="format_version 7 is not supported"):
            RecommendationData.load(tmp_path / "grid")


def recall_at_20(scores: np.ndarray, data: RecommendationData) -> float:
    train, test = data.to_sparse("train"), data.histories("test")
    scores = np.where(train.toarray() > 0, -np.inf, scores)
    top = np.argsort(-scores, axis=1)[:, :20]
    return np.mean(
        [np.isin(top[user], items).sum() / min(20, len(items)) for user, items in enumerate(test) if len(items)]
    )


class TestSyntheticData:
    def test_same_seed_same_data(self):
        first, again, other = make_synthetic_data(seed=3), make_synthetic_data(seed=3), make_synthetic_data(seed=4)
        assert first.manifest == again.manifest
        for table in first.tables:
            assert first.tables[table].to_pandas().equals(again.tables[table].to_pandas())
        assert not first.tables["train"].to_pandas().equals(other.tables["train"].to_pandas())

    def test_contents(self):
        data = make_synthetic_data()
        assert (data.num_users, data.num_items) == (300, 120)
        assert data.manifest["num_reviews"] == data.manifest["num_interactions"]["train"]
        assert all(len(history) >= 1 for history in data.histories("train"))
        genre, *words = data.item_texts()[0].split(", ")
        assert genre in {"jazz", "hiking", "baking", "astronomy", "gardening", "chess"} and len(words) == 4
        assert all(text.isascii() and text.strip() for text in data.tables["reviews"]["text"])

    def test_structure_beats_popularity(self):
        data = make_synthetic_data()
        train = data.to_sparse("train").toarray()
        popularity = np.tile(train.sum(axis=0), (data.num_users, 1))
        gram = train.T @ train  # EASE: closed-form item-item regression on the training matrix
        inverse = np.linalg.inv(gram + 50.0 * np.eye(data.num_items))
        weights = -inverse / np.diag(inverse)
        np.fill_diagonal(weights, 0.0)
        popularity_recall, structure_recall = recall_at_20(popularity, data), recall_at_20(train @ weights, data)
        assert structure_recall > 0.7
        assert structure_recall > popularity_recall + 0.25

    def test_bad_sizes(self):
        with pytest.raises(ValueError, match="num_clusters must be between 1 and 8"):
            make_synthetic_data(num_clusters=9)
        with pytest.raises(ValueError, match="interactions_per_user"):
            make_synthetic_data(interactions_per_user=(2, 4))
