"""Training arguments of CLLM4Rec pretraining and fine-tuning."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..data.documents import CONTENT_DOCUMENT_KINDS
from .schedule import ALTERNATIONS

# How an epoch's documents are dealt into steps: at random (the paper) or grouped by length.
SAMPLING_STRATEGIES = ("random", "group_by_length")


@dataclass
class CLLM4RecTrainingArguments(TrainingArguments):
    r"""
    [`TrainingArguments`] with CLLM4Rec's schedule. `num_train_epochs` counts rounds: in pretraining a round is one
    collaborative and one content epoch, in fine-tuning one masked-history epoch and one content epoch (the
    paper's alternation). Evaluation and saving with the `"epoch"` strategy happen at the end of every round.

    Schedule:
        content_warmup_epochs: content-only epochs before the first pretraining round (the paper: 10).
        alternation: `"epoch"` (the paper) or `"batch"` granularity of the alternation between document types.
        content_documents: which content documents to build: `"user_item"`, `"item"` or both, comma-separated.
        content_steps: whether content epochs are interleaved (the paper does); without them pretraining is
            collaborative only (no warm-up) and fine-tuning masked-history only.

    Documents and evaluation:
        max_length: longest document in tokens; longer histories lose items, longer texts their end.
        recall_ks / ndcg_ks: cut-offs of the reported Recall@K / NDCG@K.
        eval_split: split evaluated by `evaluate()` during training.
        train_sampling_strategy: `"random"` (default) or `"group_by_length"` (documents of similar length share a
            step, drawn from windows of a random permutation: faster, at some cost in quality).

    Weights:
        weight_average_decay: keep an exponential moving average of the trainable weights with this decay per
            optimizer step (e.g. 0.999); evaluation, checkpoints and the final model use the average. Off (the paper)
            by default.
    """

    content_warmup_epochs: int = field(
        default=10, metadata={"help": "Content-only epochs before the first pretraining round (the paper uses 10)."}
    )
    alternation: str = field(
        default="epoch",
        metadata={"help": "Alternate document types every epoch (the paper) or every batch.", "choices": ALTERNATIONS},
    )
    content_documents: str = field(
        default="user_item",
        metadata={
            "help": "Content documents: 'user_item' (review, or item text, per training pair), 'item' (item text "
            "per item), or 'user_item,item'."
        },
    )
    content_steps: bool = field(
        default=True, metadata={"help": "Interleave content epochs, as the paper does (off: ID documents only)."}
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Longest document in tokens; defaults to the backbone's context (at most 1024)."},
    )
    recall_ks: list[int] = field(default_factory=lambda: [20, 40], metadata={"help": "Cut-offs of Recall@K."})
    ndcg_ks: list[int] = field(default_factory=lambda: [100], metadata={"help": "Cut-offs of NDCG@K."})
    eval_split: str = field(default="validation", metadata={"help": "Split evaluated during training."})
    eval_max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Padded prompt tokens per evaluation batch at most; batches of short prompts then hold up to "
            "per_device_eval_batch_size users, those of long prompts fewer. Default: no token limit."
        },
    )
    train_sampling_strategy: str = field(
        default="random",
        metadata={
            "help": "'random' (the paper) or 'group_by_length' (documents of similar length share a step: less "
            "padding, faster, but measured to cost quality: validation Recall@20 0.127 instead of 0.141 after five "
            "collaborative rounds on Amazon-Beauty).",
            "choices": SAMPLING_STRATEGIES,
        },
    )
    weight_average_decay: float | None = field(
        default=None,
        metadata={
            "help": "Decay of an exponential moving average of the trainable weights (e.g. 0.999), which evaluation, "
            "checkpoints and the final model use; off by default, as in the paper."
        },
    )
    metric_for_best_model: str | None = field(
        default="selection_score",
        metadata={"help": "The paper's model selection: Recall@20 + Recall@40 + NDCG@100 on validation."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Batches are built by the CLLM4Rec collator; keep every column."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=True,
        metadata={"help": "Document types use different embedding tables, so some parameters get no gradient."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.content_warmup_epochs < 0:
            raise ValueError(f"content_warmup_epochs must be >= 0, got {self.content_warmup_epochs}.")
        if self.alternation not in ALTERNATIONS:
            raise ValueError(f"alternation must be one of {ALTERNATIONS}, got {self.alternation!r}.")
        unknown = set(self.content_document_kinds) - set(CONTENT_DOCUMENT_KINDS)
        if unknown or not self.content_document_kinds:
            raise ValueError(
                f"content_documents must name some of {CONTENT_DOCUMENT_KINDS}, got {self.content_documents!r}."
            )
        if self.train_sampling_strategy not in SAMPLING_STRATEGIES:
            raise ValueError(
                f"train_sampling_strategy must be one of {SAMPLING_STRATEGIES}, got {self.train_sampling_strategy!r}."
            )
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}.")
        if self.eval_max_tokens is not None and self.eval_max_tokens <= 0:
            raise ValueError(f"eval_max_tokens must be positive, got {self.eval_max_tokens}.")
        if any(k <= 0 for k in [*self.recall_ks, *self.ndcg_ks]):
            raise ValueError("recall_ks and ndcg_ks must be positive.")
        if self.weight_average_decay is not None and not 0 < self.weight_average_decay < 1:
            raise ValueError(f"weight_average_decay must lie in (0, 1), got {self.weight_average_decay}.")
        if self.num_train_epochs != int(self.num_train_epochs) or self.num_train_epochs < 0:
            raise ValueError(
                f"num_train_epochs counts rounds and must be a whole number, got {self.num_train_epochs}."
            )

    @property
    def groups_by_length(self) -> bool:
        return self.train_sampling_strategy == "group_by_length"

    @property
    def content_document_kinds(self) -> list[str]:
        return [kind.strip() for kind in self.content_documents.split(",") if kind.strip()]


__all__ = ["CLLM4RecTrainingArguments"]
