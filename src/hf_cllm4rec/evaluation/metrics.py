"""Full-ranking recommendation metrics: Recall@K and NDCG@K as in the CLLM4Rec paper.

Every item is ranked for every user, the items to exclude (the user's training items) are set to `-inf`, and

- Recall@K = hits in the top K / min(K, number of held-out items),
- NDCG@K = DCG@K / IDCG@K, with DCG@K = sum over hits at 0-based rank r < K of 1 / log2(r + 2) and the ideal DCG
  taken over min(K, number of held-out items) positions,

averaged over the users that have held-out items; users without held-out items are skipped. The computation is
vectorized in torch on the device of the scores and works on chunks of users, so that a caller can stream users
through [`RankingMetrics`] without ever holding the full score matrix.

Example:

```python
>>> import torch
>>> from hf_cllm4rec.evaluation import ranking_metrics
>>> scores = torch.tensor([[0.9, 0.8, 0.1, 0.3]])
>>> heldout = torch.tensor([[False, True, True, False]])
>>> exclude = torch.tensor([[True, False, False, False]])
>>> metrics = ranking_metrics(scores, heldout, exclude, recall_ks=(1, 2), ndcg_ks=(2,))
>>> metrics["recall@1"], metrics["recall@2"], round(metrics["ndcg@2"], 4)
(1.0, 0.5, 0.6131)
```
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import scipy.sparse
import torch
from tqdm.auto import tqdm

DEFAULT_RECALL_KS = (20, 40)
DEFAULT_NDCG_KS = (100,)
MODEL_SELECTION_METRICS = ("recall@20", "recall@40", "ndcg@100")


def _validate_ks(ks: Iterable[int], name: str) -> tuple[int, ...]:
    validated = []
    for k in ks:
        if isinstance(k, bool):
            raise TypeError(f"`{name}` must hold integers, got {k!r}.")
        k = operator.index(k)
        if k <= 0:
            raise ValueError(f"`{name}` must hold positive cut-offs, got {k}.")
        validated.append(k)
    return tuple(sorted(set(validated)))


def rows_to_mask(
    matrix: scipy.sparse.spmatrix | scipy.sparse.sparray,
    rows: slice | Sequence[int] | np.ndarray | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean mask `[len(rows), num_items]` of the non-zero entries of some rows of a sparse user x item matrix.

    Only the indices of the non-zero entries travel to `device`; the dense mask is built there.
    """
    if not scipy.sparse.issparse(matrix):
        raise TypeError(f"`matrix` must be a scipy sparse matrix, got {type(matrix).__name__}.")
    matrix = scipy.sparse.csr_matrix(matrix if rows is None else matrix[rows])
    row_lengths = torch.from_numpy(np.diff(matrix.indptr).astype(np.int64)).to(device)
    row_ids = torch.repeat_interleave(torch.arange(matrix.shape[0], device=device), row_lengths)
    item_ids = torch.from_numpy(matrix.indices.astype(np.int64)).to(device)
    mask = torch.zeros(matrix.shape, dtype=torch.bool, device=device)
    mask[row_ids, item_ids] = True
    return mask


