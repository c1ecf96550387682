import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_modeling import tiny_text_config
from test_prepare_cli import assert_usage_error, run_cli
from tiny_models import tiny_cllm4rec_config, tiny_model, tiny_word_tokenizer
from transformers import AutoModelForCausalLM, EarlyStoppingCallback, Trainer, TrainerCallback

from hf_cllm4rec import (
    CLLM4RecConfig,
    CLLM4RecForCollaborativeLM,
    CLLM4RecForItemPrediction,
    CLLM4RecTokenizer,
)
from hf_cllm4rec.data import RecommendationData, make_synthetic_data, make_synthetic_tokenizer
from hf_cllm4rec.evaluation import evaluate_model
from hf_cllm4rec.hub import checkpoint as hub_checkpoint
from hf_cllm4rec.training import CLLM4RecTrainer, FineTuningArguments, PretrainingArguments, apply_backbone_training
from hf_cllm4rec.training import trainer as trainer_module
from hf_cllm4rec.training.arguments import UNUSED_TRAINER_OPTIONS
from hf_cllm4rec.training.recipes import (
    BUILTIN_BACKBONE,
    DataArguments,
    FineTuningModelArguments,
    PretrainingModelArguments,
    build_pretraining_model,
    run_finetuning,
    run_pretraining,
)
from hf_cllm4rec.training.trainer import LOSS_COMPONENTS
from hf_cllm4rec.training.weight_averaging import TRAINING_WEIGHTS_NAME, WeightAverage

# 20 users, 30 items: 20 collaborative or masked-history documents and 30 item-text documents a round; with batch 8,
# a round (an epoch) is 3 + 4 = 7 steps.
NUM_USERS, NUM_ITEMS = 20, 30
STEPS_PER_EPOCH = 7
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL_CLASSES = (CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction)
STAGE_ARGUMENTS = {CLLM4RecForCollaborativeLM: PretrainingArguments, CLLM4RecForItemPrediction: FineTuningArguments}


@pytest.fixture(scope="module")
def data() -> RecommendationData:
    return make_synthetic_data(num_users=NUM_USERS, num_items=NUM_ITEMS)


@pytest.fixture(scope="module")
def base_tokenizer(data):
    return make_synthetic_tokenizer(data)


def make_model(model_class, data, base_tokenizer, id_std: float = 0.5, **config):
    """
    A tiny model sized to `data` (ID tables redrawn with a visible spread), its backbone frozen as the trainer
    freezes it by default, and its tokenizer.
    """
    model = tiny_model(
        model_class,
        num_users=data.num_users,
        num_items=data.num_items,
        vocab_size=len(base_tokenizer),
        id_std=id_std,
        **config,
    )
    apply_backbone_training(model, "frozen")
    return model, CLLM4RecTokenizer(base_tokenizer, model.config)


def training_arguments(model_class, output_dir, **overrides):
    """The training arguments of the stage of `model_class`: one round of SGD at a constant rate, nothing logged."""
    arguments = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        content_documents="item",
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_length=64,
        seed=0,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
    )
    return STAGE_ARGUMENTS[model_class](**{**arguments, **overrides})


def trainable_parameters(model) -> dict[str, torch.Tensor]:
    return {
        name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad
    }


def all_parameters(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


# Item-text documents hold no user token: with them alone, the content user table has nothing to learn from.
CONTENT_USERS = "model.user_content_embeddings.weight"


def assert_same_parameters(expected: dict, actual: dict, before: dict, atol: float, untrained=()) -> None:
    assert expected.keys() == actual.keys() == before.keys() and expected
    for name in expected:
        assert torch.equal(expected[name], before[name]) == (name in untrained), f"{name}: trained or not as expected?"
        torch.testing.assert_close(
            actual[name], expected[name], rtol=0, atol=atol, msg=lambda text, name=name: f"{name}: {text}"
        )


def with_tables(data: RecommendationData, **tables) -> RecommendationData:
    return RecommendationData(tables=DatasetDict({**data.tables, **tables}), manifest=dict(data.manifest))


def training_logs(trainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "loss" in log]


def evaluation_logs(trainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "eval_selection_score" in log]


def assert_components_add_up(logs: list[dict], components: dict[str, tuple[str, str]]) -> None:
    """With one step per log, each log holds one step's components, which add up to its loss."""
    for log in logs:
        present = [name for name in LOSS_COMPONENTS if name in log]
        assert present, f"no loss component in {log}"
        document_type = LOSS_COMPONENTS[present[0]][0]
        assert all(LOSS_COMPONENTS[name][0] == document_type for name in present)
        assert sum(log[name] for name in present) == pytest.approx(log["loss"], abs=2e-3)
    logged = {name for log in logs for name in log if name in LOSS_COMPONENTS}
    assert logged == set(components)


# Pretraining, fine-tuning, logging, rounds as epochs and the best model


def test_pretraining_then_fine_tuning(tmp_path, data, base_tokenizer):
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    every_round = dict(
        logging_steps=1,
        logging_strategy="steps",
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        optim="adamw_torch",
        learning_rate=1e-2,
    )
    arguments = training_arguments(
        CLLM4RecForCollaborativeLM, tmp_path / "pretrain", num_train_epochs=3, content_warmup_epochs=1, **every_round
    )
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    trainer.train()
    # every epoch is as long as a round; the content warm-up epoch is not evaluated, every round is
    evaluations = evaluation_logs(trainer)
    assert [log["epoch"] for log in evaluations] == [2, 3]
    assert [log["step"] for log in evaluations] == [2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]
    names = [
        "collaborative_lm_loss",
        "collaborative_regularization_loss",
        "content_lm_loss",
        "content_regularization_loss",
    ]
    logs = training_logs(trainer)
    assert_components_add_up(logs, {name: LOSS_COMPONENTS[name] for name in names})
    assert not any("collaborative_lm_loss" in log for log in logs if log["step"] <= STEPS_PER_EPOCH)  # the warm-up
    for log in evaluations:
        assert all(0.0 <= log[f"eval_{name}"] <= 1.0 for name in ("recall@20", "recall@40", "ndcg@100"))
    best = max(log["eval_selection_score"] for log in evaluations)
    assert trainer.state.best_metric == pytest.approx(best)
    assert trainer.evaluate()["eval_selection_score"] == pytest.approx(best)
    trainer.save_model(tmp_path / "pretrained")

    model = CLLM4RecForItemPrediction.from_pretrained(tmp_path / "pretrained")
    tokenizer = CLLM4RecTokenizer.from_pretrained(tmp_path / "pretrained")
    arguments = training_arguments(
        CLLM4RecForItemPrediction, tmp_path / "finetune", num_train_epochs=3, save_total_limit=1, **every_round
    )
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    before = trainable_parameters(model)
    trainer.train()
    evaluations = evaluation_logs(trainer)
    assert [log["epoch"] for log in evaluations] == [1, 2, 3]
    names = [
        "recommendation_loss",
        "recommendation_regularization_loss",
        "content_lm_loss",
        "content_regularization_loss",
    ]
    assert_components_add_up(training_logs(trainer), {name: LOSS_COMPONENTS[name] for name in names})
    best = max(log["eval_selection_score"] for log in evaluations)
    assert trainer.state.best_metric == pytest.approx(best)
    assert trainer.evaluate()["eval_selection_score"] == pytest.approx(best)
    after = trainable_parameters(trainer.model)
    assert {name for name in before if not torch.equal(after[name], before[name])} == set(before) - {CONTENT_USERS}


def test_early_stopping_stops_after_patience_rounds_without_improvement(tmp_path, data, base_tokenizer):
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    arguments = training_arguments(
        CLLM4RecForItemPrediction,
        tmp_path,
        num_train_epochs=10,
        learning_rate=0.0,  # the validation score stays what it was after the first round
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
    )
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer, callbacks=[EarlyStoppingCallback(2)])
    trainer.train()
    assert [log["epoch"] for log in evaluation_logs(trainer)] == [1, 2, 3]
    assert trainer.state.global_step == 3 * STEPS_PER_EPOCH


