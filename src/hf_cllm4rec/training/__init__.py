"""Training CLLM4Rec: arguments of each stage, what trains, the schedule and the trainer."""

from .arguments import CLLM4RecTrainingArguments, FineTuningArguments, PretrainingArguments
from .backbone import apply_backbone_training
from .schedule import ScheduleBatchSampler
from .trainer import CLLM4RecTrainer

__all__ = [
    "CLLM4RecTrainingArguments",
    "CLLM4RecTrainer",
    "FineTuningArguments",
    "PretrainingArguments",
    "ScheduleBatchSampler",
    "apply_backbone_training",
]
