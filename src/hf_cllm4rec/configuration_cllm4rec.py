"""CLLM4Rec model configuration."""

import string
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Placeholders each prompt template must (and may) contain.
TEMPLATE_PLACEHOLDERS = {
    "collaborative_prompt": ({"user"}, {"user"}),
    "review_prompt": ({"user", "item"}, {"user", "item"}),
    "item_text_prompt": ({"item"}, {"item"}),
    "recommendation_prompt": ({"user", "history"}, {"user", "history"}),
    "cold_start_prompt": ({"history"}, {"history"}),
}


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
        mask_ratio (`float`, *optional*, defaults to 0.2):
            Share of a user's history held out as the target in recommendation-oriented fine-tuning.
        backbone_training (`str`, *optional*, defaults to `"frozen"`):
            `"frozen"` (only ID embeddings train, as in the paper), `"full"` or `"lora"`.
        lora_rank (`int`, *optional*, defaults to 8):
            LoRA rank when `backbone_training="lora"`.
        lora_alpha (`int`, *optional*, defaults to 16):
            LoRA scaling numerator.
        lora_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the LoRA branch.
        lora_target_modules (`list[str]`, *optional*):
            Backbone modules that receive LoRA adapters; defaults to peft's choice for the backbone's model type.
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
    mask_ratio: float = 0.2
    backbone_training: Literal["frozen", "full", "lora"] = "frozen"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float | int = 0.0
    lora_target_modules: list[str] | None = None
    initializer_range: float = 0.02
    id_embedding_init: Literal["normal", "vocabulary"] = "normal"
    id_embedding_dropout: float | int = 0.0
    tie_item_head: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_values()

    def validate_values(self):
        """Raises a `ValueError` naming the first invalid field."""
        for name in ("num_users", "num_items"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.lambda_v < 0:
            raise ValueError(f"`lambda_v` must be >= 0, got {self.lambda_v}.")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must lie in (0, 1), got {self.mask_ratio}.")
        if self.initializer_range <= 0:
            raise ValueError(f"`initializer_range` must be > 0, got {self.initializer_range}.")
        if self.lora_rank <= 0:
            raise ValueError(f"`lora_rank` must be a positive integer, got {self.lora_rank}.")
        for name in ("lora_dropout", "id_embedding_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1), got {getattr(self, name)}.")
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
