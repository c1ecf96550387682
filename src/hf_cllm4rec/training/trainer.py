"""The CLLM4Rec trainer: mutual-regularized pretraining and recommendation-oriented fine-tuning."""

import math
import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.collators import CLLM4RecDataCollator
from ..data.documents import CollaborativeDocuments, ContentDocuments, RecommendationDocuments, ScheduledDocuments
from ..data.prepared import RecommendationData
from ..evaluation import check_model_fits_data, default_max_length, evaluate_model, scoring_view
from ..modeling_cllm4rec import CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction
from ..tokenization_cllm4rec import CLLM4RecTokenizer
from .arguments import CLLM4RecTrainingArguments
from .schedule import ScheduleBatchSampler
from .weight_averaging import WeightAverage

# The splits whose items are held out from the prompts (training items are excluded from every ranking).
EVALUATION_SPLITS = ("validation", "test")
# Loss components logged separately, keyed by the batch's document type and the output field.
LOSS_COMPONENTS = {
    "collaborative_lm_loss": ("collaborative", "lm_loss"),
    "collaborative_regularization_loss": ("collaborative", "regularization_loss"),
    "content_lm_loss": ("content", "lm_loss"),
    "content_regularization_loss": ("content", "regularization_loss"),
    "recommendation_loss": ("recommendation", "recommendation_loss"),
    "recommendation_regularization_loss": ("recommendation", "regularization_loss"),
}


