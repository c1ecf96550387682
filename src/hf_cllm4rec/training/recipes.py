"""The pretraining and fine-tuning runs behind the example scripts and the command line."""

import itertools
import json
import math
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import CONFIG_MAPPING, AutoConfig, AutoTokenizer, TrainerState, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.utils import logging

from ..configuration_cllm4rec import HISTORY_ATTENTIONS, READ_OUTS, CLLM4RecConfig
from ..data import RecommendationData, make_synthetic_data, make_synthetic_tokenizer
from ..evaluation import check_split
from ..hub import write_model_card
from ..hub.modelcard import TEST_RESULTS_NAME, TRAINING_ARGS_NAME
from ..modeling_cllm4rec import CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction
from ..serving import IdMappings, check_checkpoint_ids
from ..tokenization_cllm4rec import CLLM4RecTokenizer
from ..writing import replaced_file
from .arguments import FineTuningArguments, PretrainingArguments
from .trainer import (
    CLLM4RecTrainer,
    check_complete_checkpoint,
    finished_run_checkpoint,
    last_complete_checkpoint,
    read_out_prefix_power_scores,
)

logger = logging.get_logger(__name__)

BUILTIN_DATA = "builtin"
# The recipe a run took its defaults from (`presets.apply_recipe`), saved beside its training arguments.
RECIPE_NAME = "recipe.json"
# What a search records of each finished trial, in the trial's folder.
SEARCH_TRIAL_NAME = "search_trial.json"
# The demo backbone: a two-layer GPT-2 over the built-in data set's word-level vocabulary.
BUILTIN_BACKBONE = "builtin-tiny-gpt2"
# The dropout probabilities of backbone configs that `backbone_dropout` sets, where a config has them.
BACKBONE_DROPOUT_FIELDS = (
    "embd_pdrop",
    "resid_pdrop",
    "attn_pdrop",
    "attention_dropout",
    "hidden_dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)
BUILTIN_BACKBONE_CONFIG = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256}


@dataclass
class DataArguments:
    """Where the prepared data set is."""

    data: str = field(
        default=BUILTIN_DATA,
        metadata={"help": "A folder written by `cllm4rec prepare`, or 'builtin' for the built-in synthetic data set."},
    )


@dataclass
class PretrainingModelArguments:
    """The backbone that pretraining builds a CLLM4Rec model around, and the settings of the model's config."""

    backbone: str = field(
        default="gpt2",
        metadata={
            "help": "Hub name or folder of a causal LM, or 'builtin-tiny-gpt2' (a tiny GPT-2 over the built-in data "
            "set's words, for demos)."
        },
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or Hub name; default: the backbone's."}
    )
    random_init: bool = field(
        default=False,
        metadata={
            "help": "Random backbone weights, from the config of --backbone: a model type such as 'gpt2' (its "
            "default config: GPT-2 small), a folder or a Hub name."
        },
    )
    backbone_overrides: str | None = field(
        default=None,
        metadata={
            "help": 'JSON overrides of fields of the backbone config, e.g. {"n_layer": 4} with --random_init or '
            '{"attention_dropout": 0.1} for a pretrained backbone.'
        },
    )
    backbone_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Every dropout probability of the backbone config (GPT-2's embd_pdrop, resid_pdrop and "
            "attn_pdrop, Llama's attention_dropout, ...); default: the config's."
        },
    )
    lambda_v: float = field(default=1.0, metadata={"help": "Weight of the mutual regularization."})
    id_embedding_init: str = field(
        default="normal",
        metadata={
            "help": "New ID embeddings: 'normal', N(0, 0.02) as in the paper, or 'vocabulary', drawn per dimension "
            "from the mean and spread of the backbone's word embeddings.",
            "choices": ["normal", "vocabulary"],
        },
    )
    untie_item_head: bool = field(
        default=False,
        metadata={
            "help": "Give the item head a table of its own instead of the collaborative item embeddings (the "
            "paper's tied head): item scores start small even with --id_embedding_init vocabulary."
        },
    )
    item_bias: bool = field(
        default=False,
        metadata={
            "help": "Add a learned bias per item to the item scores, starting at the item's log training count: "
            "popularity without a direction of the hidden state of its own."
        },
    )
    id_embedding_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the input embeddings of user and item tokens in training."}
    )
    read_out: str = field(
        default="last",
        metadata={
            "help": "The query vector items are scored with: 'last', the prompt's last token (the paper), or 'mean', "
            "the mean over the positions from the token before the history to the last (one pass, order-robust).",
            "choices": READ_OUTS,
        },
    )

    def __post_init__(self):
        check_model_settings(lambda_v=self.lambda_v, id_embedding_dropout=self.id_embedding_dropout)
        if self.backbone_dropout is not None and not 0 <= self.backbone_dropout < 1:
            raise ValueError(f"backbone_dropout must lie in [0, 1), got {self.backbone_dropout}.")
        if self.backbone == BUILTIN_BACKBONE and self.tokenizer is not None:
            raise ValueError(f"tokenizer: the {BUILTIN_BACKBONE} backbone has a tokenizer of its own.")
        try:
            overrides = json.loads(self.backbone_overrides or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"backbone_overrides is not valid JSON ({error}): {self.backbone_overrides!r}.") from None
        if not isinstance(overrides, dict):
            raise ValueError(f"backbone_overrides must be a JSON object, got {self.backbone_overrides!r}.")


