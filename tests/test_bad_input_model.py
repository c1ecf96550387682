"""
Bad input on the model side: a damaged checkpoint, config or id mappings file is refused with a one-line
`ValueError` that names the problem (and the file), never loaded into a model that serves wrong results.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_checkpoints import tiny_data
from tiny_models import tiny_cllm4rec_config, tiny_model, tiny_word_tokenizer
from transformers import AutoConfig, AutoModel, GPT2Config, GPT2LMHeadModel

from hf_cllm4rec import (
    CLLM4RecConfig,
    CLLM4RecForCollaborativeLM,
    CLLM4RecForItemPrediction,
    CLLM4RecModel,
    CLLM4RecTokenizer,
    IdMappings,
)
from hf_cllm4rec.serving import id_mappings

NUM_USERS, NUM_ITEMS = 5, 7
ITEM_TABLE = "model.item_collaborative_embeddings.weight"


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    tiny_model(CLLM4RecForItemPrediction, num_users=NUM_USERS, num_items=NUM_ITEMS).save_pretrained(folder)
    return folder


@pytest.fixture
def checkpoint(saved_checkpoint, tmp_path) -> Path:
    """A fresh copy of a tiny saved item predictor, to damage."""
    return Path(shutil.copytree(saved_checkpoint, tmp_path / "checkpoint"))


def edit_weights(folder: Path, edit) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def edit_config(folder: Path, **fields) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


def one_line_error(error_info) -> str:
    message = str(error_info.value)
    assert "\n" not in message, message
    return message


# 1. A checkpoint missing weights, or holding weights the model does not have, does not load.


def test_a_checkpoint_missing_a_weight_is_refused_naming_it(checkpoint):
    edit_weights(checkpoint, lambda weights: weights.pop(ITEM_TABLE))
    with pytest.raises(ValueError, match=f"do not fit the model: missing {ITEM_TABLE}") as error:
        CLLM4RecForItemPrediction.from_pretrained(checkpoint)
    assert str(checkpoint) in one_line_error(error)
    with pytest.raises(ValueError, match=f"missing {ITEM_TABLE}"):
        AutoModel.from_pretrained(checkpoint)


def test_a_checkpoint_with_an_unexpected_weight_is_refused_naming_it(checkpoint):
    edit_weights(checkpoint, lambda weights: weights.update({"model.extra_table.weight": torch.zeros(3, 4)}))
    with pytest.raises(ValueError, match="unexpected model.extra_table.weight"):
        CLLM4RecForItemPrediction.from_pretrained(checkpoint)


def test_an_item_head_the_config_does_not_describe_is_refused(checkpoint):
    edit_config(checkpoint, tie_item_head=False)  # the weights hold no item head of its own
    with pytest.raises(ValueError, match="missing model.item_head.weight"):
        CLLM4RecForItemPrediction.from_pretrained(checkpoint)


def test_many_missing_weights_are_counted_rather_than_listed(checkpoint):
    edit_weights(checkpoint, lambda weights: [weights.pop(key) for key in list(weights) if ".h.0." in key])
    with pytest.raises(ValueError, match=r"missing model\.backbone\.transformer\.h\.0\.\S+, .* and \d+ more") as error:
        CLLM4RecForItemPrediction.from_pretrained(checkpoint)
    one_line_error(error)


def test_output_loading_info_leaves_missing_weights_to_the_caller(checkpoint):
    edit_weights(checkpoint, lambda weights: weights.pop(ITEM_TABLE))
    _, info = CLLM4RecForItemPrediction.from_pretrained(checkpoint, output_loading_info=True)
    assert info["missing_keys"] == {ITEM_TABLE}


@pytest.mark.parametrize("backbone", ["gpt2", "llama"])
@pytest.mark.parametrize("tie_item_head", [True, False])
@pytest.mark.parametrize("model_class", [CLLM4RecForItemPrediction, CLLM4RecForCollaborativeLM, CLLM4RecModel])
def test_weights_tied_by_design_are_not_missing(backbone, tie_item_head, model_class, tmp_path):
    """The backbones' LM heads are tied to their word embeddings and saved once: every checkpoint lacks them."""
    model = tiny_model(CLLM4RecForItemPrediction, backbone, tie_item_head=tie_item_head)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path)
    assert loaded.base_model.backbone.get_output_embeddings().weight is loaded.get_input_embeddings().weight


