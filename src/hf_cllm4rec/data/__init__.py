from .prepared import DataFormatError, RecommendationData
from .protocol import apply_protocol, deduplicate_pairs, filter_k_core
from .sources import (
    RawInteractions,
    read_amazon_reviews,
    read_authors_split,
    read_interaction_table,
    read_movielens,
)
from .synthetic import make_synthetic_data

__all__ = [
    "DataFormatError",
    "RawInteractions",
    "RecommendationData",
    "apply_protocol",
    "deduplicate_pairs",
    "filter_k_core",
    "make_synthetic_data",
    "read_amazon_reviews",
    "read_authors_split",
    "read_interaction_table",
    "read_movielens",
]
