"""
Model cards of CLLM4Rec checkpoints, generated from what a run measured.

The card is `templates/model_card.md` rendered with `huggingface_hub.ModelCard`: YAML front matter with
`library_name`, `license`, `base_model`, `datasets`, `tags` and a `model-index` of the test Recall@K / NDCG@K, then
how to load the model (with and without the package), the model and training configuration, the data protocol, the
results table and the paper's citation.

Example:

```python
>>> from hf_cllm4rec.hub.modelcard import write_model_card
>>> write_model_card("runs/beauty-finetune", data=RecommendationData.load("data/beauty"), model_id="me/cllm4rec-beauty")
```
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..configuration_cllm4rec import CLLM4RecConfig
from ..serving.id_mappings import ID_MAPPINGS_NAME, LEGACY_ID_MAPPINGS_NAME, IdMappings

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
TEST_RESULTS_NAME = "test_results.json"
TRAINING_ARGS_NAME = "training_args.json"
TAGS = ["cllm4rec", "recommendation", "collaborative-filtering"]
TASK = {"type": "recommendation", "name": "Top-K item recommendation (full ranking)"}
METRIC_PATTERN = re.compile(r"^(?:test_)?(recall|ndcg)@(\d+)$")
METRIC_DISPLAY_NAMES = {"recall": "Recall", "ndcg": "NDCG"}
# Training arguments shown on the card, in this order; the stage-specific ones only for their stage.
TRAINING_ARGUMENTS = (
    "num_train_epochs",
    "content_warmup_epochs",
    "alternation",
    "content_documents",
    "content_steps",
    "learning_rate",
    "lr_scheduler_type",
    "optim",
    "weight_decay",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_average_decay",
    "max_length",
    "eval_split",
    "metric_for_best_model",
    "seed",
)
PRETRAINING_ONLY = {"content_warmup_epochs", "alternation"}
FINE_TUNING_ONLY = {"eval_split", "metric_for_best_model"}
CITATION = """@inproceedings{zhu2024collaborative,
  title         = {Collaborative Large Language Model for Recommender Systems},
  author        = {Zhu, Yaochen and Wu, Liang and Guo, Qi and Hong, Liangjie and Li, Jundong},
  booktitle     = {Proceedings of the ACM Web Conference 2024 (WWW '24)},
  year          = {2024},
  eprint        = {2311.01343},
  archivePrefix = {arXiv}
}"""


def measured_metrics(metrics: dict[str, float]) -> list[tuple[str, int, float]]:
    """`(kind, k, value)` of the Recall@K and NDCG@K among `metrics` (`test_recall@20`, ...), recall first, by K."""
    found = []
    for name, value in metrics.items():
        match = METRIC_PATTERN.match(name)
        if match:
            found.append((match.group(1), int(match.group(2)), float(value)))
    return sorted(found, key=lambda metric: (metric[0] != "recall", metric[1]))


def model_card(
    config: CLLM4RecConfig,
    *,
    model_id: str,
    data=None,
    mappings=None,
    metrics: dict[str, float] | None = None,
    training_args=None,
    license: str = "apache-2.0",
    dataset_id: str | None = None,
) -> ModelCard:
    """
    The model card of a CLLM4Rec checkpoint.

    Args:
        config (`CLLM4RecConfig`): the checkpoint's config (its `architectures` give the stage).
        model_id (`str`): the Hub repository id (or name) the card and its code examples refer to.
        data (`RecommendationData`, *optional*): the prepared data set: its manifest gives the data section.
        mappings (`IdMappings`, *optional*): the shipped id mappings, for concrete ids in the examples.
        metrics (`dict`, *optional*): measured test metrics, e.g. `{"test_recall@20": 0.12, ...}`.
        training_args (*optional*): the run's training arguments (any arguments object, or a dict of them); their
            `history_permutations` is the number of history orders the test metrics averaged over (default 1).
        license (`str`): the license of the weights.
        dataset_id (`str`, *optional*): the data set's Hub id for the metadata; defaults to the data set's name.
    """
    manifest = data.manifest if data is not None else None
    dataset_name = manifest["name"] if manifest else "an unnamed data set"
    dataset_id = dataset_id or (manifest["name"] if manifest else None)
    model_class = (config.architectures or ["CLLM4RecForItemPrediction"])[0]
    stage = "pretraining" if model_class == "CLLM4RecForCollaborativeLM" else "fine-tuning"
    run = training_values(training_args)
    measured = measured_metrics(metrics or {})
    results = [(f"{METRIC_DISPLAY_NAMES[kind]}@{k}", value) for kind, k, value in measured]
    eval_results = [
        EvalResult(
            task_type=TASK["type"],
            task_name=TASK["name"],
            dataset_type=dataset_id or "unknown",
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=kind,
            metric_value=value,
            metric_name=f"{METRIC_DISPLAY_NAMES[kind]}@{k}",
            metric_args={"k": k},
        )
        for kind, k, value in measured
    ]
    card_data = ModelCardData(
        library_name="hf_cllm4rec",
        license=license,
        base_model=hub_base_model(config),
        datasets=[dataset_id] if dataset_id else None,
        tags=list(TAGS),
        model_name=model_id,
        eval_results=eval_results or None,
    )
    example_user, example_history = "USER_ID", '["ITEM_ID", "ITEM_ID"]'
    if mappings is not None and mappings.users:
        example_user = mappings.users[0]
        history = mappings.histories[0][:3] if mappings.histories else range(min(3, len(mappings.items)))
        example_history = json.dumps([mappings.items[item] for item in history])
    evaluated_users = (metrics or {}).get("test_num_users", (metrics or {}).get("num_users"))
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_id.split("/")[-1],
        model_id=model_id,
        model_class=model_class,
        stage=stage,
        dataset_name=dataset_name,
        manifest=manifest,
        num_users=config.num_users,
        num_items=config.num_items,
        backbone_description=backbone_description(config),
        backbone_training=run_setting("backbone_training", config, run),
        lambda_v=config.lambda_v,
        mask_ratio=run_setting("mask_ratio", config, run),
        recommendation_prompt=config.recommendation_prompt,
        cold_start_prompt=config.cold_start_prompt,
        collaborative_prompt=config.collaborative_prompt,
        history_permutations=run.get("history_permutations") or 1,
        id_embedding_init=config.id_embedding_init,
        id_embedding_dropout=config.id_embedding_dropout,
        tie_item_head=config.tie_item_head,
        item_bias=config.item_bias,
        training_rows=training_rows(training_args, stage),
        lora_rank=run_setting("lora_rank", config, run),
        lora_dropout=run_setting("lora_dropout", config, run),
        results=results,
        evaluated_users=int(evaluated_users) if evaluated_users is not None else None,
        example_user=example_user,
        example_history=example_history,
        has_histories=bool(mappings is not None and mappings.histories),
        citation=CITATION,
    )


def write_model_card(
    folder: str | os.PathLike,
    *,
    model_id: str | None = None,
    data=None,
    mappings=None,
    metrics: dict[str, float] | None = None,
    training_args=None,
    card_path: str | os.PathLike | None = None,
    **card_kwargs,
) -> Path:
    """
    Writes the model card of a checkpoint folder to `card_path` (default: the folder's `README.md`): the config is
    read from the folder, and so are the test metrics (`test_results.json`), the training arguments
    (`training_args.json`) and the id mappings (`id_mappings.safetensors`) when not given; `card_kwargs` go to
    [`model_card`]. Returns the card's path.
    """
    folder = Path(folder)
    config = CLLM4RecConfig.from_pretrained(folder)
    if metrics is None and (folder / TEST_RESULTS_NAME).is_file():
        metrics = json.loads((folder / TEST_RESULTS_NAME).read_text())
    if training_args is None and (folder / TRAINING_ARGS_NAME).is_file():
        training_args = json.loads((folder / TRAINING_ARGS_NAME).read_text())
    if mappings is None and any((folder / name).is_file() for name in (ID_MAPPINGS_NAME, LEGACY_ID_MAPPINGS_NAME)):
        mappings = IdMappings.load(folder)
    card = model_card(
        config,
        model_id=model_id or folder.resolve().name,
        data=data,
        mappings=mappings,
        metrics=metrics,
        training_args=training_args,
        **card_kwargs,
    )
    path = Path(card_path) if card_path is not None else folder / "README.md"
    card.save(path)
    return path


def hub_base_model(config: CLLM4RecConfig) -> str | None:
    """The backbone's Hub id for the `base_model` metadata; `None` for local folders and randomly built backbones
    (which have no `base_model_name_or_path`)."""
    name = getattr(config, "base_model_name_or_path", None)
    if not name or os.path.isabs(name) or name.startswith(".") or Path(name).exists():
        return None
    return name


def backbone_description(config: CLLM4RecConfig) -> str:
    """`` `gpt2` backbone (gpt2, 12 layers, hidden size 768)``; said to come from a local folder, without its path,
    where one was, and to be randomly initialized where no pretrained backbone was named."""
    text_config = config.text_config
    shape = f"{text_config.model_type}, {text_config.num_hidden_layers} layers, hidden size {config.hidden_size}"
    if not getattr(config, "base_model_name_or_path", None):
        return f"randomly initialized backbone ({shape})"
    hub_id = hub_base_model(config)
    return f"`{hub_id}` backbone ({shape})" if hub_id else f"pretrained backbone from a local folder ({shape})"


def training_values(training_args) -> dict:
    """The training arguments as a dict: from an arguments object (`to_dict`, or its attributes) or a dict."""
    if training_args is None:
        return {}
    if isinstance(training_args, dict):
        return dict(training_args)
    if hasattr(training_args, "to_dict"):
        return training_args.to_dict()
    return dict(vars(training_args))


def run_setting(name: str, config: CLLM4RecConfig, run: dict):
    """A setting of the run, read from its training arguments, else from a config that keeps it (as earlier versions'
    configs do); `None` where neither records it."""
    value = run.get(name)
    return getattr(config, name, None) if value is None else value


def training_rows(training_args, stage: str) -> list[tuple[str, object]]:
    """`(argument, value)` rows of the card's training table for the run's stage."""
    values = training_values(training_args)
    if not values:
        return []
    skipped = FINE_TUNING_ONLY if stage == "pretraining" else PRETRAINING_ONLY
    if not values.get("load_best_model_at_end"):
        skipped = skipped | {"metric_for_best_model"}
    return [
        (name, int(value) if isinstance(value, float) and value.is_integer() and name != "learning_rate" else value)
        for name, value in ((name, values.get(name)) for name in TRAINING_ARGUMENTS)
        if value is not None and name not in skipped
    ]


__all__ = ["model_card", "write_model_card", "measured_metrics", "CITATION", "TEST_RESULTS_NAME", "TRAINING_ARGS_NAME"]
