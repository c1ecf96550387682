"""
How sure a difference between two recommenders is: a paired bootstrap over the users that both were evaluated on.

Both recommenders rank for the same users, so their per-user metrics are paired; resampling the users (with
replacement) and recomputing both means gives the spread of the difference that another sample of users of the same
population would show. It measures the uncertainty of the test users' sample, not that of training (seeds): average
the per-user metrics of several seeds first ([`average_per_user`]) to compare their mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Resamples drawn at a time, which bounds the memory of the index matrix to this many times the number of users.
RESAMPLE_CHUNK = 256


def _check_same_users(first: dict[str, np.ndarray], other: dict[str, np.ndarray], what: str) -> None:
    for name, per_user in (("first", first), (what, other)):
        if "user_id" not in per_user:
            raise ValueError(f"The {name} per-user metrics have no 'user_id' (see `RankingMetrics.per_user`).")
    if not np.array_equal(first["user_id"], other["user_id"]):
        only_first = np.setdiff1d(first["user_id"], other["user_id"])
        only_other = np.setdiff1d(other["user_id"], first["user_id"])
        raise ValueError(
            f"The {what} per-user metrics are of other users: {len(only_first)} users only in the first "
            f"(e.g. {only_first[:3].tolist()}), {len(only_other)} only in the {what} (e.g. {only_other[:3].tolist()})."
        )


def average_per_user(runs: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each user's metrics averaged over several runs of the same users (e.g. seeds), as [`RankingMetrics.per_user`]
    gives them."""
    if not runs:
        raise ValueError("No per-user metrics to average.")
    for run in runs[1:]:
        _check_same_users(runs[0], run, "other run's")
        if run.keys() != runs[0].keys():
            raise ValueError(f"The runs have other metrics: {sorted(runs[0])} and {sorted(run)}.")
    names = [name for name in runs[0] if name != "user_id"]
    return {"user_id": runs[0]["user_id"], **{name: np.mean([run[name] for run in runs], axis=0) for name in names}}


def paired_bootstrap(
    per_user: dict[str, np.ndarray],
    baseline_per_user: dict[str, np.ndarray],
    metrics: Sequence[str] | None = None,
    num_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Paired bootstrap of a recommender's mean metrics against a baseline's over the same users.

    Args:
        per_user (`dict[str, np.ndarray]`):
            The recommender's per-user metrics ([`RankingMetrics.per_user`]).
        baseline_per_user (`dict[str, np.ndarray]`):
            The baseline's, for the same users.
        metrics (`Sequence[str]`, *optional*):
            The metrics compared; by default every metric both have.
        num_resamples (`int`, *optional*, defaults to 10000):
            Bootstrap resamples of the users.
        confidence (`float`, *optional*, defaults to 0.95):
            Coverage of the percentile intervals.
        seed (`int`, *optional*, defaults to 0):
            Seed of the resampling.

    Returns:
        Per metric: `mean` and `baseline_mean`, the `relative` difference `mean / baseline_mean - 1` with its
        interval (`relative_low`, `relative_high`), the same for the absolute `difference`, and `below`: the share of
        resamples in which the recommender's mean is below the baseline's.
    """
    _check_same_users(per_user, baseline_per_user, "baseline's")
    num_users = len(per_user["user_id"])
    if num_users < 2:
        raise ValueError(f"A bootstrap needs at least 2 users, got {num_users}.")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence}.")
    if num_resamples < 1:
        raise ValueError(f"`num_resamples` must be positive, got {num_resamples}.")
    shared = [name for name in per_user if name != "user_id" and name in baseline_per_user]
    metrics = shared if metrics is None else list(metrics)
    missing = [name for name in metrics if name not in shared]
    if missing or not metrics:
        raise ValueError(f"Metrics {missing or metrics} are not in both per-user results (both have {shared}).")
    values = np.stack([per_user[name] for name in metrics], axis=1).astype(np.float64)
    baseline = np.stack([baseline_per_user[name] for name in metrics], axis=1).astype(np.float64)
    rng = np.random.default_rng(seed)
    means, baseline_means = [], []
    for start in range(0, num_resamples, RESAMPLE_CHUNK):
        users = rng.integers(0, num_users, size=(min(RESAMPLE_CHUNK, num_resamples - start), num_users))
        means.append(values[users].mean(axis=1))
        baseline_means.append(baseline[users].mean(axis=1))
    means, baseline_means = np.concatenate(means), np.concatenate(baseline_means)
    tails = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = means / baseline_means - 1
    results = {}
    for index, name in enumerate(metrics):
        mean, baseline_mean = values[:, index].mean(), baseline[:, index].mean()
        difference_low, difference_high = np.percentile(means[:, index] - baseline_means[:, index], tails)
        relative_low, relative_high = np.percentile(relative[:, index], tails)
        results[name] = {
            "mean": float(mean),
            "baseline_mean": float(baseline_mean),
            "difference": float(mean - baseline_mean),
            "difference_low": float(difference_low),
            "difference_high": float(difference_high),
            "relative": float(mean / baseline_mean - 1) if baseline_mean else float("nan"),
            "relative_low": float(relative_low),
            "relative_high": float(relative_high),
            "below": float((means[:, index] < baseline_means[:, index]).mean()),
        }
    return results


__all__ = ["average_per_user", "paired_bootstrap"]