def test_the_best_round_is_loaded_at_the_end(tmp_path, data, base_tokenizer):
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    arguments = training_arguments(
        CLLM4RecForItemPrediction,
        tmp_path,
        num_train_epochs=4,
        optim="adamw_torch",
        learning_rate=1e-2,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
    )
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    trainer.train()
    scores = [log["eval_selection_score"] for log in evaluation_logs(trainer)]
    chosen = int(np.argmax(scores))
    assert len(scores) == 4 and chosen != 3 and scores[chosen] > scores[3]  # this run's best round is not its last
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{(chosen + 1) * STEPS_PER_EPOCH}")
    assert trainer.evaluate()["eval_selection_score"] == pytest.approx(scores[chosen])


# What trains, and how each option reaches the training


@pytest.mark.parametrize("backbone_training", ["frozen", "full", "lora"])
def test_backbone_training_sets_what_trains(tmp_path, data, base_tokenizer, backbone_training):
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    before = all_parameters(model)
    arguments = training_arguments(CLLM4RecForCollaborativeLM, tmp_path, backbone_training=backbone_training)
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    if backbone_training == "lora":
        assert trained and all("lora_" in name for name in trained if name.startswith("model.backbone."))
    trainer.train()
    # the final model holds plain weights: LoRA adapters are merged into the backbone
    after = all_parameters(model)
    assert after.keys() == before.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    backbone = {name for name in before if name.startswith("model.backbone.")}
    id_tables = set(before) - backbone - {CONTENT_USERS}
    assert id_tables <= changed
    if backbone_training == "frozen":
        assert not changed & backbone
    elif backbone_training == "full":
        assert changed >= backbone
    else:  # the adapted projections change through the merge, nothing else of the backbone does
        adapted = {name for name in backbone if name.endswith(("c_attn.weight", "c_proj.weight"))}
        assert adapted and changed & backbone == adapted


def test_lora_options_reach_the_adapters(tmp_path, data, base_tokenizer):
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    lora = dict(lora_rank=3, lora_alpha=6, lora_dropout=0.25, lora_target_modules=["c_fc"])
    arguments = training_arguments(CLLM4RecForItemPrediction, tmp_path, backbone_training="lora", **lora)
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    settings = trainer.lora_adapters.peft_config["default"]
    assert (settings.r, settings.lora_alpha, settings.lora_dropout) == (3, 6, 0.25)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert adapted and all(name.endswith("mlp.c_fc") for name in adapted)


def test_checkpoints_of_a_run_with_lora_resume_with_the_same_adapters(tmp_path, data, base_tokenizer):
    arguments = dict(num_train_epochs=2, save_strategy="steps", save_steps=5, backbone_training="lora")
    arguments.update(optim="adamw_torch", learning_rate=1e-2, lora_rank=2)
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    CLLM4RecTrainer(
        model, training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "run", **arguments), data, tokenizer
    ).train()
    uninterrupted = all_parameters(model)
    checkpoint = tmp_path / "run" / "checkpoint-10"
    with safe_open(checkpoint / "model.safetensors", "pt") as stored:
        assert any("lora_B" in name for name in stored.keys())
    # a checkpoint loads as a plain model too: its adapters are folded into the weights
    assert not any("lora_" in name for name in CLLM4RecForCollaborativeLM.from_pretrained(checkpoint).state_dict())

    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    resumed = training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "resumed", **arguments)
    CLLM4RecTrainer(model, resumed, data, tokenizer).train(resume_from_checkpoint=str(checkpoint))
    for name, value in uninterrupted.items():
        torch.testing.assert_close(all_parameters(model)[name], value, rtol=0, atol=1e-6)

    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    frozen = training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "frozen", num_train_epochs=2)
    with pytest.raises(ValueError, match="with LoRA adapters: resume it with the backbone_training of that run"):
        CLLM4RecTrainer(model, frozen, data, tokenizer).train(resume_from_checkpoint=str(checkpoint))


def masked_history_lengths(trainer) -> tuple[list[int], list[int]]:
    """Of the masked-history documents of the first epoch: the number of held-out items and of training items."""
    documents = trainer.train_dataset.sources[0]
    held_out, total = [], []
    for batch in trainer.get_train_dataloader():
        if batch["document_type"] == "recommendation":
            held_out += (batch["labels"] >= 0).sum(-1).tolist()
    for user in documents.users:
        total.append(len(documents.histories[user]))
    return held_out, total


@pytest.mark.parametrize("mask_ratio", [0.2, 0.5])
def test_mask_ratio_sets_the_held_out_share_of_the_fine_tuning_documents(tmp_path, data, base_tokenizer, mask_ratio):
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    arguments = training_arguments(CLLM4RecForItemPrediction, tmp_path, mask_ratio=mask_ratio)
    held_out, total = masked_history_lengths(CLLM4RecTrainer(model, arguments, data, tokenizer))
    assert sum(held_out) / sum(total) == pytest.approx(mask_ratio, abs=0.05)


def run_demo_stages(tmp_path, pretraining_model=None, finetuning_model=None, **finetuning) -> tuple[dict, dict]:
    """One pretraining and one fine-tuning round on the built-in data set; the two runs' trainer states."""
    quick = dict(content_steps=False, per_device_eval_batch_size=64, logging_strategy="epoch")
    pretraining_model = pretraining_model or PretrainingModelArguments(backbone=BUILTIN_BACKBONE)
    run_pretraining(
        pretraining_model,
        DataArguments(),
        training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "pre", **quick),
    )
    finetuning_model = finetuning_model or FineTuningModelArguments(pretrained=str(tmp_path / "pre"))
    run_finetuning(
        finetuning_model,
        DataArguments(),
        training_arguments(CLLM4RecForItemPrediction, tmp_path / "fine", **{**quick, **finetuning}),
    )
    return tuple(json.loads((tmp_path / stage / "trainer_state.json").read_text()) for stage in ("pre", "fine"))


def test_fine_tuning_overrides_reach_the_model(tmp_path):
    _, default = run_demo_stages(tmp_path / "default")
    pretrained = str(tmp_path / "default" / "pre")
    overrides = FineTuningModelArguments(pretrained=pretrained, lambda_v=0.0, id_embedding_dropout=0.3)
    _, changed = run_demo_stages(tmp_path / "changed", finetuning_model=overrides)
    config = json.loads((tmp_path / "changed" / "fine" / "config.json").read_text())
    assert config["lambda_v"] == 0.0 and config["id_embedding_dropout"] == 0.3
    # lambda_v is the weight of the regularization term of the loss
    assert default["log_history"][0]["recommendation_regularization_loss"] > 0
    assert changed["log_history"][0]["recommendation_regularization_loss"] == 0
    # dropout on the ID embeddings acts in training: two forward passes differ
    model = CLLM4RecForItemPrediction.from_pretrained(tmp_path / "changed" / "fine").train()
    prompt = torch.tensor([[model.config.user_token_offset, model.config.item_token_offset + 1]])
    assert not torch.equal(model(prompt).logits, model(prompt).logits)


