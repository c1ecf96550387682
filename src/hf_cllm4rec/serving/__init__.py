"""Serving: the one path from users to recommendations (`Recommender`), raw ids, the pipeline, embedding export."""

from .id_mappings import ID_MAPPINGS_NAME, IdMappings, check_checkpoint_ids
from .pipeline import ItemRecommendationPipeline, register_pipeline
from .recommender import Recommender, length_grouped_batches

__all__ = [
    "ID_MAPPINGS_NAME",
    "IdMappings",
    "ItemRecommendationPipeline",
    "Recommender",
    "check_checkpoint_ids",
    "length_grouped_batches",
    "register_pipeline",
]