# 2. Weights that are not finite do not load.


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", [ITEM_TABLE, "model.backbone.transformer.h.1.mlp.c_fc.weight"])
def test_a_checkpoint_with_non_finite_weights_is_refused_naming_them(checkpoint, key, value):
    edit_weights(checkpoint, lambda weights: weights[key].view(-1).__setitem__(3, value))
    with pytest.raises(ValueError, match=f"hold NaN or infinite values, in {key}:") as error:
        CLLM4RecForItemPrediction.from_pretrained(checkpoint)
    assert str(checkpoint) in one_line_error(error)


def test_non_finite_half_precision_weights_are_found(tmp_path):
    model = tiny_model(CLLM4RecForItemPrediction).to(torch.bfloat16)
    with torch.no_grad():
        model.base_model.user_content_embeddings.weight[2, 5] = math.nan
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="in model.user_content_embeddings.weight"):
        CLLM4RecForItemPrediction.from_pretrained(tmp_path, dtype=torch.bfloat16)


# 3. A weights file that is not a valid safetensors file is named.


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda data: data[: len(data) // 2], "does not describe its"),
        (lambda data: data[:100], "header is cut short"),
        (lambda data: b"", "it is empty"),
        (lambda data: b"not a safetensors file at all" * 8, "not a safetensors header"),
        (lambda data: data + b"\0" * 16, "does not describe its"),
        (lambda data: (8).to_bytes(8, "little") + b"[1, 2]  " + data[8:], "not a safetensors header"),
    ],
    ids=["cut-in-half", "cut-in-header", "empty", "garbage", "trailing-bytes", "header-not-an-object"],
)
def test_a_damaged_safetensors_file_is_named(checkpoint, damage, problem):
    path = checkpoint / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match="is not a valid safetensors file") as error:
        CLLM4RecForItemPrediction.from_pretrained(checkpoint)
    message = one_line_error(error)
    assert str(path) in message and problem in message


def test_a_damaged_shard_of_a_sharded_checkpoint_is_named(tmp_path):
    tiny_model(CLLM4RecForItemPrediction).save_pretrained(tmp_path, max_shard_size="30KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].write_bytes(shards[-1].read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"{shards[-1]} is not a valid safetensors file"):
        CLLM4RecForItemPrediction.from_pretrained(tmp_path)


# 4. Counts of the config that the weights do not have.


@pytest.mark.parametrize("field, value, rows", [("num_items", 9, NUM_ITEMS), ("num_users", 3, NUM_USERS)])
def test_config_counts_the_weights_do_not_have_are_refused_naming_both(checkpoint, field, value, rows):
    edit_config(checkpoint, **{field: value})
    with pytest.raises(ValueError, match=rf"has {field}={value}, but its weights .* have the shape \({rows}, 32\)"):
        CLLM4RecForItemPrediction.from_pretrained(checkpoint)


def test_a_huge_count_is_refused_before_tables_of_that_size_are_allocated(checkpoint):
    edit_config(checkpoint, num_items=2**31 - 1)  # within the config's bound: 2**31 rows of 32 floats are 256 GiB
    with pytest.raises(ValueError, match=r"num_items=2147483647, but its weights"):
        CLLM4RecForItemPrediction.from_pretrained(checkpoint)


def test_a_backbone_of_another_size_is_refused_naming_the_weights(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    edit_config(checkpoint, text_config={**config["text_config"], "n_embd": 64})
    with pytest.raises(
        ValueError, match=r"of another shape model\.backbone\.\S+ \(96,\) instead of \(192,\)"
    ) as error:
        CLLM4RecForItemPrediction.from_pretrained(checkpoint)
    assert "more. The checkpoint is incomplete or damaged" in one_line_error(error)


def test_ignore_mismatched_sizes_initializes_weights_of_another_shape_anew(checkpoint):
    edit_config(checkpoint, num_items=9)
    loaded = CLLM4RecForItemPrediction.from_pretrained(checkpoint, ignore_mismatched_sizes=True)
    assert loaded.base_model.item_collaborative_embeddings.weight.shape == (9, 32)


# 5. Config fields of the wrong type.

WRONG_TYPES = [
    ("num_users", "ten"),
    ("num_items", 7.5),
    ("lambda_v", "x"),
    ("collaborative_prompt", ["{user} has interacted with"]),
    ("tie_item_head", "yes"),
    ("id_embedding_init", "uniform"),
    ("text_config", [1, 2]),
]


@pytest.mark.parametrize("field, value", WRONG_TYPES)
def test_a_config_field_of_the_wrong_type_is_a_one_line_error_naming_it(checkpoint, field, value):
    edit_config(checkpoint, **{field: value})
    for load in (
        CLLM4RecConfig.from_pretrained,
        AutoConfig.from_pretrained,
        CLLM4RecForItemPrediction.from_pretrained,
    ):
        with pytest.raises(ValueError, match=f"Invalid CLLM4Rec config: Field '{field}'") as error:
            load(checkpoint)
        assert str(value) in one_line_error(error)


def test_an_override_of_the_wrong_type_is_a_one_line_error(checkpoint):
    with pytest.raises(ValueError, match="Field 'lambda_v'") as error:
        CLLM4RecConfig.from_pretrained(checkpoint, lambda_v="x")
    one_line_error(error)


# 6. Config values: finite numbers, bounded counts.

BAD_VALUES = [
    ("lambda_v", math.nan, "finite"),
    ("lambda_v", math.inf, "finite"),
    ("initializer_range", math.nan, "finite"),
    ("initializer_range", math.inf, "finite"),
    ("id_embedding_dropout", math.nan, "finite"),
    ("num_users", 0, "positive integer"),
    ("num_items", -3, "positive integer"),
    ("num_items", 2**31, "at most 2147483647"),
    ("num_users", 10**30, "at most 2147483647"),
]


@pytest.mark.parametrize("field, value, phrase", BAD_VALUES)
def test_a_bad_config_value_is_refused(field, value, phrase):
    with pytest.raises(ValueError, match=f"`{field}` must be .*{phrase}"):
        tiny_cllm4rec_config(**{field: value})


@pytest.mark.parametrize("field, value, phrase", BAD_VALUES)
def test_a_bad_config_value_in_a_checkpoint_is_refused(checkpoint, field, value, phrase):
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, field: value}))  # json writes NaN and Infinity, which json reads back
    with pytest.raises(ValueError, match=f"`{field}` must be .*{phrase}"):
        CLLM4RecConfig.from_pretrained(checkpoint)


