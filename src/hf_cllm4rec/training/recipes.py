"""The pretraining and fine-tuning runs behind the example scripts and the command line."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import CONFIG_MAPPING, AutoConfig, AutoTokenizer, set_seed

from ..configuration_cllm4rec import CLLM4RecConfig
from ..data import RecommendationData, make_synthetic_data, make_synthetic_tokenizer
from ..hub import push_to_hub, write_model_card
from ..hub.modelcard import TEST_RESULTS_NAME, TRAINING_ARGS_NAME
from ..modeling_cllm4rec import CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction
from ..serving import IdMappings
from ..tokenization_cllm4rec import CLLM4RecTokenizer
from .arguments import CLLM4RecTrainingArguments
from .trainer import CLLM4RecTrainer

BUILTIN_DATA = "builtin"
# The demo backbone: a two-layer GPT-2 over the built-in data set's word-level vocabulary.
BUILTIN_BACKBONE = "builtin-tiny-gpt2"
BUILTIN_BACKBONE_CONFIG = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256}
# Model arguments that override the config only where given (`None`: the default, or in fine-tuning the checkpoint's).
OPTIONAL_SETTINGS = ("history_permutations", "id_embedding_dropout")


@dataclass
class DataArguments:
    """Where the prepared data set is."""

    data: str = field(
        default=BUILTIN_DATA,
        metadata={"help": "A folder written by `cllm4rec prepare`, or 'builtin' for the built-in synthetic data set."},
    )


@dataclass
class ModelArguments:
    """The backbone and the CLLM4Rec options of pretraining, or the checkpoint that fine-tuning starts from."""

    backbone: str = field(
        default="gpt2",
        metadata={
            "help": "Hub name or folder of a causal LM (pretraining), or 'builtin-tiny-gpt2' (a tiny GPT-2 over the "
            "built-in data set's words, for demos)."
        },
    )
    pretrained: str | None = field(
        default=None, metadata={"help": "Fine-tuning: the CLLM4RecForCollaborativeLM checkpoint to start from."}
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
    lambda_v: float = field(default=1.0, metadata={"help": "Weight of the mutual regularization."})
    mask_ratio: float = field(default=0.2, metadata={"help": "Share of a history held out in fine-tuning."})
    backbone_training: str = field(
        default="frozen",
        metadata={"help": "'frozen' (the paper), 'full' or 'lora'.", "choices": ["frozen", "full", "lora"]},
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank with backbone_training='lora'."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
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
    id_embedding_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Dropout on the input embeddings of user and item tokens in training; default: the "
            "checkpoint's, 0 for a new model."
        },
    )
    history_permutations: int | None = field(
        default=None,
        metadata={
            "help": "Random orders of each history whose item probabilities are averaged when scoring (validation, "
            "test and the saved model's recommendations); default: the checkpoint's, 1 for a new model."
        },
    )
    recommendation_prompt: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tuning: another recommendation prompt than the checkpoint's, e.g. '{user} has interacted "
            "with {history}' (the pretraining read-out: the next item after the history)."
        },
    )


def load_data(data_args: DataArguments) -> RecommendationData:
    if data_args.data == BUILTIN_DATA:
        return make_synthetic_data()
    return RecommendationData.load(data_args.data)


def optional_settings_given(model_args: ModelArguments) -> dict:
    """The `OPTIONAL_SETTINGS` the run gives, by name."""
    return {name: getattr(model_args, name) for name in OPTIONAL_SETTINGS if getattr(model_args, name) is not None}


def build_pretraining_model(
    model_args: ModelArguments, data: RecommendationData
) -> tuple[CLLM4RecForCollaborativeLM, CLLM4RecTokenizer]:
    """A fresh CLLM4Rec model around the backbone, sized to the data set, and its tokenizer."""
    options = {
        "lambda_v": model_args.lambda_v,
        "mask_ratio": model_args.mask_ratio,
        "backbone_training": model_args.backbone_training,
        "lora_rank": model_args.lora_rank,
        "lora_dropout": model_args.lora_dropout,
        "id_embedding_init": model_args.id_embedding_init,
        "tie_item_head": not model_args.untie_item_head,
    }
    options.update(optional_settings_given(model_args))
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
    overrides = json.loads(model_args.backbone_overrides or "{}")
    for key, value in overrides.items():
        if not hasattr(text_config, key):
            raise ValueError(f"backbone_overrides: the backbone's {type(text_config).__name__} has no field {key!r}.")
        setattr(text_config, key, value)
    if model_args.random_init or model_args.backbone == BUILTIN_BACKBONE:
        config = CLLM4RecConfig(text_config=text_config, num_users=data.num_users, num_items=data.num_items, **options)
        model = CLLM4RecForCollaborativeLM(config)  # random backbone weights: no `base_model_name_or_path`
    else:  # the pretrained weights under the config read (and overridden) above
        model = CLLM4RecForCollaborativeLM.from_backbone(
            model_args.backbone, num_users=data.num_users, num_items=data.num_items, config=text_config, **options
        )
    return model, CLLM4RecTokenizer(base_tokenizer, model.config)


def random_backbone_config(backbone: str):
    """The config of a backbone given as a model type (`gpt2`, `llama`), a folder or a Hub name."""
    if backbone in CONFIG_MAPPING and not Path(backbone).exists():
        return AutoConfig.for_model(backbone)
    return AutoConfig.from_pretrained(backbone)


def run_pretraining(
    model_args: ModelArguments, data_args: DataArguments, training_args: CLLM4RecTrainingArguments
) -> dict[str, float]:
    """Pretrains on the data set and saves the model and tokenizer to `output_dir`; returns test metrics."""
    set_seed(training_args.seed)
    data = load_data(data_args)
    model, tokenizer = build_pretraining_model(model_args, data)
    trainer = CLLM4RecTrainer(model, training_args, data, tokenizer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return _finish(trainer, data)


def run_finetuning(
    model_args: ModelArguments, data_args: DataArguments, training_args: CLLM4RecTrainingArguments
) -> dict[str, float]:
    """Fine-tunes a pretraining checkpoint for item prediction, keeps the best round, saves it; returns test metrics."""
    if model_args.pretrained is None:
        raise ValueError("Fine-tuning starts from a pretraining checkpoint: pass --pretrained PATH.")
    set_seed(training_args.seed)
    data = load_data(data_args)
    model = CLLM4RecForItemPrediction.from_pretrained(model_args.pretrained)
    if model_args.backbone_training == "lora" and model.config.backbone_training != "lora":
        model.model.enable_lora(rank=model_args.lora_rank, dropout=model_args.lora_dropout)
    if model_args.recommendation_prompt is not None:
        model.config.recommendation_prompt = model_args.recommendation_prompt
    for name, value in optional_settings_given(model_args).items():
        setattr(model.config, name, value)
    model.config.validate_values()
    tokenizer = CLLM4RecTokenizer(
        CLLM4RecTokenizer.from_pretrained(model_args.pretrained).base_tokenizer, model.config
    )
    trainer = CLLM4RecTrainer(model, training_args, data, tokenizer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return _finish(trainer, data)


def _finish(trainer: CLLM4RecTrainer, data: RecommendationData) -> dict[str, float]:
    """
    Test metrics, then the model, tokenizer, id mappings, metrics and model card saved to `output_dir`; with
    `push_to_hub`, what `hub.save_for_hub` writes is uploaded to `hub_model_id`.
    """
    args = trainer.args
    metrics = trainer.evaluate(eval_dataset="test", metric_key_prefix="test")
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        data_files = Path(args.output_dir)
        IdMappings.from_data(data).save(data_files)
        (data_files / TEST_RESULTS_NAME).write_text(json.dumps(metrics, indent=2))
        (data_files / TRAINING_ARGS_NAME).write_text(args.to_json_string())
        (data_files / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=2))
        card_inputs = {"data": data, "metrics": metrics, "training_args": args}
        write_model_card(data_files, model_id=args.hub_model_id, **card_inputs)
        if args.push_to_hub:
            repo_id = args.hub_model_id or data_files.resolve().name
            hub_options = {"token": args.hub_token, "private": args.hub_private_repo, "revision": args.hub_revision}
            push_to_hub(trainer.model, trainer.processing_class, repo_id, **hub_options, **card_inputs)
    trainer.accelerator.wait_for_everyone()  # no process exits while the main one still writes
    return metrics


__all__ = [
    "DataArguments",
    "ModelArguments",
    "build_pretraining_model",
    "load_data",
    "run_pretraining",
    "run_finetuning",
]