def test_history_permutations_reach_evaluation(tmp_path, data, base_tokenizer, monkeypatch):
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    arguments = training_arguments(CLLM4RecForItemPrediction, tmp_path, history_permutations=3)
    orders = []

    def recording_evaluate_model(*args, **kwargs):
        orders.append(kwargs["history_permutations"])
        return evaluate_model(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_model", recording_evaluate_model)
    metrics = CLLM4RecTrainer(model, arguments, data, tokenizer).evaluate()
    expected = evaluate_model(model, tokenizer, data, "validation", max_length=64, history_permutations=3)
    assert orders == [3]
    assert {name: metrics[f"eval_{name}"] for name in expected} == pytest.approx(expected)


def test_the_read_out_prefix_power_that_validation_scores_best_is_kept(tmp_path, data, base_tokenizer, monkeypatch):
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer, read_out="mean")
    arguments = training_arguments(
        CLLM4RecForCollaborativeLM, tmp_path, read_out_prefix_powers=[0, 1, 2, 4], eval_split="test"
    )
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    splits = []

    def scores_of_the_power(split):  # best at 2, which 4 only equals
        splits.append(split)
        return {"selection_score": {0: 0.5, 1: 0.7, 2: 0.9, 4: 0.9}[model.config.read_out_prefix_power]}

    monkeypatch.setattr(trainer, "split_metrics", scores_of_the_power)
    trainer.train()
    assert model.config.read_out_prefix_power == 2 and splits == ["validation"] * 4
    choice = [entry for entry in trainer.state.log_history if "read_out_selection_score" in entry]
    assert [(entry["read_out_prefix_power"], entry["read_out_selection_score"]) for entry in choice] == [
        (0, 0.5),
        (1, 0.7),
        (2, 0.9),
        (4, 0.9),
    ]
    trainer.save_model()
    assert CLLM4RecForCollaborativeLM.from_pretrained(tmp_path).config.read_out_prefix_power == 2
    # the choice again from the run's log: the same powers take their logged scores, other powers are validated
    model.config.read_out_prefix_power = 0
    assert trainer.choose_read_out_prefix_power([0, 1, 2, 4], log_history=trainer.state.log_history) == 2
    assert model.config.read_out_prefix_power == 2 and len(splits) == 4
    assert trainer.choose_read_out_prefix_power([0, 1], log_history=trainer.state.log_history) == 1
    assert len(splits) == 6


def test_the_read_out_prefix_powers_need_the_mean_read_out_and_sensible_values(tmp_path, data, base_tokenizer):
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    arguments = training_arguments(CLLM4RecForCollaborativeLM, tmp_path, read_out_prefix_powers=[0, 2])
    with pytest.raises(ValueError, match="the model reads out 'last': give it read_out='mean'"):
        CLLM4RecTrainer(model, arguments, data, tokenizer)
    for powers in ([], [-1], [float("nan")]):
        with pytest.raises(ValueError, match="read_out_prefix_powers must be finite numbers >= 0"):
            training_arguments(CLLM4RecForCollaborativeLM, tmp_path, read_out_prefix_powers=powers)


def test_a_recipe_refuses_the_arguments_of_the_other_stage(tmp_path):
    with pytest.raises(TypeError, match="Expected PretrainingArguments, got FineTuningArguments"):
        run_pretraining(
            PretrainingModelArguments(backbone=BUILTIN_BACKBONE),
            DataArguments(),
            training_arguments(CLLM4RecForItemPrediction, tmp_path),
        )
    model = tiny_model(CLLM4RecForItemPrediction)
    with pytest.raises(TypeError, match="CLLM4RecForItemPrediction trains with FineTuningArguments"):
        CLLM4RecTrainer(model, training_arguments(CLLM4RecForCollaborativeLM, tmp_path), None, None)


# Exactness: gradient accumulation and resuming


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_gradient_accumulation_gives_the_update_of_the_whole_batch(tmp_path, data, base_tokenizer, model_class):
    """Batch 8 in one step, or batches of 4 accumulated over two: the same parameters after every step."""
    results = {}
    for batch_size, accumulation in ((8, 1), (4, 2)):
        model, tokenizer = make_model(model_class, data, base_tokenizer)
        before = trainable_parameters(model)
        arguments = training_arguments(
            model_class,
            tmp_path / f"{batch_size}x{accumulation}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            num_train_epochs=2,
            content_documents="user_item,item",
            logging_strategy="steps",
            logging_steps=1,
        )
        trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
        trainer.train()
        results[batch_size] = trainable_parameters(model), training_logs(trainer), trainer.state.global_step
    (whole, whole_logs, whole_steps), (accumulated, accumulated_logs, accumulated_steps) = results[8], results[4]
    assert whole_steps == accumulated_steps
    assert_same_parameters(whole, accumulated, before, atol=1e-5)
    # the logged loss and its components are per step too, whatever the accumulation
    for whole_log, accumulated_log in zip(whole_logs, accumulated_logs, strict=True):
        for name in ("loss", *LOSS_COMPONENTS):
            assert whole_log.get(name) == pytest.approx(accumulated_log.get(name), abs=2e-4)


def test_collaborative_targets_reach_the_loss_of_collaborative_documents(tmp_path, data, base_tokenizer, monkeypatch):
    received, trained = [], {}
    forward = CLLM4RecForCollaborativeLM.forward

    def recording_forward(self, *args, **kwargs):
        received.append((kwargs["document_type"], kwargs.get("collaborative_targets")))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(CLLM4RecForCollaborativeLM, "forward", recording_forward)
    for targets in ("next_item", "remaining_items"):
        model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
        arguments = training_arguments(CLLM4RecForCollaborativeLM, tmp_path / targets, collaborative_targets=targets)
        received.clear()
        CLLM4RecTrainer(model, arguments, data, tokenizer).train()
        assert set(received) == {("collaborative", targets), ("content", None)}
        trained[targets] = trainable_parameters(model)
    name = "model.user_collaborative_embeddings.weight"
    assert not torch.allclose(trained["next_item"][name], trained["remaining_items"][name])


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_an_item_without_training_interactions_is_left_out_of_the_softmax(tmp_path, data, base_tokenizer, model_class):
    item = 7
    train = data.tables["train"]
    without_item = with_tables(data, train=train.select(np.flatnonzero(np.array(train["item_id"]) != item)))
    item_table = "model.item_collaborative_embeddings.weight"
    trained = {}
    for item_softmax in ("all", "interacted"):
        model, tokenizer = make_model(model_class, without_item, base_tokenizer)
        before = trainable_parameters(model)[item_table]
        arguments = training_arguments(
            model_class, tmp_path / item_softmax, content_steps=False, item_softmax=item_softmax
        )
        trainer = CLLM4RecTrainer(model, arguments, without_item, tokenizer)
        trainer.train()
        trained[item_softmax] = trainable_parameters(model)[item_table] - before
        assert (trainer.softmax_items is None) == (item_softmax == "all")
    # over all items, the item is only ever a negative; left out, nothing moves it, and every other item still trains
    assert trained["all"][item].abs().sum() > 0
    assert (trained["interacted"][item] == 0).all()
    others = torch.arange(NUM_ITEMS) != item
    assert (trained["interacted"][others].abs().sum(-1) > 0).all()
    # where every item has a training interaction, the softmax is over all items either way
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    arguments = training_arguments(model_class, tmp_path / "every", item_softmax="interacted")
    assert CLLM4RecTrainer(model, arguments, data, tokenizer).softmax_items is None
    with pytest.raises(ValueError, match="item_softmax must be one of"):
        training_arguments(model_class, tmp_path, item_softmax="seen")


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_documents_of_a_batch_differ_in_length(tmp_path, data, base_tokenizer, model_class):
    """The accumulation test is only meaningful with padding: documents of one batch differ in length."""
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    arguments = training_arguments(
        model_class, tmp_path, per_device_train_batch_size=4, content_documents="user_item,item"
    )
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    padded = {}
    for batch in trainer.get_train_dataloader():
        lengths = batch["attention_mask"].sum(-1)
        padded[batch["document_type"]] = padded.get(batch["document_type"], False) or bool(
            lengths.min() < lengths.max()
        )
    assert padded == {
        "collaborative" if model_class is CLLM4RecForCollaborativeLM else "recommendation": True,
        "content": True,
    }