@pytest.mark.parametrize("field, value", [("lambda_v", math.nan), ("initializer_range", -1.0)])
def test_a_bad_override_is_refused(checkpoint, field, value):
    with pytest.raises(ValueError, match=f"`{field}` must be"):
        CLLM4RecConfig.from_pretrained(checkpoint, **{field: value})
    with pytest.raises(ValueError, match=f"`{field}` must be"):
        CLLM4RecForItemPrediction.from_pretrained(checkpoint, **{field: value})


# 7. id mappings (id_mappings.json of earlier versions here): unique string ids, one history per user, item ids in
# range, valid JSON.


def write_mappings(folder: Path, **overrides) -> Path:
    stored = {
        "users": ["u1", "u2", "u3"],
        "items": ["i1", "i2"],
        "item_texts": ["red lipstick", ""],
        "histories": [[0, 1], [1], []],
    }
    stored.update(overrides)
    path = folder / "id_mappings.json"
    path.write_text(json.dumps(stored))
    return path


def test_valid_id_mappings_load(tmp_path):
    write_mappings(tmp_path)
    mappings = IdMappings.load(tmp_path)
    assert mappings.user_index("u3") == 2 and mappings.item_indices(["i2", "x"]) == ([1], ["x"])
    assert mappings.history(0) == [0, 1]


@pytest.mark.parametrize(
    "overrides, phrase",
    [
        ({"users": ["u1", "u2", "u1"]}, "user id 'u1' appears twice (users 0 and 2)"),
        ({"items": ["i1", "i1"]}, "item id 'i1' appears twice (items 0 and 1)"),
        ({"histories": [[0], [1]]}, "3 users but 2 histories"),
        ({"histories": [[0], [1], [2]]}, "holds item id 2, outside [0, 2)"),
        ({"histories": [[0], [-1], []]}, "holds item id -1, outside [0, 2)"),
        ({"histories": [[0], [1.0], []]}, "history of user 'u2' must be a list of 0-based item ids"),
        ({"histories": [[0], ["1"], []]}, "must be a list of 0-based item ids"),
        ({"histories": [[0], [True], []]}, "must be a list of 0-based item ids"),
        ({"histories": [[0], [[1]], []]}, "must be a list of 0-based item ids"),
        ({"histories": [[0], None, []]}, "must be a list of 0-based item ids"),
        ({"histories": {"u1": [0]}}, "`histories` must be a list"),
        ({"histories": 5}, "`histories` must be a list of lists, got int"),
        ({"item_texts": ["only one"]}, "2 items but 1 item texts"),
        ({"users": ["u1", 2, "u3"]}, "`users` must hold strings, got 2 at index 1"),
        ({"items": ["i1", None]}, "`items` must hold strings, got None at index 1"),
        ({"item_texts": "red lipstick"}, "`item_texts` must be a list of strings, got str"),
    ],
)
def test_inconsistent_id_mappings_are_refused_naming_the_file(tmp_path, overrides, phrase):
    path = write_mappings(tmp_path, **overrides)
    with pytest.raises(ValueError, match="is not valid id mappings") as error:
        IdMappings.load(tmp_path)
    message = one_line_error(error)
    assert str(path) in message and phrase in message


