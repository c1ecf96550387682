"""
The one serving path of a CLLM4Rec model: users and histories in, item scores and recommendations out.

A [`Recommender`] batches users by prompt length, averages the scores over several orders of each history where
asked, leaves the history out of the recommendations and, with the checkpoint's [`IdMappings`], speaks the data set's
own ids. The pipeline, the command line and evaluation all go through it.

```python
>>> from hf_cllm4rec import CLLM4RecForItemPrediction, CLLM4RecTokenizer, IdMappings, Recommender
>>> model = CLLM4RecForItemPrediction.from_pretrained("runs/beauty-finetune")
>>> tokenizer = CLLM4RecTokenizer.from_pretrained("runs/beauty-finetune")
>>> recommender = Recommender(model, tokenizer, IdMappings.load("runs/beauty-finetune"))
>>> recommender.recommend([12, None], [[3, 17, 5], [8]], k=10)  # 0-based ids; None is a new user
>>> recommender.recommend_raw(["A3CIUOJXQ5VDQ2", {"history": ["B00016XJ4M", "B0009RF9DW"]}], k=10)
[[{'item_id': 'B00016XJ4M', 'score': 14.2, 'text': '...'}, ...], [...]]
```
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from .. import modeling_cllm4rec
from ..modeling_cllm4rec import (
    CLLM4RecForCollaborativeLM,
    RecommendationOutput,
    check_top_k,
    chunked_item_logsumexp,
    chunked_top_k_items,
    top_k_items,
)
from ..tokenization_cllm4rec import CLLM4RecTokenizer
from .id_mappings import IdMappings

# Each history order costs one forward pass per batch; beyond this many the ensemble gains nothing measurable.
MAX_HISTORY_PERMUTATIONS = 64


def length_grouped_batches(
    lengths: Sequence[int] | np.ndarray, max_batch_size: int, max_tokens: int | None = None
) -> list[np.ndarray]:
    """
    Positions of `lengths` in ascending length order, cut into batches of at most `max_batch_size` and, with
    `max_tokens`, at most that many padded tokens (batch size x its longest length): prompts of similar length share
    a batch, so they pad little, and short prompts go in larger batches than long ones. A single length above
    `max_tokens` gets a batch of its own.
    """
    if max_batch_size <= 0:
        raise ValueError(f"`max_batch_size` must be positive, got {max_batch_size}.")
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"`max_tokens` must be positive, got {max_tokens}.")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = min(start + max_batch_size, len(order))
        if max_tokens is not None:
            # ascending lengths: a batch [start, stop) pads to lengths[order[stop - 1]]
            padded = np.arange(1, end - start + 1) * lengths[order[start:end]]
            end = start + max(1, int(np.searchsorted(padded > max_tokens, True)))
        batches.append(order[start:end])
        start = end
    return batches


@dataclass
class Recommender:
    """
    Scores and recommendations of a CLLM4Rec model for users given by 0-based ids and histories, or by the data
    set's own ids through `id_mappings`.

    A [`CLLM4RecForItemPrediction`] reads the scores at the end of the recommendation prompt (the cold-start prompt
    for a user id `None`: a user without a user token); a [`CLLM4RecForCollaborativeLM`] reads them as the next item
    of the user's collaborative document. Recommendations never repeat an item of the history.

    Args:
        model: a CLLM4Rec model with `score_items` (either head).
        tokenizer (`CLLM4RecTokenizer`): the model's tokenizer.
        id_mappings (`IdMappings`, *optional*): the data set's own ids, item texts and training histories of the
            model's users; needed by [`resolve`] and [`recommend_raw`].
        history_permutations (`int`, *optional*, defaults to 1): scores average the item probabilities over this many
            random orders of each history (an ensemble over orders, which the training documents shuffle too), each
            order one more forward pass; 1 reads the history in the order given. At most 64.
        batch_size (`int`, *optional*, defaults to 64): users per forward pass at most.
        max_tokens (`int`, *optional*): padded prompt tokens per forward pass at most; users with short prompts then
            share larger batches, up to `batch_size`.
        max_length (`int`, *optional*): longest prompt in tokens (default: the backbone's context); longer histories
            lose their oldest items in the prompt, and are still left out of the recommendations in full.
        disable_tqdm (`bool`, *optional*): hides the progress bars over users; by default they show on a terminal.
    """

    model: object
    tokenizer: CLLM4RecTokenizer
    id_mappings: IdMappings | None = None
    history_permutations: int = 1
    batch_size: int = 64
    max_tokens: int | None = None
    max_length: int | None = None
    disable_tqdm: bool | None = None

    def __post_init__(self):
        permutations = self.history_permutations
        if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
            raise ValueError(f"`history_permutations` must be a positive integer, got {permutations!r}.")
        if permutations > MAX_HISTORY_PERMUTATIONS:
            raise ValueError(
                f"`history_permutations` is at most {MAX_HISTORY_PERMUTATIONS}, got {permutations}: every order costs "
                "one more forward pass, and so many orders average out no further."
            )
        for name in ("batch_size", "max_tokens", "max_length"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        self.tokenizer.checked_max_length(self.max_length)  # a prompt length beyond the context fails here, up front
        if self.id_mappings is not None:
            self.id_mappings.check_fits(self.model.config)

    @property
    def prompt(self) -> str:
        """The tokenizer's prompt for the model: `"collaborative"` for the collaborative LM, else `"recommendation"`."""
        return "collaborative" if isinstance(self.model, CLLM4RecForCollaborativeLM) else "recommendation"

    # 0-based ids

    def batches(self, user_ids: Sequence[int | None], histories: Sequence) -> list[np.ndarray]:
        """
        Positions of the users batched by prompt length (see [`length_grouped_batches`]), shortest first. History
        lengths order the prompts as their token counts do, so prompts are only rendered where `max_tokens` needs the
        counts themselves.
        """
        user_ids, histories = self.tokenizer.as_batch(user_ids, histories)
        lengths = np.array([len(history) for history in histories], dtype=np.int64)
        if self.max_tokens is not None:
            lengths = np.concatenate([
                self.tokenizer(
                    user_ids[start : start + self.batch_size],
                    histories[start : start + self.batch_size],
                    prompt=self.prompt,
                    max_length=self.max_length,
                    return_tensors="np",
                )["attention_mask"].sum(-1)
                for start in range(0, len(user_ids), self.batch_size)
            ])  # fmt: skip
        return length_grouped_batches(lengths, self.batch_size, self.max_tokens)

    def score_batch(self, user_ids: Sequence[int | None], histories: Sequence) -> torch.Tensor:
        """
        Float32 scores `(len(user_ids), num_items)` of one batch, on the model's device: the item logits of each
        history as given, or, with `history_permutations` above 1, the log of the item probabilities averaged over
        that many random orders of each history. The orders are drawn per user and history, so a user's scores do
        not depend on the rest of the batch.
        """
        return self._checked_scores(*self.tokenizer.as_batch(user_ids, histories))

    @torch.no_grad()
    def _checked_scores(self, user_ids: list[int | None], histories: list[np.ndarray]) -> torch.Tensor:
        """[`score_batch`] of users and histories that `CLLM4RecTokenizer.as_batch` has checked."""
        if self.history_permutations == 1:
            return self._score_prompts(user_ids, histories)
        probabilities = 0
        for shuffled in self._history_orders(user_ids, histories):
            probabilities = probabilities + self._score_prompts(user_ids, shuffled).softmax(-1)
        return (probabilities / self.history_permutations).log()

    def _history_orders(self, user_ids: list[int | None], histories: list[np.ndarray]):
        """The `history_permutations` orders of the histories: as given for one, else drawn per user and history."""
        if self.history_permutations == 1:
            yield histories
            return
        generators = [
            np.random.default_rng([0 if user is None else user + 1, zlib.crc32(history.tobytes())])
            for user, history in zip(user_ids, histories, strict=True)
        ]
        for _ in range(self.history_permutations):
            yield [generator.permutation(history) for generator, history in zip(generators, histories, strict=True)]

    def _prompts(self, user_ids: list[int | None], histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The `input_ids` and `attention_mask` of the users' prompts, on the model's device."""
        encoding = self.tokenizer(user_ids, histories, prompt=self.prompt, max_length=self.max_length)
        encoding = encoding.to(self.model.device)
        return encoding["input_ids"], encoding["attention_mask"]

    def _score_prompts(self, user_ids: list[int | None], histories: list[np.ndarray]) -> torch.Tensor:
        return self.model.score_items(*self._prompts(user_ids, histories))

    def recommend_batch(
        self, user_ids: Sequence[int | None], histories: Sequence, k: int = 10
    ) -> RecommendationOutput:
        """The `k` best items of one batch outside each history, best first, on the model's device."""
        return self._checked_top_k(*self.tokenizer.as_batch(user_ids, histories), k)

    @torch.no_grad()
    def _checked_top_k(self, user_ids: list[int | None], histories: list[np.ndarray], k: int) -> RecommendationOutput:
        """
        [`recommend_batch`] of users and histories that `CLLM4RecTokenizer.as_batch` has checked. A catalogue above
        `ITEM_CHUNK_SIZE` items is scored a chunk of items at a time, with a running top k: the users' scores over all
        items are never held at once.
        """
        exclude = pad_sequence(
            [torch.from_numpy(history) for history in histories], batch_first=True, padding_value=-1
        )
        num_items = self.model.config.num_items
        if num_items <= modeling_cllm4rec.ITEM_CHUNK_SIZE:
            return top_k_items(self._checked_scores(user_ids, histories), k, exclude)
        model = self.model
        queries = [
            model.query_vectors(*self._prompts(user_ids, shuffled))
            for shuffled in self._history_orders(user_ids, histories)
        ]
        if len(queries) == 1:
            return chunked_top_k_items(
                lambda start, stop: model.item_scores(queries[0], start, stop), len(user_ids), num_items, k, exclude
            )
        # the log of the item probabilities averaged over the orders, each order's normalizer computed first
        item_head, item_bias = model.base_model.item_head_weight(), model.base_model.item_bias
        log_normalizers = torch.stack([chunked_item_logsumexp(query, item_head, item_bias) for query in queries])
        log_normalizers = log_normalizers[..., None]

        def ensemble_scores(start: int, stop: int) -> torch.Tensor:
            scores = torch.stack([model.item_scores(query, start, stop) for query in queries])
            return (scores - log_normalizers).logsumexp(0) - math.log(len(queries))

        return chunked_top_k_items(ensemble_scores, len(user_ids), num_items, k, exclude)

    def score(self, user_ids: Sequence[int | None], histories: Sequence) -> torch.Tensor:
        """Float32 scores `(len(user_ids), num_items)` of any number of users, scored in [`batches`], on the CPU."""
        user_ids, histories = self.tokenizer.as_batch(user_ids, histories)
        scores = torch.empty(len(user_ids), self.model.config.num_items)
        for batch in self._progress(self.batches(user_ids, histories), "Scoring"):
            scores[batch] = self._checked_scores(
                [user_ids[row] for row in batch], [histories[row] for row in batch]
            ).cpu()
        return scores

    def recommend(self, user_ids: Sequence[int | None], histories: Sequence, k: int = 10) -> RecommendationOutput:
        """
        The `k` best items `(len(user_ids), k)` of any number of users outside each history, best first, scored in
        [`batches`], on the CPU. A `k` that some user's history leaves no room for fails before any forward pass.
        """
        user_ids, histories = self.tokenizer.as_batch(user_ids, histories)
        widest = max(histories, key=lambda history: len(np.unique(history)))
        # fails as that user's batch would, before any forward pass
        check_top_k(k, self.model.config.num_items, torch.from_numpy(widest)[None], batch_size=1)
        item_ids = torch.empty(len(user_ids), k, dtype=torch.long)
        scores = torch.empty(len(user_ids), k)
        for batch in self._progress(self.batches(user_ids, histories), "Recommending"):
            output = self._checked_top_k([user_ids[row] for row in batch], [histories[row] for row in batch], k)
            item_ids[batch], scores[batch] = output.item_ids.cpu(), output.scores.cpu()
        return RecommendationOutput(item_ids=item_ids, scores=scores)

    def _progress(self, batches: list[np.ndarray], description: str):
        """Iterates over `batches`, with a progress bar counting their users."""
        with tqdm(
            total=sum(len(batch) for batch in batches), desc=description, unit=" users", disable=self.disable_tqdm
        ) as progress:
            for batch in batches:
                yield batch
                progress.update(len(batch))

    # The data set's own ids

    def resolve(self, request) -> tuple[int | None, list[int]]:
        """
        The 0-based user id (`None` for a new user) and history of a request in the data set's own ids:

        - a raw user id: a user of the training data, prompted with the training history the id mappings ship;
        - `{"history": [raw item ids]}`: a new user, served with the cold-start prompt (of a fine-tuned model);
        - `{"user": raw user id, "history": [raw item ids]}`: a known user with the history given.

        Items the model does not know are left out with a warning naming them; a `KeyError` names an unknown user, a
        `ValueError` any other problem (a history with no known item, a user without training items).
        """
        mappings = self.id_mappings
        if mappings is None:
            raise ValueError("Raw ids need the model's id mappings: pass `id_mappings` to the Recommender.")
        if isinstance(request, dict):
            if not request or set(request) - {"user", "history"}:
                raise ValueError(
                    f"A request dict holds 'user' and/or 'history', got keys {sorted(map(str, request))}."
                )
            raw_user, raw_history = request.get("user"), request.get("history")
            if raw_user is None and raw_history is None:
                raise ValueError("A request dict needs a 'user' or a 'history' that is not None.")
        elif isinstance(request, (str, int)) and not isinstance(request, bool):
            raw_user, raw_history = request, None
        else:
            raise ValueError(
                "A request is a raw user id or a dict with 'history' (and optionally 'user'), got "
                f"{type(request).__name__}."
            )
        user = None if raw_user is None else mappings.user_index(raw_user)
        if user is None and self.prompt == "collaborative":
            raise ValueError(
                "A pretraining checkpoint (CLLM4RecForCollaborativeLM) reads a user through their user token: a new "
                "user needs a fine-tuned model, which has the cold-start prompt (`cllm4rec finetune --pretrained`)."
            )
        if raw_history is None:
            history = mappings.history(user)
            if not len(history):
                raise ValueError(f"User {raw_user!r} has no training items: give their history with the request.")
            return user, list(history)
        if isinstance(raw_history, (str, bytes, dict)) or not isinstance(raw_history, Iterable):
            raise ValueError(f"'history' is a list of raw item ids, got {type(raw_history).__name__}.")
        history, unknown = mappings.item_indices(raw_history)
        if not history:
            unknown_ids = f" (unknown: {', '.join(unknown)})" if unknown else ""
            raise ValueError(
                f"The history holds no item the model knows{unknown_ids}: there is nothing to recommend from."
            )
        if unknown:
            warnings.warn(f"Unknown item ids left out of the history: {', '.join(unknown)}.", stacklevel=2)
        return user, history

    def recommend_raw(self, requests: Sequence, k: int = 10) -> list[list[dict]]:
        """
        The `k` best items of each request (see [`resolve`]) in the data set's own ids, with their text:
        `[{"item_id": raw id, "score": float, "text": str}, ...]` per request, best first.
        """
        if isinstance(requests, (str, dict)) or not len(requests):
            raise ValueError("`requests` must be a non-empty list of requests.")
        resolved = [self.resolve(request) for request in requests]
        output = self.recommend([user for user, _ in resolved], [history for _, history in resolved], k)
        return [
            self.id_mappings.ranked_items(items, scores)
            for items, scores in zip(output.item_ids, output.scores, strict=True)
        ]


__all__ = ["MAX_HISTORY_PERMUTATIONS", "Recommender", "length_grouped_batches"]
