import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from safetensors.torch import load_file, save_file
from tiny_models import tiny_cllm4rec_config, tiny_model
from transformers import TrainerCallback

from hf_cllm4rec import (
    CLLM4RecConfig,
    CLLM4RecForCollaborativeLM,
    CLLM4RecForItemPrediction,
    CLLM4RecTokenizer,
)
from hf_cllm4rec.data import RecommendationData, make_synthetic_data, make_synthetic_tokenizer
from hf_cllm4rec.evaluation import evaluate_model
from hf_cllm4rec.training import CLLM4RecTrainer, CLLM4RecTrainingArguments
from hf_cllm4rec.training.trainer import LOSS_COMPONENTS
from hf_cllm4rec.training.weight_averaging import TRAINING_WEIGHTS_NAME, WeightAverage

# 20 users, 30 items: 20 collaborative or masked-history documents and 30 item-text documents a round.
NUM_USERS, NUM_ITEMS = 20, 30


@pytest.fixture(scope="module")
def data() -> RecommendationData:
    return make_synthetic_data(num_users=NUM_USERS, num_items=NUM_ITEMS)


@pytest.fixture(scope="module")
def base_tokenizer(data):
    return make_synthetic_tokenizer(data)


def make_model(model_class, data, base_tokenizer, id_std: float = 0.5, **config):
    """A tiny model sized to `data` (ID tables redrawn with a visible spread) and its tokenizer."""
    model = tiny_model(
        model_class,
        num_users=data.num_users,
        num_items=data.num_items,
        vocab_size=len(base_tokenizer),
        id_std=id_std,
        **config,
    )
    return model, CLLM4RecTokenizer(base_tokenizer, model.config)


def training_arguments(output_dir, **overrides) -> CLLM4RecTrainingArguments:
    arguments = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        content_warmup_epochs=1,
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
    return CLLM4RecTrainingArguments(**{**arguments, **overrides})


def trainable_parameters(model) -> dict[str, torch.Tensor]:
    return {
        name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad
    }


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


# Pretraining, fine-tuning, logging, evaluation rounds and the best model


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


def test_pretraining_then_fine_tuning(tmp_path, data, base_tokenizer):
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    arguments = training_arguments(
        tmp_path / "pretrain",
        num_train_epochs=2,
        logging_steps=1,
        logging_strategy="steps",
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        optim="adamw_torch",
        learning_rate=1e-2,
    )
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    trainer.train()
    # one evaluation at the end of each round of the schedule: the content warm-up (one round), then two rounds
    evaluations = evaluation_logs(trainer)
    assert len(trainer.schedule.rounds) == 3
    assert [log["round"] for log in evaluations] == [0, 1, 2]
    assert [log["step"] for log in evaluations] == list(np.cumsum(trainer.schedule.round_lengths()))
    names = [
        "collaborative_lm_loss",
        "collaborative_regularization_loss",
        "content_lm_loss",
        "content_regularization_loss",
    ]
    assert_components_add_up(training_logs(trainer), {name: LOSS_COMPONENTS[name] for name in names})
    for log in evaluations:
        assert all(0.0 <= log[f"eval_{name}"] <= 1.0 for name in ("recall@20", "recall@40", "ndcg@100"))
    best = max(log["eval_selection_score"] for log in evaluations)
    assert trainer.state.best_metric == pytest.approx(best)
    assert trainer.evaluate()["eval_selection_score"] == pytest.approx(best)
    trainer.save_model(tmp_path / "pretrained")

    model = CLLM4RecForItemPrediction.from_pretrained(tmp_path / "pretrained")
    tokenizer = CLLM4RecTokenizer.from_pretrained(tmp_path / "pretrained")
    arguments = training_arguments(
        tmp_path / "finetune",
        num_train_epochs=3,
        logging_steps=1,
        logging_strategy="steps",
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        save_total_limit=1,
        optim="adamw_torch",
        learning_rate=1e-2,
    )
    before = trainable_parameters(model)
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    trainer.train()
    evaluations = evaluation_logs(trainer)
    assert [log["round"] for log in evaluations] == [0, 1, 2]
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