class CLLM4RecTrainer(Trainer):
    """
    [`Trainer`] for CLLM4Rec, built from a prepared data set instead of a `train_dataset`.

    With a [`CLLM4RecForCollaborativeLM`] it pretrains: `content_warmup_epochs` content epochs, then
    `num_train_epochs` rounds of a collaborative and a content epoch. With a [`CLLM4RecForItemPrediction`] it
    fine-tunes: rounds of a masked-history epoch and (with `content_steps`) a content epoch. Each step carries the
    mutual regularization toward the other side's embeddings. `evaluate()` ranks all items for the users of
    `args.eval_split` with the paper's protocol and reports Recall@K, NDCG@K and their `selection_score`. With
    `args.weight_average_decay`, evaluation, checkpoints and the final model use the averaged weights.

    Args:
        model: a CLLM4Rec model whose user and item counts match `data`.
        args: [`CLLM4RecTrainingArguments`].
        data: the prepared [`RecommendationData`].
        processing_class: the model's [`CLLM4RecTokenizer`], saved with every checkpoint.
    """

    def __init__(
        self,
        model: CLLM4RecForCollaborativeLM | CLLM4RecForItemPrediction,
        args: CLLM4RecTrainingArguments,
        data: RecommendationData,
        processing_class: CLLM4RecTokenizer,
        **kwargs,
    ):
        if not isinstance(args, CLLM4RecTrainingArguments):
            raise TypeError("CLLM4RecTrainer needs CLLM4RecTrainingArguments.")
        model.config.validate_values()  # a config edited after construction (lambda_v, mask_ratio) is checked here
        check_model_fits_data(model, data)
        self.data = data
        self.max_length = args.max_length or default_max_length(model.config)
        sources, rounds = build_schedule(model, data, processing_class, args, self.max_length)
        # an optimizer step takes one batch per accumulation step on every process
        self.micro_batches_per_step = micro_batches_per_step = args.gradient_accumulation_steps * args.world_size
        self.schedule = ScheduleBatchSampler(
            [len(source) for source in sources],
            rounds,
            args.per_device_train_batch_size,
            args.alternation,
            args.seed,
            micro_batches_per_step=micro_batches_per_step,
            lengths=[source.document_lengths() for source in sources] if args.groups_by_length else None,
        )
        self._check_eval_split(args)
        super().__init__(
            model=model,
            args=args,
            train_dataset=ScheduledDocuments(sources),
            eval_dataset=args.eval_split,
            data_collator=CLLM4RecDataCollator(processing_class.pad_token_id),
            processing_class=processing_class,
            **kwargs,
        )
        # the models divide summed losses by the targets of the whole accumulated, all-process batch
        self.model_accepts_loss_kwargs = True
        self._component_sums = torch.zeros(2, len(LOSS_COMPONENTS), dtype=torch.float64)
        self.round_end = RoundEndCallback(self.schedule.round_lengths(), micro_batches_per_step)
        self.add_callback(self.round_end)
        self.weight_average = None
        if args.weight_average_decay is not None:
            if self.is_fsdp_enabled or self.is_deepspeed_enabled:
                raise ValueError("weight_average_decay needs unsharded weights: train on one process or with DDP.")
            self.weight_average = WeightAverage(args.weight_average_decay)
            self.add_callback(self.weight_average)

    def predict(self, test_dataset=None, ignore_keys=None, metric_key_prefix: str = "test"):
        raise NotImplementedError(
            "CLLM4RecTrainer ranks items for users rather than predicting labels of a dataset: use "
            "`trainer.evaluate(eval_dataset='test', metric_key_prefix='test')` for a split's metrics, and "
            "`model.recommend(...)` or `cllm4rec recommend --all-users` for the recommendations."
        )

    def _check_eval_split(self, args: CLLM4RecTrainingArguments) -> None:
        if args.eval_strategy != "no":
            self._check_split(args.eval_split, "Use another eval_split or eval_strategy='no'.")

    def _check_split(self, split, remedy: str = "") -> None:
        if not isinstance(split, str) or split not in EVALUATION_SPLITS:
            raise ValueError(
                f"CLLM4Rec evaluates a held-out split of its data set, one of {EVALUATION_SPLITS}; got {split!r}."
            )
        if self.data.tables[split].num_rows == 0:
            message = f"The {split!r} split has no held-out items: evaluation would measure nothing."
            raise ValueError(f"{message} {remedy}" if remedy else message)

    def get_train_dataloader(self) -> DataLoader:
        dataloader = DataLoader(
            self.train_dataset,
            batch_sampler=self.schedule,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and torch.accelerator.is_available(),
            persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0,
        )
        return self.accelerator.prepare(dataloader)

    def set_initial_training_values(self, args, dataloader):
        """The whole schedule (all rounds) is one pass over the dataloader: one Trainer epoch."""
        values = super().set_initial_training_values(args, dataloader)
        if args.max_steps > 0:
            return values
        _, steps_per_pass, num_examples, _, total_batch_size, steps_in_epoch, _ = values
        return 1, steps_per_pass, num_examples, num_examples, total_batch_size, steps_in_epoch, steps_per_pass

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        document_type = inputs["document_type"]
        for column, (component_type, field) in enumerate(LOSS_COMPONENTS.values()):
            if component_type == document_type and outputs.get(field) is not None:
                # summed on the device: reading a loss value back every step would stall the GPU
                self._component_sums = self._component_sums.to(loss.device)
                self._component_sums[0, column] += outputs[field].detach().double()
                self._component_sums[1, column] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: every process is here, so the components can be reduced
            # each micro-batch holds its share of its step's loss: sum the shares, divide by the steps they fill
            sums = self.accelerator.reduce(self._component_sums.to(self.args.device), reduction="sum").cpu()
            for column, name in enumerate(LOSS_COMPONENTS):
                if sums[1, column] > 0:
                    logs[name] = round(float(sums[0, column] * self.micro_batches_per_step / sums[1, column]), 4)
            self._component_sums.zero_()
        # here, not in a callback's `on_log`: callbacks see the logs after they are stored and printed
        logs["round"] = self.round_end.current_round(self.state.global_step)
        super().log(logs, start_time)

    def averaged_weights(self):
        """A context in which the model holds the averaged weights (without weight averaging: as it is)."""
        return self.weight_average.applied(self.model) if self.weight_average else nullcontext()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with self.averaged_weights():
            super().save_model(output_dir, _internal_call)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.weight_average is not None and self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self.weight_average.save_training_weights(self.model, folder)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.weight_average is not None:
            self.weight_average.resume(model or self.model, resume_from_checkpoint)

    def push_to_hub(self, commit_message: str | None = "End of training", token: str | None = None, **kwargs):
        """Uploads what `hub.save_for_hub` writes: weights, code files, tokenizer, id mappings and the model card."""
        from ..hub import push_to_hub

        repo_id = self.args.hub_model_id or Path(self.args.output_dir).name
        return push_to_hub(
            self.model,
            self.processing_class,
            repo_id,
            token=token or self.args.hub_token,
            private=self.args.hub_private_repo,
            commit_message=commit_message or "Upload CLLM4Rec model",
            data=self.data,
            training_args=self.args,
        )

    def _issue_warnings_after_load(self, load_result) -> None:
        # tied weights (the backbone's LM head) are stored once, so they are "missing" from every checkpoint
        tied = set(getattr(self.model, "all_tied_weights_keys", None) or {})
        load_result.missing_keys[:] = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """
        Ranks all items for the users of a split (`eval_dataset` names it; default `args.eval_split`), with the
        averaged weights where they are kept, in the training's mixed precision.
        """
        split = self.args.eval_split if eval_dataset is None else eval_dataset
        self._check_split(split)
        with self.averaged_weights(), self.accelerator.autocast(), scoring_view(self.model) as (model, lockstep):
            metrics = evaluate_model(
                model,
                self.processing_class,
                self.data,
                split,
                batch_size=self.args.per_device_eval_batch_size,
                max_tokens=self.args.eval_max_tokens,
                max_length=self.max_length,
                recall_ks=self.args.recall_ks,
                ndcg_ks=self.args.ndcg_ks,
                disable_tqdm=self.args.disable_tqdm or not self.is_local_process_zero(),
                distributed=self.accelerator.num_processes > 1,
                # DeepSpeed ZeRO-3 gathers each layer's parameters in its forward pass, on all processes together
                lockstep=lockstep or self.is_deepspeed_enabled,
            )
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class RoundEndCallback(TrainerCallback):
    """
    Evaluates and saves at the end of every round when the strategy is `"epoch"`; `current_round` numbers the rounds.

    `round_lengths` counts the batches of each round, on all processes together, `micro_batches_per_step` to an
    optimizer step (gradient accumulation steps x processes), as [`ScheduleBatchSampler`] lays them out.
    """

    def __init__(self, round_lengths: list[int], micro_batches_per_step: int):
        ends = np.cumsum(round_lengths)
        self.round_end_steps = [math.ceil(end / micro_batches_per_step) for end in ends]

    def current_round(self, global_step: int) -> int:
        return int(np.searchsorted(self.round_end_steps, global_step, side="left"))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.round_end_steps:
            control.should_evaluate = control.should_evaluate or args.eval_strategy == "epoch"
            control.should_save = control.should_save or args.save_strategy == "epoch"
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        # the schedule is one Trainer epoch; its last round already triggered evaluation and saving
        control.should_evaluate = control.should_evaluate and args.eval_strategy != "epoch"
        control.should_save = control.should_save and args.save_strategy != "epoch"
        return control


