"""Training CLLM4Rec: arguments, schedule and trainer."""

from .arguments import CLLM4RecTrainingArguments
from .schedule import ScheduleBatchSampler
from .trainer import CLLM4RecTrainer

__all__ = ["CLLM4RecTrainingArguments", "CLLM4RecTrainer", "ScheduleBatchSampler"]
