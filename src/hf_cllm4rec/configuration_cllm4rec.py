"""CLLM4Rec model configuration."""

import math
import reprlib
import string
from pathlib import Path
from typing import Literal, get_args

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import CONFIG_NAME

# Most users or items a config may count: far above any catalogue, it refuses a damaged count before tables of that
# many rows are allocated, and keeps every token id within int32.
MAX_ID_COUNT = 2**31 - 1

# Placeholders each prompt template must (and may) contain.
TEMPLATE_PLACEHOLDERS = {
    "collaborative_prompt": ({"user"}, {"user"}),
    "review_prompt": ({"user", "item"}, {"user", "item"}),
    "item_text_prompt": ({"item"}, {"item"}),
    "recommendation_prompt": ({"user", "history"}, {"user", "history"}),
    "cold_start_prompt": ({"history"}, {"history"}),
}

# The query vectors a read-out prompt's items can be scored with (`CLLM4RecConfig.read_out`).
ReadOut = Literal["last", "mean"]
READ_OUTS = get_args(ReadOut)
# How a read-out prompt's history is read (`CLLM4RecConfig.history_attention`).
HistoryAttention = Literal["causal", "bidirectional", "set"]
HISTORY_ATTENTIONS = get_args(HistoryAttention)
# Fields that configs of earlier versions hold, now options of training or of scoring: ignored when such a config loads.
RETIRED_FIELDS = (
    "mask_ratio",
    "backbone_training",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "history_permutations",
)


def _check_model_type(config_dict: dict, source: str) -> None:
    """Raises a `ValueError` when `config_dict` names a model type other than CLLM4Rec's, as a backbone's does."""
    model_type = config_dict.get("model_type", CLLM4RecConfig.model_type)
    if model_type != CLLM4RecConfig.model_type:
        raise ValueError(
            f"{source} describes a {model_type!r} checkpoint, not a CLLM4Rec one: a backbone is where training "
            "starts (`cllm4rec pretrain --backbone`; in Python, `from_backbone`)."
        )