RESUMED_RUNS = [
    # checkpoint-9 lies inside the second epoch (steps 8 to 14), in its ID documents (steps 8 to 10)
    (CLLM4RecForCollaborativeLM, dict(num_train_epochs=2)),
    (CLLM4RecForItemPrediction, dict(num_train_epochs=2)),
    # after a content warm-up epoch
    (CLLM4RecForCollaborativeLM, dict(num_train_epochs=3, content_warmup_epochs=1)),
]


@pytest.mark.parametrize("model_class, schedule", RESUMED_RUNS)
def test_resuming_from_a_checkpoint_ends_like_an_uninterrupted_run(
    tmp_path, data, base_tokenizer, model_class, schedule
):
    arguments = dict(save_strategy="steps", save_steps=3, optim="adamw_torch", lr_scheduler_type="linear", **schedule)
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    before = trainable_parameters(model)
    trainer = CLLM4RecTrainer(model, training_arguments(model_class, tmp_path / "run", **arguments), data, tokenizer)
    trainer.train()
    uninterrupted = trainable_parameters(model)
    total_steps = trainer.state.global_step
    assert total_steps == schedule["num_train_epochs"] * STEPS_PER_EPOCH

    # a new process: the same fresh model, resumed from the checkpoint in the middle of the run
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    arguments = training_arguments(model_class, tmp_path / "resumed", **arguments)
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-9"))
    assert trainer.state.global_step == total_steps
    assert_same_parameters(uninterrupted, trainable_parameters(model), before, atol=1e-6, untrained={CONTENT_USERS})


def test_a_resumed_run_counts_the_training_seconds_of_the_attempts_before_it(tmp_path, data, base_tokenizer):
    arguments = dict(num_train_epochs=2, save_strategy="steps", save_steps=3)
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    run = training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "run", **arguments)
    started = time.perf_counter()
    output = CLLM4RecTrainer(model, run, data, tokenizer).train()
    wall = time.perf_counter() - started
    assert 0 < output.metrics["total_train_runtime"] <= wall
    checkpoint_state = tmp_path / "run" / "checkpoint-9" / "trainer_state.json"
    state = json.loads(checkpoint_state.read_text())
    assert 0 < state["stateful_callbacks"]["TrainingClock"]["attributes"]["seconds_before"] <= wall
    # as if the attempt that wrote checkpoint-9 had trained for 1,000 seconds
    state["stateful_callbacks"]["TrainingClock"]["attributes"]["seconds_before"] = 1000.0
    checkpoint_state.write_text(json.dumps(state))

    for restore_callback_states in (False, True):  # restored by the trainer, or by transformers' own option
        model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
        resumed = training_arguments(
            CLLM4RecForCollaborativeLM,
            tmp_path / "resumed",
            restore_callback_states_from_checkpoint=restore_callback_states,
            **arguments,
        )
        trainer = CLLM4RecTrainer(model, resumed, data, tokenizer)
        started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-9"))
        wall = time.perf_counter() - started
        assert 1000 < output.metrics["total_train_runtime"] <= 1000 + wall
        assert trainer.state.log_history[-1]["total_train_runtime"] == output.metrics["total_train_runtime"]
        assert trainer.state.log_history[-1]["train_runtime_before_resume"] == 1000.0
    # a later run of the same trainer from the start (into a folder of its own) counts from zero
    trainer.args.output_dir = str(tmp_path / "again")
    assert trainer.train().metrics["total_train_runtime"] < 1000


def test_a_checkpoint_left_incomplete_is_not_resumed_from(tmp_path, data, base_tokenizer):
    arguments = dict(num_train_epochs=2, save_strategy="steps", save_steps=3, optim="adamw_torch")
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    before = trainable_parameters(model)
    run = training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "run", **arguments)
    CLLM4RecTrainer(model, run, data, tokenizer).train()
    uninterrupted = trainable_parameters(model)
    # a kill while checkpoint-12 was written, and the run's later checkpoint gone
    shutil.rmtree(tmp_path / "run" / "checkpoint-14")
    (tmp_path / "run" / "checkpoint-12" / "trainer_state.json").unlink()

    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    trainer = CLLM4RecTrainer(model, run, data, tokenizer)
    with pytest.raises(ValueError, match="checkpoint-12 is not a complete checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-12"))
    with pytest.raises(ValueError, match="No checkpoint folder at .*checkpoint-15"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-15"))
    trainer.train(resume_from_checkpoint="true")  # as the command line gives it: from checkpoint-9, the last complete
    assert_same_parameters(uninterrupted, trainable_parameters(model), before, atol=1e-6, untrained={CONTENT_USERS})
    empty = training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "empty")
    with pytest.raises(ValueError, match="No complete checkpoint"):
        CLLM4RecTrainer(model, empty, data, tokenizer).train(resume_from_checkpoint=True)


def test_a_checkpoint_of_another_data_set_is_refused(tmp_path, data, base_tokenizer):
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    arguments = training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "run", save_strategy="epoch")
    CLLM4RecTrainer(model, arguments, data, tokenizer).train()
    other = make_synthetic_data(num_users=NUM_USERS + 5, num_items=NUM_ITEMS)
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, other, make_synthetic_tokenizer(other))
    trainer = CLLM4RecTrainer(
        model, training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "other"), other, tokenizer
    )
    with pytest.raises(ValueError, match="has 20 users and 30 items, but the data set .* has 25 and 30"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / f"checkpoint-{STEPS_PER_EPOCH}"))


# Weight averaging


