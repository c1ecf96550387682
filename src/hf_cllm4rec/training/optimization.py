"""
The optimizer of the ID tables: dense AdamW, or AdamW on the rows a step touched (sparse gradients).

A million-row ID table under dense AdamW reads and writes every row, both moments and the weight decay at every
step, though a batch looks up a few thousand rows. With `id_embeddings_optimizer="sparse_adamw"` the tables that
only ever receive gradients through lookups (both user tables, the content item table, and the collaborative item
table when the item head is untied) produce sparse gradients, and [`RowSparseAdamW`] updates only their touched
rows. The item head (the tied collaborative item table, or the untied head) has a dense gradient, since the softmax
over all items moves every row, and stays under the dense update, as does the backbone.
"""

import math

import torch
from torch import nn
from torch.optim.adam import adam

from ..modeling_cllm4rec import CLLM4RecModel

# How the ID tables are optimized: dense AdamW with the rest of the model, or AdamW on the touched rows only.
ID_EMBEDDINGS_OPTIMIZERS = ("adamw", "sparse_adamw")


class RowSparseAdamW(torch.optim.Optimizer):
    r"""
    AdamW (decoupled weight decay, bias correction) for parameters with dense gradients and, for parameters with
    sparse gradients, the same update on the rows the gradient holds and nothing on the others: their moments
    neither decay nor move, and neither does their weight decay ("lazy" AdamW, as TensorFlow's LazyAdam and
    `torch.optim.SparseAdam`). The bias correction counts the steps in which the parameter had a gradient, as
    AdamW's does. The state has AdamW's keys (`step`, `exp_avg`, `exp_avg_sq`), so checkpoints resume as AdamW's do.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        if not 0 <= lr or not 0 <= eps or not 0 <= weight_decay or not all(0 <= beta < 1 for beta in betas):
            raise ValueError(
                f"Invalid AdamW settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}."
            )
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            dense = []
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                if param.grad.is_sparse:
                    state["step"] += 1
                    update_touched_rows(param, param.grad, state, group)
                else:
                    dense.append((param, state))
            if dense:
                beta1, beta2 = group["betas"]
                adam(
                    [param for param, _ in dense],
                    [param.grad for param, _ in dense],
                    [state["exp_avg"] for _, state in dense],
                    [state["exp_avg_sq"] for _, state in dense],
                    [],
                    [state["step"] for _, state in dense],
                    decoupled_weight_decay=True,
                    amsgrad=False,
                    beta1=beta1,
                    beta2=beta2,
                    lr=group["lr"],
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=False,
                )
        return loss


def update_touched_rows(param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
    """One AdamW step on the rows of `param` that the sparse `grad` holds."""
    grad = grad.coalesce()
    rows, values = grad.indices()[0], grad.values()
    beta1, beta2 = group["betas"]
    step = float(state["step"])
    exp_avg = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
    state["exp_avg"].index_copy_(0, rows, exp_avg)
    state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
    denominator = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
    updated = param.index_select(0, rows).mul_(1 - group["lr"] * group["weight_decay"])
    updated.addcdiv_(exp_avg, denominator, value=-group["lr"] / (1 - beta1**step))
    param.index_copy_(0, rows, updated)


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """
    `torch.nn.utils.clip_grad_norm_` (2-norm) for dense and sparse gradients alike, which `clip_grad_norm_` cannot
    take: returns the total norm before clipping.
    """
    parameters = [param for param in parameters if param.grad is not None]
    gradients = []
    for param in parameters:
        if param.grad.is_sparse:
            param.grad = param.grad.coalesce()  # a row looked up several times holds its summed gradient once
        gradients.append(param.grad._values() if param.grad.is_sparse else param.grad)
    if not gradients:
        return torch.tensor(0.0)
    total_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in gradients]))
    if max_norm < math.inf:
        scale = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
        for gradient in gradients:
            gradient.mul_(scale.to(gradient.dtype))
    return total_norm


def lookup_only_id_tables(model: nn.Module) -> list[nn.Embedding]:
    """The ID tables of `model` whose gradients come from lookups alone: every one but the item head."""
    tables = []
    for module in model.modules():
        if isinstance(module, CLLM4RecModel):
            head = module.item_head_weight()
            tables += [
                table
                for side in ("collaborative", "content")
                for table in module.id_embedding_tables(side)
                if table.weight is not head
            ]
    return tables


def use_sparse_id_gradients(model: nn.Module, sparse: bool) -> list[nn.Embedding]:
    """
    Makes the lookup-only ID tables produce sparse gradients (or dense ones again) and returns them. `sparse` is a
    flag of the `nn.Embedding` module, not of the architecture: no config holds it.
    """
    tables = lookup_only_id_tables(model)
    for table in tables:
        table.sparse = sparse
    return tables


def id_tables_optimizer(model: nn.Module, args, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """
    The optimizer of a run with `args.id_embeddings_optimizer`: the Trainer's AdamW `optimizer` as it is for
    `"adamw"`, a [`RowSparseAdamW`] over its parameter groups and with its settings for `"sparse_adamw"`. Sets the
    ID tables' `sparse` flag to match. Sparse gradients need one process and AdamW.
    """
    sparse = args.id_embeddings_optimizer == "sparse_adamw"
    if sparse and args.world_size > 1:
        raise ValueError(
            "id_embeddings_optimizer='sparse_adamw' needs one process (DDP and FSDP reduce dense gradients only): "
            "train on several processes with id_embeddings_optimizer='adamw'."
        )
    if sparse and not isinstance(optimizer, torch.optim.AdamW | RowSparseAdamW):
        raise ValueError(
            f"id_embeddings_optimizer='sparse_adamw' updates with AdamW: use optim='adamw_torch' (or its fused "
            f"variant) with it, not {getattr(args.optim, 'value', args.optim)!r}."
        )
    use_sparse_id_gradients(model, sparse)
    if not sparse or isinstance(optimizer, RowSparseAdamW):
        return optimizer
    groups = [{"params": group["params"], "weight_decay": group["weight_decay"]} for group in optimizer.param_groups]
    settings = optimizer.defaults
    return RowSparseAdamW(groups, lr=settings["lr"], betas=settings["betas"], eps=settings["eps"])


__all__ = [
    "ID_EMBEDDINGS_OPTIMIZERS",
    "RowSparseAdamW",
    "clip_grad_norm",
    "id_tables_optimizer",
    "use_sparse_id_gradients",
]