@pytest.mark.parametrize(
    "content, phrase",
    [
        (b'{"users": ["u1"], "items": [', "not a JSON file"),
        (b"\xff\xfe{}", "not a JSON file"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'["u1", "u2"]', "must hold a JSON object with users, items, item_texts"),
        (b'{"users": ["u1"], "items": ["i1"]}', "must hold a JSON object with users, items, item_texts"),
    ],
    ids=["cut-short", "not-utf8", "nested", "not-an-object", "no-item-texts"],
)
def test_a_corrupt_id_mappings_file_is_named(tmp_path, content, phrase):
    path = tmp_path / "id_mappings.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not valid id mappings") as error:
        IdMappings.load(tmp_path)
    message = one_line_error(error)
    assert str(path) in message and phrase in message


def test_id_mappings_built_in_code_are_checked_too():
    with pytest.raises(ValueError, match="user id 'u1' appears twice"):
        IdMappings(["u1", "u1"], ["i1"], [""])
    with pytest.raises(ValueError, match="holds item id 5"):
        IdMappings(["u1"], ["i1"], [""], [[0, 5]])
    with pytest.raises(ValueError, match="`histories` must be a list of lists, got int"):
        IdMappings(["u1"], ["i1"], [""], 5)
    with pytest.raises(ValueError, match="1 users but 2 histories"):
        IdMappings(["u1"], ["i1"], [""], [[0], [0]])
    assert IdMappings(["u1"], ["i1"], [""], []).history_indptr is None  # what earlier versions held for none


def test_check_fits_refuses_mappings_of_another_model():
    config = tiny_cllm4rec_config(num_users=3, num_items=2)
    mappings = IdMappings(["u1", "u2", "u3"], ["i1", "i2"], ["", ""])
    mappings.check_fits(config)
    with pytest.raises(ValueError, match="hold 3 users and 2 items, but the model has 3 users and 4 items"):
        mappings.check_fits(tiny_cllm4rec_config(num_users=3, num_items=4))


def test_check_matches_refuses_the_ids_of_another_data_set_naming_the_first_that_differs():
    data = tiny_data()
    users, items, texts = data.user_raw_ids, data.item_raw_ids, data.item_texts()
    IdMappings(users, items, texts).check_matches(data)
    others = IdMappings([*users[:3], "someone", *users[4:]], items, texts)
    with pytest.raises(ValueError, match=f"User 3 is 'someone' in the id mappings but {users[3]!r} in the data set"):
        others.check_matches(data)
    with pytest.raises(ValueError, match=f"Item 29 is nothing in the id mappings but {items[29]!r} in the data set"):
        IdMappings(users, items[:29], texts[:29]).check_matches(data)


