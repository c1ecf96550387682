"""Serving: recommendations in the data set's own ids, the `item-recommendation` pipeline, embedding export."""

from .id_mappings import ID_MAPPINGS_NAME, IdMappings
from .pipeline import ItemRecommendationPipeline, register_pipeline

__all__ = ["ID_MAPPINGS_NAME", "IdMappings", "ItemRecommendationPipeline", "register_pipeline"]