def items_to_mask(
    item_ids_per_user: Sequence[Sequence[int] | np.ndarray | torch.Tensor],
    num_items: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean mask `[len(item_ids_per_user), num_items]` from one collection of item ids per user."""
    item_ids = [torch.as_tensor(ids, dtype=torch.long, device="cpu").reshape(-1) for ids in item_ids_per_user]
    lengths = torch.tensor([len(ids) for ids in item_ids], dtype=torch.long)
    flat_item_ids = torch.cat(item_ids) if item_ids else torch.zeros(0, dtype=torch.long)
    if flat_item_ids.numel() and not 0 <= flat_item_ids.min() <= flat_item_ids.max() < num_items:
        raise ValueError(
            f"Item ids must lie in [0, {num_items}), got ids from {int(flat_item_ids.min())} to {int(flat_item_ids.max())}."
        )
    row_ids = torch.repeat_interleave(torch.arange(len(item_ids)), lengths)
    mask = torch.zeros(len(item_ids), num_items, dtype=torch.bool, device=device)
    mask[row_ids.to(device), flat_item_ids.to(device)] = True
    return mask


def _as_mask(items, scores: torch.Tensor, name: str) -> torch.Tensor:
    if scipy.sparse.issparse(items):
        mask = rows_to_mask(items, device=scores.device)
    else:
        mask = torch.as_tensor(items, device=scores.device)
        if mask.dtype != torch.bool:
            mask = mask != 0
    if mask.shape != scores.shape:
        raise ValueError(f"`{name}` has shape {tuple(mask.shape)} but `scores` has shape {tuple(scores.shape)}.")
    return mask


class RankingMetrics:
    """Accumulates Recall@K and NDCG@K over chunks of users.

    Args:
        recall_ks (`Iterable[int]`, *optional*, defaults to `(20, 40)`):
            Cut-offs of the reported Recall@K (`"recall@K"` keys).
        ndcg_ks (`Iterable[int]`, *optional*, defaults to `(100,)`):
            Cut-offs of the reported NDCG@K (`"ndcg@K"` keys).
        keep_per_user (`bool`, *optional*, defaults to `False`):
            Also keeps each user's metrics, which [`per_user`] returns (e.g. for [`paired_bootstrap`]); every
            [`update`] then names its users.

    Example:

    ```python
    >>> metrics = RankingMetrics()
    >>> for users in user_chunks:  # doctest: +SKIP
    ...     metrics.update(model_scores(users), heldout=test_matrix[users], exclude=train_matrix[users])
    >>> metrics.compute()  # doctest: +SKIP
    {'recall@20': ..., 'recall@40': ..., 'ndcg@100': ..., 'num_users': ...}
    ```
    """

    def __init__(
        self,
        recall_ks: Iterable[int] = DEFAULT_RECALL_KS,
        ndcg_ks: Iterable[int] = DEFAULT_NDCG_KS,
        keep_per_user: bool = False,
    ):
        self.keep_per_user = keep_per_user
        self.recall_ks = _validate_ks(recall_ks, "recall_ks")
        self.ndcg_ks = _validate_ks(ndcg_ks, "ndcg_ks")
        if not self.recall_ks and not self.ndcg_ks:
            raise ValueError("At least one cut-off is needed in `recall_ks` or `ndcg_ks`.")
        self.metric_names = [f"recall@{k}" for k in self.recall_ks] + [f"ndcg@{k}" for k in self.ndcg_ks]
        self.reset()

    def reset(self) -> None:
        """Forgets every user seen so far."""
        self._metric_sums = torch.zeros(len(self.metric_names), dtype=torch.float64)
        self.num_users = 0
        self._user_ids: list[np.ndarray] = []
        self._user_values: list[torch.Tensor] = []

    @torch.no_grad()
    def update(
        self,
        scores: torch.Tensor,
        heldout: torch.Tensor | np.ndarray | scipy.sparse.spmatrix,
        exclude: torch.Tensor | np.ndarray | scipy.sparse.spmatrix | None = None,
        user_ids: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Adds a chunk of users.

        Args:
            scores (`torch.Tensor` of shape `(batch_size, num_items)`):
                Scores of every item for each user of the chunk; higher ranks first.
            heldout (`torch.Tensor`, `np.ndarray` or scipy sparse matrix of shape `(batch_size, num_items)`):
                The held-out (relevant) items of each user, as a boolean mask or the users' rows of a sparse matrix.
            exclude (same types as `heldout`, *optional*):
                Items removed from each user's ranking (the training items); they are ranked last.
            user_ids (`Sequence[int]` or `np.ndarray` of length `batch_size`, *optional*):
                The users of the rows, which `keep_per_user` needs.
        """
        if scores.ndim != 2:
            raise ValueError(f"`scores` must have shape (batch_size, num_items), got {tuple(scores.shape)}.")
        if self.keep_per_user:
            if user_ids is None:
                raise ValueError("`keep_per_user` needs the `user_ids` of every chunk.")
            user_ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
            if len(user_ids) != scores.shape[0]:
                raise ValueError(f"{len(user_ids)} `user_ids` for {scores.shape[0]} rows of `scores`.")
        if not scores.is_floating_point():
            raise TypeError(f"`scores` must be a floating-point tensor, got {scores.dtype}.")
        if torch.isnan(scores).any():
            raise ValueError("`scores` contains NaN.")
        heldout = _as_mask(heldout, scores, "heldout")
        if exclude is not None:
            scores = scores.masked_fill(_as_mask(exclude, scores, "exclude"), -math.inf)

        num_heldout = heldout.sum(dim=1)
        has_heldout = num_heldout > 0
        if not has_heldout.any():
            return
        scores, heldout, num_heldout = scores[has_heldout], heldout[has_heldout], num_heldout[has_heldout]

        num_items = scores.shape[1]
        max_k = min(max(self.recall_ks + self.ndcg_ks), num_items)
        top_items = torch.topk(scores, k=max_k, dim=1).indices
        hits = heldout.gather(1, top_items).to(torch.float64)
        cumulative_hits = hits.cumsum(dim=1)
        discounts = 1.0 / torch.log2(torch.arange(max_k, device=scores.device, dtype=torch.float64) + 2.0)
        cumulative_dcg = (hits * discounts).cumsum(dim=1)
        cumulative_ideal_dcg = discounts.cumsum(dim=0)

        per_metric = []
        for k in self.recall_ks:
            per_metric.append(cumulative_hits[:, min(k, max_k) - 1] / num_heldout.clamp(max=k))
        for k in self.ndcg_ks:
            ideal_dcg = cumulative_ideal_dcg[num_heldout.clamp(max=min(k, max_k)) - 1]
            per_metric.append(cumulative_dcg[:, min(k, max_k) - 1] / ideal_dcg)
        values = torch.stack(per_metric, dim=1).cpu()  # (users with held-out items, metrics)
        self._metric_sums += values.sum(dim=0)
        self.num_users += int(has_heldout.sum())
        if self.keep_per_user:
            self._user_ids.append(user_ids[has_heldout.cpu().numpy()])
            self._user_values.append(values)

    def sum_over_processes(self) -> None:
        """Adds up the metric sums and user counts of all processes of the `torch.distributed` group (every process
        calls it), so that [`compute`] averages over the users that any of them saw."""
        if self.keep_per_user:
            raise ValueError("Per-user metrics are kept by one process: `keep_per_user` does not sum over processes.")
        backend = torch.distributed.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        totals = torch.cat([self._metric_sums, torch.tensor([float(self.num_users)], dtype=torch.float64)]).to(device)
        torch.distributed.all_reduce(totals)
        totals = totals.cpu()
        self._metric_sums, self.num_users = totals[:-1], int(totals[-1])

    def compute(self) -> dict[str, float]:
        """Metrics averaged over the users with held-out items, and their number as `"num_users"`.

        With no such user, every metric is `0.0` and `"num_users"` is `0` (with a warning), never NaN.
        """
        if self.num_users == 0:
            warnings.warn("No user with held-out items was evaluated; every metric is reported as 0.0.", stacklevel=2)
            averages = [0.0] * len(self.metric_names)
        else:
            averages = (self._metric_sums / self.num_users).tolist()
        return {**dict(zip(self.metric_names, averages, strict=True)), "num_users": self.num_users}

    def per_user(self) -> dict[str, np.ndarray]:
        """Each user's metrics (those with held-out items), in ascending user id: `"user_id"` and one float64 array
        per metric name; needs `keep_per_user`."""
        if not self.keep_per_user:
            raise ValueError("Per-user metrics need `RankingMetrics(keep_per_user=True)`.")
        user_ids = np.concatenate(self._user_ids) if self._user_ids else np.zeros(0, dtype=np.int64)
        values = torch.cat(self._user_values) if self._user_values else torch.zeros(0, len(self.metric_names))
        order = np.argsort(user_ids, kind="stable")
        user_ids, values = user_ids[order], values.double().numpy()[order]
        repeated = user_ids[1:][np.diff(user_ids) == 0]
        if len(repeated):
            raise ValueError(f"User {int(repeated[0])} was added more than once.")
        return {"user_id": user_ids, **{name: values[:, i] for i, name in enumerate(self.metric_names)}}


def ranking_metrics(
    scores: torch.Tensor,
    heldout: torch.Tensor | np.ndarray | scipy.sparse.spmatrix,
    exclude: torch.Tensor | np.ndarray | scipy.sparse.spmatrix | None = None,
    recall_ks: Iterable[int] = DEFAULT_RECALL_KS,
    ndcg_ks: Iterable[int] = DEFAULT_NDCG_KS,
) -> dict[str, float]:
    """Recall@K and NDCG@K of one score matrix; see [`RankingMetrics.update`] for the arguments."""
    metrics = RankingMetrics(recall_ks=recall_ks, ndcg_ks=ndcg_ks)
    metrics.update(scores, heldout, exclude)
    return metrics.compute()


def evaluate_recommender(
    score_users: Callable[[np.ndarray], torch.Tensor],
    heldout: scipy.sparse.spmatrix,
    exclude: scipy.sparse.spmatrix | None = None,
    batch_size: int = 1024,
    recall_ks: Iterable[int] = DEFAULT_RECALL_KS,
    ndcg_ks: Iterable[int] = DEFAULT_NDCG_KS,
    user_batches: Iterable[Sequence[int] | np.ndarray] | None = None,
    disable_tqdm: bool | None = None,
    distributed: bool = False,
    lockstep: bool = False,
    per_user: bool = False,
) -> dict:
    """Ranking metrics of a recommender over every user with held-out items, scored `batch_size` users at a time.

    Args:
        score_users (`Callable[[np.ndarray], torch.Tensor]`):
            Maps an array of user ids to their scores over all items, shape `(len(user_ids), num_items)`.
        heldout (scipy sparse matrix of shape `(num_users, num_items)`):
            Held-out interactions (validation or test).
        exclude (scipy sparse matrix of shape `(num_users, num_items)`, *optional*):
            Interactions removed from the ranking, typically the training matrix.
        batch_size (`int`, *optional*, defaults to 1024):
            Users scored at a time, in ascending id order.
        user_batches (`Iterable` of user id arrays, *optional*):
            The batches to score instead, e.g. from [`Recommender.batches`] so that prompts of similar length
            share a batch. Together they must hold every user with held-out items exactly once; users without
            held-out items are dropped from them. The metrics do not depend on the batching.
        disable_tqdm (`bool`, *optional*):
            Hides the progress bar over the users; by default it shows only on a terminal.
        distributed (`bool`, *optional*, defaults to `False`):
            Every process of the initialized `torch.distributed` group calls this with the same arguments: each
            scores every `world_size`-th batch, and all get the metrics over all users.
        lockstep (`bool`, *optional*, defaults to `False`):
            With `distributed`, every process calls `score_users` equally often, a process with one batch fewer
            scoring a batch again and discarding it: needed where the model is sharded across the processes
            (FSDP), as each of its forward passes is a collective operation.
        per_user (`bool`, *optional*, defaults to `False`):
            Also returns each user's metrics under `"per_user"` ([`RankingMetrics.per_user`]); not with
            `distributed`.
    """
    if batch_size <= 0:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
    if per_user and distributed:
        raise ValueError("`per_user` metrics are kept by one process: evaluate without `distributed`.")
    heldout = scipy.sparse.csr_matrix(heldout)
    exclude = None if exclude is None else scipy.sparse.csr_matrix(exclude)
    if exclude is not None and exclude.shape != heldout.shape:
        raise ValueError(f"`exclude` has shape {exclude.shape} but `heldout` has shape {heldout.shape}.")
    metrics = RankingMetrics(recall_ks=recall_ks, ndcg_ks=ndcg_ks, keep_per_user=per_user)
    has_heldout = np.diff(heldout.indptr) > 0
    if user_batches is None:
        users_with_heldout = np.flatnonzero(has_heldout)
        starts = range(0, len(users_with_heldout), batch_size)
        user_batches = [users_with_heldout[start : start + batch_size] for start in starts]
    else:
        user_batches = [np.asarray(users, dtype=np.int64).reshape(-1) for users in user_batches]
        _check_user_batches(user_batches, has_heldout)
        user_batches = [users[has_heldout[users]] for users in user_batches]
    user_batches = [users for users in user_batches if len(users)]
    repeated_batches = []
    if distributed:
        world_size = torch.distributed.get_world_size()
        shared_batches, user_batches = user_batches, user_batches[torch.distributed.get_rank() :: world_size]
        if lockstep:
            calls = -(-len(shared_batches) // world_size)
            repeated_batches = shared_batches[: calls - len(user_batches)]
    total = sum(len(users) for users in user_batches)
    with tqdm(total=total, desc="Ranking", unit=" users", disable=disable_tqdm) as progress:
        for users in user_batches:
            metrics.update(
                score_users(users), heldout[users], None if exclude is None else exclude[users], user_ids=users
            )
            progress.update(len(users))
    for users in repeated_batches:  # keeps this process's forward passes in step with the others'
        score_users(users)
    if distributed:
        metrics.sum_over_processes()
    return {**metrics.compute(), "per_user": metrics.per_user()} if per_user else metrics.compute()


def _check_user_batches(user_batches: list[np.ndarray], has_heldout: np.ndarray) -> None:
    users = np.concatenate(user_batches) if user_batches else np.zeros(0, dtype=np.int64)
    if len(users) and not 0 <= users.min() <= users.max() < len(has_heldout):
        raise ValueError(f"`user_batches` holds user ids outside [0, {len(has_heldout)}).")
    counts = np.bincount(users, minlength=len(has_heldout))
    if (counts > 1).any():
        raise ValueError(f"`user_batches` holds user {int(np.argmax(counts > 1))} more than once.")
    missing = np.flatnonzero(has_heldout & (counts == 0))
    if len(missing):
        raise ValueError(
            f"`user_batches` leaves out {len(missing)} users with held-out items, e.g. user {missing[0]}."
        )


def model_selection_score(metrics: dict[str, float]) -> float:
    """The paper's validation criterion: Recall@20 + Recall@40 + NDCG@100."""
    missing = [name for name in MODEL_SELECTION_METRICS if name not in metrics]
    if missing:
        raise KeyError(f"Model selection needs {list(MODEL_SELECTION_METRICS)}; missing {missing}.")
    return float(sum(metrics[name] for name in MODEL_SELECTION_METRICS))
