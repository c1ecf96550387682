"""The CLLM4Rec trainer: mutual-regularized pretraining and recommendation-oriented fine-tuning."""

import json
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from ..configuration_cllm4rec import CLLM4RecConfig
from ..data.collators import CLLM4RecDataCollator
from ..data.documents import CollaborativeDocuments, ContentDocuments, RecommendationDocuments, ScheduledDocuments
from ..data.prepared import RecommendationData
from ..evaluation import check_model_fits_data, check_split, default_max_length, evaluate_model, scoring_view
from ..modeling_cllm4rec import LORA_ADAPTERS_NAME, CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction
from ..tokenization_cllm4rec import CLLM4RecTokenizer
from .arguments import CLLM4RecTrainingArguments, FineTuningArguments, PretrainingArguments
from .backbone import apply_backbone_training
from .optimization import clip_grad_norm, id_tables_optimizer
from .schedule import ScheduleBatchSampler
from .weight_averaging import TRAINING_WEIGHTS_NAME, WeightAverage

# Loss components logged separately, keyed by the batch's document type and the output field.
LOSS_COMPONENTS = {
    "collaborative_lm_loss": ("collaborative", "lm_loss"),
    "collaborative_regularization_loss": ("collaborative", "regularization_loss"),
    "content_lm_loss": ("content", "lm_loss"),
    "content_regularization_loss": ("content", "regularization_loss"),
    "recommendation_loss": ("recommendation", "recommendation_loss"),
    "recommendation_regularization_loss": ("recommendation", "regularization_loss"),
}
# The training arguments of each stage, by the model class it trains.
STAGE_ARGUMENTS = {CLLM4RecForCollaborativeLM: PretrainingArguments, CLLM4RecForItemPrediction: FineTuningArguments}