@dataclass
class FineTuningModelArguments:
    """The pretraining checkpoint that fine-tuning starts from, and the settings of its config to change."""

    pretrained: str = field(metadata={"help": "The CLLM4RecForCollaborativeLM checkpoint to start from."})
    lambda_v: float | None = field(
        default=None, metadata={"help": "Weight of the mutual regularization; default: the checkpoint's."}
    )
    id_embedding_dropout: float | None = field(
        default=None,
        metadata={"help": "Dropout on the input embeddings of user and item tokens; default: the checkpoint's."},
    )
    read_out: str | None = field(
        default=None,
        metadata={
            "help": "The query vector items are scored with, 'last' or 'mean' (see pretrain); default: the "
            "checkpoint's.",
            "choices": READ_OUTS,
        },
    )
    recommendation_prompt: str | None = field(
        default=None,
        metadata={
            "help": "Another recommendation prompt than the checkpoint's, e.g. '{user} has interacted with "
            "{history}' (the pretraining read-out: the next item after the history)."
        },
    )
    history_attention: str | None = field(
        default=None,
        metadata={
            "help": "How the history of the prompts items are scored after is read: 'causal' (as pretraining reads "
            "it), 'bidirectional' (history items see each other) or 'set' (also one shared position: the scores do "
            "not depend on the history's order); default: the checkpoint's.",
            "choices": HISTORY_ATTENTIONS,
        },
    )

    def __post_init__(self):
        check_model_settings(lambda_v=self.lambda_v, id_embedding_dropout=self.id_embedding_dropout)

    def config_overrides(self) -> dict:
        """The settings of the checkpoint's config that the run changes, by name."""
        names = ("lambda_v", "id_embedding_dropout", "recommendation_prompt", "read_out", "history_attention")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def check_model_settings(lambda_v: float | None, id_embedding_dropout: float | None) -> None:
    """Raises a `ValueError` for a regularization weight or an ID dropout the model cannot take."""
    if lambda_v is not None and not (math.isfinite(lambda_v) and lambda_v >= 0):
        raise ValueError(f"lambda_v must be a finite number >= 0, got {lambda_v}.")
    if id_embedding_dropout is not None and not 0 <= id_embedding_dropout < 1:
        raise ValueError(f"id_embedding_dropout must lie in [0, 1), got {id_embedding_dropout}.")


def load_data(data_args: DataArguments) -> RecommendationData:
    if data_args.data == BUILTIN_DATA:
        return make_synthetic_data()
    return RecommendationData.load(data_args.data)


