"""Training arguments of CLLM4Rec: what both stages share, and what only pretraining or only fine-tuning takes."""

import inspect
import math
from dataclasses import MISSING, dataclass, field

from torch.optim.lr_scheduler import ReduceLROnPlateau
from transformers import TrainingArguments

from ..data.documents import CONTENT_DOCUMENT_KINDS
from ..modeling_cllm4rec import COLLABORATIVE_TARGETS, check_collaborative_targets
from ..serving.recommender import MAX_HISTORY_PERMUTATIONS
from .backbone import BACKBONE_TRAINING
from .optimization import ID_EMBEDDINGS_OPTIMIZERS
from .schedule import ALTERNATIONS

# How an epoch's documents are dealt into steps: at random (the paper) or grouped by length.
SAMPLING_STRATEGIES = ("random", "group_by_length")
# The items the training softmax over items normalizes over.
ITEM_SOFTMAX = ("all", "interacted")
# Learning-rate schedules whose length is the whole of num_train_epochs: early stopping would cut their decay short.
DECAYS_OVER_ALL_STEPS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
# Evaluations without improvement after which `ReduceLROnPlateau` lowers the rate, unless its kwargs say otherwise.
PLATEAU_PATIENCE = inspect.signature(ReduceLROnPlateau).parameters["patience"].default
# Options of `TrainingArguments` that CLLM4Rec's training has no use for, refused when set rather than ignored: the
# losses are the models' own, evaluation ranks all items per user (`CLLM4RecTrainer.split_metrics`) instead of running
# the Trainer's prediction loop, and the round schedule and collator build every batch.
UNUSED_TRAINER_OPTIONS = {
    "label_smoothing_factor": "the item and word losses are the models' own",
    "neftune_noise_alpha": "the user and item positions take ID embeddings, not the backbone's word embeddings",
    "use_liger_kernel": "the losses are the models' own",
    "use_cache": "training does not decode",
    "prediction_loss_only": "evaluation ranks all items per user, not through the prediction loop",
    "eval_do_concat_batches": "evaluation ranks all items per user, not through the prediction loop",
    "eval_use_gather_object": "evaluation ranks all items per user, not through the prediction loop",
    "eval_accumulation_steps": "evaluation ranks all items per user, not through the prediction loop",
    "include_for_metrics": "evaluation ranks all items per user, not through the prediction loop",
    "batch_eval_metrics": "evaluation ranks all items per user, not through the prediction loop",
    "bf16_full_eval": "evaluation runs in the training's mixed precision",
    "fp16_full_eval": "evaluation runs in the training's mixed precision",
    "label_names": "the CLLM4Rec collator names the labels",
    "length_column_name": "documents are grouped by their token counts (train_sampling_strategy='group_by_length')",
    "dataloader_drop_last": "the round schedule deals every document into a step",
    "auto_find_batch_size": "the round schedule is built for per_device_train_batch_size",
}
# The optimizers of `TrainingArguments.optim` that read `optim_target_modules`, by the start of their names.
LOW_RANK_OPTIMIZERS = ("galore", "apollo")


