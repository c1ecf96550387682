"""Sharing CLLM4Rec checkpoints: what a checkpoint folder carries, its model card, and the upload to the Hub."""

from .checkpoint import push_to_hub, save_for_hub
from .modelcard import model_card, write_model_card

__all__ = ["model_card", "push_to_hub", "save_for_hub", "write_model_card"]