def build_pretraining_model(
    model_args: PretrainingModelArguments, data: RecommendationData
) -> tuple[CLLM4RecForCollaborativeLM, CLLM4RecTokenizer]:
    """A fresh CLLM4Rec model around the backbone, sized to the data set, and its tokenizer."""
    options = {
        "lambda_v": model_args.lambda_v,
        "id_embedding_init": model_args.id_embedding_init,
        "id_embedding_dropout": model_args.id_embedding_dropout,
        "tie_item_head": not model_args.untie_item_head,
        "item_bias": model_args.item_bias,
        "read_out": model_args.read_out,
    }
    if model_args.backbone == BUILTIN_BACKBONE:
        base_tokenizer = make_synthetic_tokenizer(data)
        special_ids = {"bos_token_id": base_tokenizer.eos_token_id, "eos_token_id": base_tokenizer.eos_token_id}
        text_config = AutoConfig.for_model(**BUILTIN_BACKBONE_CONFIG, vocab_size=len(base_tokenizer), **special_ids)
    else:
        base_tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer or model_args.backbone)
        if model_args.random_init:
            text_config = random_backbone_config(model_args.backbone)
        else:
            text_config = AutoConfig.from_pretrained(model_args.backbone)
    for key, value in json.loads(model_args.backbone_overrides or "{}").items():
        if not hasattr(text_config, key):
            raise ValueError(f"backbone_overrides: the backbone's {type(text_config).__name__} has no field {key!r}.")
        setattr(text_config, key, value)
    if model_args.backbone_dropout is not None:
        set_backbone_dropout(text_config, model_args.backbone_dropout)
    if model_args.random_init or model_args.backbone == BUILTIN_BACKBONE:
        config = CLLM4RecConfig(text_config=text_config, num_users=data.num_users, num_items=data.num_items, **options)
        model = CLLM4RecForCollaborativeLM(config)  # random backbone weights: no `base_model_name_or_path`
    else:  # the pretrained weights under the config read (and overridden) above
        model = CLLM4RecForCollaborativeLM.from_backbone(
            model_args.backbone, num_users=data.num_users, num_items=data.num_items, config=text_config, **options
        )
    if model.config.item_bias:
        init_item_bias_from_popularity(model, data)
    return model, CLLM4RecTokenizer(base_tokenizer, model.config)


def init_item_bias_from_popularity(model: CLLM4RecForCollaborativeLM, data: RecommendationData) -> None:
    """
    Starts the item bias at each item's log training count (plus one), centred: a new model then ranks by
    popularity, and training learns what its users add to it (a zero bias learns popularity too slowly to matter).
    """
    log_counts = torch.log1p(torch.from_numpy(data.item_counts("train")).float())
    with torch.no_grad():
        model.model.item_bias.copy_(log_counts - log_counts.mean())


def set_backbone_dropout(text_config, dropout: float) -> None:
    """Sets every dropout probability that the backbone config has; a `ValueError` for a config with none."""
    names = [name for name in BACKBONE_DROPOUT_FIELDS if hasattr(text_config, name)]
    if not names:
        raise ValueError(f"backbone_dropout: the backbone's {type(text_config).__name__} has no dropout setting.")
    for name in names:
        setattr(text_config, name, dropout)


def random_backbone_config(backbone: str):
    """The config of a backbone given as a model type (`gpt2`, `llama`), a folder or a Hub name."""
    if backbone in CONFIG_MAPPING and not Path(backbone).exists():
        return AutoConfig.for_model(backbone)
    return AutoConfig.from_pretrained(backbone)


def load_finetuning_model(
    model_args: FineTuningModelArguments,
) -> tuple[CLLM4RecForItemPrediction, CLLM4RecTokenizer]:
    """The pretraining checkpoint as an item predictor, with the run's config changes, and its tokenizer."""
    model = CLLM4RecForItemPrediction.from_pretrained(model_args.pretrained)
    for name, value in model_args.config_overrides().items():
        setattr(model.config, name, value)
    model.config.validate_values()
    base_tokenizer = CLLM4RecTokenizer.from_pretrained(model_args.pretrained).base_tokenizer
    return model, CLLM4RecTokenizer(base_tokenizer, model.config)


