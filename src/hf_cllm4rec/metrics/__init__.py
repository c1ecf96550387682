"""`evaluate` modules shipped with the package; load one with `evaluate.load(RANKING_METRIC_PATH)`."""

from pathlib import Path

RANKING_METRIC_PATH = str(Path(__file__).parent / "recommendation_ranking")