def build_schedule(model, data, tokenizer, args, max_length: int):
    """The document sources and the rounds of the schedule for pretraining or fine-tuning."""
    histories = data.histories("train")
    content = lambda: ContentDocuments(data, tokenizer, max_length, args.content_document_kinds)  # noqa: E731
    rounds = int(args.num_train_epochs)
    if isinstance(model, CLLM4RecForCollaborativeLM):
        collaborative = CollaborativeDocuments(histories, tokenizer, max_length, seed=args.seed)
        if not args.content_steps:
            return [collaborative], [(0,)] * rounds
        # the whole warm-up is one round, so it is evaluated (and saved) once, at its end
        warmup = [(1,) * args.content_warmup_epochs] if args.content_warmup_epochs else []
        return [collaborative, content()], warmup + [(0, 1)] * rounds
    if isinstance(model, CLLM4RecForItemPrediction):
        documents = RecommendationDocuments(histories, tokenizer, model.config.mask_ratio, max_length, seed=args.seed)
        if not args.content_steps:
            return [documents], [(0,)] * rounds
        return [documents, content()], [(0, 1)] * rounds
    raise TypeError(f"CLLM4RecTrainer trains CLLM4Rec models, got {type(model).__name__}.")


__all__ = ["CLLM4RecTrainer", "RoundEndCallback", "LOSS_COMPONENTS"]