class CLLM4RecTrainer(Trainer):
    """
    [`Trainer`] for CLLM4Rec, built from a prepared data set instead of a `train_dataset`.

    With a [`CLLM4RecForCollaborativeLM`] and [`PretrainingArguments`] it pretrains: after `content_warmup_epochs`
    epochs of content documents, every epoch is a round of a collaborative and a content epoch. With a
    [`CLLM4RecForItemPrediction`] and [`FineTuningArguments`] it fine-tunes: every epoch is a round of a
    masked-history epoch and (with `content_steps`) a content epoch. Each step carries the mutual regularization
    toward the other side's embeddings. `evaluate()` ranks all items for the users of `args.eval_split` with the
    paper's protocol and reports Recall@K, NDCG@K and their `selection_score`. `train()` also logs
    `total_train_runtime`, the seconds of training over every attempt of a resumed run ([`TrainingClock`]), and
    `train_runtime_before_resume`, those of the attempts before the last.

    The trainer sets what trains (`args.backbone_training`): LoRA adapters live through training and its
    checkpoints, and are merged into the backbone when `train()` ends. With `args.weight_average_decay`, evaluation,
    checkpoints and the final model use the averaged weights.

    Args:
        model: a CLLM4Rec model whose user and item counts match `data`.
        args: [`PretrainingArguments`] or [`FineTuningArguments`], as the model's stage.
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
        check_stage(model, args)
        model.config.validate_values()  # a config edited after construction (lambda_v, a prompt) is checked here
        check_model_fits_data(model, data)
        self.data = data
        self.softmax_items = items_in_softmax(data, args.item_softmax)
        processing_class.checked_max_length(args.max_length)  # a document length beyond the context fails up front
        self.max_length = args.max_length or default_max_length(model.config)
        self.lora_adapters = apply_backbone_training(model, args.backbone_training, **args.lora_options)
        sources = document_sources(model, data, processing_class, args, self.max_length)
        # an optimizer step takes one batch per accumulation step on every process
        self.micro_batches_per_step = micro_batches_per_step = args.gradient_accumulation_steps * args.world_size
        warmup_epochs = getattr(args, "content_warmup_epochs", 0)
        self.schedule = ScheduleBatchSampler(
            [len(source) for source in sources],
            range(len(sources)),
            args.per_device_train_batch_size,
            args.alternation,
            args.data_order_seed,
            micro_batches_per_step=micro_batches_per_step,
            lengths=[source.document_lengths() for source in sources] if args.groups_by_length else None,
            warmup_epochs=warmup_epochs,
            warmup_source=1 if warmup_epochs else None,
        )
        warmup_steps = warmup_epochs * self.schedule.steps_per_epoch
        if 0 < args.max_steps <= warmup_steps:
            raise ValueError(
                f"max_steps={args.max_steps} ends within the content warm-up ({warmup_epochs} epochs of "
                f"{self.schedule.steps_per_epoch} steps): no step would train the ID documents."
            )
        self._check_eval_split(args)
        if getattr(args, "read_out_prefix_powers", None):
            if model.config.read_out != "mean":
                raise ValueError(
                    "read_out_prefix_powers weighs the positions of the mean read-out, but the model reads out "
                    f"{model.config.read_out!r}: give it read_out='mean'."
                )
            check_split(self.data, "validation", "read_out_prefix_powers are chosen on it.")
        super().__init__(
            model=model,
            args=args,
            train_dataset=ScheduledDocuments(sources, self.schedule),
            eval_dataset=args.eval_split,
            data_collator=CLLM4RecDataCollator(processing_class.pad_token_id),
            processing_class=processing_class,
            **kwargs,
        )
        # the models divide summed losses by the targets of the whole accumulated, all-process batch
        self.model_accepts_loss_kwargs = True
        self._component_sums = torch.zeros(2, len(LOSS_COMPONENTS), dtype=torch.float64)
        if warmup_epochs:
            self.add_callback(UnevaluatedWarmup(warmup_epochs))
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        if sharded and (self.lora_adapters is not None or args.weight_average_decay is not None):
            raise ValueError(
                "backbone_training='lora' (merged into the backbone at the end) and weight_average_decay need "
                "unsharded weights: train on one process or with DDP."
            )
        self.weight_average = None
        if args.weight_average_decay is not None:
            self.weight_average = WeightAverage(args.weight_average_decay)
            self.add_callback(self.weight_average)
        if args.early_stopping_patience is not None:  # evaluations are rounds: the patience counts rounds
            self.add_callback(ValidationEarlyStopping(args.early_stopping_patience))
        self.add_callback(TrainingClock())

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """
        [`Trainer.train`], resuming only from a complete checkpoint (`True`, or `"true"` as the command line gives
        it: the last complete one in `output_dir`); a run that does not resume needs an `output_dir` without
        checkpoints, whose rotation and resumption it would mix with its own. LoRA adapters are merged into the
        backbone's weights when training ends. A run resumed from the checkpoint at which early stopping ended it
        trains no further step: it ends there as it did then (the best round loaded, the read-out power chosen).
        """
        if not resume_from_checkpoint:
            check_no_checkpoints(self.args.output_dir)
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() == "true":
            resume_from_checkpoint = resume_from_checkpoint if os.path.exists(resume_from_checkpoint) else True
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}.")
        elif resume_from_checkpoint:
            check_complete_checkpoint(resume_from_checkpoint)
        if resume_from_checkpoint:
            self._check_checkpoint_fits(resume_from_checkpoint)
        if self.weight_average is not None:  # the average continues from the checkpoint's when training begins
            self.weight_average.resume_from = resume_from_checkpoint or None
        self.clock.seconds_before = 0.0
        if resume_from_checkpoint:
            self._restore_callback_states(resume_from_checkpoint)
        stopped = resume_from_checkpoint and self._stopped_early()
        with self.ending_at(resume_from_checkpoint) if stopped else nullcontext():
            output = super().train(resume_from_checkpoint or None, trial, ignore_keys_for_eval, **kwargs)
        output.metrics["total_train_runtime"] = self.clock.seconds()
        self.log(
            {
                "total_train_runtime": output.metrics["total_train_runtime"],
                "train_runtime_before_resume": self.clock.seconds_before,
            }
        )
        if self.lora_adapters is not None:
            self.lora_adapters.merge_and_unload()
            self.lora_adapters = None
        if getattr(self.args, "read_out_prefix_powers", None):
            self.choose_read_out_prefix_power(self.args.read_out_prefix_powers)
        return output

    @property
    def clock(self) -> "TrainingClock":
        # looked up each time: `restore_callback_states_from_checkpoint` replaces the callback with a restored copy
        return next(callback for callback in self.callback_handler.callbacks if isinstance(callback, TrainingClock))

    def _restore_callback_states(self, folder: str) -> None:
        """
        Early stopping continues counting the rounds without improvement where the checkpoint left it (the patience
        stays the one of `args`), so a resumed run stops where the uninterrupted run would have; the clock counts on
        from the checkpoint's training seconds.
        """
        state = TrainerState.load_from_json(os.path.join(folder, TRAINER_STATE_NAME))
        callback = self.early_stopping
        if callback is not None:
            saved = saved_callback_attributes(state, ValidationEarlyStopping)
            callback.early_stopping_patience_counter = saved.get("early_stopping_patience_counter", 0)
        self.clock.seconds_before = saved_callback_attributes(state, TrainingClock).get("seconds_before", 0.0)

    @contextmanager
    def ending_at(self, checkpoint: str | os.PathLike):
        """
        Within the block, training resumed from `checkpoint` ends there without a step (the best round loaded, the
        read-out power chosen): the Trainer's budget of steps is the checkpoint's.
        """
        planned_steps = self.args.max_steps
        self.args.max_steps = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME)).global_step
        try:
            yield
        finally:
            self.args.max_steps = planned_steps

    @property
    def early_stopping(self) -> "ValidationEarlyStopping | None":
        return next((c for c in self.callback_handler.callbacks if isinstance(c, ValidationEarlyStopping)), None)

    def _stopped_early(self) -> bool:
        """Whether early stopping, as restored from a checkpoint, had run out of patience: the run ended there."""
        callback = self.early_stopping
        return callback is not None and callback.early_stopping_patience_counter >= callback.early_stopping_patience

    def choose_read_out_prefix_power(self, powers, log_history: list[dict] | None = None) -> float:
        """
        Sets the model's `config.read_out_prefix_power` to the one of `powers` whose validation selection score is
        best (the first of equals), logging each power's score; returns it. Given the `log_history` of a run that
        tried the same powers on this model, it takes the scores logged there instead of validating again.
        """
        scores = read_out_prefix_power_scores(log_history or [])
        if set(scores) != set(powers):
            scores = {}
            for power in powers:
                self.model.config.read_out_prefix_power = power
                scores[power] = self.split_metrics("validation")["selection_score"]
                self.log({"read_out_prefix_power": power, "read_out_selection_score": scores[power]})
        self.model.config.read_out_prefix_power = best = max(scores, key=scores.get)
        return best

    def predict(self, test_dataset=None, ignore_keys=None, metric_key_prefix: str = "test"):
        raise NotImplementedError(
            "CLLM4RecTrainer ranks items for users rather than predicting labels of a dataset: use "
            "`trainer.evaluate(eval_dataset='test', metric_key_prefix='test')` for a split's metrics, and "
            "`model.recommend(...)` or `cllm4rec recommend --all-users` for the recommendations."
        )

    def _check_eval_split(self, args: CLLM4RecTrainingArguments) -> None:
        if args.eval_strategy != "no":
            check_split(self.data, args.eval_split, "Use another eval_split or eval_strategy='no'.")

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, updating only the ID tables' touched rows with `id_embeddings_optimizer`."""
        self.optimizer = id_tables_optimizer(
            self.model if model is None else model, self.args, super().create_optimizer(model)
        )
        return self.optimizer

    def _clip_grad_norm(self, model):
        if self.args.id_embeddings_optimizer == "sparse_adamw":  # sparse gradients, which clip_grad_norm_ refuses
            return clip_grad_norm(model.parameters(), self.args.max_grad_norm)
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None and self.args.id_embeddings_optimizer == "sparse_adamw":
            grad_norm = clip_grad_norm(model.parameters(), float("inf"))
        return super()._get_grad_norm(model, grad_norm)

    def get_train_dataloader(self) -> DataLoader:
        # The loader draws a seed at every epoch: from a generator of its own, seeded by one draw of the global one,
        # so that dropout, which draws from the global generator, does not depend on how many epochs have begun
        generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        dataloader = DataLoader(
            self.train_dataset,
            batch_sampler=self.schedule,
            generator=generator,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and torch.accelerator.is_available(),
            persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor,
            multiprocessing_context=self.args.dataloader_multiprocessing_context,
            in_order=self.args.dataloader_in_order,
        )
        return self.accelerator.prepare(dataloader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        document_type = inputs["document_type"]
        if document_type == "collaborative":
            inputs = {**inputs, "collaborative_targets": self.args.collaborative_targets}
        if document_type != "content" and self.softmax_items is not None:
            self.softmax_items = self.softmax_items.to(inputs["input_ids"].device)  # copied once, then kept there
            inputs = {**inputs, "softmax_items": self.softmax_items}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
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
        super().log(logs, start_time)

    def averaged_weights(self):
        """A context in which the model holds the averaged weights (without weight averaging: as it is)."""
        return self.weight_average.applied(self.model) if self.weight_average else nullcontext()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Saves the model (the averaged weights where they are kept), with the settings of its LoRA adapters."""
        with self.averaged_weights():
            super().save_model(output_dir, _internal_call)
        if self.lora_adapters is not None and self.args.should_save:  # what `from_pretrained` folds them in by
            lora_config = self.lora_adapters.peft_config["default"]
            settings = {"r": lora_config.r, "lora_alpha": lora_config.lora_alpha, "use_rslora": lora_config.use_rslora}
            (Path(output_dir or self.args.output_dir) / LORA_ADAPTERS_NAME).write_text(json.dumps(settings))

    def _save_checkpoint(self, model, trial) -> None:
        if self.weight_average is not None and self.args.should_save:
            # before the Trainer's state, which marks the checkpoint complete
            folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            self.weight_average.save_training_weights(self.model, folder)
        super()._save_checkpoint(model, trial)

    def _check_checkpoint_fits(self, folder: str) -> None:
        """Raises a `ValueError` for a checkpoint of another data set or of another setup of this run."""
        stored = CLLM4RecConfig.get_config_dict(folder)[0]
        config = self.model.config
        if (stored.get("num_users"), stored.get("num_items")) != (config.num_users, config.num_items):
            raise ValueError(
                f"The checkpoint {folder} has {stored.get('num_users')} users and {stored.get('num_items')} items, "
                f"but the data set {self.data.name!r} has {config.num_users} and {config.num_items}: it is the "
                "checkpoint of a run on another data set."
            )
        has_lora = (Path(folder) / LORA_ADAPTERS_NAME).is_file()
        if has_lora != (self.lora_adapters is not None):
            raise ValueError(
                f"The checkpoint {folder} was saved by a run {'with' if has_lora else 'without'} LoRA adapters: "
                f"resume it with the backbone_training of that run, not {self.args.backbone_training!r}."
            )
        if self.weight_average is None and (Path(folder) / TRAINING_WEIGHTS_NAME).is_file():
            raise ValueError(
                f"The checkpoint {folder} was saved by a run that averaged its weights (its model weights are the "
                f"average, the raw ones lie in {TRAINING_WEIGHTS_NAME}): resume it with the weight_average_decay of "
                "that run."
            )

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        token: str | None = None,
        revision: str | None = None,
        metrics: dict[str, float] | None = None,
        **kwargs,
    ):
        """
        Uploads what `hub.save_for_hub` writes (weights, code files, tokenizer, id mappings and the model card with
        `metrics`) to `args.hub_model_id`, at `revision` (default: `args.hub_revision`), once a checkpoint upload still
        in progress (`hub_strategy`) has finished; the main process uploads.
        """
        from ..hub import push_to_hub

        if kwargs:
            raise TypeError(f"CLLM4RecTrainer.push_to_hub does not take {', '.join(sorted(kwargs))}.")
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()  # the final upload lands after, not under, a checkpoint's
        return push_to_hub(
            self.model,
            self.processing_class,
            self.args.hub_model_id or Path(self.args.output_dir).resolve().name,
            token=token or self.args.hub_token,
            private=self.args.hub_private_repo,
            revision=revision or self.args.hub_revision,
            commit_message=commit_message or "Upload CLLM4Rec model",
            data=self.data,
            metrics=metrics,
            training_args=self.args,
        )

    def _issue_warnings_after_load(self, load_result) -> None:
        # tied weights (the backbone's LM head) are stored once, so they are "missing" from every checkpoint
        tied = set(getattr(self.model, "all_tied_weights_keys", None) or {})
        load_result.missing_keys[:] = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """
        The metrics of a split ([`split_metrics`]; `eval_dataset` names it, default `args.eval_split`), logged and
        passed to the callbacks as the Trainer's evaluation does.
        """
        split = self.args.eval_split if eval_dataset is None else eval_dataset
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in self.split_metrics(split).items()}
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def split_metrics(self, split: str) -> dict[str, float]:
        """
        Ranks all items for the users of a split, with the averaged weights where they are kept, in the training's
        mixed precision: its Recall@K, NDCG@K and selection score.
        """
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
                history_permutations=self.args.history_permutations,
                disable_tqdm=self.args.disable_tqdm or not self.is_local_process_zero(),
                distributed=self.accelerator.num_processes > 1,
                # DeepSpeed ZeRO-3 gathers each layer's parameters in its forward pass, on all processes together
                lockstep=lockstep or self.is_deepspeed_enabled,
            )
        return metrics


class ValidationEarlyStopping(EarlyStoppingCallback):
    """[`EarlyStoppingCallback`] that counts the evaluations of training alone, not the final test split's."""

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        if f"eval_{args.metric_for_best_model.removeprefix('eval_')}" in metrics:
            super().on_evaluate(args, state, control, metrics, **kwargs)


class TrainingClock(TrainerCallback, ExportableState):
    """
    The seconds a run has trained, over every attempt of a resumed run: each checkpoint stores them (the trainer
    state's `stateful_callbacks`), and a run resumed from it counts on from there. An interrupted attempt's seconds
    after its last checkpoint are not counted: they trained nothing the resumed run keeps.
    """

    def __init__(self):
        self.seconds_before = 0.0  # of the attempts before this one, up to the checkpoint it resumed from
        self.started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.seconds_before + (0.0 if self.started is None else time.perf_counter() - self.started)

    def state(self) -> dict:  # what a run resumed from the checkpoint starts from
        return {"args": {}, "attributes": {"seconds_before": self.seconds()}}


class UnevaluatedWarmup(TrainerCallback):
    """Leaves the content warm-up epochs of pretraining unevaluated: nothing has trained the item read-out yet."""

    def __init__(self, warmup_epochs: int):
        self.warmup_epochs = warmup_epochs

    def on_step_end(self, args, state, control, **kwargs):  # eval_strategy="steps"
        return self.on_epoch_end(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        if round(state.epoch, 6) <= self.warmup_epochs:
            control.should_evaluate = False
        return control


def items_in_softmax(data: RecommendationData, item_softmax: str) -> torch.Tensor | None:
    """
    The mask of the items the item losses' softmax normalizes over (`args.item_softmax`), or `None` for all of them:
    with `"interacted"`, the items with a training interaction.
    """
    if item_softmax == "all":
        return None
    interacted = torch.from_numpy(data.item_counts("train") > 0)
    return None if bool(interacted.all()) else interacted


def check_stage(model, args) -> None:
    """Raises a `TypeError` unless `args` are the training arguments of the model's stage."""
    stage_arguments = next((arguments for cls, arguments in STAGE_ARGUMENTS.items() if isinstance(model, cls)), None)
    if stage_arguments is None:
        raise TypeError(f"CLLM4RecTrainer trains CLLM4Rec models, got {type(model).__name__}.")
    if not isinstance(args, stage_arguments):
        raise TypeError(f"A {type(model).__name__} trains with {stage_arguments.__name__}, got {type(args).__name__}.")


def document_sources(model, data, tokenizer, args, max_length: int) -> list:
    """The stage's ID documents (collaborative, or masked-history), then with `content_steps` the content ones."""
    histories = data.histories("train")
    if isinstance(model, CLLM4RecForCollaborativeLM):
        sources = [CollaborativeDocuments(histories, tokenizer, max_length, seed=args.data_order_seed)]
    else:
        sources = [
            RecommendationDocuments(histories, tokenizer, args.mask_ratio, max_length, seed=args.data_order_seed)
        ]
    if args.content_steps:
        sources.append(ContentDocuments(data, tokenizer, max_length, args.content_document_kinds))
    return sources


def read_out_prefix_power_scores(log_history: list[dict]) -> dict[float, float]:
    """The validation selection score of each read-out prefix power that a run's log records trying, in its order."""
    return {
        entry["read_out_prefix_power"]: entry["read_out_selection_score"]
        for entry in log_history
        if "read_out_prefix_power" in entry
    }


def last_complete_checkpoint(output_dir: str) -> str | None:
    """
    The last fully written checkpoint folder in `output_dir`: the Trainer writes a checkpoint's state last, so a kill
    while saving leaves a folder without it.
    """
    if not os.path.isdir(output_dir):
        return None
    complete = [folder for folder in sort_checkpoints(output_dir) if os.path.isfile(Path(folder) / TRAINER_STATE_NAME)]
    return complete[-1] if complete else None


def saved_callback_attributes(state: TrainerState, callback_class: type) -> dict:
    """The attributes that `state` saved of the trainer's callback of `callback_class` (none where it saved none)."""
    return state.stateful_callbacks.get(callback_class.__name__, {}).get("attributes", {})


def finished_run_checkpoint(args: CLLM4RecTrainingArguments) -> str | None:
    """
    The best checkpoint of the run that finished in `args.output_dir` (its end state saved there) where training
    resumed under `args` would take no step of its own: early stopping had run out of its patience, or every epoch
    (step) was run. None for a folder without such a run.
    """
    end_state = Path(args.output_dir) / TRAINER_STATE_NAME
    if not end_state.is_file():
        return None
    state = TrainerState.load_from_json(str(end_state))
    if state.best_model_checkpoint is None:
        return None
    best = Path(args.output_dir) / Path(state.best_model_checkpoint).name
    counter = saved_callback_attributes(state, ValidationEarlyStopping).get("early_stopping_patience_counter", 0)
    patience = args.early_stopping_patience
    stopped_early = patience is not None and counter >= patience
    all_run = (
        state.global_step >= args.max_steps if args.max_steps > 0 else (state.epoch or 0) >= args.num_train_epochs
    )
    return str(best) if best.is_dir() and (stopped_early or all_run) else None


def check_no_checkpoints(output_dir: str) -> None:
    """Raises a `ValueError` where `output_dir` holds the checkpoints of an earlier run."""
    earlier = sort_checkpoints(output_dir) if os.path.isdir(output_dir) else []
    if earlier:
        raise ValueError(
            f"{output_dir} holds the checkpoints of an earlier run (up to {Path(earlier[-1]).name}): continue it "
            "with resume_from_checkpoint=true, or train into another output_dir."
        )


def check_complete_checkpoint(folder: str) -> None:
    """Raises a `ValueError` for a checkpoint folder that is not there or was not fully written."""
    if not os.path.isdir(folder):
        raise ValueError(
            f"No checkpoint folder at {folder}: give a checkpoint-N folder of an earlier run, or true to resume from "
            "the last complete one in output_dir."
        )
    if not os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME)):
        raise ValueError(
            f"{folder} is not a complete checkpoint (it has no {TRAINER_STATE_NAME}: was the run stopped while "
            "saving it?). Resume from an earlier checkpoint."
        )


__all__ = ["CLLM4RecTrainer", "LOSS_COMPONENTS", "STAGE_ARGUMENTS"]