def template_placeholders(template: str) -> list[str]:
    """The `{name}` placeholders of a prompt template, in order of appearance."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]


@strict
class CLLM4RecConfig(PreTrainedConfig):
    r"""
    Configuration of a CLLM4Rec model: a causal language model backbone extended with one token per user and per
    item, each with a collaborative and a content embedding.

    The extended vocabulary is laid out as the backbone's word vocabulary (`text_config.vocab_size` ids), then
    `num_users` user tokens, then `num_items` item tokens.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the causal-LM backbone, any model type `AutoModelForCausalLM` knows. Defaults to GPT-2
            small, the paper's backbone.
        num_users (`int`, *optional*, defaults to 1):
            Number of user ID tokens.
        num_items (`int`, *optional*, defaults to 1):
            Number of item ID tokens.
        collaborative_prompt (`str`, *optional*, defaults to `"{user} has interacted with"`):
            Prompt of collaborative documents; the main text is the user's items.
        review_prompt (`str`, *optional*, defaults to `"{user} writes the following review for {item}:"`):
            Prompt of user-item content documents; the main text is the review.
        item_text_prompt (`str`, *optional*, defaults to `"The tags of {item} are:"`):
            Prompt of item-side content documents; the main text is the item's text.
        recommendation_prompt (`str`, *optional*):
            Prompt of fine-tuning and recommendation, `"{user} has interacted with {history}, {user} will interact
            with"` by default; the item scores are read at its last token.
        cold_start_prompt (`str`, *optional*):
            Prompt for users without a user token (new users), with `{history}` only.
        lambda_v (`float`, *optional*, defaults to 1.0):
            Weight of the mutual regularization between collaborative and content embeddings.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialization of the ID embeddings.
        id_embedding_init (`str`, *optional*, defaults to `"normal"`):
            How new ID embeddings are drawn: `"normal"`, N(0, `initializer_range`) as in the paper, or
            `"vocabulary"`, each dimension from the mean and standard deviation of the backbone's word embeddings
            in that dimension, so that ID tokens enter a pretrained backbone at the scale and offset of its words.
        id_embedding_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the input embeddings of user and item tokens in training (word embeddings are left alone):
            holds back a model that memorizes the training histories through its ID tables.
        tie_item_head (`bool`, *optional*, defaults to `True`):
            Whether the item head, which scores every item from a hidden state, is the table of collaborative item
            embeddings, as in the paper. `False` gives the head a table of its own, N(0, `initializer_range`): the
            item scores then start small whatever the scale of the ID tokens' input embeddings, which a pretrained
            backbone wants near that of its words (`id_embedding_init="vocabulary"`).
        item_bias (`bool`, *optional*, defaults to `False`):
            Whether every item score gets a learned bias of its item added (zero in a new model; pretraining starts it
            at the item's log training count): the part of an item's score that is the same for every user, its
            popularity, then needs no direction of the hidden state.
        history_attention (`str`, *optional*, defaults to `"causal"`):
            How the history of a read-out prompt (the prompts that items are scored after: recommendation,
            cold-start, and a collaborative prompt cut after the history) is read. `"causal"`: each token sees the
            tokens before it, as the backbone reads text. `"bidirectional"`: the history's item tokens see each
            other in both directions, while the words around them and the read-out token stay causal. `"set"`: as
            `"bidirectional"`, and every history item takes the position of the first one, so the scores read
            after the history (by the recommendation and cold-start prompts) do not depend on its order at all.
            Pretraining's collaborative documents, which predict each item from the ones before it, are always read
            causally.
        read_out (`str`, *optional*, defaults to `"last"`):
            The query vector that a read-out prompt's items are scored with. `"last"`: the hidden state of its last
            token, as in the paper. `"mean"`: the mean of the hidden states from the token before the first history
            item to the last token. For the collaborative LM each of these positions predicts the next item after a
            prefix of the history, so the scores rank items by the geometric mean of those next-item distributions:
            one forward pass that does not lean on the last items of the order the history happens to be in.
        read_out_prefix_power (`float`, *optional*, defaults to 0.0):
            How `read_out="mean"` weighs its positions: the one that has read `k` of the history's items weighs
            `(k + 1) ** read_out_prefix_power`. 0 weighs every prefix alike; larger powers lean on the longer
            prefixes, which have seen more of the history, and a very large one reads the last token alone.

    Example:

    ```python
    >>> from transformers import GPT2Config
    >>> from hf_cllm4rec import CLLM4RecConfig, CLLM4RecForCollaborativeLM

    >>> config = CLLM4RecConfig(text_config=GPT2Config(n_layer=2, n_embd=64, n_head=2), num_users=10, num_items=20)
    >>> model = CLLM4RecForCollaborativeLM(config)
    >>> config.item_token_offset
    50267
    ```"""

    model_type = "cllm4rec"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2")}

    text_config: dict | PreTrainedConfig | None = None
    num_users: int = 1
    num_items: int = 1
    collaborative_prompt: str = "{user} has interacted with"
    review_prompt: str = "{user} writes the following review for {item}:"
    item_text_prompt: str = "The tags of {item} are:"
    recommendation_prompt: str = "{user} has interacted with {history}, {user} will interact with"
    cold_start_prompt: str = "A new user has interacted with {history}, the user will interact with"
    lambda_v: float | int = 1.0
    initializer_range: float = 0.02
    id_embedding_init: Literal["normal", "vocabulary"] = "normal"
    id_embedding_dropout: float | int = 0.0
    tie_item_head: bool = True
    item_bias: bool = False
    history_attention: HistoryAttention = "causal"
    read_out: ReadOut = "last"
    read_out_prefix_power: float | int = 0.0
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        for name in RETIRED_FIELDS:
            kwargs.pop(name, None)
        super().__post_init__(**kwargs)
        self.validate_values()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """
        Like `PreTrainedConfig.from_dict`, but the config of another model type (a plain backbone's) or a field of the
        wrong type is a one-line `ValueError`, and overrides in `kwargs` are validated like the stored fields.
        """
        _check_model_type(config_dict, "The config dict")
        try:
            loaded = super().from_dict(config_dict, **kwargs)
        except StrictDataclassError as error:  # names the field, its value and the expected type
            reason = " ".join(str(error.__cause__ or error).split())
            raise ValueError(f"Invalid CLLM4Rec config: {reason}") from None
        (loaded[0] if isinstance(loaded, tuple) else loaded).validate_values()
        return loaded

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Like `PreTrainedConfig.from_pretrained`, but an invalid config is a `ValueError` that names where it is."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except ValueError as error:
            overridden = set(kwargs) & set(cls.__dataclass_fields__)  # the fault may lie with an override
            if overridden or str(pretrained_model_name_or_path) in str(error):
                raise
            raise ValueError(f"{Path(pretrained_model_name_or_path) / CONFIG_NAME}: {error}") from None

    @classmethod
    def _dict_from_json_file(cls, json_file):
        """The object a config file holds; a `ValueError` naming the file when it holds none."""
        try:
            config_dict = super()._dict_from_json_file(json_file)
        except RecursionError:
            raise ValueError(f"{json_file} is not a valid config: its JSON is nested too deeply.") from None
        if not isinstance(config_dict, dict):
            raise ValueError(
                f"{json_file} is not a valid config: it holds {reprlib.repr(config_dict)}, not a JSON object."
            )
        _check_model_type(config_dict, str(json_file))  # before `from_pretrained` warns of it
        return config_dict

    def validate_values(self):
        """Raises a `ValueError` naming the first invalid field."""
        for name in ("num_users", "num_items"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID_COUNT:
                raise ValueError(f"`{name}` must be a positive integer of at most {MAX_ID_COUNT}, got {value!r}.")
        for name in ("lambda_v", "initializer_range", "id_embedding_dropout", "read_out_prefix_power"):
            value = getattr(self, name)
            if isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
        if self.lambda_v < 0:
            raise ValueError(f"`lambda_v` must be >= 0, got {self.lambda_v}.")
        if self.read_out_prefix_power < 0:
            raise ValueError(f"`read_out_prefix_power` must be >= 0, got {self.read_out_prefix_power}.")
        if self.initializer_range <= 0:
            raise ValueError(f"`initializer_range` must be > 0, got {self.initializer_range}.")
        if not 0.0 <= self.id_embedding_dropout < 1.0:
            raise ValueError(f"`id_embedding_dropout` must lie in [0, 1), got {self.id_embedding_dropout}.")
        for name, (required, allowed) in TEMPLATE_PLACEHOLDERS.items():
            template = getattr(self, name)
            try:
                fields = list(string.Formatter().parse(template))
            except ValueError as error:
                raise ValueError(f"`{name}` is not a valid template ({error}): {template!r}.") from None
            # The tokenizer renders plain `{name}` placeholders only: anything else would be left in as text.
            if "{{" in template or "}}" in template or any(spec or conversion for _, _, spec, conversion in fields):
                raise ValueError(
                    f"`{name}` may only hold plain placeholders such as {{user}}: no format specs, conversions or "
                    f"escaped braces, got {template!r}."
                )
            found = {field for _, field, _, _ in fields if field is not None}
            if not required <= found or not found <= allowed:
                raise ValueError(
                    f"`{name}` must contain the placeholders {sorted(required)} and no others "
                    f"(allowed: {sorted(allowed)}), got {getattr(self, name)!r}."
                )

    @property
    def vocab_size(self) -> int:
        """Size of the backbone's word vocabulary; user tokens start right after it."""
        return self.text_config.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def context_length(self) -> int | None:
        """The backbone's context in tokens (`max_position_embeddings` or `n_positions`); `None` if it names none."""
        text_config = self.text_config
        return getattr(text_config, "max_position_embeddings", None) or getattr(text_config, "n_positions", None)

    @property
    def user_token_offset(self) -> int:
        return self.vocab_size

    @property
    def item_token_offset(self) -> int:
        return self.vocab_size + self.num_users

    @property
    def extended_vocab_size(self) -> int:
        """Word, user and item tokens together."""
        return self.vocab_size + self.num_users + self.num_items


__all__ = ["CLLM4RecConfig"]