def run_pretraining(
    model_args: PretrainingModelArguments,
    data_args: DataArguments,
    training_args: PretrainingArguments,
    recipe: dict | None = None,
) -> dict[str, float]:
    """
    Pretrains on the data set and saves the model and tokenizer to `output_dir`, with `recipe` (what
    `presets.apply_recipe` records) in `recipe.json`; returns test metrics.
    """
    check_argument_types(model_args, PretrainingModelArguments, training_args, PretrainingArguments)
    return _finish(*_trained_unless_finished(model_args, data_args, training_args), recipe)


def run_finetuning(
    model_args: FineTuningModelArguments,
    data_args: DataArguments,
    training_args: FineTuningArguments,
    recipe: dict | None = None,
) -> dict[str, float]:
    """
    Fine-tunes a pretraining checkpoint for item prediction, saves it to `output_dir`, with `recipe` in
    `recipe.json`; returns test metrics.
    """
    check_argument_types(model_args, FineTuningModelArguments, training_args, FineTuningArguments)
    return _finish(*_trained_unless_finished(model_args, data_args, training_args), recipe)


def run_search(
    model_args: PretrainingModelArguments | FineTuningModelArguments,
    data_args: DataArguments,
    training_args: PretrainingArguments | FineTuningArguments,
    grid: dict[str, Sequence],
    recipe: dict | None = None,
) -> dict[str, float]:
    """
    Trains the stage once for every combination of the grid's values (options of the model or training arguments
    by name), each trial in `output_dir/trial-N` with its rounds selected (and early-stopped) on validation, then
    finishes the trial with the best validation selection score (that of the model it ends with: its best round, read
    out with the prefix power chosen after training) as `run_pretraining` / `run_finetuning` do. Every trial's
    settings, that score, rounds and training seconds (over every attempt, and those of the attempts before the last)
    and whether it was kept are recorded under `"search"` in `recipe.json`, and each finished trial's record (all but
    whether it was kept) in its own folder
    (`SEARCH_TRIAL_NAME`). With `resume_from_checkpoint=True` (or `"true"`) a stopped search
    continues: a finished trial is not trained again (the best one gets its model back from its best checkpoint
    without a step), the others continue from their last complete checkpoint or start.
    """
    if not training_args.load_best_model_at_end:
        raise ValueError(
            "search chooses on validation: it needs eval_strategy='epoch', save_strategy='epoch' and "
            "load_best_model_at_end."
        )
    resume = training_args.resume_from_checkpoint
    if resume and str(resume).lower() != "true":
        raise ValueError(
            f"search resumes each trial from its own last complete checkpoint: give resume_from_checkpoint=true, "
            f"not {resume}."
        )
    stages = {PretrainingArguments: PretrainingModelArguments, FineTuningArguments: FineTuningModelArguments}
    check_argument_types(model_args, stages[type(training_args)], training_args, type(training_args))
    unknown = [name for name in grid if not hasattr(model_args, name) and not hasattr(training_args, name)]
    if unknown:
        raise ValueError(f"The search grid names {', '.join(unknown)}, not options of this stage.")
    trials, best = [], None  # the best trial's record, trainer and data (trained by this attempt) and arguments
    for index, values in enumerate(itertools.product(*grid.values())):
        settings = dict(zip(grid, values, strict=True))
        trial_dir = Path(training_args.output_dir) / f"trial-{index}"
        trial_model_args = replace(model_args, **{k: v for k, v in settings.items() if hasattr(model_args, k)})
        trial_training_args = replace(
            training_args,
            output_dir=str(trial_dir),
            resume_from_checkpoint=last_complete_checkpoint(str(trial_dir)) if resume else None,
            **{name: value for name, value in settings.items() if not hasattr(model_args, name)},
        )
        record_file = trial_dir / SEARCH_TRIAL_NAME
        if resume and record_file.is_file():  # finished by an earlier attempt, which trained all its seconds
            record, trained = json.loads(record_file.read_text()), None
            if record["settings"] != settings:
                raise ValueError(
                    f"{trial_dir} finished a trial of {record['settings']}, not of {settings}: resume the search "
                    "with the grid it was run with, or search into another output_dir."
                )
            record["train_runtime_before_resume_s"] = record["train_runtime_s"]
        else:
            trained = _trained(trial_model_args, data_args, trial_training_args)
            trained[0].save_state()  # the state the trial ended in, which a reloaded trial takes up again
            record = _trial_record(settings, trained[0])
            with replaced_file(record_file) as file:
                json.dump(record, file, indent=2)
        trials.append(record)
        if best is None or record["validation_selection_score"] > best[0]["validation_selection_score"]:
            best = record, trained, trial_model_args, trial_training_args
    record, trained, best_model_args, best_training_args = best
    trials = [{**trial, "kept": trial is record} for trial in trials]
    checkpoint = record["best_model_checkpoint"]
    trainer, data = trained or _reloaded(best_model_args, data_args, best_training_args, checkpoint)
    trainer.args.output_dir = training_args.output_dir
    return _finish(trainer, data, {**(recipe or {}), "search": trials})