def test_a_failed_save_leaves_the_earlier_id_mappings_whole(tmp_path, monkeypatch):
    write_mappings(tmp_path)
    before = (tmp_path / "id_mappings.json").read_bytes()

    def write_half_then_fail(tensors, path, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(id_mappings, "save_file", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        IdMappings(["a", "b", "c"], ["x", "y"], ["", ""], [[1], [0], [0, 1]]).save(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "id_mappings.json").read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["id_mappings.json"]
    # a whole save replaces the file of earlier versions
    IdMappings(["a", "b", "c"], ["x", "y"], ["", ""], [[1], [0], [0, 1]]).save(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["id_mappings.safetensors"]
    assert IdMappings.load(tmp_path).history(2) == [0, 1]


# 8. Ids out of range given to the tokenizer or the model.


@pytest.fixture(scope="module")
def tokenizer() -> CLLM4RecTokenizer:
    return CLLM4RecTokenizer(tiny_word_tokenizer(), tiny_cllm4rec_config(num_users=NUM_USERS, num_items=NUM_ITEMS))


@pytest.mark.parametrize(
    "user_ids, histories, phrase",
    [
        ([NUM_USERS], [[0]], f"user id {NUM_USERS} is out of range"),
        ([-1], [[0]], "user id -1 is out of range"),
        ([2**70], [[0]], "out of range"),
        ([0], [[0, NUM_ITEMS]], f"item id {NUM_ITEMS} is out of range"),
        ([None], [[-2]], "item id -2 is out of range"),
        ([0], [[2**70]], "must be a 1-D sequence of integer item ids"),
    ],
)
def test_out_of_range_ids_are_refused_by_the_tokenizer(tokenizer, user_ids, histories, phrase):
    with pytest.raises(ValueError, match=phrase):
        tokenizer(user_ids, histories)


def test_out_of_range_id_tokens_are_refused_in_text(tokenizer):
    with pytest.raises(ValueError, match=f"item id {NUM_ITEMS} is out of range"):
        tokenizer.encode(f"<user_0> has interacted with <item_{NUM_ITEMS}>")
    with pytest.raises(ValueError, match="outside the extended vocabulary"):
        tokenizer.decode([len(tokenizer)])


def test_out_of_range_token_ids_are_refused_by_the_model():
    model = tiny_model(CLLM4RecForItemPrediction, num_users=NUM_USERS, num_items=NUM_ITEMS)
    for token_id in (model.config.extended_vocab_size, -1):
        with pytest.raises(ValueError, match=f"Token id {token_id} is outside the extended vocabulary"):
            model(torch.tensor([[1, token_id]]))


LONG = torch.ones(1, 257, dtype=torch.long)
MALFORMED_INPUTS = {
    "lists": (([], []), r"`input_ids` must be a tensor of shape \(batch, length\), got list"),
    "no rows": ((torch.zeros(0, 3, dtype=torch.long),), r"at least one token, got shape \(0, 3\)"),
    "no tokens": ((torch.zeros(2, 0, dtype=torch.long),), r"at least one token, got shape \(2, 0\)"),
    "one dimension": ((torch.zeros(5, dtype=torch.long),), r"at least one token, got shape \(5,\)"),
    "float ids": ((torch.zeros(1, 3),), "must hold integer token ids, got torch.float32"),
    "beyond the context": (
        (LONG, torch.ones_like(LONG)),
        "holds 257 tokens per row, more than the backbone's context",
    ),
    "mask of a list": ((torch.ones(1, 3, dtype=torch.long), [[1, 1, 1]]), "`attention_mask` must be a tensor"),
    "mask of another shape": ((torch.ones(1, 3, dtype=torch.long), torch.ones(1, 2)), "does not fit `input_ids`"),
    "a row without a token": (
        (torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [0, 0, 0]])),
        "masks every token",
    ),
}


@pytest.mark.parametrize("inputs, phrase", MALFORMED_INPUTS.values(), ids=MALFORMED_INPUTS)
@pytest.mark.parametrize("model_class", [CLLM4RecForItemPrediction, CLLM4RecForCollaborativeLM])
def test_malformed_prompts_are_refused_by_the_model(model_class, inputs, phrase):
    model = tiny_model(model_class, num_users=NUM_USERS, num_items=NUM_ITEMS)
    for call in (model.recommend, model.score_items):
        with pytest.raises(ValueError, match=phrase):
            call(*inputs)


@pytest.mark.parametrize(
    "content, phrase",
    [
        ("[1, 2]", r"holds \[1, 2\], not a JSON object"),
        ("null", "holds None"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
    ],
    ids=["list", "null", "nested"],
)
def test_a_config_file_without_a_json_object_is_named(checkpoint, content, phrase):
    (checkpoint / "config.json").write_text(content)
    for load in (CLLM4RecConfig.from_pretrained, CLLM4RecForItemPrediction.from_pretrained):
        with pytest.raises(ValueError, match=f"config.json is not a valid config: .*{phrase}") as error:
            load(checkpoint)
        assert str(checkpoint / "config.json") in one_line_error(error)


def test_a_plain_backbone_folder_is_refused_as_not_a_cllm4rec_checkpoint(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    for load in (CLLM4RecConfig.from_pretrained, CLLM4RecForItemPrediction.from_pretrained):
        with pytest.raises(ValueError, match="describes a 'gpt2' checkpoint, not a CLLM4Rec one") as error:
            load(tmp_path)
        assert str(tmp_path / "config.json") in one_line_error(error)
    with pytest.raises(ValueError, match="The config dict describes a 'gpt2' checkpoint, not a CLLM4Rec one"):
        CLLM4RecConfig.from_dict(GPT2Config().to_dict())
