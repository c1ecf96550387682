"""What of a CLLM4Rec model trains: the ID tables always, and the backbone frozen, fully or through LoRA adapters."""

from torch import nn
from transformers.pytorch_utils import Conv1D

# `backbone_training`: "frozen" (the paper: only the ID tables train), "full" (the backbone too) or "lora" (adapters).
BACKBONE_TRAINING = ("frozen", "full", "lora")
# Default LoRA targets by backbone model type, for backbones peft has no default for.
LORA_TARGET_MODULES = {"gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def apply_backbone_training(
    model,
    backbone_training: str,
    lora_rank: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    lora_target_modules: list[str] | None = None,
):
    """
    Makes a CLLM4Rec model's ID tables (and an untied item head) trainable, and of its backbone nothing (`"frozen"`),
    every weight (`"full"`) or new LoRA adapters only (`"lora"`, through peft). Returns the adapters' peft tuner for
    `"lora"` (its `merge_and_unload()` folds them into the backbone's weights), else `None`.
    """
    if backbone_training not in BACKBONE_TRAINING:
        raise ValueError(f"backbone_training must be one of {BACKBONE_TRAINING}, got {backbone_training!r}.")
    backbone = model.base_model.backbone
    if has_lora_adapters(backbone):
        raise ValueError(
            "The model's backbone already holds LoRA adapters: merge them (`merge_and_unload()` of the tuner that "
            "added them) before setting what trains."
        )
    adapters = None
    if backbone_training == "lora":
        adapters = add_lora_adapters(backbone, lora_rank, lora_alpha, lora_dropout, lora_target_modules)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_(backbone_training == "full" or "lora_" in name)
    return adapters


def add_lora_adapters(
    backbone: nn.Module, rank: int, alpha: int, dropout: float, target_modules: list[str] | None = None
):
    """
    Injects LoRA adapters (B = 0: the backbone computes what it did) into `target_modules` of the backbone, by
    default those of `LORA_TARGET_MODULES` or peft's for its model type; returns peft's tuner.
    """
    from peft import LoraConfig, LoraModel

    model_type = backbone.config.model_type
    lora_config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or LORA_TARGET_MODULES.get(model_type),
        # GPT-2's projections are `Conv1D`s, which store their weight transposed
        fan_in_fan_out=any(isinstance(module, Conv1D) for module in backbone.modules()),
    )
    return LoraModel(backbone, lora_config, adapter_name="default")


def has_lora_adapters(module: nn.Module) -> bool:
    return any("lora_" in name for name, _ in module.named_parameters())


__all__ = ["BACKBONE_TRAINING", "LORA_TARGET_MODULES", "apply_backbone_training", "add_lora_adapters"]
