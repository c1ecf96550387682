"""Tiny saved checkpoints (model, tokenizer, id mappings, card) over a tiny built-in data set, for the serving tests."""

import torch
from tiny_models import tiny_gpt2_config

from hf_cllm4rec import CLLM4RecConfig, CLLM4RecForItemPrediction, CLLM4RecTokenizer, save_for_hub
from hf_cllm4rec.data import make_synthetic_data, make_synthetic_tokenizer

# 24 users with 4 to 10 items each, among 30 items in 3 themes.
TINY_DATA = {"num_users": 24, "num_items": 30, "num_clusters": 3, "seed": 0, "interactions_per_user": (4, 10)}


def tiny_data():
    """The data set of `TINY_DATA`."""
    return make_synthetic_data(**TINY_DATA)


def tiny_item_prediction_model(data, seed: int = 0, id_std: float = 1.0, **config_kwargs):
    """
    A tiny-GPT-2 CLLM4Rec item predictor sized to `data`, with its tokenizer; ID tables (and an untied item head, an
    item bias) drawn from N(0, id_std).
    """
    base_tokenizer = make_synthetic_tokenizer(data)
    config = CLLM4RecConfig(
        text_config=tiny_gpt2_config(vocab_size=len(base_tokenizer)),
        num_users=data.num_users,
        num_items=data.num_items,
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model = CLLM4RecForItemPrediction(config)
    with torch.no_grad():
        for side in ("collaborative", "content"):
            for table in model.base_model.id_embedding_tables(side):
                table.weight.normal_(0.0, id_std)
        if model.base_model.item_head is not None:
            model.base_model.item_head.weight.normal_(0.0, id_std)
        if model.base_model.item_bias is not None:
            model.base_model.item_bias.normal_(0.0, id_std)
    return model.eval(), CLLM4RecTokenizer(base_tokenizer, model.config)


def save_tiny_checkpoint(folder, data=None, **save_kwargs):
    """Saves a tiny item predictor with `save_for_hub`; returns `(model, tokenizer, data)`."""
    data = data or tiny_data()
    model, tokenizer = tiny_item_prediction_model(data)
    save_for_hub(model, tokenizer, folder, data=data, **save_kwargs)
    return model, tokenizer, data