@dataclass
class CLLM4RecTrainingArguments(TrainingArguments):
    r"""
    [`TrainingArguments`] with the options both stages of CLLM4Rec share; train with [`PretrainingArguments`] or
    [`FineTuningArguments`]. Every epoch is a round of the paper's alternation: in pretraining one collaborative and
    one content epoch, in fine-tuning one masked-history and one content epoch, so `eval_strategy="epoch"`,
    `save_strategy="epoch"`, `load_best_model_at_end` and early stopping act on rounds. `output_dir` is required.

    Schedule:
        alternation: `"epoch"` (the paper) or `"batch"` granularity of the alternation between document types.
        content_documents: which content documents to build: `"user_item"`, `"item"` or both, comma-separated.
        content_steps: whether content epochs are interleaved (the paper does); without them a round is an epoch of
            ID documents alone.
        train_sampling_strategy: `"random"` (default) or `"group_by_length"` (documents of similar length share a
            step, drawn from windows of a random permutation: faster, at some cost in quality).
        max_length: longest document in tokens; longer histories lose items, longer texts their end.

    What trains:
        backbone_training: `"frozen"` (the paper: only the user and item embeddings), `"full"` or `"lora"`.
        lora_rank / lora_alpha / lora_dropout / lora_target_modules: the LoRA adapters of `backbone_training="lora"`,
            merged into the backbone's weights when training ends (checkpoints in between hold them apart).
        id_embeddings_optimizer: `"adamw"` (every row of the ID tables moves through AdamW at every step) or
            `"sparse_adamw"` (the tables that receive gradients by lookup alone update only the rows the step
            touched, weight decay included; one process only). The item head stays under dense AdamW.
        weight_average_decay: keep an exponential moving average of the trainable weights with this decay per
            optimizer step (e.g. 0.999); evaluation, checkpoints and the final model use the average. Off (the paper)
            by default.

    Objective:
        item_softmax: the items the softmax of the item losses normalizes over: `"all"` (the paper) or
            `"interacted"` (those with a training interaction: an item without one is never a target, and the
            softmax over all items would rank it below every other item, the item only validation or test hold as
            much as one new to the catalogue).

    Evaluation:
        eval_split: split evaluated by `evaluate()` during training.
        recall_ks / ndcg_ks: cut-offs of the reported Recall@K / NDCG@K.
        history_permutations: random orders of each history whose item probabilities evaluation averages (at most
            64).
        eval_max_tokens: padded prompt tokens per evaluation batch at most.
        early_stopping_patience: stop after this many evaluated rounds without a better validation selection score
            and end with the best round's model; the learning rate must then not decay over `num_train_epochs`.
    """

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
    train_sampling_strategy: str = field(
        default="random",
        metadata={
            "help": "'random' (the paper) or 'group_by_length' (documents of similar length share a step: less "
            "padding, faster, but measured to cost quality: validation Recall@20 0.127 instead of 0.141 after five "
            "collaborative rounds on Amazon-Beauty).",
            "choices": SAMPLING_STRATEGIES,
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Longest document in tokens; defaults to the backbone's context (at most 1024)."},
    )
    backbone_training: str = field(
        default="frozen",
        metadata={
            "help": "What of the backbone trains besides the user and item embeddings: nothing ('frozen', the "
            "paper), every weight ('full') or LoRA adapters ('lora', merged into the backbone when training ends).",
            "choices": BACKBONE_TRAINING,
        },
    )
    lora_rank: int = field(default=8, metadata={"help": "Rank of the LoRA adapters (backbone_training='lora')."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator: the update is alpha / rank."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the input of the LoRA adapters."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Backbone modules that receive LoRA adapters; default: the attention projections of GPT-2 and "
            "Llama-type backbones, peft's choice for other model types."
        },
    )
    id_embeddings_optimizer: str = field(
        default="adamw",
        metadata={
            "help": "'adamw': every row of the ID tables moves through AdamW (momentum, weight decay) at every step; "
            "'sparse_adamw': the tables read by lookup alone (all but the item head) get sparse gradients and "
            "AdamW updates only the rows a step touched (lazy moments and weight decay; one process only).",
            "choices": ID_EMBEDDINGS_OPTIMIZERS,
        },
    )
    weight_average_decay: float | None = field(
        default=None,
        metadata={
            "help": "Decay of an exponential moving average of the trainable weights (e.g. 0.999), which evaluation, "
            "checkpoints and the final model use; off by default, as in the paper."
        },
    )
    item_softmax: str = field(
        default="all",
        metadata={
            "help": "The items the softmax of the item losses normalizes over: 'all' (the paper) or 'interacted' "
            "(those with a training interaction: the others, never a target, are not pushed below every item).",
            "choices": ITEM_SOFTMAX,
        },
    )
    eval_split: str = field(default="validation", metadata={"help": "Split evaluated during training."})
    recall_ks: list[int] = field(default_factory=lambda: [20, 40], metadata={"help": "Cut-offs of Recall@K."})
    ndcg_ks: list[int] = field(default_factory=lambda: [100], metadata={"help": "Cut-offs of NDCG@K."})
    history_permutations: int = field(
        default=1,
        metadata={
            "help": "Random orders of each history whose item probabilities evaluation (validation and test) "
            "averages; 1 reads each history once."
        },
    )
    eval_max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Padded prompt tokens per evaluation batch at most; batches of short prompts then hold up to "
            "per_device_eval_batch_size users, those of long prompts fewer. Default: no token limit."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop once this many evaluated rounds in a row bring no better validation selection score, and "
            "keep the best round (needs eval_strategy and save_strategy 'epoch' and load_best_model_at_end). "
            "Default: every round of num_train_epochs runs."
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
        if self.output_dir is None:
            raise ValueError("output_dir is required: the folder that receives the checkpoints and the trained model.")
        self._check_unused_trainer_options()
        super().__post_init__()
        if self.num_train_epochs != int(self.num_train_epochs) or self.num_train_epochs < 1:
            raise ValueError(
                f"num_train_epochs counts rounds, every epoch being one: a positive whole number, got "
                f"{self.num_train_epochs}."
            )
        if self.alternation not in ALTERNATIONS:
            raise ValueError(f"alternation must be one of {ALTERNATIONS}, got {self.alternation!r}.")
        unknown = set(self.content_document_kinds) - set(CONTENT_DOCUMENT_KINDS)
        if unknown or not self.content_document_kinds:
            raise ValueError(
                f"content_documents must name some of {CONTENT_DOCUMENT_KINDS}, got {self.content_documents!r}."
            )
        if self.item_softmax not in ITEM_SOFTMAX:
            raise ValueError(f"item_softmax must be one of {ITEM_SOFTMAX}, got {self.item_softmax!r}.")
        if self.train_sampling_strategy not in SAMPLING_STRATEGIES:
            raise ValueError(
                f"train_sampling_strategy must be one of {SAMPLING_STRATEGIES}, got {self.train_sampling_strategy!r}."
            )
        # the documents' orders are drawn from it (numpy seeds are non-negative)
        check_whole(**{"seed" if self.data_seed is None else "data_seed": self.data_order_seed}, minimum=0)
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}.")
        if self.backbone_training not in BACKBONE_TRAINING:
            raise ValueError(f"backbone_training must be one of {BACKBONE_TRAINING}, got {self.backbone_training!r}.")
        fields = self.__dataclass_fields__
        lora_set = [name for name, value in self.lora_options.items() if value != fields[name].default]
        if lora_set and self.backbone_training != "lora":
            raise ValueError(
                f"{', '.join(lora_set)} apply to backbone_training='lora', not {self.backbone_training!r}."
            )
        check_whole(lora_rank=self.lora_rank, history_permutations=self.history_permutations)
        if self.history_permutations > MAX_HISTORY_PERMUTATIONS:  # refused before training, not at its evaluation
            raise ValueError(
                f"history_permutations is at most {MAX_HISTORY_PERMUTATIONS}, got {self.history_permutations}."
            )
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a positive number, got {self.lora_alpha}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}.")
        if self.id_embeddings_optimizer not in ID_EMBEDDINGS_OPTIMIZERS:
            raise ValueError(
                f"id_embeddings_optimizer must be one of {ID_EMBEDDINGS_OPTIMIZERS}, got {self.id_embeddings_optimizer!r}."
            )
        if self.weight_average_decay is not None and not 0 < self.weight_average_decay < 1:
            raise ValueError(f"weight_average_decay must lie in (0, 1), got {self.weight_average_decay}.")
        if any(k <= 0 for k in [*self.recall_ks, *self.ndcg_ks]):
            raise ValueError("recall_ks and ndcg_ks must be positive.")
        self._check_metric_for_best_model()
        if self.eval_max_tokens is not None and self.eval_max_tokens <= 0:
            raise ValueError(f"eval_max_tokens must be positive, got {self.eval_max_tokens}.")
        if self.lr_scheduler_type == "reduce_lr_on_plateau":  # it steps on metric_for_best_model, by default a score
            mode = "max" if self.greater_is_better else "min"
            self.lr_scheduler_kwargs = {"mode": mode, **(self.lr_scheduler_kwargs or {})}
        if self.early_stopping_patience is not None:
            self._check_early_stopping()

    def _check_unused_trainer_options(self) -> None:
        defaults = TrainingArguments.__dataclass_fields__
        for name, reason in UNUSED_TRAINER_OPTIONS.items():
            field_ = defaults[name]
            default = field_.default_factory() if field_.default is MISSING else field_.default
            if getattr(self, name) != default:
                raise ValueError(f"{name} does not apply to CLLM4Rec training: {reason}.")
        optimizer = str(getattr(self.optim, "value", self.optim))
        if self.optim_target_modules is not None and not optimizer.startswith(LOW_RANK_OPTIMIZERS):
            raise ValueError(
                f"optim_target_modules names the modules that GaLore and APOLLO optimizers project; optim="
                f"{optimizer!r} reads none."
            )

    def _check_metric_for_best_model(self) -> None:
        metrics = ["selection_score", *(f"recall@{k}" for k in self.recall_ks), *(f"ndcg@{k}" for k in self.ndcg_ks)]
        if self.metric_for_best_model is not None and self.metric_for_best_model.removeprefix("eval_") not in metrics:
            raise ValueError(
                f"metric_for_best_model must be one of the evaluation metrics {metrics}, got "
                f"{self.metric_for_best_model!r}."
            )
        if self.greater_is_better is False:
            raise ValueError("greater_is_better=False: every CLLM4Rec evaluation metric is better when higher.")

    @property
    def data_order_seed(self) -> int:
        """The seed of the documents' random orders and of their dealing into steps: `data_seed`, else `seed`."""
        return self.seed if self.data_seed is None else self.data_seed

    def _check_early_stopping(self) -> None:
        check_whole(early_stopping_patience=self.early_stopping_patience)
        if self.eval_strategy != "epoch" or self.save_strategy != "epoch" or not self.load_best_model_at_end:
            raise ValueError(
                "early_stopping_patience counts evaluated rounds and keeps the best: it needs eval_strategy='epoch', "
                "save_strategy='epoch' and load_best_model_at_end."
            )
        if self.lr_scheduler_type in DECAYS_OVER_ALL_STEPS:
            raise ValueError(
                f"lr_scheduler_type={self.lr_scheduler_type.value!r} decays over num_train_epochs, which early "
                "stopping cuts short: use 'constant' or 'constant_with_warmup' (the weight average anneals over the "
                "steps run), or 'reduce_lr_on_plateau' (decays when validation stalls)."
            )
        if self.lr_scheduler_type != "reduce_lr_on_plateau":
            return
        plateau_patience = self.lr_scheduler_kwargs.get("patience", PLATEAU_PATIENCE)  # a dict since __post_init__
        most = self.early_stopping_patience - 2  # the rate drops after patience + 1 stalled rounds
        if plateau_patience > most:
            smaller = (
                f"a patience of at most {most} (--lr_scheduler_kwargs '{{\"patience\": {most}}}') or "
                if most >= 0
                else ""
            )
            raise ValueError(
                f"reduce_lr_on_plateau lowers the rate after {plateau_patience + 1} rounds without improvement, and "
                f"early stopping ends the run after {self.early_stopping_patience}: no round would train at the lower "
                f"rate. Give it {smaller}a larger early_stopping_patience."
            )

    @property
    def groups_by_length(self) -> bool:
        return self.train_sampling_strategy == "group_by_length"

    @property
    def content_document_kinds(self) -> list[str]:
        return [kind.strip() for kind in self.content_documents.split(",") if kind.strip()]

    @property
    def lora_options(self) -> dict:
        """The LoRA settings, as [`apply_backbone_training`] takes them."""
        return {
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "lora_target_modules": self.lora_target_modules,
        }