# Exactness: gradient accumulation and resuming


@pytest.mark.parametrize("model_class", [CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction])
def test_gradient_accumulation_gives_the_update_of_the_whole_batch(tmp_path, data, base_tokenizer, model_class):
    """Batch 8 in one step, or batches of 4 accumulated over two: the same parameters after every step."""
    results = {}
    for batch_size, accumulation in ((8, 1), (4, 2)):
        model, tokenizer = make_model(model_class, data, base_tokenizer)
        before = trainable_parameters(model)
        arguments = training_arguments(
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


@pytest.mark.parametrize("model_class", [CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction])
def test_documents_of_a_batch_differ_in_length(tmp_path, data, base_tokenizer, model_class):
    """The accumulation test is only meaningful with padding: documents of one batch differ in length."""
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    arguments = training_arguments(tmp_path, per_device_train_batch_size=4, content_documents="user_item,item")
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


@pytest.mark.parametrize("model_class", [CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction])
def test_resuming_from_a_checkpoint_ends_like_an_uninterrupted_run(tmp_path, data, base_tokenizer, model_class):
    # checkpoint-9 lies inside an epoch of a source: in pretraining the round-1 content epoch (steps 8 to 11, after
    # 4 warm-up steps and 3 collaborative ones), in fine-tuning the round-2 masked-history epoch (steps 8 to 10)
    arguments = dict(
        num_train_epochs=2, save_strategy="steps", save_steps=3, optim="adamw_torch", lr_scheduler_type="linear"
    )
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    before = trainable_parameters(model)
    trainer = CLLM4RecTrainer(model, training_arguments(tmp_path / "run", **arguments), data, tokenizer)
    trainer.train()
    uninterrupted = trainable_parameters(model)
    total_steps = trainer.state.global_step
    assert total_steps >= 14 and (tmp_path / "run" / "checkpoint-9").is_dir()

    # a new process: the same fresh model, resumed from the checkpoint in the middle of the run
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    trainer = CLLM4RecTrainer(model, training_arguments(tmp_path / "resumed", **arguments), data, tokenizer)
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-9"))
    assert trainer.state.global_step == total_steps
    assert_same_parameters(uninterrupted, trainable_parameters(model), before, atol=1e-6, untrained={CONTENT_USERS})


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


@pytest.mark.parametrize("model_class", [CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction])
def test_weight_averaging(tmp_path, data, base_tokenizer, model_class):
    """Training follows the raw weights; evaluation, checkpoints and the final model hold their average."""
    arguments = dict(num_train_epochs=2, optim="adamw_torch", learning_rate=1e-2, save_strategy="epoch")
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    plain = CLLM4RecTrainer(model, training_arguments(tmp_path / "plain", **arguments), data, tokenizer)
    plain.train()
    raw_final = trainable_parameters(model)

    model, tokenizer = make_model(model_class, data, base_tokenizer)
    recorder = RecordWeights()
    trainer = CLLM4RecTrainer(
        model,
        training_arguments(tmp_path / "averaged", weight_average_decay=0.9, eval_strategy="epoch", **arguments),
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
    first_round_end = trainer.schedule.round_lengths()[0]
    checkpoint = tmp_path / "averaged" / f"checkpoint-{first_round_end}"
    saved = model_class.from_pretrained(checkpoint)
    raw = load_file(checkpoint / TRAINING_WEIGHTS_NAME)
    average = expected_average(recorder.weights, 0.9, first_round_end)
    for name, value in trainable_parameters(saved).items():
        torch.testing.assert_close(value, average[name], rtol=0, atol=1e-5)
        torch.testing.assert_close(raw[name], recorder.weights[first_round_end][name], rtol=0, atol=0)


@pytest.mark.parametrize("model_class", [CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction])
def test_resuming_with_weight_averaging_ends_like_an_uninterrupted_run(tmp_path, data, base_tokenizer, model_class):
    arguments = dict(
        num_train_epochs=2, save_strategy="steps", save_steps=3, optim="adamw_torch", weight_average_decay=0.8
    )
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    before = trainable_parameters(model)
    trainer = CLLM4RecTrainer(model, training_arguments(tmp_path / "run", **arguments), data, tokenizer)
    trainer.train()
    uninterrupted = trainable_parameters(model)

    model, tokenizer = make_model(model_class, data, base_tokenizer)
    trainer = CLLM4RecTrainer(model, training_arguments(tmp_path / "resumed", **arguments), data, tokenizer)
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-9"))
    assert_same_parameters(uninterrupted, trainable_parameters(model), before, atol=1e-6, untrained={CONTENT_USERS})


def test_resuming_from_raw_weights_of_another_model_is_refused(tmp_path, data, base_tokenizer):
    arguments = dict(save_strategy="steps", save_steps=3, weight_average_decay=0.8)
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    CLLM4RecTrainer(model, training_arguments(tmp_path / "run", **arguments), data, tokenizer).train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    raw = load_file(checkpoint / TRAINING_WEIGHTS_NAME)
    save_file({name: value for name, value in raw.items() if "item" not in name}, checkpoint / TRAINING_WEIGHTS_NAME)
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    trainer = CLLM4RecTrainer(model, training_arguments(tmp_path / "resumed", **arguments), data, tokenizer)
    with pytest.raises(ValueError, match="other trainable weights than the model's"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


def test_the_weight_average_of_bfloat16_weights_is_kept_in_float32():
    """Steps of 0.001 toward the weights are below bfloat16's resolution: an average in bfloat16 would not move."""
    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    start = model.weight.detach().float().clone()
    average = WeightAverage(0.999)
    average.start_from(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    target = model.weight.detach().float()
    for step in range(10**6, 10**6 + 10):  # past the warm-up of the decay
        average.on_step_end(None, SimpleNamespace(global_step=step), None, model=model)
    expected = start + (1 - 0.999**10) * (target - start)
    assert average.average["weight"].dtype == torch.float32
    torch.testing.assert_close(average.average["weight"], expected, rtol=0, atol=1e-6)


# Bad input, refused before any training


def test_a_model_of_another_catalogue_is_refused(tmp_path, data, base_tokenizer):
    for sizes in (
        dict(num_users=NUM_USERS + 1, num_items=NUM_ITEMS),
        dict(num_users=NUM_USERS, num_items=NUM_ITEMS - 1),
    ):
        model = tiny_model(CLLM4RecForCollaborativeLM, vocab_size=len(base_tokenizer), **sizes)
        tokenizer = CLLM4RecTokenizer(base_tokenizer, model.config)
        with pytest.raises(ValueError, match="cannot be trained on this one"):
            CLLM4RecTrainer(model, training_arguments(tmp_path), data, tokenizer)


def test_content_steps_need_text(tmp_path, data, base_tokenizer):
    items = data.tables["items"].remove_columns("text").add_column("text", [""] * data.num_items)
    no_text = with_tables(data, items=items, reviews=data.tables["reviews"].select([]))
    for model_class in (CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction):
        model, tokenizer = make_model(model_class, data, base_tokenizer)
        for content_documents in ("item", "user_item", "user_item,item"):
            arguments = training_arguments(tmp_path, content_documents=content_documents)
            with pytest.raises(ValueError, match="no review or item text"):
                CLLM4RecTrainer(model, arguments, no_text, tokenizer)
        # without content steps the same data set trains
        CLLM4RecTrainer(model, training_arguments(tmp_path, content_steps=False), no_text, tokenizer)


def test_evaluation_needs_held_out_items(tmp_path, base_tokenizer):
    data = make_synthetic_data(num_users=NUM_USERS, num_items=NUM_ITEMS, validation_fraction=0.0)
    assert data.tables["validation"].num_rows == 0
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, make_synthetic_tokenizer(data))
    for strategy in ("epoch", "steps"):
        arguments = training_arguments(tmp_path, eval_strategy=strategy, eval_steps=5)
        with pytest.raises(ValueError, match="no held-out items"):
            CLLM4RecTrainer(model, arguments, data, tokenizer)
    for split in ("dev", "reviews", "train"):
        arguments = training_arguments(tmp_path, eval_strategy="epoch", eval_split=split)
        with pytest.raises(ValueError, match="a held-out split of its data set"):
            CLLM4RecTrainer(model, arguments, data, tokenizer)
    CLLM4RecTrainer(model, training_arguments(tmp_path, eval_strategy="epoch", eval_split="test"), data, tokenizer)
    trainer = CLLM4RecTrainer(model, training_arguments(tmp_path), data, tokenizer)
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
        CLLM4RecTrainer(model, training_arguments(tmp_path), data, tokenizer)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(content_warmup_epochs=-1), "content_warmup_epochs"),
        (dict(alternation="step"), "alternation"),
        (dict(content_documents="reviews"), "content_documents"),
        (dict(max_length=4), "max_length"),
        (dict(recall_ks=[0]), "recall_ks"),
        (dict(num_train_epochs=1.5), "whole number"),
        (dict(weight_average_decay=1.0), "weight_average_decay"),
        (dict(weight_average_decay=0.0), "weight_average_decay"),
        (dict(eval_max_tokens=0), "eval_max_tokens"),
        (dict(train_sampling_strategy="sorted"), "train_sampling_strategy must be one of"),
    ],
)
def test_bad_training_arguments(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        training_arguments(tmp_path, **overrides)


# Evaluation


@pytest.mark.parametrize("bf16", [False, True])
def test_evaluation_runs_in_the_trainings_mixed_precision(tmp_path, data, base_tokenizer, bf16):
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    trainer = CLLM4RecTrainer(model, training_arguments(tmp_path, bf16=bf16), data, tokenizer)
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
    for model_class in (CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction):
        model, tokenizer = make_model(model_class, data, base_tokenizer)
        model.train()
        metrics = evaluate_model(model, tokenizer, data, "validation", batch_size=7, recall_ks=(5, 10), ndcg_ks=(10,))
        assert model.training, "evaluation must give the model back in training mode"
        assert {"recall@5", "recall@10", "ndcg@10"} <= metrics.keys()
        assert all(0.0 <= metrics[name] <= 1.0 for name in ("recall@5", "recall@10", "ndcg@10"))
        assert metrics["num_users"] == len(np.unique(data.tables["validation"]["user_id"]))


def test_evaluate_model_batches_by_prompt_tokens(data, base_tokenizer, monkeypatch):
    """A token limit changes how users are batched (short prompts in larger batches), not the metrics."""
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    score_items, batches = model.score_items, []

    def recording_score_items(user_ids, user_histories, **kwargs):
        input_ids, _ = model.prompt_batch(tokenizer, user_ids, user_histories, kwargs.get("max_length"))
        batches.append(input_ids.shape)
        return score_items(user_ids, user_histories, **kwargs)

    monkeypatch.setattr(model, "score_items", recording_score_items)
    by_users = evaluate_model(model, tokenizer, data, "validation", batch_size=4)
    users_batches, batches[:] = list(batches), []
    by_tokens = evaluate_model(model, tokenizer, data, "validation", batch_size=1000, max_tokens=150)
    assert by_tokens == pytest.approx(by_users)
    assert all(rows <= 4 for rows, _ in users_batches)
    assert all(rows * width <= 150 or rows == 1 for rows, width in batches)
    assert sum(rows for rows, _ in batches) == sum(rows for rows, _ in users_batches)
    assert batches[0][0] > 4 and len(batches) < len(users_batches), "short prompts share larger batches"
    assert [width for _, width in batches] == sorted(width for _, width in batches), "shortest prompts first"


def test_evaluate_model_excludes_training_items(data, base_tokenizer, monkeypatch):
    """A model that scores the training items highest, then the held-out ones, is perfect once training items go."""
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    train, validation = data.to_sparse("train").toarray(), data.to_sparse("validation").toarray()
    noise = torch.rand(data.num_users, data.num_items, generator=torch.Generator().manual_seed(0))
    scores = torch.as_tensor(10 * train + 5 * validation, dtype=torch.float32) + noise
    histories = data.histories("train")

    def score_items(user_ids, user_histories, *, tokenizer, max_length=None):
        for user, history in zip(user_ids, user_histories, strict=True):
            assert np.array_equal(history, histories[user])
        return scores[list(user_ids)]

    monkeypatch.setattr(model, "score_items", score_items)
    fewest_held_out = int(validation.sum(1)[validation.sum(1) > 0].min())
    metrics = evaluate_model(model, tokenizer, data, "validation", batch_size=6, recall_ks=(1, 20), ndcg_ks=(20,))
    assert metrics["recall@1"] == metrics["recall@20"] == metrics["ndcg@20"] == 1.0
    assert fewest_held_out >= 1 and math.isclose(metrics["num_users"], (validation.sum(1) > 0).sum())


def test_evaluate_model_scores_users_without_history_without_a_forward_pass(data, base_tokenizer, monkeypatch):
    """Users with no training item join a batch of prompted users: no batch of theirs alone, no extra forward pass."""
    model, tokenizer = make_model(CLLM4RecForItemPrediction, data, base_tokenizer)
    histories = data.histories("train")
    validation_users = np.unique(data.tables["validation"]["user_id"])
    emptied = set(validation_users[:3].tolist())
    for user in emptied:
        histories[user] = histories[user][:0]
    monkeypatch.setattr(data, "histories", lambda split: histories)
    score_items, calls = model.score_items, []

    def recording_score_items(user_ids, user_histories, **kwargs):
        calls.append(list(user_ids))
        return score_items(user_ids, user_histories, **kwargs)

    monkeypatch.setattr(model, "score_items", recording_score_items)
    metrics = evaluate_model(model, tokenizer, data, "validation", batch_size=1, lockstep=True)
    assert len(calls) == len(validation_users) - len(emptied), "one forward pass per prompted user, none for others"
    assert not emptied & {user for batch in calls for user in batch}
    assert metrics["num_users"] == len(validation_users)


@pytest.mark.parametrize(
    "overrides, rounds",
    [
        (dict(content_warmup_epochs=3, num_train_epochs=2), [(1, 1, 1), (0, 1), (0, 1)]),
        (dict(content_warmup_epochs=0, num_train_epochs=2), [(0, 1), (0, 1)]),
        (dict(content_steps=False, num_train_epochs=2), [(0,), (0,)]),
    ],
)
def test_pretraining_schedule_has_the_warm_up_as_one_round(tmp_path, data, base_tokenizer, overrides, rounds):
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    trainer = CLLM4RecTrainer(model, training_arguments(tmp_path, **overrides), data, tokenizer)
    assert trainer.schedule.rounds == rounds


def test_fine_tuning_with_another_recommendation_prompt(tmp_path):
    from hf_cllm4rec.training.recipes import (
        BUILTIN_BACKBONE,
        DataArguments,
        ModelArguments,
        run_finetuning,
        run_pretraining,
    )

    quick = dict(content_steps=False, num_train_epochs=1, per_device_eval_batch_size=64)
    run_pretraining(
        ModelArguments(backbone=BUILTIN_BACKBONE), DataArguments(), training_arguments(tmp_path / "pre", **quick)
    )
    prompt = "{user} has interacted with {history}"
    run_finetuning(
        ModelArguments(pretrained=str(tmp_path / "pre"), recommendation_prompt=prompt),
        DataArguments(),
        training_arguments(tmp_path / "fine", **quick),
    )
    model = CLLM4RecForItemPrediction.from_pretrained(tmp_path / "fine")
    tokenizer = CLLM4RecTokenizer.from_pretrained(tmp_path / "fine")
    assert model.config.recommendation_prompt == tokenizer.config.recommendation_prompt == prompt
    assert tokenizer.decode(tokenizer.render("recommendation_prompt", user=3, history=[1, 2])).endswith("<item_2>")
    with pytest.raises(ValueError, match="recommendation_prompt"):
        run_finetuning(
            ModelArguments(pretrained=str(tmp_path / "pre"), recommendation_prompt="{history} only"),
            DataArguments(),
            training_arguments(tmp_path / "bad", **quick),
        )
