"""Data preparation at scale: the power-law generator, large and odd ids, memory budgets, interrupted writes."""

import numpy as np
import pytest

from hf_cllm4rec.data import make_power_law_interactions


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