@dataclass
class PretrainingArguments(CLLM4RecTrainingArguments):
    r"""
    [`CLLM4RecTrainingArguments`] of pretraining: mutual-regularized collaborative and content language modelling of
    a [`CLLM4RecForCollaborativeLM`].

    Schedule:
        content_warmup_epochs: the first epochs of `num_train_epochs` train content documents only (the paper
            begins with 10 content epochs). Every epoch takes as many steps as a round, so a warm-up epoch goes
            through the content documents more than once; warm-up epochs are not evaluated.

    Objective:
        collaborative_targets: what each position of a collaborative document predicts: `"next_item"` (the paper)
            or `"remaining_items"` (the items from the next to the document's end, each weighted 1 / their number).

    Read-out:
        read_out_prefix_powers: after training, the model keeps the `config.read_out_prefix_power` among these whose
            validation selection score is best (the first of equals); the model must read out `"mean"`.
    """

    content_warmup_epochs: int = field(
        default=0,
        metadata={
            "help": "The first epochs of num_train_epochs train content documents only, each as many steps as a "
            "round (the paper: 10 content epochs); they are not evaluated."
        },
    )

    collaborative_targets: str = field(
        default="next_item",
        metadata={
            "help": "What each position of a collaborative document predicts: 'next_item' (the paper) or "
            "'remaining_items' (the items from the next to the document's end, each weighted 1 / their number: the "
            "rest of a history whose order is random).",
            "choices": COLLABORATIVE_TARGETS,
        },
    )

    read_out_prefix_powers: list[float] | None = field(
        default=None,
        metadata={
            "help": "After training, keep the read_out_prefix_power among these (e.g. 0 1 2 4 8) that scores best on "
            "validation: how much the mean read-out leans on the longer prefixes of the history."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_collaborative_targets(self.collaborative_targets)  # refused before training, not at its first step
        if self.read_out_prefix_powers is not None:
            powers = self.read_out_prefix_powers
            if not powers or any(isinstance(power, bool) or not 0 <= power < math.inf for power in powers):
                raise ValueError(f"read_out_prefix_powers must be finite numbers >= 0, at least one; got {powers}.")
        check_whole(content_warmup_epochs=self.content_warmup_epochs, minimum=0)
        if self.content_warmup_epochs and not self.content_steps:
            raise ValueError("content_warmup_epochs needs content steps: the warm-up trains content documents.")
        if self.content_warmup_epochs >= self.num_train_epochs:
            raise ValueError(
                f"content_warmup_epochs ({self.content_warmup_epochs}) must be fewer than num_train_epochs "
                f"({int(self.num_train_epochs)}), which counts the warm-up epochs and the rounds after them."
            )


@dataclass
class FineTuningArguments(CLLM4RecTrainingArguments):
    r"""
    [`CLLM4RecTrainingArguments`] of recommendation-oriented fine-tuning of a [`CLLM4RecForItemPrediction`].

    Documents:
        mask_ratio: share of a user's training items held out as the targets of a masked-history document (the
            paper: 0.2), drawn anew in every epoch.
    """

    mask_ratio: float = field(
        default=0.2, metadata={"help": "Share of a history held out as the targets of a masked-history document."}
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}.")


def check_whole(minimum: int = 1, **values) -> None:
    """Raises a `ValueError` for a value that is not a whole number of at least `minimum`."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be a whole number of at least {minimum}, got {value!r}.")


__all__ = ["CLLM4RecTrainingArguments", "PretrainingArguments", "FineTuningArguments", "SAMPLING_STRATEGIES"]
