from .collators import CLLM4RecDataCollator
from .documents import CollaborativeDocuments, ContentDocuments, RecommendationDocuments, ScheduledDocuments
from .prepared import DataFormatError, RecommendationData
from .protocol import apply_protocol, deduplicate_pairs, filter_k_core
from .sources import (
    RawInteractions,
    read_amazon_reviews,
    read_authors_split,
    read_interaction_table,
    read_movielens,
)
from .synthetic import make_power_law_interactions, make_synthetic_data, make_synthetic_tokenizer

__all__ = [
    "DataFormatError",
    "RawInteractions",
    "RecommendationData",
    "apply_protocol",
    "deduplicate_pairs",
    "filter_k_core",
    "make_power_law_interactions",
    "make_synthetic_data",
    "make_synthetic_tokenizer",
    "CLLM4RecDataCollator",
    "CollaborativeDocuments",
    "ContentDocuments",
    "RecommendationDocuments",
    "ScheduledDocuments",
    "read_amazon_reviews",
    "read_authors_split",
    "read_interaction_table",
    "read_movielens",
]
