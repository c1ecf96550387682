"""Data preparation at scale: the power-law generator, large and odd ids, memory budgets, interrupted writes."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hf_cllm4rec.cli import main
from hf_cllm4rec.data import (
    DataFormatError,
    RecommendationData,
    apply_protocol,
    make_power_law_interactions,
    read_amazon_reviews,
    read_interaction_table,
    read_movielens,
    sources,
)
from hf_cllm4rec.data.prepared import INTERACTION_FEATURES
from hf_cllm4rec.data.sources import PREPARATION_BYTES_PER_ROW, preparation_memory


class TestPowerLawInteractions:
    def test_columns_counts_and_seed(self):
        table = make_power_law_interactions(2_000, 1_000, 40_000, seed=1)
        assert table.column_names == ["user", "item", "rating", "timestamp"]
        assert [str(field.type) for field in table.schema] == ["int64", "int64", "float", "int64"]
        assert table.num_rows == 40_000
        assert table.equals(make_power_law_interactions(2_000, 1_000, 40_000, seed=1))
        assert not table.equals(make_power_law_interactions(2_000, 1_000, 40_000, seed=2))
        ratings = table["rating"].to_numpy()
        assert set(np.unique(ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}

    def test_skew(self):
        table = make_power_law_interactions(5_000, 5_000, 100_000, seed=0)
        users = np.bincount(table["user"].to_numpy(), minlength=5_000)
        items = np.sort(np.bincount(table["item"].to_numpy(), minlength=5_000))[::-1]
        assert users.min() >= 5 and users.max() > 10 * np.median(users)
        # The most popular 1% of items hold far more than 1% of the interactions, the rarer half far less than half.
        assert items[:50].sum() > 0.1 * items.sum() and items[2_500:].sum() < 0.2 * items.sum()

    @pytest.mark.parametrize(
        "arguments, message",
        [
            ((0, 10, 100), "num_users must be a positive whole number, got 0"),
            ((10, 10, 20), "num_interactions must be at least num_users \\* min_per_user = 50, got 20"),
            ((10, 3, 100), "min_per_user=5 exceeds num_items=3"),
        ],
    )
    def test_bad_arguments(self, arguments, message):
        with pytest.raises(ValueError, match=message):
            make_power_law_interactions(*arguments)


def digest(data: RecommendationData) -> str:
    """A short hash of everything the protocol decides: numbering, item texts, splits and reviews."""
    parts = [data.user_raw_ids, data.item_raw_ids, data.item_texts()]
    for table in ("train", "validation", "test", "reviews"):
        columns = data.tables[table].to_dict()
        parts.append(
            {name: [round(v, 3) if isinstance(v, float) else v for v in values] for name, values in columns.items()}
        )
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


class TestSameResultAsBefore:
    """The protocol on integer codes decides exactly what the pandas protocol before it did (digests pinned then)."""

    def test_table_with_duplicates_blank_reviews_and_item_text(self):
        rng = np.random.default_rng(5)
        frame = pd.DataFrame(
            {
                "user": [f"u{x}" for x in rng.integers(0, 12, 200)],
                "item": [str(x) for x in rng.integers(0, 15, 200)],
                "rating": rng.integers(1, 6, 200).astype(np.float32),
                "timestamp": rng.integers(0, 20, 200),
                "text": [["", " ", "ok"][x] for x in rng.integers(0, 3, 200)],
            }
        )
        data = apply_protocol(frame, {"3": "three"}, min_rating=2.0, k_core=3, seed=11)
        assert data.user_raw_ids[:4] == ["u4", "u11", "u6", "u8"] and data.item_raw_ids[:4] == ["7", "5", "14", "12"]
        assert data.manifest["num_interactions"] == {"train": 42, "validation": 12, "test": 12}
        assert data.manifest["num_reviews"] == 13
        assert digest(data) == "cfa72d7ce37f347d"

    @pytest.mark.slow
    def test_amazon_reviews(self, shared_data):
        raw = read_amazon_reviews(shared_data / "amazon-all-beauty-2018" / "All_Beauty_5.json.gz")
        assert digest(apply_protocol(raw.interactions, raw.item_text, sources=raw.sources)) == "9a1b2cf9dafd9aaa"

    @pytest.mark.slow
    def test_movielens(self, shared_data):
        raw = read_movielens(shared_data / "ml-100k")
        assert digest(apply_protocol(raw.interactions, raw.item_text, sources=raw.sources)) == "6dbd1208e2736ddb"


def prepare_table(path: Path, **options) -> RecommendationData:
    raw = read_interaction_table(path, user_column="user", item_column="item", **options)
    return apply_protocol(raw.interactions, min_rating=None, k_core=0, validation_fraction=0, test_fraction=0)


class TestBadInputAtScale:
    def test_billion_integer_ids(self, tmp_path):
        users = np.array([10**9, 10**9 + 1, 2**62, 10**9], dtype=np.int64)
        items = np.array([4 * 10**9, 2**63 - 1, 4 * 10**9, 7], dtype=np.int64)
        pq.write_table(pa.table({"user": users, "item": items}), tmp_path / "big.parquet")
        data = prepare_table(tmp_path / "big.parquet")
        assert sorted(data.user_raw_ids) == sorted(["1000000000", "1000000001", str(2**62)])
        assert sorted(data.item_raw_ids) == sorted(["4000000000", str(2**63 - 1), "7"])
        assert data.manifest["num_interactions"]["train"] == 4

    def test_ids_of_any_length(self, tmp_path):
        long_id = "x" * 10_000
        frame = pd.DataFrame({"user": ["a", long_id, " b ", long_id], "item": [long_id, "1", "1", "é"]})
        frame.to_parquet(tmp_path / "ids.parquet")
        data = prepare_table(tmp_path / "ids.parquet")
        assert sorted(data.user_raw_ids) == ["a", "b", long_id]
        assert sorted(data.item_raw_ids) == ["1", long_id, "é"]
        pairs = {
            (data.user_raw_ids[u], data.item_raw_ids[i])
            for u, i in zip(*data.tables["train"][:].values(), strict=True)
        }
        assert (long_id, "é") in pairs and ("a", long_id) in pairs

    @pytest.mark.parametrize("suffix", [".parquet", ".csv"])
    def test_too_large_for_memory_is_refused_before_reading(self, tmp_path, suffix):
        path = tmp_path / f"interactions{suffix}"
        frame = pd.DataFrame({"user": np.arange(1000), "item": np.arange(1000)})
        frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
        needed = preparation_memory(path, ["user", "item"])
        assert needed >= 1000 * PREPARATION_BYTES_PER_ROW
        message = rf"interactions{suffix} is too large to prepare in memory: it needs about .* GiB, 0.0 GiB are"
        with pytest.raises(DataFormatError, match=message):
            read_interaction_table(path, user_column="user", item_column="item", memory_budget=needed - 1)
        assert len(prepare_table(path, memory_budget=needed).user_raw_ids) == 1000

    def test_prepare_refuses_a_table_larger_than_memory(self, tmp_path, monkeypatch, capsys):
        path = tmp_path / "interactions.parquet"
        make_power_law_interactions(100, 100, 1000).to_pandas().to_parquet(path)
        monkeypatch.setattr(sources, "available_memory", lambda: 10_000)
        arguments = ["prepare", "--source", "table", "--path", str(path), "--user-column", "user"]
        with pytest.raises(SystemExit) as exit:
            main([*arguments, "--item-column", "item", "--min-rating", "none", "--out", str(tmp_path / "out")])
        assert exit.value.code == 2
        assert "too large to prepare in memory: it needs about" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()

    def test_power_law_table_through_prepare(self, tmp_path):
        path = tmp_path / "interactions.parquet"
        pq.write_table(make_power_law_interactions(300, 200, 6000, seed=3), path)
        arguments = ["prepare", "--source", "table", "--path", str(path), "--user-column", "user", "--item-column"]
        arguments += ["item", "--rating-column", "rating", "--timestamp-column", "timestamp"]
        assert main([*arguments, "--out", str(tmp_path / "out")]) == 0
        data = RecommendationData.load(tmp_path / "out")
        assert data.num_users > 250 and set(data.tables["train"].column_names) == set(INTERACTION_FEATURES)
