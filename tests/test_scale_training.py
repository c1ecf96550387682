"""
The ID tables' optimizer: `id_embeddings_optimizer="sparse_adamw"` gives the lookup-only ID tables sparse gradients
and updates only their touched rows (AdamW's update on those rows), trains and resumes through the Trainer.
"""

import pytest
import torch
from test_trainer import (
    MODEL_CLASSES,
    NUM_ITEMS,
    NUM_USERS,
    make_model,
    trainable_parameters,
    training_arguments,
)

from hf_cllm4rec import CLLM4RecForCollaborativeLM
from hf_cllm4rec.data import make_synthetic_data, make_synthetic_tokenizer
from hf_cllm4rec.training import CLLM4RecTrainer
from hf_cllm4rec.training.optimization import RowSparseAdamW, use_sparse_id_gradients

SETTINGS = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
ID_TABLES = (
    "model.user_collaborative_embeddings.weight",
    "model.item_collaborative_embeddings.weight",
    "model.user_content_embeddings.weight",
    "model.item_content_embeddings.weight",
)
SPARSE_ARGUMENTS = dict(
    optim="adamw_torch", learning_rate=1e-2, weight_decay=0.1, id_embeddings_optimizer="sparse_adamw"
)


@pytest.fixture(scope="module")
def data():
    return make_synthetic_data(num_users=NUM_USERS, num_items=NUM_ITEMS)


@pytest.fixture(scope="module")
def base_tokenizer(data):
    return make_synthetic_tokenizer(data)


def sparse_rows_gradient(rows: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    return torch.sparse_coo_tensor(rows[None], values, shape, check_invariants=True)


def test_every_row_touched_is_adamw():
    torch.manual_seed(0)
    table, matrix = torch.randn(6, 3), torch.randn(4, 2)
    reference = [table.clone().requires_grad_(), matrix.clone().requires_grad_()]
    row_sparse = [table.clone().requires_grad_(), matrix.clone().requires_grad_()]
    adamw = torch.optim.AdamW(reference, **SETTINGS)
    optimizer = RowSparseAdamW(row_sparse, **SETTINGS)
    for _ in range(4):
        table_gradient, matrix_gradient = torch.randn(6, 3), torch.randn(4, 2)
        reference[0].grad, reference[1].grad = table_gradient, matrix_gradient
        # every row once, and row 2 twice (summed on coalescing)
        rows = torch.tensor([5, 2, 0, 1, 2, 3, 4])
        values = torch.cat([table_gradient[[5]], table_gradient[[2]] / 2, table_gradient[[0, 1]]])
        values = torch.cat([values, table_gradient[[2]] / 2, table_gradient[[3, 4]]])
        row_sparse[0].grad = sparse_rows_gradient(rows, values, (6, 3))
        row_sparse[1].grad = matrix_gradient
        adamw.step()
        optimizer.step()
    for expected, actual in zip(reference, row_sparse, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    assert optimizer.state[row_sparse[0]].keys() == adamw.state[reference[0]].keys()


def test_untouched_rows_and_their_moments_stay():
    table = torch.randn(5, 2, requires_grad=True)
    optimizer = RowSparseAdamW([table], **SETTINGS)
    table.grad = sparse_rows_gradient(torch.tensor([0, 3]), torch.ones(2, 2), (5, 2))
    optimizer.step()
    before = table.detach().clone()
    moments = {key: optimizer.state[table][key].clone() for key in ("exp_avg", "exp_avg_sq")}
    table.grad = sparse_rows_gradient(torch.tensor([1]), torch.ones(1, 2), (5, 2))
    optimizer.step()
    untouched = [0, 2, 3, 4]
    assert torch.equal(table[untouched], before[untouched])  # no momentum, no weight decay
    assert not torch.equal(table[1], before[1])
    for key, value in moments.items():
        assert torch.equal(optimizer.state[table][key][untouched], value[untouched])


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_the_lookup_only_tables_train_with_sparse_gradients(tmp_path, data, base_tokenizer, model_class):
    model, tokenizer = make_model(model_class, data, base_tokenizer)
    before = trainable_parameters(model)
    arguments = training_arguments(model_class, tmp_path, max_steps=1, **SPARSE_ARGUMENTS)
    trainer = CLLM4RecTrainer(model, arguments, data, tokenizer)
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, RowSparseAdamW)
    inner = model.model
    # the tied item head has a dense gradient (the softmax over all items): it stays dense
    assert not inner.item_collaborative_embeddings.sparse
    assert inner.user_collaborative_embeddings.sparse and inner.item_content_embeddings.sparse
    after = trainable_parameters(model)
    assert set(after) == set(ID_TABLES)
    # one step of 8 of the 20 users: the other rows did not move, not even by weight decay
    users = "model.user_collaborative_embeddings.weight"
    unchanged_rows = (after[users] == before[users]).all(-1)
    assert 0 < int(unchanged_rows.sum()) < len(unchanged_rows)
    assert not torch.equal(after["model.item_collaborative_embeddings.weight"], before[ID_TABLES[1]])
    # a run with dense AdamW on the same model makes the tables dense again
    arguments = training_arguments(model_class, tmp_path / "dense", max_steps=1, optim="adamw_torch")
    CLLM4RecTrainer(model, arguments, data, tokenizer).train()
    assert not any(table.sparse for table in (inner.user_collaborative_embeddings, inner.item_content_embeddings))


def test_an_untied_item_head_leaves_all_four_tables_sparse(tmp_path, data, base_tokenizer):
    model, _ = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer, tie_item_head=False)
    tables = use_sparse_id_gradients(model, True)
    assert len(tables) == 4 and all(table.sparse for table in tables)
    assert all(table.weight is not model.model.item_head.weight for table in tables)


def test_a_run_with_sparse_updates_resumes_like_an_uninterrupted_one(tmp_path, data, base_tokenizer):
    arguments = dict(num_train_epochs=2, save_strategy="steps", save_steps=5, lr_scheduler_type="linear")
    arguments.update(SPARSE_ARGUMENTS)
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    run = training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "run", **arguments)
    CLLM4RecTrainer(model, run, data, tokenizer).train()
    uninterrupted = trainable_parameters(model)

    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    resumed = training_arguments(CLLM4RecForCollaborativeLM, tmp_path / "resumed", **arguments)
    CLLM4RecTrainer(model, resumed, data, tokenizer).train(
        resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-5")
    )
    for name, value in uninterrupted.items():
        torch.testing.assert_close(trainable_parameters(model)[name], value, rtol=0, atol=1e-6)


def test_sparse_updates_refuse_another_optimizer_and_unknown_names(tmp_path, data, base_tokenizer):
    with pytest.raises(ValueError, match="id_embeddings_optimizer must be one of .*'sparse_adam'"):
        training_arguments(CLLM4RecForCollaborativeLM, tmp_path, id_embeddings_optimizer="sparse_adam")
    model, tokenizer = make_model(CLLM4RecForCollaborativeLM, data, base_tokenizer)
    arguments = training_arguments(CLLM4RecForCollaborativeLM, tmp_path, id_embeddings_optimizer="sparse_adamw")
    with pytest.raises(ValueError, match="updates with AdamW: use optim='adamw_torch'.*not 'sgd'"):
        CLLM4RecTrainer(model, arguments, data, tokenizer).train()
