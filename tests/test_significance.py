import numpy as np
import pytest

from hf_cllm4rec.evaluation import average_per_user, paired_bootstrap


def per_user(values: dict[str, list[float]], users=None) -> dict[str, np.ndarray]:
    size = len(next(iter(values.values())))
    return {
        "user_id": np.arange(size) if users is None else np.asarray(users),
        **{k: np.asarray(v) for k, v in values.items()},
    }


def test_an_identical_recommender_differs_by_nothing():
    rng = np.random.default_rng(0)
    values = per_user({"ndcg@100": rng.random(50)})
    result = paired_bootstrap(values, values, num_resamples=200)["ndcg@100"]
    assert result["difference"] == result["difference_low"] == result["difference_high"] == 0
    assert result["relative_low"] == result["relative_high"] == 0 and result["below"] == 0


def test_the_interval_holds_the_difference_and_narrows_with_more_users():
    rng = np.random.default_rng(1)

    def interval(num_users):
        baseline = rng.random(num_users)
        better = np.clip(baseline + 0.05 + 0.1 * rng.standard_normal(num_users), 0, None)
        return paired_bootstrap(per_user({"m": better}), per_user({"m": baseline}), num_resamples=2000)["m"]

    small, large = interval(40), interval(4000)
    for result in (small, large):
        assert result["difference_low"] < result["difference"] < result["difference_high"]
        assert result["relative"] == pytest.approx(result["mean"] / result["baseline_mean"] - 1)
    assert (
        large["difference_high"] - large["difference_low"] < (small["difference_high"] - small["difference_low"]) / 5
    )
    assert large["difference_low"] > 0 and large["below"] == 0  # 0.05 above with 4000 users is no chance


def test_pairing_removes_what_both_share():
    """Users hard for both recommenders widen an unpaired comparison, not the paired one."""
    rng = np.random.default_rng(2)
    difficulty = rng.random(300)
    baseline = per_user({"m": difficulty})
    above = per_user({"m": difficulty + 0.01})
    result = paired_bootstrap(above, baseline, num_resamples=500)["m"]
    assert result["difference_low"] == pytest.approx(0.01) and result["difference_high"] == pytest.approx(0.01)


def test_the_resampling_is_seeded():
    rng = np.random.default_rng(3)
    first, second = per_user({"m": rng.random(30)}), per_user({"m": rng.random(30)})
    assert paired_bootstrap(first, second, seed=5, num_resamples=300) == paired_bootstrap(
        first, second, seed=5, num_resamples=300
    )
    assert paired_bootstrap(first, second, seed=5, num_resamples=300) != paired_bootstrap(
        first, second, seed=6, num_resamples=300
    )


def test_several_runs_are_averaged_per_user():
    runs = [per_user({"m": [1.0, 0.0]}), per_user({"m": [0.0, 0.0]}), per_user({"m": [0.5, 1.0]})]
    averaged = average_per_user(runs)
    assert averaged["user_id"].tolist() == [0, 1] and averaged["m"] == pytest.approx([0.5, 1 / 3])
    with pytest.raises(ValueError, match="other users"):
        average_per_user([per_user({"m": [1.0, 0.0]}), per_user({"m": [1.0, 0.0]}, users=[0, 2])])
    with pytest.raises(ValueError, match="other metrics"):
        average_per_user([per_user({"m": [1.0]}), per_user({"n": [1.0]})])
    with pytest.raises(ValueError, match="No per-user metrics"):
        average_per_user([])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"baseline_per_user": per_user({"m": [0.1, 0.2]}, users=[0, 5])}, "1 users only in the first"),
        ({"metrics": ["n"]}, r"\['n'\] are not in both"),
        ({"confidence": 1.0}, "confidence"),
        ({"num_resamples": 0}, "num_resamples"),
    ],
)
def test_bad_comparisons_are_refused(arguments, message):
    options = {"per_user": per_user({"m": [0.1, 0.2]}), "baseline_per_user": per_user({"m": [0.2, 0.2]}), **arguments}
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(**options)
    with pytest.raises(ValueError, match="at least 2 users"):
        paired_bootstrap(per_user({"m": [0.1]}), per_user({"m": [0.2]}))