class RecordWeights(TrainerCallback):
    """The raw trainable weights after every optimizer step, keyed by step (0: before training)."""

    def __init__(self):
        self.weights = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights.setdefault(state.global_step, trainable_parameters(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = trainable_parameters(model)


def expected_average(weights: dict[int, dict], decay: float, last_step: int) -> dict[str, torch.Tensor]:
    average = {name: value.clone() for name, value in weights[0].items()}
    for step in range(1, last_step + 1):
        step_decay = min(decay, (1 + step) / (10 + step))
        average = {name: step_decay * average[name] + (1 - step_decay) * weights[step][name] for name in average}
    return average


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_weight_averaging(tmp_path, data, base_tokenizer, model_class):
    """Training follows the raw weights; evaluation, checkpoints and the final model hold their average."""
    arguments = dict(num_train_epochs=2, optim="adamw_torch", learning_rate=1e-2, save_strategy="epoch")
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    plain = CLLM4RecTrainer(model, training_arguments(model_class, tmp_path / "plain", **arguments), data, tokenizer)
    plain.train()
    raw_final = trainable_parameters(model)

    model, tokenizer = make_model(model_class, data, base_tokenizer)
    recorder = RecordWeights()
    trainer = CLLM4RecTrainer(
        model,
        training_arguments(
            model_class, tmp_path / "averaged", weight_average_decay=0.9, eval_strategy="epoch", **arguments
        ),
        data,
        tokenizer,
        callbacks=[recorder],
    )
    trainer.train()
    steps = trainer.state.global_step
    # the averaging leaves the optimization as it was
    for name, value in raw_final.items():
        torch.testing.assert_close(recorder.weights[steps][name], value, rtol=0, atol=1e-6)
    final_average = expected_average(recorder.weights, 0.9, steps)
    for name, value in trainable_parameters(model).items():
        torch.testing.assert_close(value, final_average[name], rtol=0, atol=1e-5)
        if name != CONTENT_USERS:
            assert not torch.allclose(value, raw_final[name], atol=1e-4), f"{name} holds the raw weights"
    # the last round was evaluated with the average, the final model's weights
    last_evaluation = evaluation_logs(trainer)[-1]
    assert last_evaluation["step"] == steps
    assert trainer.evaluate()["eval_selection_score"] == pytest.approx(last_evaluation["eval_selection_score"])
    # a checkpoint holds the average as the model and the raw weights beside it
    checkpoint = tmp_path / "averaged" / f"checkpoint-{STEPS_PER_EPOCH}"
    saved = model_class.from_pretrained(checkpoint)
    raw = load_file(checkpoint / TRAINING_WEIGHTS_NAME)
    average = expected_average(recorder.weights, 0.9, STEPS_PER_EPOCH)
    assert raw.keys() == average.keys()
    saved_weights = all_parameters(saved)  # loading freezes nothing: the trained ones are the averaged ones
    for name, value in average.items():
        torch.testing.assert_close(saved_weights[name], value, rtol=0, atol=1e-5)
        torch.testing.assert_close(raw[name], recorder.weights[STEPS_PER_EPOCH][name], rtol=0, atol=0)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_resuming_with_weight_averaging_ends_like_an_uninterrupted_run(tmp_path, data, base_tokenizer, model_class):
    arguments = dict(
        num_train_epochs=2, save_strategy="steps", save_steps=3, optim="adamw_torch", weight_average_decay=0.8
    )
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    before = trainable_parameters(model)
    trainer = CLLM4RecTrainer(model, training_arguments(model_class, tmp_path / "run", **arguments), data, tokenizer)
    trainer.train()
    uninterrupted = trainable_parameters(model)

    model, tokenizer = make_model(model_class, data, base_tokenizer)
    arguments = training_arguments(model_class, tmp_path / "resumed", **arguments)
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-9"))
    assert_same_parameters(uninterrupted, trainable_parameters(model), before, atol=1e-6, untrained={CONTENT_USERS})


def test_an_averaged_checkpoint_resumes_only_with_its_decay(tmp_path, data, base_tokenizer):
    arguments = dict(save_strategy="steps", save_steps=3)
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    run = training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "run", weight_average_decay=0.8, **arguments)
    CLLM4RecTrainer(model, run, data, tokenizer).train()
    checkpoint = str(tmp_path / "run" / "checkpoint-3")
    for decay, message in [(None, "averaged its weights"), (0.9, "weight_average_decay=0.8")]:
        model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
        resumed = training_arguments(
            CLLM4RecForCollaborativeLM, tmp_path / "resumed", weight_average_decay=decay, **arguments
        )
        with pytest.raises(ValueError, match=message):
            CLLM4RecTrainer(model, resumed, data, tokenizer).train(resume_from_checkpoint=checkpoint)


def test_resuming_from_raw_weights_of_another_model_is_refused(tmp_path, data, base_tokenizer):
    arguments = dict(save_strategy="steps", save_steps=3, weight_average_decay=0.8)
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    CLLM4RecTrainer(
        model, training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "run", **arguments), data, tokenizer
    ).train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    raw = load_file(checkpoint / TRAINING_WEIGHTS_NAME)
    with safe_open(checkpoint / TRAINING_WEIGHTS_NAME, "pt") as stored:
        metadata = stored.metadata()
    partial = {name: value for name, value in raw.items() if "item" not in name}
    save_file(partial, checkpoint / TRAINING_WEIGHTS_NAME, metadata=metadata)
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    trainer = CLLM4RecTrainer(
        model, training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "resumed", **arguments), data, tokenizer
    )
    with pytest.raises(ValueError, match="other trainable weights than the model's"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_the_weight_average_of_bfloat16_weights_is_kept_in_float32():
    """Steps of 0.001 toward the weights are below bfloat16's resolution: an average in bfloat16 would not move."""
    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    start = model.weight.detach().float().clone()
    average = WeightAverage(0.999)
    average.start_from(model)
    average.average.n_averaged.fill_(10**6)  # past the warm-up of the decay
    with torch.no_grad():
        model.weight.add_(1.0)
    target = model.weight.detach().float()
    for _ in range(10):
        average.on_step_end(None, None, None, model=model)
    expected = start + (1 - 0.999**10) * (target - start)
    averaged = average.averaged_weights()["weight"]
    assert averaged.dtype == torch.float32
    torch.testing.assert_close(averaged, expected, rtol=0, atol=1e-6)


# Bad input, refused before any training


def test_a_model_of_another_catalogue_is_refused(tmp_path, data, base_tokenizer):
    for sizes in (
        dict(num_users=NUM_USERS + 1, num_items=NUM_ITEMS),
        dict(num_users=NUM_USERS, num_items=NUM_ITEMS - 1),
    ):
        model = tiny_model(CLLM4RecForCollaborativeLM, vocab_size=len(base_tokenizer), **sizes)
        tokenizer = CLLM4RecTokenizer(base_tokenizer, model.config)
        with pytest.raises(ValueError, match="cannot be trained on this one"):
            CLLM4RecTrainer(model, training_arguments(CLLM4RecForCollaborativeLM, tmp_path), data, tokenizer)


def test_content_steps_need_text(tmp_path, data, base_tokenizer):
    items = data.tables["items"].remove_columns("text").add_column("text", [""] * data.num_items)
    no_text = with_tables(data, items=items, reviews=data.tables["reviews"].select([]))
    for model_class in MODEL_CLASSES:
        model, tokenizer = make_model(model_class, data, base_tokenizer)
        for content_documents in ("item", "user_item", "user_item,item"):
            arguments = training_arguments(model_class, tmp_path, content_documents=content_documents)
            with pytest.raises(ValueError, match="no review or item text"):
                CLLM4RecTrainer(model, arguments, no_text, tokenizer)
        # without content steps the same data set trains
        CLLM4RecTrainer(model, training_arguments(model_class, tmp_path, content_steps=False), no_text, tokenizer)


def test_evaluation_needs_held_out_items(tmp_path, base_tokenizer):
    data = make_synthetic_data(num_users=NUM_USERS, num_items=NUM_ITEMS, validation_fraction=0.0)
    assert data.tables["validation"].num_rows == 0
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, make_synthetic_tokenizer(data))

    def arguments(**overrides):
        return training_arguments(CLLM4RecForCollaborativeLM, tmp_path, **overrides)

    for strategy in ("epoch", "steps"):
        with pytest.raises(ValueError, match="no held-out items"):
            CLLM4RecTrainer(model, arguments(eval_strategy=strategy, eval_steps=5), data, tokenizer)
    for split in ("dev", "reviews", "train"):
        with pytest.raises(ValueError, match="a held-out split of its data set"):
            CLLM4RecTrainer(model, arguments(eval_strategy="epoch", eval_split=split), data, tokenizer)
    CLLM4RecTrainer(model, arguments(eval_strategy="epoch", eval_split="test"), data, tokenizer)
    trainer = CLLM4RecTrainer(model, arguments(), data, tokenizer)
    # evaluate() and predict() refuse what they cannot rank, rather than ranking another split
    for eval_dataset, message in [("validation", "no held-out items"), ("train", "held-out split"), (data, "got")]:
        with pytest.raises(ValueError, match=message):
            trainer.evaluate(eval_dataset=eval_dataset)
    assert 0 <= trainer.evaluate(eval_dataset="test")["eval_recall@20"] <= 1
    with pytest.raises(NotImplementedError, match="model.recommend"):
        trainer.predict("test")