def _trained_unless_finished(model_args, data_args, training_args) -> tuple[CLLM4RecTrainer, RecommendationData]:
    """
    [`_trained`], except for a run resumed with `resume_from_checkpoint=true` in the `output_dir` where it finished
    ([`finished_run_checkpoint`]): it is not trained again, but gets its model back from its best checkpoint without a
    step, and its whole log from its end state. Under `save_total_limit=1` the Trainer keeps only the best checkpoint
    of a finished run, from which it would otherwise train the rounds after it again.
    """
    if str(training_args.resume_from_checkpoint).lower() == "true":
        if best := finished_run_checkpoint(training_args):
            logger.info(f"The run in {training_args.output_dir} finished: its model comes back from {best}.")
            return _reloaded(model_args, data_args, training_args, Path(best).name)
    return _trained(model_args, data_args, training_args)


def _trial_record(settings: dict, trainer: CLLM4RecTrainer) -> dict:
    """What a search records of a trial that `trainer` trained, and the checkpoint its model was taken from."""
    history = trainer.state.log_history
    clock = next(entry for entry in reversed(history) if "total_train_runtime" in entry)
    # the score of the model the trial ends with: its best round, read out with the prefix power chosen on validation
    read_out_scores = read_out_prefix_power_scores(history).values()
    return {
        "settings": settings,
        "validation_selection_score": max(read_out_scores, default=trainer.state.best_metric),
        "rounds": sum("eval_selection_score" in entry for entry in history),
        "train_runtime_s": clock["total_train_runtime"],
        "train_runtime_before_resume_s": clock["train_runtime_before_resume"],
        "best_model_checkpoint": Path(trainer.state.best_model_checkpoint).name,
    }


def _reloaded(
    model_args, data_args, training_args, checkpoint_name: str
) -> tuple[CLLM4RecTrainer, RecommendationData]:
    """
    The trainer of a trial or run that an earlier attempt finished, holding its model again: resumed from its best
    checkpoint, training ends there without a step (the best round loaded); then given back the state it ended in
    (its whole log) and the read-out power it chose, read from that log rather than validated again.
    """
    checkpoint = os.path.join(training_args.output_dir, checkpoint_name)
    check_complete_checkpoint(checkpoint)
    powers = getattr(training_args, "read_out_prefix_powers", None)
    resumed_args = replace(training_args, resume_from_checkpoint=checkpoint)
    if powers:
        resumed_args.read_out_prefix_powers = None  # chosen from the end state's log below
    trainer, data = _trained(model_args, data_args, resumed_args, ends_at_checkpoint=True)
    trainer.state = TrainerState.load_from_json(os.path.join(training_args.output_dir, TRAINER_STATE_NAME))
    if powers:
        trainer.args.read_out_prefix_powers = powers
        trainer.choose_read_out_prefix_power(powers, log_history=trainer.state.log_history)
    return trainer, data


