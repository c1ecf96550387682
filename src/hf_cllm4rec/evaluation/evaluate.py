"""Evaluation of a CLLM4Rec model on a split of a prepared data set, with the paper's full-ranking protocol."""

from contextlib import contextmanager

import numpy as np
import torch

from ..data.prepared import RecommendationData
from ..serving.recommender import Recommender
from ..tokenization_cllm4rec import CLLM4RecTokenizer
from .metrics import evaluate_recommender, model_selection_score

# The splits whose items are held out from the prompts (training items are excluded from every ranking).
EVALUATION_SPLITS = ("validation", "test")


def default_max_length(config) -> int:
    """The default longest document: the backbone's context, at most 1024 tokens."""
    return min(config.context_length or 1024, 1024)


def check_split(data: RecommendationData, split, remedy: str = "") -> None:
    """Raises a `ValueError` unless `split` is a held-out split of `data` with items; `remedy` says what to do."""
    if not isinstance(split, str) or split not in EVALUATION_SPLITS:
        raise ValueError(
            f"CLLM4Rec evaluates a held-out split of its data set, one of {EVALUATION_SPLITS}; got {split!r}."
        )
    if data.tables[split].num_rows == 0:
        message = f"The {split!r} split has no held-out items: evaluation would measure nothing."
        raise ValueError(f"{message} {remedy}" if remedy else message)


def check_model_fits_data(model, data: RecommendationData) -> None:
    """Raises a `ValueError` when the model's user/item catalogue is not the data set's."""
    config = model.config
    if (config.num_users, config.num_items) != (data.num_users, data.num_items):
        raise ValueError(
            f"The model has {config.num_users} users and {config.num_items} items, but the data set "
            f"{data.name!r} has {data.num_users} users and {data.num_items} items: a checkpoint from another data "
            "set cannot be trained on this one."
        )


@contextmanager
def scoring_view(model):
    """
    The model as evaluation calls it, and whether its forward passes are collective, so that the processes must
    make them in step: an FSDP wrapper's module, with the full parameters of the wrapper summoned on every process
    (the units inside still gather theirs in their forward passes); an FSDP2 model, whose `score_items` gathers
    them as its forward pass does; any other model as it is.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        yield model, False
        return
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel, register_fsdp_forward_method

    if isinstance(model, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield model.module, True
    elif isinstance(model, FSDPModule):
        if "score_items" not in vars(model):
            register_fsdp_forward_method(model, "score_items")
        yield model, True
    else:
        yield model, False


@torch.no_grad()
def evaluate_model(
    model,
    tokenizer: CLLM4RecTokenizer,
    data: RecommendationData,
    split: str,
    batch_size: int = 64,
    max_length: int | None = None,
    recall_ks=(20, 40),
    ndcg_ks=(100,),
    max_tokens: int | None = None,
    disable_tqdm: bool | None = None,
    distributed: bool = False,
    lockstep: bool = False,
    history_permutations: int = 1,
    cold_start: bool = False,
    per_user: bool = False,
) -> dict:
    """
    Recall@K and NDCG@K of a CLLM4Rec model on a split, with the paper's protocol: every user with held-out items
    is prompted with the whole training history, all items are ranked, training items excluded. Users without
    training items get no prompt and a flat score (they still count); they join the first batch of prompted users, so
    that every batch a process scores makes the same forward passes.

    Users are scored by a [`Recommender`], in batches of similar prompt length, at most `batch_size` users and, with
    `max_tokens`, at most that many padded prompt tokens each, averaging the scores over `history_permutations`
    orders of each history; `cold_start` prompts every user as a new user (the cold-start prompt, without the user
    token). A progress bar counts the users (`disable_tqdm=None`: only on a terminal). With `distributed`, the
    processes of the `torch.distributed` group share the batches, and with `lockstep` make the same number of forward
    passes, as a model sharded across them needs (see [`evaluate_recommender`]). `per_user` also returns each user's
    metrics under `"per_user"`.
    """
    check_split(data, split)
    recommender = Recommender(
        model,
        tokenizer,
        history_permutations=history_permutations,
        batch_size=batch_size,
        max_tokens=max_tokens,
        max_length=max_length,
    )
    histories = data.histories("train")
    heldout = data.to_sparse(split)
    users = np.flatnonzero(np.diff(heldout.indptr))
    has_history = np.array([len(histories[user]) > 0 for user in users], dtype=bool)
    prompted, unprompted = users[has_history], users[~has_history]

    def user_ids(users: np.ndarray) -> list[int | None]:
        return [None] * len(users) if cold_start else users.tolist()

    user_batches = []
    if len(prompted):
        batches = recommender.batches(user_ids(prompted), [histories[user] for user in prompted])
        user_batches = [prompted[batch] for batch in batches]
    if len(unprompted):  # they need no forward pass, so they ride along with a batch that makes one
        user_batches[:1] = [np.concatenate([*user_batches[:1], unprompted])]

    def score_users(users: np.ndarray) -> torch.Tensor:
        scores = torch.zeros(len(users), data.num_items, device=model.device)
        rows = np.flatnonzero([len(histories[user]) > 0 for user in users])
        if len(rows):
            scores[torch.from_numpy(rows).to(model.device)] = recommender.score_batch(
                user_ids(users[rows]), [histories[user] for user in users[rows]]
            )
        return scores

    was_training = model.training
    model.eval()
    results = evaluate_recommender(
        score_users,
        heldout,
        exclude=data.to_sparse("train"),
        recall_ks=recall_ks,
        ndcg_ks=ndcg_ks,
        user_batches=user_batches,
        disable_tqdm=disable_tqdm,
        distributed=distributed,
        lockstep=lockstep,
        per_user=per_user,
    )
    model.train(was_training)
    if all(name in results for name in ("recall@20", "recall@40", "ndcg@100")):
        results["selection_score"] = model_selection_score(results)
    return results


__all__ = [
    "EVALUATION_SPLITS",
    "check_model_fits_data",
    "check_split",
    "default_max_length",
    "evaluate_model",
    "scoring_view",
]