def test_a_negative_regularization_weight_is_refused(tmp_path, data, base_tokenizer):
    with pytest.raises(ValueError, match="lambda_v"):
        tiny_cllm4rec_config(num_users=NUM_USERS, num_items=NUM_ITEMS, lambda_v=-1.0)
    with pytest.raises(ValueError, match="lambda_v"):
        CLLM4RecConfig(num_users=NUM_USERS, num_items=NUM_ITEMS, lambda_v=-0.5)
    # a config edited after construction is checked when the trainer starts
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    model.config.lambda_v = -1.0
    with pytest.raises(ValueError, match="lambda_v"):
        CLLM4RecTrainer(model, training_arguments(CLLM4RecForCollaborativeLM, tmp_path), data, tokenizer)


@pytest.mark.parametrize("lambda_v", [float("nan"), float("inf"), -1.0])
def test_a_regularization_weight_that_is_not_a_finite_number_is_refused(lambda_v):
    with pytest.raises(ValueError, match="lambda_v must be a finite number >= 0"):
        PretrainingModelArguments(backbone=BUILTIN_BACKBONE, lambda_v=lambda_v)
    with pytest.raises(ValueError, match="lambda_v must be a finite number >= 0"):
        FineTuningModelArguments(pretrained="runs/pretrained", lambda_v=lambda_v)


@pytest.mark.parametrize(
    "model_class, overrides, message",
    [
        (CLLM4RecForCollaborativeLM, dict(content_warmup_epochs=-1), "content_warmup_epochs"),
        (CLLM4RecForCollaborativeLM, dict(content_warmup_epochs=1), "fewer than num_train_epochs"),
        (
            CLLM4RecForCollaborativeLM,
            dict(num_train_epochs=3, content_warmup_epochs=1, content_steps=False),
            "needs content steps",
        ),
        (CLLM4RecForCollaborativeLM, dict(collaborative_targets="all_items"), "collaborative_targets must be one of"),
        (CLLM4RecForItemPrediction, dict(mask_ratio=0.0), "mask_ratio"),
        (CLLM4RecForItemPrediction, dict(mask_ratio=1.0), "mask_ratio"),
        (CLLM4RecForItemPrediction, dict(mask_ratio=float("nan")), "mask_ratio"),
        (CLLM4RecForItemPrediction, dict(alternation="step"), "alternation"),
        (CLLM4RecForItemPrediction, dict(content_documents="reviews"), "content_documents"),
        (CLLM4RecForItemPrediction, dict(max_length=4), "max_length"),
        (CLLM4RecForItemPrediction, dict(recall_ks=[0]), "recall_ks"),
        (CLLM4RecForItemPrediction, dict(num_train_epochs=1.5), "whole number"),
        (CLLM4RecForItemPrediction, dict(weight_average_decay=1.0), "weight_average_decay"),
        (CLLM4RecForItemPrediction, dict(weight_average_decay=float("nan")), "weight_average_decay"),
        (CLLM4RecForItemPrediction, dict(eval_max_tokens=0), "eval_max_tokens"),
        (CLLM4RecForItemPrediction, dict(train_sampling_strategy="sorted"), "train_sampling_strategy must be one of"),
        (CLLM4RecForItemPrediction, dict(backbone_training="partial"), "backbone_training"),
        (CLLM4RecForItemPrediction, dict(backbone_training="lora", lora_rank=0), "lora_rank must be a whole"),
        (CLLM4RecForItemPrediction, dict(backbone_training="lora", lora_alpha=float("inf")), "lora_alpha must be"),
        (CLLM4RecForItemPrediction, dict(backbone_training="lora", lora_dropout=1.0), "lora_dropout must lie"),
        (CLLM4RecForItemPrediction, dict(history_permutations=0), "history_permutations"),
        (CLLM4RecForCollaborativeLM, dict(history_permutations=65), "history_permutations is at most 64, got 65"),
        (CLLM4RecForItemPrediction, dict(lora_rank=4), "lora_rank apply to backbone_training='lora'"),
        (CLLM4RecForCollaborativeLM, dict(lora_target_modules=["c_fc"]), "lora_target_modules apply to"),
    ],
)
def test_bad_training_arguments(tmp_path, model_class, overrides, message):
    with pytest.raises(ValueError, match=message):
        training_arguments(model_class, tmp_path, **overrides)


# A value other than the default of each option of TrainingArguments that CLLM4Rec's training does not use.
UNUSED_OPTION_VALUES = {
    "label_smoothing_factor": 0.1,
    "neftune_noise_alpha": 5.0,
    "use_liger_kernel": True,
    "use_cache": True,
    "prediction_loss_only": True,
    "eval_do_concat_batches": False,
    "eval_use_gather_object": True,
    "eval_accumulation_steps": 2,
    "include_for_metrics": ["inputs"],
    "batch_eval_metrics": True,
    "bf16_full_eval": True,
    "fp16_full_eval": True,
    "label_names": ["targets"],
    "length_column_name": "size",
    "dataloader_drop_last": True,
    "auto_find_batch_size": True,
}


def test_every_unused_trainer_option_has_a_test_value():
    assert UNUSED_OPTION_VALUES.keys() == UNUSED_TRAINER_OPTIONS.keys()


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize("name", UNUSED_OPTION_VALUES)
def test_trainer_options_that_training_does_not_use_are_refused(tmp_path, model_class, name):
    with pytest.raises(ValueError, match=f"{name} does not apply to CLLM4Rec training: "):
        training_arguments(model_class, tmp_path, **{name: UNUSED_OPTION_VALUES[name]})


