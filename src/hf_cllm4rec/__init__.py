"""CLLM4Rec: collaborative large language models for recommendation, the transformers way."""

from transformers import AutoConfig, AutoModel

from .configuration_cllm4rec import CLLM4RecConfig
from .hub import push_to_hub, save_for_hub
from .modeling_cllm4rec import (
    CLLM4RecForCollaborativeLM,
    CLLM4RecForItemPrediction,
    CLLM4RecItemPredictionOutput,
    CLLM4RecLMOutput,
    CLLM4RecModel,
    CLLM4RecPreTrainedModel,
    RecommendationOutput,
)
from .serving import IdMappings, ItemRecommendationPipeline, Recommender, register_pipeline
from .tokenization_cllm4rec import CLLM4RecTokenizer

__version__ = "0.1.0"

AutoConfig.register(CLLM4RecConfig.model_type, CLLM4RecConfig, exist_ok=True)
# both heads keep their weights under `model.*`: `AutoModel` loads any CLLM4Rec checkpoint as the item predictor, as a
# checkpoint's own code does (`hub.checkpoint.AUTO_MAP`); the collaborative LM's logits are over items, not words, so
# it is registered as no `AutoModelForCausalLM`
AutoModel.register(CLLM4RecConfig, CLLM4RecForItemPrediction, exist_ok=True)
register_pipeline()

__all__ = [
    "CLLM4RecConfig",
    "CLLM4RecTokenizer",
    "CLLM4RecPreTrainedModel",
    "CLLM4RecModel",
    "CLLM4RecForCollaborativeLM",
    "CLLM4RecForItemPrediction",
    "CLLM4RecLMOutput",
    "CLLM4RecItemPredictionOutput",
    "RecommendationOutput",
    "IdMappings",
    "ItemRecommendationPipeline",
    "Recommender",
    "save_for_hub",
    "push_to_hub",
]
