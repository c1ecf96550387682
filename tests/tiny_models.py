"""Tiny configs, models and tokenizers for fast CPU tests; import them from any test module."""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

from hf_cllm4rec import CLLM4RecConfig

# Tiny models are fastest on one thread; more threads only contend with each other (and with other test processes).
torch.set_num_threads(1)

SHARED_TOOLS = Path(__file__).resolve().parents[2] / "shared" / "tools"
GPT2_TOKENIZER_DIR = SHARED_TOOLS / "gpt2-tokenizer"
SMOLLM2_SCRIPT = SHARED_TOOLS / "smollm2_backbone.py"

BACKBONES = ("gpt2", "llama")
TINY_VOCAB_SIZE = 99
GPT2_VOCAB_SIZE = 50257


def tiny_gpt2_config(vocab_size: int = TINY_VOCAB_SIZE, **overrides) -> GPT2Config:
    """GPT-2 with 2 layers, 32 dims, no dropout; input and output embeddings tied (GPT-2's default)."""
    kwargs = dict(
        vocab_size=vocab_size,
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=256,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
    )
    kwargs.update(overrides)
    return GPT2Config(**kwargs)


def tiny_llama_config(vocab_size: int = TINY_VOCAB_SIZE, **overrides) -> LlamaConfig:
    """Llama with 2 layers, 32 dims, grouped-query attention, no dropout; embeddings tied as in SmolLM2."""
    kwargs = dict(
        vocab_size=vocab_size,
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attention_dropout=0.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_text_config(backbone: str = "gpt2", vocab_size: int = TINY_VOCAB_SIZE, **overrides):
    """The tiny backbone config of `backbone`, `"gpt2"` or `"llama"`."""
    factories = {"gpt2": tiny_gpt2_config, "llama": tiny_llama_config}
    if backbone not in factories:
        raise ValueError(f"backbone must be one of {sorted(factories)}, got {backbone!r}")
    return factories[backbone](vocab_size=vocab_size, **overrides)


def tiny_cllm4rec_config(
    backbone: str = "gpt2",
    num_users: int = 5,
    num_items: int = 7,
    vocab_size: int = TINY_VOCAB_SIZE,
    text_overrides: dict | None = None,
    **overrides,
) -> CLLM4RecConfig:
    """A CLLM4Rec config around a tiny backbone; `overrides` are CLLM4RecConfig fields."""
    text_config = tiny_text_config(backbone, vocab_size=vocab_size, **(text_overrides or {}))
    return CLLM4RecConfig(text_config=text_config, num_users=num_users, num_items=num_items, **overrides)


def tiny_model(model_class, backbone: str = "gpt2", seed: int = 0, id_std: float | None = None, **config_kwargs):
    """
    A tiny model of `model_class`, built with a fixed seed, in eval mode.

    `id_std` re-draws the four ID tables (and an item bias) from N(0, id_std): the default 0.02 makes ID embeddings so
    small next to the word embeddings that some checks would pass for the wrong reason.
    """
    torch.manual_seed(seed)
    model = model_class(tiny_cllm4rec_config(backbone, **config_kwargs))
    if id_std is not None:
        with torch.no_grad():
            for table in (
                *model.base_model.id_embedding_tables("collaborative"),
                *model.base_model.id_embedding_tables("content"),
            ):
                table.weight.normal_(0.0, id_std)
            if model.base_model.item_bias is not None:
                model.base_model.item_bias.normal_(0.0, id_std)
    return model.eval()


# Every word of the default prompt templates, so that they render without unknown tokens.
TINY_WORDS = (
    "<eos> [UNK] A a new user the has interacted with will interact writes following review for The tags of "
    "title is are , : . great good bad red matte lipstick"
).split()


def tiny_word_tokenizer() -> PreTrainedTokenizerFast:
    """
    A word-level tokenizer of `TINY_WORDS` (ids in the order listed) that fits the tiny backbones' 99-word vocabulary.

    Made in code, without files: models with a 99-word vocabulary can render prompts and documents with it.
    """
    vocab = {word: index for index, word in enumerate(TINY_WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>", pad_token="<eos>")


def gpt2_tokenizer():
    """OpenAI's GPT-2 tokenizer from the shared tools folder; skips the test when the folder is absent."""
    if not (GPT2_TOKENIZER_DIR / "tokenizer_config.json").exists():
        pytest.skip(f"the GPT-2 tokenizer files are not available at {GPT2_TOKENIZER_DIR}")
    return AutoTokenizer.from_pretrained(GPT2_TOKENIZER_DIR)


def item_tokens(config: CLLM4RecConfig, item_ids) -> list[int]:
    """Extended-vocabulary ids of 0-based item ids."""
    return [config.item_token_offset + int(item) for item in item_ids]


def user_token(config: CLLM4RecConfig, user_id: int) -> int:
    """Extended-vocabulary id of a 0-based user id."""
    return config.user_token_offset + int(user_id)
