"""Full-ranking Recall@K and NDCG@K for recommendation (the CLLM4Rec protocol) as an `evaluate` metric.

The computation is the package's own (`hf_cllm4rec.evaluation`), so `hf_cllm4rec` must be installed wherever this
module is loaded.
"""

import datasets
import evaluate
import numpy as np
import torch

from hf_cllm4rec.evaluation import DEFAULT_NDCG_KS, DEFAULT_RECALL_KS, items_to_mask, ranking_metrics

_CITATION = """\
@inproceedings{zhu2024collaborative,
  title={Collaborative Large Language Model for Recommender Systems},
  author={Zhu, Yaochen and Wu, Liang and Guo, Qi and Hong, Liangjie and Li, Jundong},
  booktitle={Proceedings of the ACM Web Conference 2024},
  year={2024}
}
"""

_DESCRIPTION = """\
Every item is ranked for every user by its score, the excluded items (usually the user's training items) are
ranked last, and Recall@K = hits in the top K / min(K, number of held-out items), NDCG@K = DCG@K / ideal DCG over
min(K, number of held-out items) positions, with a discount of 1 / log2(rank + 2) for 0-based ranks. Both are
averaged over the users with held-out items; users without any are skipped.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per user, the scores of all items (the same number for all).
    references (`list` of `list` of `int`): one row per user, the ids of the held-out (relevant) items.
    excluded_items (`list` of `list` of `int`): one row per user, the ids of the items to remove from the ranking,
        usually the training items; empty rows exclude nothing.
    recall_ks (`list` of `int`, *optional*, defaults to `[20, 40]`): cut-offs of Recall@K.
    ndcg_ks (`list` of `int`, *optional*, defaults to `[100]`): cut-offs of NDCG@K.
Returns:
    `recall@K` and `ndcg@K` for each cut-off, and `num_users`, the number of users with held-out items (all metrics
    are 0.0 when it is 0).
Examples:
    >>> from hf_cllm4rec.metrics import RANKING_METRIC_PATH
    >>> ranking = evaluate.load(RANKING_METRIC_PATH)  # doctest: +SKIP
    >>> ranking.compute(
    ...     predictions=[[0.9, 0.8, 0.1, 0.3]], references=[[1, 2]], excluded_items=[[0]], recall_ks=[1, 2], ndcg_ks=[2]
    ... )  # doctest: +SKIP
    {'recall@1': 1.0, 'recall@2': 0.5, 'ndcg@2': 0.6131471927654584, 'num_users': 1}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecommendationRanking(evaluate.Metric):
    """Recall@K and NDCG@K over a full ranking of all items."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                    "excluded_items": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2311.01343"],
        )

    def _compute(self, predictions, references, excluded_items, recall_ks=DEFAULT_RECALL_KS, ndcg_ks=DEFAULT_NDCG_KS):
        scores = torch.tensor(np.asarray(predictions, dtype=np.float32))
        num_items = scores.shape[1]
        return ranking_metrics(
            scores,
            heldout=items_to_mask(references, num_items),
            exclude=items_to_mask(excluded_items, num_items),
            recall_ks=recall_ks,
            ndcg_ks=ndcg_ks,
        )
