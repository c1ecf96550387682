import json

import pytest
from huggingface_hub.errors import StrictDataclassError
from tiny_models import BACKBONES, tiny_cllm4rec_config, tiny_llama_config
from transformers import AutoConfig, GPT2Config, LlamaConfig

from hf_cllm4rec import CLLM4RecConfig

INVALID_CONFIG_ERRORS = (ValueError, TypeError, StrictDataclassError)


def comparable(config_dict: dict) -> dict:
    """A config dict without the fields that record where it was loaded from."""
    config_dict = {key: value for key, value in config_dict.items() if key != "_name_or_path"}
    if isinstance(config_dict.get("text_config"), dict):
        config_dict["text_config"] = comparable(config_dict["text_config"])
    return config_dict


def test_defaults():
    config = CLLM4RecConfig()
    assert config.model_type == "cllm4rec"
    # GPT-2 small is the paper's backbone
    assert isinstance(config.text_config, GPT2Config)
    assert (config.text_config.n_layer, config.text_config.n_embd, config.vocab_size) == (12, 768, 50257)
    assert (config.num_users, config.num_items) == (1, 1)
    assert config.lambda_v == 1.0
    assert config.initializer_range == 0.02
    assert config.collaborative_prompt == "{user} has interacted with"
    assert config.review_prompt == "{user} writes the following review for {item}:"
    assert config.recommendation_prompt == "{user} has interacted with {history}, {user} will interact with"
    assert "{history}" in config.cold_start_prompt and "{user}" not in config.cold_start_prompt


def test_text_config_from_dict_builds_the_named_model_type():
    config = CLLM4RecConfig(text_config=tiny_llama_config().to_dict(), num_users=3, num_items=4)
    assert isinstance(config.text_config, LlamaConfig)
    assert config.hidden_size == 32
    assert config.vocab_size == 99


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("num_users, num_items", [(1, 1), (5, 7), (1000, 30)])
def test_derived_offsets(backbone, num_users, num_items):
    config = tiny_cllm4rec_config(backbone, num_users=num_users, num_items=num_items, vocab_size=120)
    assert config.vocab_size == 120
    assert config.hidden_size == 32
    assert config.user_token_offset == 120
    assert config.item_token_offset == 120 + num_users
    assert config.extended_vocab_size == 120 + num_users + num_items


@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_load_round_trip_keeps_the_sub_config(backbone, tmp_path):
    config = tiny_cllm4rec_config(
        backbone,
        num_users=11,
        num_items=13,
        lambda_v=0.5,
        id_embedding_dropout=0.1,
        item_text_prompt="The title of {item} is:",
    )
    config.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["model_type"] == "cllm4rec"
    assert stored["text_config"]["model_type"] == backbone

    for loader in (CLLM4RecConfig, AutoConfig):
        loaded = loader.from_pretrained(tmp_path)
        assert isinstance(loaded, CLLM4RecConfig)
        assert type(loaded.text_config) is type(config.text_config)
        assert comparable(loaded.to_dict()) == comparable(config.to_dict())
        assert comparable(loaded.text_config.to_dict()) == comparable(config.text_config.to_dict())
        assert (loaded.num_users, loaded.num_items, loaded.item_token_offset) == (11, 13, 99 + 11)
        assert loaded.item_text_prompt == "The title of {item} is:"
        assert loaded.id_embedding_dropout == 0.1


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"num_users": 0}, "num_users"),
        ({"num_users": -2}, "num_users"),
        ({"num_users": 1.5}, "num_users"),
        ({"num_users": True}, "num_users"),
        ({"num_items": 0}, "num_items"),
        ({"num_items": -1}, "num_items"),
        ({"lambda_v": -0.1}, "lambda_v"),
        ({"initializer_range": 0.0}, "initializer_range"),
        ({"id_embedding_init": "words"}, "id_embedding_init"),
        ({"tie_item_head": "no"}, "tie_item_head"),
        ({"history_attention": "full"}, "history_attention"),
        ({"read_out": "max"}, "read_out"),
        ({"read_out_prefix_power": -1.0}, "read_out_prefix_power"),
        ({"read_out_prefix_power": float("nan")}, "read_out_prefix_power"),
        ({"id_embedding_dropout": 1.0}, "id_embedding_dropout"),
        ({"id_embedding_dropout": -0.1}, "id_embedding_dropout"),
        # a template without a required placeholder, with a foreign one, or with an unknown one
        ({"collaborative_prompt": "A user has interacted with"}, "collaborative_prompt"),
        ({"collaborative_prompt": "{user} and {item}"}, "collaborative_prompt"),
        ({"review_prompt": "{user} writes a review:"}, "review_prompt"),
        ({"review_prompt": "{user} reviews {item} ({rating}):"}, "review_prompt"),
        ({"item_text_prompt": "The tags are:"}, "item_text_prompt"),
        ({"recommendation_prompt": "{user} will interact with"}, "recommendation_prompt"),
        ({"recommendation_prompt": "{history}, next:"}, "recommendation_prompt"),
        ({"cold_start_prompt": "{user} has interacted with {history}"}, "cold_start_prompt"),
        ({"cold_start_prompt": "{} has interacted with {history}"}, "cold_start_prompt"),
        # malformed format strings
        ({"item_text_prompt": "The tags of {item are:"}, "item_text_prompt"),
        ({"collaborative_prompt": "{user} has interacted with }"}, "collaborative_prompt"),
        # what the tokenizer cannot render: format specs, conversions, escaped braces
        ({"collaborative_prompt": "{user:>3} has interacted with"}, "collaborative_prompt"),
        ({"item_text_prompt": "The tags of {item!r} are:"}, "item_text_prompt"),
        ({"item_text_prompt": "The {{tags}} of {item} are:"}, "item_text_prompt"),
    ],
)
def test_invalid_values_raise_an_error_naming_the_field(overrides, field):
    with pytest.raises(INVALID_CONFIG_ERRORS, match=field):
        tiny_cllm4rec_config(**overrides)


def test_invalid_values_are_rejected_on_load(tmp_path):
    tiny_cllm4rec_config().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    stored = json.loads(path.read_text())
    stored["num_items"] = 0
    path.write_text(json.dumps(stored))
    with pytest.raises(INVALID_CONFIG_ERRORS, match="num_items"):
        CLLM4RecConfig.from_pretrained(tmp_path)


def test_boundary_values_are_accepted():
    config = tiny_cllm4rec_config(lambda_v=0, id_embedding_dropout=0.999, num_users=1, num_items=1)
    assert config.lambda_v == 0 and config.id_embedding_dropout == 0.999


# Settings that configs of earlier versions held, now training or scoring options
RETIRED = {
    "mask_ratio": 0.3,
    "backbone_training": "lora",
    "lora_rank": 4,
    "lora_alpha": 32,
    "lora_dropout": 0.1,
    "lora_target_modules": ["q_proj"],
    "history_permutations": 8,
}


def test_a_config_of_an_earlier_version_loads_without_its_retired_settings(tmp_path):
    tiny_cllm4rec_config(num_users=3, num_items=4).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **RETIRED}))
    for loader in (CLLM4RecConfig, AutoConfig):
        loaded = loader.from_pretrained(tmp_path)
        assert (loaded.num_users, loaded.num_items) == (3, 4)
        assert not any(hasattr(loaded, name) for name in RETIRED)
    loaded.save_pretrained(tmp_path / "again")  # saved again, it is a config of this version
    assert not set(RETIRED) & set(json.loads((tmp_path / "again" / "config.json").read_text()))