def test_optim_target_modules_need_a_low_rank_optimizer(tmp_path):
    with pytest.raises(ValueError, match="optim='adamw_torch' reads none"):
        training_arguments(CLLM4RecForItemPrediction, tmp_path, optim="adamw_torch", optim_target_modules=["c_attn"])
    arguments = training_arguments(
        CLLM4RecForItemPrediction, tmp_path, optim="galore_adamw", optim_target_modules=["c_attn"]
    )
    assert arguments.optim_target_modules == ["c_attn"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(metric_for_best_model="loss"), "metric_for_best_model must be one of the evaluation metrics"),
        (dict(metric_for_best_model="eval_recall@10"), "'recall@20', 'recall@40', 'ndcg@100'"),
        (dict(metric_for_best_model="recall@20", greater_is_better=False), "better when higher"),
    ],
)
def test_the_selection_metric_must_be_an_evaluation_metric(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        training_arguments(CLLM4RecForItemPrediction, tmp_path, **overrides)


@pytest.mark.parametrize("metric", ["selection_score", "eval_recall@10", "ndcg@5"])
def test_any_evaluation_metric_selects(tmp_path, metric):
    arguments = training_arguments(
        CLLM4RecForItemPrediction, tmp_path, recall_ks=[10], ndcg_ks=[5], metric_for_best_model=metric
    )
    assert arguments.greater_is_better


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_data_seed_orders_the_documents_apart_from_the_seed(tmp_path, data, base_tokenizer, model_class):
    def first_epoch(**seeds):
        model, tokenizer = make_model(model_class, data, base_tokenizer)
        trainer = CLLM4RecTrainer(model, training_arguments(model_class, tmp_path, **seeds), data, tokenizer)
        trainer.schedule.set_epoch(0)
        return [[trainer.train_dataset[index]["input_ids"] for index in batch] for batch in trainer.schedule]

    assert first_epoch(seed=0, data_seed=5) == first_epoch(seed=5) != first_epoch(seed=0)
    with pytest.raises(ValueError, match="data_seed must be a whole number of at least 0, got -1"):
        training_arguments(model_class, tmp_path, data_seed=-1)


def test_the_loader_takes_the_dataloader_options(tmp_path, data, base_tokenizer):
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    options = dict(dataloader_prefetch_factor=3, dataloader_multiprocessing_context="spawn", dataloader_in_order=False)
    arguments = training_arguments(CLLM4RecForItemPrediction, tmp_path, dataloader_num_workers=1, **options)
    loader = CLLM4RecTrainer(model, arguments, data, tokenizer).get_train_dataloader()
    assert (loader.prefetch_factor, loader.in_order) == (3, False)
    assert loader.multiprocessing_context.get_start_method() == "spawn"


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_a_document_length_beyond_the_context_is_refused_before_training(tmp_path, data, base_tokenizer, model_class):
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    context = model.config.context_length
    with pytest.raises(ValueError, match=f"max_length={context + 1} exceeds the backbone's context of {context}"):
        CLLM4RecTrainer(
            model, training_arguments(model_class, tmp_path / "run", max_length=context + 1), data, tokenizer
        )
    assert not (tmp_path / "run").exists()
    trainer = CLLM4RecTrainer(model, training_arguments(model_class, tmp_path, max_length=context), data, tokenizer)
    assert trainer.max_length == context


@pytest.mark.parametrize("arguments_class", [PretrainingArguments, FineTuningArguments])
def test_training_needs_an_output_folder(arguments_class):
    with pytest.raises(ValueError, match="output_dir is required"):
        arguments_class()


# Evaluation


@pytest.mark.parametrize("bf16", [False, True])
def test_evaluation_runs_in_the_trainings_mixed_precision(tmp_path, data, base_tokenizer, bf16):
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    arguments = training_arguments(CLLM4RecForItemPrediction, tmp_path, bf16=bf16)
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    dtypes = set()
    projection = model.base_model.backbone.base_model.h[0].mlp.c_fc
    hook = projection.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    try:
        metrics = trainer.evaluate()
    finally:
        hook.remove()
    assert dtypes == {torch.bfloat16 if bf16 else torch.float32}
    assert 0 <= metrics["eval_recall@20"] <= 1


def test_evaluate_model_metrics_lie_in_the_unit_interval(data, base_tokenizer):
    for model_class in MODEL_CLASSES:
        model, tokenizer = make_model(model_class, data, base_tokenizer)
        model.train()
        metrics = evaluate_model(model, tokenizer, data, "validation", batch_size=7, recall_ks=(5, 10), ndcg_ks=(10,))
        assert model.training, "evaluation must give the model back in training mode"
        assert {"recall@5", "recall@10", "ndcg@10"} <= metrics.keys()
        assert all(0.0 <= metrics[name] <= 1.0 for name in ("recall@5", "recall@10", "ndcg@10"))
        assert metrics["num_users"] == len(np.unique(data.tables["validation"]["user_id"]))


@pytest.mark.parametrize("warmup_epochs", [0, 2])
def test_pretraining_begins_with_content_warmup_epochs(tmp_path, data, base_tokenizer, warmup_epochs):
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    arguments = training_arguments(
        CLLM4RecForCollaborativeLM, tmp_path, num_train_epochs=3, content_warmup_epochs=warmup_epochs
    )
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    assert trainer.schedule.warmup_epochs == warmup_epochs and len(trainer.schedule) == STEPS_PER_EPOCH
    for epoch in range(3):
        trainer.schedule.set_epoch(epoch)
        sources = {source for batch in trainer.schedule for source, _, _ in batch}
        assert sources == ({1} if epoch < warmup_epochs else {0, 1})


def test_max_steps_must_reach_past_the_content_warmup(tmp_path, data, base_tokenizer):
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    warmup = dict(num_train_epochs=3, content_warmup_epochs=1)
    arguments = training_arguments(CLLM4RecForCollaborativeLM, tmp_path, max_steps=STEPS_PER_EPOCH, **warmup)
    with pytest.raises(ValueError, match=f"max_steps={STEPS_PER_EPOCH} ends within the content warm-up"):
        CLLM4RecTrainer(model, arguments, data, tokenizer)
    arguments = training_arguments(CLLM4RecForCollaborativeLM, tmp_path, max_steps=STEPS_PER_EPOCH + 1, **warmup)
    assert CLLM4RecTrainer(model, arguments, data, tokenizer).schedule.warmup_epochs == 1


@pytest.mark.parametrize("eval_strategy", ["epoch", "steps"])
def test_content_warmup_epochs_are_not_evaluated(tmp_path, data, base_tokenizer, eval_strategy):
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    arguments = training_arguments(
        CLLM4RecForCollaborativeLM,
        tmp_path,
        num_train_epochs=3,
        content_warmup_epochs=2,
        eval_strategy=eval_strategy,
        eval_steps=3,
    )
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    trainer.train()
    evaluated = [entry["epoch"] for entry in trainer.state.log_history if "eval_selection_score" in entry]
    assert evaluated and min(evaluated) > 2


def test_fine_tuning_with_another_recommendation_prompt(tmp_path):
    prompt = "{user} has interacted with {history}"
    run_demo_stages(
        tmp_path, finetuning_model=FineTuningModelArguments(str(tmp_path / "pre"), recommendation_prompt=prompt)
    )
    model = CLLM4RecForItemPrediction.from_pretrained(tmp_path / "fine")
    tokenizer = CLLM4RecTokenizer.from_pretrained(tmp_path / "fine")
    assert model.config.recommendation_prompt == tokenizer.config.recommendation_prompt == prompt
    assert tokenizer.decode(tokenizer.render("recommendation_prompt", user=3, history=[1, 2])).endswith("<item_2>")
    with pytest.raises(ValueError, match="recommendation_prompt"):
        run_finetuning(
            FineTuningModelArguments(pretrained=str(tmp_path / "pre"), recommendation_prompt="{history} only"),
            DataArguments(),
            training_arguments(CLLM4RecForItemPrediction, tmp_path / "bad"),
        )


# The command line


def test_each_command_takes_the_options_of_its_stage(capsys, tmp_path):
    output = ("--output_dir", str(tmp_path / "run"))
    assert_usage_error(
        capsys, "pretrain", "--mask_ratio", "0.3", *output, message="--mask_ratio: an option of `cllm4rec finetune`"
    )
    assert_usage_error(
        capsys,
        "finetune",
        "--pretrained",
        "p",
        "--random_init",
        *output,
        message="--random_init: an option of `cllm4rec pretrain`",
    )
    assert_usage_error(
        capsys,
        "finetune",
        "--pretrained",
        "p",
        "--content_warmup_epochs",
        "2",
        *output,
        message="of `cllm4rec pretrain`",
    )
    assert_usage_error(capsys, "pretrain", "--backbone", BUILTIN_BACKBONE, message="output_dir is required")
    assert_usage_error(capsys, "finetune", *output, message="--pretrained")


def test_options_the_commands_do_not_use_are_refused_in_one_line(capsys, tmp_path):
    output = ("--output_dir", str(tmp_path / "run"))
    assert_usage_error(
        capsys,
        "pretrain",
        "--do_eval",
        "--do_train",
        *output,
        message="--do_eval, --do_train: these runs always train",
    )
    assert_usage_error(
        capsys, "pretrain", "--label_smoothing_factor", "0.1", *output, message="label_smoothing_factor does not apply"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "script, arguments, message",
    [
        ("pretrain.py", ["--recipe", "nope"], "unknown recipe 'nope'"),
        ("pretrain.py", ["--eval_str", "no"], "unrecognized arguments: --eval_str"),
        ("finetune.py", ["--pretrained", "p", "--do_predict"], "--do_predict: these runs always train"),
    ],
)
def test_the_example_scripts_read_the_command_line_as_the_commands_do(tmp_path, script, arguments, message):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *arguments, "--output_dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_training_commands_end_with_the_test_metrics_and_the_model_folder(capsys, tmp_path):
    quick = ("--num_train_epochs", "1", "--content_steps", "false", "--report_to", "none", "--use_cpu", "true")
    pretrained = tmp_path / "pretrained"
    assert run_cli("pretrain", "--backbone", BUILTIN_BACKBONE, "--output_dir", str(pretrained), *quick) == 0
    stdout = capsys.readouterr().out
    measured = json.loads((pretrained / "test_results.json").read_text())
    assert f"Test metrics ({int(measured['test_num_users'])} users):" in stdout
    for name in ("recall@20", "recall@40", "ndcg@100"):
        assert f"  {name:<12}{measured['test_' + name]:.4f}" in stdout
    assert stdout.rstrip().endswith(f"to {pretrained}") and "{'test_" not in stdout
    assert math.isfinite(measured["test_recall@20"])


def test_the_hub_gets_no_pickle_of_the_run(tmp_path, data, base_tokenizer, monkeypatch):
    """The Trainer writes `training_args.bin` (a pickle) beside the model; the package never loads it nor uploads it."""
    uploaded = []

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, commit_message, revision):
            uploaded.extend(path.relative_to(folder_path).as_posix() for path in Path(folder_path).rglob("*"))

    monkeypatch.setattr(hub_checkpoint, "HfApi", RecordingApi)
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    arguments = training_arguments(CLLM4RecForItemPrediction, tmp_path, save_strategy="epoch")
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    trainer.train()
    trainer.save_model()
    assert (tmp_path / "training_args.bin").is_file() and (tmp_path / "checkpoint-7" / "training_args.bin").is_file()
    trainer.push_to_hub()
    assert "model.safetensors" in uploaded and "id_mappings.safetensors" in uploaded
    pickles = [name for name in uploaded if name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    assert not pickles, f"uploaded pickles: {pickles}"
    package = Path(hub_checkpoint.__file__).parents[1]
    for source in package.rglob("*.py"):
        text = source.read_text()
        assert "training_args.bin" not in text and "torch.load(" not in text, f"{source} reads a pickle of a run"


def test_each_pretraining_model_option_reaches_the_model(tmp_path):
    backbone, other_tokenizer = tmp_path / "backbone", tmp_path / "tokenizer"
    torch.manual_seed(0)
    pretrained = AutoModelForCausalLM.from_config(tiny_text_config("gpt2"))
    pretrained.save_pretrained(backbone)
    tiny_word_tokenizer().save_pretrained(backbone)
    tiny_word_tokenizer().save_pretrained(other_tokenizer)
    data = make_synthetic_data(num_users=6, num_items=9)

    def build(**options):
        return build_pretraining_model(PretrainingModelArguments(backbone=str(backbone), **options), data)

    model, tokenizer = build()
    assert model.config.tie_item_head and model.model.item_head is None
    assert model.config.lambda_v == 1.0 and model.config.id_embedding_dropout == 0.0
    assert model.config.id_embedding_init == "normal"
    for name, weight in pretrained.state_dict().items():
        assert torch.equal(model.model.backbone.state_dict()[name], weight), name
    model, _ = build(lambda_v=0.25, id_embedding_dropout=0.3, id_embedding_init="vocabulary", untie_item_head=True)
    assert model.config.lambda_v == 0.25 and model.config.id_embedding_dropout == 0.3
    assert model.config.id_embedding_init == "vocabulary"
    assert not model.config.tie_item_head and model.model.item_head.weight.shape == (9, model.config.hidden_size)
    model, _ = build(random_init=True)
    weights = pretrained.state_dict()
    assert not torch.equal(
        model.model.backbone.state_dict()["transformer.h.0.attn.c_attn.weight"],
        weights["transformer.h.0.attn.c_attn.weight"],
    )
    _, tokenizer = build(tokenizer=str(other_tokenizer))
    assert tokenizer.base_tokenizer.name_or_path == str(other_tokenizer)


def test_the_private_trainer_hooks_it_overrides_are_still_the_trainers():
    """A private hook that a transformers release renames or reshapes would stop being called without a sound."""
    overridden = [name for name in vars(CLLM4RecTrainer) if name.startswith("_") and not name.startswith("__")]
    hooks = [name for name in overridden if callable(getattr(CLLM4RecTrainer, name)) and hasattr(Trainer, name)]
    assert hooks == ["_clip_grad_norm", "_get_grad_norm", "_save_checkpoint", "_issue_warnings_after_load"]
    for name in hooks:
        ours, theirs = inspect.signature(getattr(CLLM4RecTrainer, name)), inspect.signature(getattr(Trainer, name))
        assert list(ours.parameters) == list(theirs.parameters), name


def test_the_data_loader_draws_once_from_the_global_generator_whatever_the_epochs(data, base_tokenizer, tmp_path):
    """Dropout draws from the global generator: what it draws must not depend on how many epochs have begun."""
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    trainer = CLLM4RecTrainer(model, training_arguments(CLLM4RecForItemPrediction, tmp_path), data, tokenizer)
    torch.manual_seed(0)
    dataloader = trainer.get_train_dataloader()
    for epoch in range(3):
        dataloader.set_epoch(epoch)
        for _ in dataloader:
            pass
    after_three_epochs = torch.rand(1)
    torch.manual_seed(0)
    torch.empty((), dtype=torch.int64).random_()  # the one draw that seeds the loader's own generator
    assert torch.equal(after_three_epochs, torch.rand(1))


@pytest.mark.slow
def test_a_compiled_model_trains_as_the_eager_one_and_saves_plain_weights(tmp_path, data, base_tokenizer):
    trained = {}
    for compiled in (False, True):
        model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
        before = trainable_parameters(model)
        arguments = training_arguments(CLLM4RecForCollaborativeLM, tmp_path / str(compiled), torch_compile=compiled)
        trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
        trainer.train()
        assert isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule) == compiled
        trainer.save_model()
        trained[compiled] = trainable_parameters(model)
    assert_same_parameters(trained[False], trained[True], before, atol=1e-5, untrained={CONTENT_USERS})
    saved = all_parameters(CLLM4RecForCollaborativeLM.from_pretrained(tmp_path / "True"))
    saved = {name: saved[name] for name in trained[True]}  # keys without the compiled module's prefix
    assert_same_parameters(trained[True], saved, before, atol=0, untrained={CONTENT_USERS})
