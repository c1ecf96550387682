"""
Evaluation: full-ranking Recall@K / NDCG@K, a CLLM4Rec model measured on a split of a prepared data set, and a paired
bootstrap of two recommenders' per-user metrics.
"""

from .evaluate import (
    EVALUATION_SPLITS,
    check_model_fits_data,
    check_split,
    default_max_length,
    evaluate_model,
    scoring_view,
)
from .metrics import (
    DEFAULT_NDCG_KS,
    DEFAULT_RECALL_KS,
    MODEL_SELECTION_METRICS,
    RankingMetrics,
    evaluate_recommender,
    items_to_mask,
    model_selection_score,
    ranking_metrics,
    rows_to_mask,
)
from .significance import average_per_user, paired_bootstrap

__all__ = [
    "DEFAULT_NDCG_KS",
    "DEFAULT_RECALL_KS",
    "EVALUATION_SPLITS",
    "MODEL_SELECTION_METRICS",
    "RankingMetrics",
    "average_per_user",
    "check_model_fits_data",
    "check_split",
    "default_max_length",
    "evaluate_model",
    "evaluate_recommender",
    "items_to_mask",
    "model_selection_score",
    "paired_bootstrap",
    "ranking_metrics",
    "rows_to_mask",
    "scoring_view",
]
