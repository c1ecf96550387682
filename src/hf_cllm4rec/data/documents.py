"""The documents CLLM4Rec learns from: collaborative, content and masked-history (fine-tuning) documents.

Each document source is a map-style dataset indexed by `(draw, index)`: `draw` counts how many times the source
has been traversed, so the random parts of a document (the order of a history, the held-out share) are drawn
anew on every pass, yet reproducibly from `(seed, draw, index)`, whatever the number of processes or workers,
and after resuming a run.
"""

from collections.abc import Sequence

import numpy as np
from datasets import Dataset
from torch.utils.data import Dataset as TorchDataset

from ..tokenization_cllm4rec import CLLM4RecTokenizer
from .prepared import RecommendationData

CONTENT_DOCUMENT_KINDS = ("user_item", "item")


class DocumentSource(TorchDataset):
    """
    Base of the document sources: `len` documents, each fetched as `source[draw, index]`, or a batch of them at
    once with [`documents`] (one vectorized rendering, as the data loader fetches them).
    """

    document_type: str

    def __getitem__(self, key: tuple[int, int]) -> dict:
        draw, index = key
        return self.documents(draw, [index])[0]

    def documents(self, draw: int, indices: Sequence[int]) -> list[dict]:
        """Documents `indices` of pass `draw`, each the same as when fetched alone."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        outside = indices[(indices < 0) | (indices >= len(self))]
        if len(outside):
            raise IndexError(f"document index {outside[0]} out of range for {len(self)} documents")
        return self._documents(draw, indices) if len(indices) else []

    def _documents(self, draw: int, indices: np.ndarray) -> list[dict]:
        raise NotImplementedError

    def document_lengths(self) -> np.ndarray:
        """Approximate length in tokens of every document, for batching documents of similar length."""
        raise NotImplementedError

    def _as_documents(self, input_ids: np.ndarray, lengths: np.ndarray, labels: list[list[int]]) -> list[dict]:
        return [
            {"input_ids": row[:length].tolist(), "labels": row_labels, "document_type": self.document_type}
            for row, length, row_labels in zip(input_ids, lengths, labels, strict=True)
        ]


class CollaborativeDocuments(DocumentSource):
    """
    One document per user with training items: the collaborative prompt, then the user's items as the main text,
    in a new random order on every draw (stochastic item reordering). Histories longer than `max_length` allows are
    cut at the end of the main text, after shuffling.
    """

    document_type = "collaborative"

    def __init__(
        self, histories: Sequence[np.ndarray], tokenizer: CLLM4RecTokenizer, max_length: int | None, seed: int = 0
    ):
        self.users = np.array([user for user, items in enumerate(histories) if len(items)], dtype=np.int64)
        self.histories = histories
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.seed = seed
        # items that fit after the prompt (the same for every user: one user token)
        self.item_budget = None
        if max_length is not None and len(self.users):
            prompt_length = len(tokenizer.render("collaborative_prompt", user=int(self.users[0])))
            if max_length <= prompt_length:
                raise ValueError(
                    f"max_length={max_length} leaves no room for items after the {prompt_length}-token "
                    "collaborative prompt."
                )
            self.item_budget = max_length - prompt_length

    def __len__(self) -> int:
        return len(self.users)

    def document_lengths(self) -> np.ndarray:
        return np.array([len(self.histories[user]) for user in self.users]) + 8

    def _documents(self, draw: int, indices: np.ndarray) -> list[dict]:
        users = self.users[indices]
        histories = [
            np.random.default_rng((self.seed, draw, int(user))).permutation(self.histories[user])[: self.item_budget]
            for user in users
        ]
        encoding = self.tokenizer.render_batch(
            "collaborative_prompt", users=users, histories=histories, followed_by_history=True
        )
        lengths = encoding.attention_mask.sum(-1)
        labels = [
            [-100] * (length - len(items)) + row[length - len(items) : length].tolist()
            for row, length, items in zip(encoding.input_ids, lengths, histories, strict=True)
        ]
        return self._as_documents(encoding.input_ids, lengths, labels)


class ContentDocuments(DocumentSource):
    """
    Content documents, pre-tokenized once: `"user_item"` documents (the review prompt for every training pair, main
    text = the pair's review, or the item's text where the data has no review for it) and `"item"` documents (the
    item-text prompt, main text = the item's text). Main texts are cut at `max_length`.
    """

    document_type = "content"

    def __init__(
        self,
        data: RecommendationData,
        tokenizer: CLLM4RecTokenizer,
        max_length: int | None,
        kinds: Sequence[str] = ("user_item",),
    ):
        unknown = set(kinds) - set(CONTENT_DOCUMENT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"content document kinds must be among {CONTENT_DOCUMENT_KINDS}, got {list(kinds)}.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        item_texts = data.item_texts()
        pairs = {"user_id": [], "item_id": [], "text": []}
        if "user_item" in kinds:
            reviews = {
                (user, item): text
                for user, item, text in zip(
                    *(data.tables["reviews"][column] for column in ("user_id", "item_id", "text")), strict=True
                )
            }
            train = data.tables["train"]
            for user, item in zip(train["user_id"], train["item_id"], strict=True):
                text = reviews.get((user, item)) or item_texts[item]
                if text:
                    pairs["user_id"].append(user)
                    pairs["item_id"].append(item)
                    pairs["text"].append(text)
        if "item" in kinds:
            for item, text in enumerate(item_texts):
                if text:
                    pairs["user_id"].append(-1)
                    pairs["item_id"].append(item)
                    pairs["text"].append(text)
        if not pairs["text"]:
            raise ValueError(
                f"The data set {data.name!r} has no review or item text: content documents ({list(kinds)}) "
                "cannot be built. Prepare it with item text or reviews, or train without content steps."
            )
        tokenized = Dataset.from_dict(pairs).map(
            self._tokenize, batched=True, remove_columns=["text"], desc="Tokenizing content documents"
        )
        # plain lists: a row of an Arrow table costs far more to read than a list entry, once per document drawn
        self.prompt_ids, self.main_ids = tokenized["prompt_ids"][:], tokenized["main_ids"][:]

    def _tokenize(self, batch: dict) -> dict:
        main_texts = self.tokenizer.encode_text([" " + text.strip() for text in batch["text"]])
        prompts = [
            self.tokenizer.render("item_text_prompt", item=item)
            if user < 0
            else self.tokenizer.render("review_prompt", user=user, item=item)
            for user, item in zip(batch["user_id"], batch["item_id"], strict=True)
        ]
        return {"prompt_ids": prompts, "main_ids": main_texts}

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def document_lengths(self) -> np.ndarray:
        return np.array([len(prompt) + len(main) for prompt, main in zip(self.prompt_ids, self.main_ids, strict=True)])

    def _documents(self, draw: int, indices: np.ndarray) -> list[dict]:
        documents = []
        for index in indices.tolist():
            prompt, main = self.prompt_ids[index], self.main_ids[index]
            input_ids = (prompt + main)[: self.max_length]
            labels = ([-100] * len(prompt) + main)[: self.max_length]
            documents.append({"input_ids": input_ids, "labels": labels, "document_type": self.document_type})
        return documents


class RecommendationDocuments(DocumentSource):
    """
    Masked-history documents for fine-tuning: on every draw a random `mask_ratio` share of a user's training items
    (at least one) is held out as the target, and the rest, reshuffled, fill the recommendation prompt. Users with
    fewer than two training items cannot be split and are left out. Long histories lose items from their start.
    """

    document_type = "recommendation"

    def __init__(
        self,
        histories: Sequence[np.ndarray],
        tokenizer: CLLM4RecTokenizer,
        mask_ratio: float,
        max_length: int | None,
        seed: int = 0,
    ):
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}.")
        self.users = np.array([user for user, items in enumerate(histories) if len(items) >= 2], dtype=np.int64)
        if not len(self.users):
            raise ValueError("No user has two or more training items: masked-history documents cannot be built.")
        self.histories = histories
        self.tokenizer = tokenizer
        self.mask_ratio = mask_ratio
        self.max_length = max_length
        self.seed = seed

    def __len__(self) -> int:
        return len(self.users)

    def document_lengths(self) -> np.ndarray:
        return np.array([len(self.histories[user]) for user in self.users]) + 12

    def _documents(self, draw: int, indices: np.ndarray) -> list[dict]:
        users = self.users[indices]
        held_out, kept = [], []
        for user in users.tolist():
            items = np.random.default_rng((self.seed, draw, user)).permutation(self.histories[user])
            num_held_out = min(max(1, round(self.mask_ratio * len(items))), len(items) - 1)
            held_out.append(items[:num_held_out].tolist())
            kept.append(items[num_held_out:])
        encoding = self.tokenizer.render_batch(
            "recommendation_prompt", users=users, histories=kept, max_length=self.max_length
        )
        return self._as_documents(encoding.input_ids, encoding.attention_mask.sum(-1), held_out)


class ScheduledDocuments(TorchDataset):
    """
    Several document sources behind one dataset, indexed by `(source, draw, index)` triples.

    `schedule`, the batch sampler that orders them by epoch, is told the epoch through the dataset's `set_epoch` too:
    a data loader that cannot reach a batch sampler it has wrapped (accelerate's, resuming mid-epoch on several
    processes) tells the dataset.
    """

    def __init__(self, sources: Sequence[DocumentSource], schedule=None):
        self.sources = list(sources)
        self.schedule = schedule

    def set_epoch(self, epoch: int) -> None:
        if self.schedule is not None:
            self.schedule.set_epoch(epoch)

    def __len__(self) -> int:
        return sum(len(source) for source in self.sources)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        source, draw, index = key
        return self.sources[source][draw, index]

    def __getitems__(self, keys: Sequence[tuple[int, int, int]]) -> list[dict]:
        """A batch of documents, rendered together per source and pass (the data loader's batched fetch)."""
        documents: list[dict | None] = [None] * len(keys)
        groups: dict[tuple[int, int], list[int]] = {}
        for position, (source, draw, _) in enumerate(keys):
            groups.setdefault((source, draw), []).append(position)
        for (source, draw), positions in groups.items():
            fetched = self.sources[source].documents(draw, [keys[position][2] for position in positions])
            for position, document in zip(positions, fetched, strict=True):
                documents[position] = document
        return documents


__all__ = [
    "DocumentSource",
    "CollaborativeDocuments",
    "ContentDocuments",
    "RecommendationDocuments",
    "ScheduledDocuments",
    "CONTENT_DOCUMENT_KINDS",
]