def _trained(
    model_args, data_args, training_args, ends_at_checkpoint: bool = False
) -> tuple[CLLM4RecTrainer, RecommendationData]:
    """
    The trainer of the stage that the arguments are of, after training, and the data set; with `ends_at_checkpoint`,
    training resumed from `training_args.resume_from_checkpoint` ends there without a step.
    """
    set_seed(training_args.seed)
    data = load_data(data_args)
    check_split(data, "test", "The run ends with its test metrics: prepare the data with a --test-fraction above 0.")
    if isinstance(training_args, PretrainingArguments):
        model, tokenizer = build_pretraining_model(model_args, data)
    else:
        model, tokenizer = load_finetuning_model(model_args)
        if not check_checkpoint_ids(model_args.pretrained, data):
            logger.warning(f"{model_args.pretrained} has no id mappings: only its user and item counts are checked.")
    trainer = CLLM4RecTrainer(model, training_args, data, tokenizer)
    checkpoint = training_args.resume_from_checkpoint
    with trainer.ending_at(checkpoint) if ends_at_checkpoint else nullcontext():
        trainer.train(resume_from_checkpoint=checkpoint)
    return trainer, data


def check_argument_types(model_args, model_arguments_class: type, training_args, training_arguments_class: type):
    """Raises a `TypeError` when a recipe is given the arguments of the other stage."""
    for given, expected in ((model_args, model_arguments_class), (training_args, training_arguments_class)):
        if not isinstance(given, expected):
            raise TypeError(f"Expected {expected.__name__}, got {type(given).__name__}.")


def _finish(trainer: CLLM4RecTrainer, data: RecommendationData, recipe: dict | None) -> dict[str, float]:
    """
    The trainer state as training ended (which a finished run resumed takes up again), test metrics, then the model,
    tokenizer, id mappings, metrics, the record of the run's recipe (`presets.apply_recipe`) and model card saved to
    `output_dir`; with `push_to_hub`, what `hub.save_for_hub` writes is uploaded to `hub_model_id`.
    """
    args = trainer.args
    trainer.save_state()
    metrics = trainer.evaluate(eval_dataset="test", metric_key_prefix="test")
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        data_files = Path(args.output_dir)
        IdMappings.from_data(data).save(data_files)
        with replaced_file(data_files / TEST_RESULTS_NAME) as file:
            json.dump(metrics, file, indent=2)
        with replaced_file(data_files / TRAINING_ARGS_NAME) as file:
            file.write(args.to_json_string())
        if recipe is not None:
            with replaced_file(data_files / RECIPE_NAME) as file:
                json.dump(recipe, file, indent=2)
        card_inputs = {"data": data, "metrics": metrics, "training_args": args}
        write_model_card(data_files, model_id=args.hub_model_id, **card_inputs)
        if args.push_to_hub:
            trainer.push_to_hub(metrics=metrics)
    trainer.accelerator.wait_for_everyone()  # no process exits while the main one still writes
    return metrics


def results_summary(metrics: dict[str, float], output_dir: str | Path) -> str:
    """The test metrics of a run, one per line, and where its model was saved: what the scripts print at the end."""
    users = metrics.get("test_num_users")
    lines = [f"Test metrics ({int(users)} users):" if users is not None else "Test metrics:"]
    for name, value in metrics.items():
        if name not in ("test_num_users", "test_selection_score"):
            lines.append(f"  {name.removeprefix('test_'):<12}{value:.4f}")
    lines.append(f"Saved the model, its tokenizer and its model card to {output_dir}")
    return "\n".join(lines)


__all__ = [
    "DataArguments",
    "PretrainingModelArguments",
    "FineTuningModelArguments",
    "build_pretraining_model",
    "load_data",
    "load_finetuning_model",
    "results_summary",
    "run_pretraining",
    "run_finetuning",
    "run_search",
]
