"""ID-aware tokenizer: any `AutoTokenizer` plus one token per user and per item."""

import os
import re
from collections.abc import Sequence
from functools import cached_property

import numpy as np
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

from .configuration_cllm4rec import CLLM4RecConfig, template_placeholders

ID_TOKEN_PATTERN = re.compile(r"<(user|item)_(\d+)>")


class CLLM4RecTokenizer:
    """
    Wraps a backbone tokenizer and encodes `<user_i>` / `<item_j>` as single ids past the word vocabulary.

    No tokens are added to the backbone tokenizer: ID tokens are recognized by pattern and mapped arithmetically,
    so a catalogue of millions of items costs nothing. Text around ID tokens is tokenized exactly as the backbone
    tokenizer tokenizes it inside a sentence; the whitespace right before an ID token belongs to the ID token, so
    `decode(encode(text)) == text` for text with single spaces. Prompt templates (`{user}`, `{item}`, `{history}`)
    are rendered from integer ids directly, without string round trips.

    Args:
        base_tokenizer (`PreTrainedTokenizerBase`): the backbone's tokenizer.
        config (`CLLM4RecConfig`): gives the ID layout and the prompt templates.
    """

    def __init__(self, base_tokenizer: PreTrainedTokenizerBase, config: CLLM4RecConfig):
        if len(base_tokenizer) > config.vocab_size:
            raise ValueError(
                f"The tokenizer has {len(base_tokenizer)} tokens but the backbone's vocabulary has only "
                f"{config.vocab_size}: they do not belong together."
            )
        self.base_tokenizer = base_tokenizer
        self.config = config
        self._rendered_templates: dict[str, list] = {}
        # (count, first token id) of each ID kind, read once: config attribute access is slow per document
        self._id_layout = {
            "user": (config.num_users, config.user_token_offset),
            "item": (config.num_items, config.item_token_offset),
        }

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "CLLM4RecTokenizer":
        """Loads the backbone tokenizer and the CLLM4Rec config saved in the same folder or Hub repository."""
        config = CLLM4RecConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls(AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs), config)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Saves the backbone tokenizer files and the config they are laid out against."""
        self.base_tokenizer.save_pretrained(save_directory, **kwargs)
        self.config.save_pretrained(save_directory)

    def __len__(self) -> int:
        return self.config.extended_vocab_size

    @property
    def model_max_length(self) -> int | None:
        """The backbone's context in tokens (`max_position_embeddings` or `n_positions`); `None` if it names none."""
        return self.config.context_length

    def __call__(
        self,
        user_ids: Sequence[int | None],
        histories: Sequence[Sequence[int] | np.ndarray],
        *,
        prompt: str = "recommendation",
        max_length: int | None = None,
        return_tensors: str = "pt",
    ) -> BatchEncoding:
        """
        The prompts of a batch of users, right-padded: `input_ids` and `attention_mask` of shape `(batch, longest)`.

        `user_ids` and `histories` hold 0-based ids, one user and one non-empty history per row.
        `prompt="recommendation"` renders the config's `recommendation_prompt`, or its `cold_start_prompt` for a `None`
        user id (a user without a user token); the model reads the item scores at the prompt's last token.
        `prompt="collaborative"` renders `collaborative_prompt` followed by the history: a collaborative document cut
        before its next item, which the collaborative LM predicts.

        `max_length` (default: the backbone's context, [`model_max_length`]) bounds every prompt: a longer history
        loses its oldest items. `return_tensors` is `"pt"` (torch tensors) or `"np"` (numpy arrays).
        """
        if prompt not in ("recommendation", "collaborative"):
            raise ValueError(f"`prompt` must be 'recommendation' or 'collaborative', got {prompt!r}.")
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"`return_tensors` must be 'pt' or 'np', got {return_tensors!r}.")
        user_ids, histories = self.as_batch(user_ids, histories)
        max_length = self.checked_max_length(max_length)
        cold = [row for row, user in enumerate(user_ids) if user is None]
        if prompt == "collaborative":
            if cold:
                raise ValueError(
                    f"The collaborative prompt needs a user id; row {cold[0]} has none (new users are served with "
                    "prompt='recommendation', the cold-start prompt)."
                )
            encoding = self.render_batch(
                "collaborative_prompt",
                users=user_ids,
                histories=histories,
                max_length=max_length,
                followed_by_history=True,
            )
            return BatchEncoding(dict(encoding), tensor_type=return_tensors)
        warm = [row for row, user in enumerate(user_ids) if user is not None]
        parts = []
        if warm:
            parts.append((warm, self.render_batch(
                "recommendation_prompt",
                users=[user_ids[row] for row in warm],
                histories=[histories[row] for row in warm],
                max_length=max_length,
            )))  # fmt: skip
        if cold:
            parts.append((cold, self.render_batch(
                "cold_start_prompt", histories=[histories[row] for row in cold], max_length=max_length
            )))  # fmt: skip
        width = max(encoding["input_ids"].shape[1] for _, encoding in parts)
        input_ids = np.full((len(user_ids), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(user_ids), width), dtype=np.int64)
        for rows, encoding in parts:
            length = encoding["input_ids"].shape[1]
            input_ids[rows, :length] = encoding["input_ids"]
            attention_mask[rows, :length] = encoding["attention_mask"]
        return BatchEncoding({"input_ids": input_ids, "attention_mask": attention_mask}, tensor_type=return_tensors)

    def as_batch(
        self, user_ids: Sequence[int | None], histories: Sequence[Sequence[int] | np.ndarray]
    ) -> tuple[list[int | None], list[np.ndarray]]:
        """
        The users (`int` or `None`) and histories (int64 arrays) of a batch, as [`__call__`] takes them; a
        `ValueError` names what is wrong with them (the ids' ranges are checked when the prompts are rendered).
        """
        for name, values in (("user_ids", user_ids), ("histories", histories)):
            if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
                raise ValueError(f"`{name}` must be a list, got {type(values).__name__}.")
        if len(user_ids) != len(histories):
            raise ValueError(f"Got {len(user_ids)} user ids but {len(histories)} histories: one of each per row.")
        if not len(user_ids):
            raise ValueError("Got no users: pass at least one user id and history.")
        checked_users = []
        for row, user in enumerate(user_ids):
            if user is not None and (isinstance(user, (bool, np.bool_)) or not isinstance(user, (int, np.integer))):
                raise ValueError(f"User id of row {row} must be an integer or None, got {user!r}.")
            checked_users.append(None if user is None else int(user))
        checked_histories = []
        for row, history in enumerate(histories):
            if history is None or isinstance(history, (str, bytes)):
                raise ValueError(f"History of row {row} must be a sequence of item ids, got {history!r}.")
            try:
                array = np.asarray(history)
            except ValueError:
                array = None
            if array is None or array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
                raise ValueError(f"History of row {row} must be a 1-D sequence of integer item ids, got {history!r}.")
            if not array.size:
                raise ValueError(f"History of row {row} is empty: a prompt needs at least one item.")
            checked_histories.append(array.astype(np.int64, copy=False))
        return checked_users, checked_histories

    def checked_max_length(self, max_length: int | None) -> int | None:
        """
        The longest prompt for a `max_length` asked for: itself, or by default the backbone's context; a `ValueError`
        for one that is not a positive integer or exceeds the context.
        """
        context = self.model_max_length
        if max_length is None:
            return context
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length <= 0:
            raise ValueError(f"`max_length` must be a positive integer, got {max_length!r}.")
        if context is not None and max_length > context:
            raise ValueError(
                f"max_length={max_length} exceeds the backbone's context of {context} tokens: the model cannot read "
                "a longer prompt."
            )
        return int(max_length)

    @cached_property
    def pad_token_id(self) -> int:
        """The backbone's pad token, else its end-of-sequence token (padding is always masked out)."""
        for token_id in (self.base_tokenizer.pad_token_id, self.base_tokenizer.eos_token_id):
            if token_id is not None:
                return token_id
        return 0

    # ID tokens

    def user_token_ids(self, user_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Token ids of users `user_ids` (0-based), checked against `num_users`."""
        return self._id_token_ids(user_ids, "user")

    def item_token_ids(self, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Token ids of items `item_ids` (0-based), checked against `num_items`."""
        return self._id_token_ids(item_ids, "item")

    def _id_token_ids(self, ids, kind: str) -> np.ndarray:
        count, offset = self._id_layout[kind]
        try:
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        except OverflowError:
            raise ValueError(
                f"a {kind} id is out of range: this model has {count} {kind}s (ids 0 to {count - 1})."
            ) from None
        if ids.size and (ids.min() < 0 or ids.max() >= count):
            bad = int(ids[(ids < 0) | (ids >= count)][0])
            raise ValueError(
                f"{kind} id {bad} is out of range: this model has {count} {kind}s (ids 0 to {count - 1})."
            )
        return ids + offset

    def token_kind(self, token_id: int) -> tuple[str, int]:
        """`("word", id)`, `("user", user_id)` or `("item", item_id)` for an extended-vocabulary token id."""
        config = self.config
        if not 0 <= token_id < config.extended_vocab_size:
            raise ValueError(
                f"Token id {token_id} is outside the extended vocabulary of size {config.extended_vocab_size}."
            )
        if token_id < config.user_token_offset:
            return "word", token_id
        if token_id < config.item_token_offset:
            return "user", token_id - config.user_token_offset
        return "item", token_id - config.item_token_offset

    # Text

    def encode_text(self, texts: list[str]) -> list[list[int]]:
        """Word ids of plain texts (no ID markers), batched through the fast tokenizer, no special tokens."""
        if not texts:
            return []
        return self.base_tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, where `<user_i>` and `<item_j>` become single ID tokens."""
        pieces: list[str | int] = []
        position = 0
        for match in ID_TOKEN_PATTERN.finditer(text):
            pieces.append(text[position : match.start()])
            kind, index = match.group(1), int(match.group(2))
            pieces.append(int((self.user_token_ids if kind == "user" else self.item_token_ids)([index])[0]))
            position = match.end()
        pieces.append(text[position:])
        return self._encode_pieces(pieces)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of extended-vocabulary ids; ID tokens come back as `<user_i>` / `<item_j>`."""
        parts: list[str] = []
        words: list[int] = []
        for token_id in (int(token_id) for token_id in token_ids):
            kind, index = self.token_kind(token_id)
            if kind == "word":
                words.append(token_id)
                continue
            if words:
                parts.append(self.base_tokenizer.decode(words))
                words = []
            parts.append(f"{' ' if parts else ''}<{kind}_{index}>")
        if words:
            parts.append(self.base_tokenizer.decode(words))
        return "".join(parts)

    def _encode_pieces(self, pieces: list[str | int]) -> list[int]:
        """Encodes alternating text pieces and ID token ids; the space before an ID token is absorbed by it."""
        token_ids: list[int] = []
        for position, piece in enumerate(pieces):
            if isinstance(piece, str):
                if position + 1 < len(pieces):
                    piece = piece.rstrip()
                if piece.strip():
                    token_ids.extend(self.base_tokenizer.encode(piece, add_special_tokens=False))
            else:
                token_ids.append(piece)
        return token_ids

    # Prompt templates

    def render(
        self,
        template: str,
        user: int | None = None,
        item: int | None = None,
        history: Sequence[int] | np.ndarray | None = None,
        max_length: int | None = None,
    ) -> list[int]:
        """
        Token ids of a prompt template of the config (`"collaborative_prompt"`, `"review_prompt"`, ...).

        `user`, `item` and `history` are 0-based ids. When the rendered prompt would exceed `max_length`, items are
        dropped from the start of the history, so that the end of the prompt always survives.
        """
        batch = self.render_batch(
            template,
            users=None if user is None else [user],
            items=None if item is None else [item],
            histories=None if history is None else [history],
            max_length=max_length,
        )
        return batch.input_ids[0, : int(batch.attention_mask[0].sum())].tolist()

    def render_batch(
        self,
        template: str,
        users: Sequence[int] | None = None,
        items: Sequence[int] | None = None,
        histories: Sequence[Sequence[int] | np.ndarray] | None = None,
        max_length: int | None = None,
        followed_by_history: bool = False,
    ) -> BatchEncoding:
        """
        A template rendered for a batch at once, right-padded: `input_ids` and `attention_mask` as numpy arrays.

        The same as [`render`] row by row, without a Python loop over tokens: the serving path of large batches.
        `followed_by_history` appends each history's item tokens to a template without `{history}`, as a
        collaborative document's items follow its prompt.
        """
        pieces = self._template_pieces(template)
        if followed_by_history:
            if ("history",) in pieces:
                raise ValueError(f"Template `{template}` already holds the history.")
            pieces = [*pieces, ("history",)]
        values = {"user": users, "item": items, "history": histories}
        sizes = {
            len(values[name])
            for (name,) in (piece for piece in pieces if isinstance(piece, tuple))
            if values[name] is not None
        }
        for (name,) in (piece for piece in pieces if isinstance(piece, tuple)):
            if values[name] is None:
                raise ValueError(f"Template `{template}` needs `{name}`.")
        if len(sizes) > 1:
            raise ValueError(f"Template `{template}` got {sorted(sizes)} values for its placeholders: one per row.")
        size = sizes.pop() if sizes else 1
        fixed = sum(len(piece) if isinstance(piece, list) else 1 for piece in pieces if piece != ("history",))
        history_lengths = np.zeros(size, dtype=np.int64)
        history_tokens = None
        if ("history",) in pieces:
            history_lengths = np.array([len(history) for history in histories], dtype=np.int64)
            if not history_lengths.all():
                raise ValueError(f"Template `{template}` needs a non-empty history.")
            history_tokens = self.item_token_ids(np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]))
            if max_length is not None:
                budget = max_length - fixed
                if budget < 1:
                    raise ValueError(f"max_length={max_length} leaves no room for the history in `{template}`.")
                # keep each history's last `budget` items
                ends = np.cumsum(history_lengths)
                kept = np.minimum(history_lengths, budget)
                positions = np.arange(len(history_tokens)) - np.repeat(ends - kept, history_lengths)
                history_tokens = history_tokens[(positions >= 0)]
                history_lengths = kept
        lengths = fixed + history_lengths
        input_ids = np.full((size, int(lengths.max())), self.pad_token_id, dtype=np.int64)
        rows, offsets = np.arange(size), np.zeros(size, dtype=np.int64)
        for piece in pieces:
            if isinstance(piece, list):
                input_ids[rows[:, None], offsets[:, None] + np.arange(len(piece))] = piece
                offsets += len(piece)
            elif piece == ("history",):
                starts = np.repeat(offsets - np.concatenate([[0], np.cumsum(history_lengths)[:-1]]), history_lengths)
                input_ids[np.repeat(rows, history_lengths), starts + np.arange(len(history_tokens))] = history_tokens
                offsets += history_lengths
            else:
                ids_of = self.user_token_ids if piece == ("user",) else self.item_token_ids
                input_ids[rows, offsets] = ids_of(values[piece[0]])
                offsets += 1
        attention_mask = (np.arange(input_ids.shape[1]) < lengths[:, None]).astype(np.int64)
        return BatchEncoding({"input_ids": input_ids, "attention_mask": attention_mask})

    def _template_pieces(self, template: str) -> list:
        """The template split into pre-tokenized text (lists of ids) and placeholders (1-tuples), cached."""
        if template not in self._rendered_templates:
            text = getattr(self.config, template)
            # Placeholders become sentinel ids below 0 so text pieces are tokenized by the one shared rule.
            names = template_placeholders(text)
            parts = re.split(r"\{(?:user|item|history)\}", text)
            pieces: list[str | int] = []
            for index, part in enumerate(parts):
                pieces.append(part)
                if index < len(names):
                    pieces.append(-1 - index)
            encoded = self._encode_pieces(pieces)
            rendered: list = []
            for token_id in encoded:
                if token_id < 0:
                    rendered.append((names[-1 - token_id],))
                elif rendered and isinstance(rendered[-1], list):
                    rendered[-1].append(token_id)
                else:
                    rendered.append([token_id])
            self._rendered_templates[template] = rendered
        return self._rendered_templates[template]


__all__ = ["CLLM4RecTokenizer", "ID_TOKEN_PATTERN"]
