import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tiny_models import (
    BACKBONES,
    TINY_VOCAB_SIZE,
    tiny_cllm4rec_config,
    tiny_model,
    tiny_text_config,
    tiny_word_tokenizer,
)
from torch.nn.utils.rnn import pad_sequence
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM

from hf_cllm4rec import (
    CLLM4RecForCollaborativeLM,
    CLLM4RecForItemPrediction,
    CLLM4RecModel,
    CLLM4RecTokenizer,
    modeling_cllm4rec,
)
from hf_cllm4rec.data import make_synthetic_data
from hf_cllm4rec.modeling_cllm4rec import COLLABORATIVE_TARGETS
from hf_cllm4rec.training import apply_backbone_training
from hf_cllm4rec.training.recipes import BUILTIN_BACKBONE, PretrainingModelArguments, build_pretraining_model

MODEL_CLASSES = (CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction)
NUM_USERS, NUM_ITEMS = 5, 7
USER = TINY_VOCAB_SIZE  # token id of user 0
ITEM = TINY_VOCAB_SIZE + NUM_USERS  # token id of item 0
PAD = 0  # the tiny word tokenizer's end-of-sequence token, which pads

# Two collaborative documents, right-padded: `<user_u> w w w <item> <item> ...`; the main text is the items.
COLLABORATIVE_IDS = torch.tensor(
    [
        [USER + 1, 10, 11, 12, ITEM + 3, ITEM + 0, ITEM + 5, ITEM + 2],
        [USER + 3, 10, 11, 12, ITEM + 6, ITEM + 0, PAD, PAD],
    ]
)
COLLABORATIVE_MASK = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
COLLABORATIVE_PROMPT_LENGTH = 4
# Two content documents: `<user_u> w w w <item_i> w` + review words.
CONTENT_IDS = torch.tensor(
    [
        [USER + 2, 20, 21, 22, ITEM + 4, 23, 40, 41, 42, 43],
        [USER + 1, 20, 21, 22, ITEM + 3, 23, 50, 51, PAD, PAD],
    ]
)
CONTENT_MASK = torch.tensor([[1] * 10, [1] * 8 + [0] * 2])
CONTENT_PROMPT_LENGTH = 6


def main_text_labels(input_ids, attention_mask, prompt_length):
    """Labels that keep the main text (every position from `prompt_length` on) and mask prompt and padding."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :prompt_length] = -100
    return labels


COLLABORATIVE_LABELS = main_text_labels(COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_PROMPT_LENGTH)
CONTENT_LABELS = main_text_labels(CONTENT_IDS, CONTENT_MASK, CONTENT_PROMPT_LENGTH)

# Recommendation prompts `<user_u> w w <items...> w <user_u> w` of different lengths, and held-out targets.
RECOMMENDATION_PROMPTS = [
    [USER + 0, 10, 11, ITEM + 1, ITEM + 2, 12, USER + 0, 13],
    [USER + 4, 10, 11, ITEM + 6, 12, USER + 4, 13],
    [USER + 2, 10, 11, ITEM + 0, ITEM + 3, ITEM + 5, ITEM + 4, 12, USER + 2, 13],
]
RECOMMENDATION_TARGETS = torch.tensor([[3, 5, -100], [0, 1, 2], [6, -100, -100]])


def right_pad(sequences, pad=PAD):
    length = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), length), pad)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


def model_outputs(model) -> dict[str, torch.Tensor]:
    """Every output a model class can give on the fixed batches above."""
    with torch.no_grad():
        if isinstance(model, CLLM4RecForItemPrediction):
            input_ids, attention_mask = right_pad(RECOMMENDATION_PROMPTS)
            return {
                "item_logits": model(input_ids, attention_mask).logits,
                "loss": model(input_ids, attention_mask, labels=RECOMMENDATION_TARGETS).loss,
                "content_loss": model(CONTENT_IDS, CONTENT_MASK, CONTENT_LABELS, document_type="content").loss,
            }
        return {
            "collaborative_logits": model(COLLABORATIVE_IDS, COLLABORATIVE_MASK).logits,
            "content_logits": model(CONTENT_IDS, CONTENT_MASK, document_type="content").logits,
            "collaborative_loss": model(COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS).loss,
            "content_loss": model(CONTENT_IDS, CONTENT_MASK, CONTENT_LABELS, document_type="content").loss,
        }


def assert_same_outputs(first: dict, second: dict, atol: float = 1e-6):
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def input_output_embeddings(model):
    backbone = model.base_model.backbone
    return backbone.get_input_embeddings().weight, backbone.get_output_embeddings().weight


# Save and load


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_outputs_equal_after_save_and_load(backbone, model_class, tmp_path):
    model = tiny_model(model_class, backbone, id_std=1.0, lambda_v=0.5)
    expected = model_outputs(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / "pytorch_model.bin").exists()

    loaded = model_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is model_class
    assert_same_outputs(expected, model_outputs(loaded))
    for name, parameter in model.state_dict().items():
        assert torch.equal(parameter, loaded.state_dict()[name]), name


@pytest.mark.parametrize("backbone", BACKBONES)
def test_tied_lm_head_is_stored_once(backbone, tmp_path):
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone)
    word_embeddings, lm_head = input_output_embeddings(model)
    assert word_embeddings is lm_head
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as stored:
        tensors = {name: stored.get_tensor(name) for name in stored.keys()}
    assert not [name for name in tensors if name.endswith("lm_head.weight")]
    # no tensor is stored twice under two names (norm weights and biases are constant, hence matrices only)
    matrices = [(name, tensor) for name, tensor in tensors.items() if tensor.ndim >= 2]
    duplicates = [
        (first, second)
        for index, (first, tensor) in enumerate(matrices)
        for second, other in matrices[index + 1 :]
        if tensor.shape == other.shape and torch.equal(tensor, other)
    ]
    assert duplicates == []
    assert set(tensors) == set(model.state_dict()) - {
        name for name in model.state_dict() if name.endswith("lm_head.weight")
    }


def test_untied_lm_head_is_stored_and_stays_separate(tmp_path):
    model = tiny_model(CLLM4RecForCollaborativeLM, "llama", text_overrides={"tie_word_embeddings": False})
    word_embeddings, lm_head = input_output_embeddings(model)
    assert word_embeddings is not lm_head
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as stored:
        names = set(stored.keys())
    assert "model.backbone.lm_head.weight" in names
    loaded = CLLM4RecForCollaborativeLM.from_pretrained(tmp_path)
    word_embeddings, lm_head = input_output_embeddings(loaded)
    assert word_embeddings.data_ptr() != lm_head.data_ptr()
    assert torch.equal(lm_head, model.model.backbone.lm_head.weight)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_item_prediction_loads_a_collaborative_lm_checkpoint(backbone, tmp_path):
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0)
    model.save_pretrained(tmp_path)
    loaded, info = CLLM4RecForItemPrediction.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for side in ("collaborative", "content"):
        for table, loaded_table in zip(
            model.model.id_embedding_tables(side), loaded.model.id_embedding_tables(side), strict=True
        ):
            assert torch.equal(table.weight, loaded_table.weight)
    for name, parameter in model.model.backbone.state_dict().items():
        assert torch.equal(parameter, loaded.model.backbone.state_dict()[name]), name
    # the item head reads the collaborative item table: the collaborative LM's next-item logits at the prompt's end
    input_ids, attention_mask = right_pad(RECOMMENDATION_PROMPTS[:1])
    with torch.no_grad():
        expected = model(input_ids, attention_mask).logits[:, -1]
        torch.testing.assert_close(loaded.eval()(input_ids, attention_mask).logits, expected)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_checkpoint_keys_survive_loading_and_saving_again(backbone, tmp_path):
    # The Trainer restores the best round with a raw `load_state_dict` of the saved file, so a re-saved checkpoint
    # must hold the model's own parameter names: no renaming on load that is reverted on save.
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0)
    model.save_pretrained(tmp_path / "pretrained")
    loaded = CLLM4RecForItemPrediction.from_pretrained(tmp_path / "pretrained")
    loaded.save_pretrained(tmp_path / "again")
    with safe_open(tmp_path / "again" / "model.safetensors", "pt") as stored:
        stored_names = set(stored.keys())
        stored_state = {name: stored.get_tensor(name) for name in stored_names}
    assert stored_names <= set(loaded.state_dict()), sorted(stored_names - set(loaded.state_dict()))
    fresh = CLLM4RecForItemPrediction(loaded.config)
    result = fresh.load_state_dict(stored_state, strict=False)
    assert not result.unexpected_keys
    for name, parameter in loaded.state_dict().items():
        assert torch.equal(parameter, fresh.state_dict()[name]), name


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_base_model_checkpoint_round_trip(model_class, tmp_path):
    model = tiny_model(CLLM4RecModel, "gpt2", id_std=1.0)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path)
    for name, parameter in model.state_dict().items():
        assert torch.equal(parameter, loaded.model.state_dict()[name]), name


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_users": NUM_USERS + 1}, "num_users"),
        ({"num_items": NUM_ITEMS - 2}, "num_items"),
        ({"config": tiny_cllm4rec_config("gpt2", num_users=NUM_USERS, num_items=NUM_ITEMS + 3)}, "num_items"),
        ({"config": tiny_cllm4rec_config("gpt2", num_users=2, num_items=NUM_ITEMS)}, "num_users"),
        ({"config": tiny_cllm4rec_config("gpt2", text_overrides={"n_layer": 3})}, "backbone"),
        ({"config": tiny_cllm4rec_config("gpt2", text_overrides={"n_embd": 64})}, "backbone"),
        ({"config": tiny_cllm4rec_config("gpt2", vocab_size=120)}, "backbone"),
        ({"config": tiny_cllm4rec_config("llama")}, "backbone"),
        ({"tie_item_head": False}, "tie_item_head=True, but tie_item_head=False"),
    ],
)
@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_loading_into_another_catalogue_or_backbone_fails(model_class, overrides, message, tmp_path):
    tiny_model(CLLM4RecForCollaborativeLM, "gpt2").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        model_class.from_pretrained(tmp_path, **overrides)


@pytest.mark.parametrize("setting", [{"backbone_training": "full"}, {"mask_ratio": 0.3}, {"lora_rank": 4}])
def test_settings_of_training_are_refused_when_loading(setting, tmp_path):
    tiny_model(CLLM4RecForCollaborativeLM).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"{next(iter(setting))} no longer belong to the model's config"):
        CLLM4RecForItemPrediction.from_pretrained(tmp_path, **setting)
    with pytest.raises(ValueError, match="training arguments"):
        CLLM4RecForCollaborativeLM.from_backbone(tmp_path, num_users=NUM_USERS, num_items=NUM_ITEMS, **setting)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_loading_freezes_nothing(model_class, tmp_path):
    """What trains is set by training code (`apply_backbone_training`), never by loading."""
    model = tiny_model(CLLM4RecForCollaborativeLM, "gpt2", id_std=1.0)
    apply_backbone_training(model, "frozen")
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path)
    assert all(parameter.requires_grad for parameter in loaded.parameters())
    if model_class is CLLM4RecForCollaborativeLM:
        assert_same_outputs(model_outputs(model), model_outputs(loaded.eval()))
    apply_backbone_training(loaded, "full")
    assert_trains_exactly_the_trainable_parameters(loaded, "full")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_loading_a_plain_backbone_checkpoint_fails(backbone, tmp_path):
    AutoModelForCausalLM.from_config(tiny_text_config(backbone)).save_pretrained(tmp_path)
    for model_class in MODEL_CLASSES:
        with pytest.raises(ValueError, match=rf"'{backbone}' checkpoint, not a CLLM4Rec one.*from_backbone"):
            model_class.from_pretrained(tmp_path)


# Building around a pretrained backbone


@pytest.mark.parametrize("backbone_training", ["frozen", "lora"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_from_backbone_keeps_the_backbone_outputs_on_plain_text(backbone, backbone_training, tmp_path):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_text_config(backbone)).save_pretrained(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    model = CLLM4RecForCollaborativeLM.from_backbone(tmp_path, num_users=NUM_USERS, num_items=NUM_ITEMS, lambda_v=0.5)
    apply_backbone_training(model, backbone_training)  # LoRA's B matrices start at zero: the backbone's outputs
    model.eval()
    assert (model.config.num_users, model.config.num_items, model.config.lambda_v) == (NUM_USERS, NUM_ITEMS, 0.5)
    assert model.config.text_config.model_type == backbone
    text = torch.tensor([[5, 17, 42, 8, 93, 61]])
    with torch.no_grad():
        expected = reference(text).logits
        torch.testing.assert_close(model(text, document_type="content").logits, expected, rtol=0, atol=1e-6)
        labels = text.clone()
        torch.testing.assert_close(
            model(text, labels=labels, document_type="content").lm_loss, reference(text, labels=labels).loss
        )


def test_backbone_overrides_reach_a_pretrained_backbone_and_unknown_fields_are_refused(tmp_path):
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(tiny_text_config("llama"))
    reference.save_pretrained(tmp_path)
    tiny_word_tokenizer().save_pretrained(tmp_path)
    data = make_synthetic_data(num_users=6, num_items=9)
    model, _ = build_pretraining_model(
        PretrainingModelArguments(backbone=str(tmp_path), backbone_overrides='{"attention_dropout": 0.25}'), data
    )
    assert model.config.text_config.attention_dropout == 0.25
    assert all(layer.self_attn.attention_dropout == 0.25 for layer in model.model.backbone.model.layers)
    for name, weight in reference.state_dict().items():  # still the pretrained weights
        assert torch.equal(model.model.backbone.state_dict()[name], weight), name
    with pytest.raises(ValueError, match="LlamaConfig has no field 'attention_dropot'"):
        build_pretraining_model(
            PretrainingModelArguments(backbone=str(tmp_path), backbone_overrides='{"attention_dropot": 1}'), data
        )


def test_a_pretraining_model_starts_its_item_bias_at_the_log_training_popularity_and_saves_it(tmp_path):
    data = make_synthetic_data(num_users=6, num_items=9)
    model, _ = build_pretraining_model(PretrainingModelArguments(backbone=BUILTIN_BACKBONE, item_bias=True), data)
    log_counts = np.log1p(np.asarray(data.to_sparse("train").sum(0), dtype=np.float32).ravel())
    assert log_counts.std() > 0  # items of different popularity
    np.testing.assert_allclose(model.model.item_bias.detach().numpy(), log_counts - log_counts.mean(), rtol=1e-6)
    model.save_pretrained(tmp_path)
    loaded = CLLM4RecForItemPrediction.from_pretrained(tmp_path)
    assert loaded.config.item_bias
    torch.testing.assert_close(loaded.model.item_bias, model.model.item_bias)
    with pytest.raises(ValueError, match="has item_bias=True, but item_bias=False was requested"):
        CLLM4RecForItemPrediction.from_pretrained(tmp_path, item_bias=False)
    plain, _ = build_pretraining_model(PretrainingModelArguments(backbone=BUILTIN_BACKBONE), data)
    assert plain.model.item_bias is None and not plain.config.item_bias
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="has item_bias=False, but item_bias=True was requested"):
        CLLM4RecForItemPrediction.from_pretrained(tmp_path / "plain", item_bias=True)


@pytest.mark.parametrize("initializer_range", [0.02, 0.5])
def test_id_embeddings_are_initialized_with_initializer_range(initializer_range):
    model = tiny_model(CLLM4RecForCollaborativeLM, num_users=400, num_items=600, initializer_range=initializer_range)
    for side in ("collaborative", "content"):
        for table in model.model.id_embedding_tables(side):
            assert abs(table.weight.std().item() - initializer_range) < 0.1 * initializer_range
            assert abs(table.weight.mean().item()) < 0.1 * initializer_range
    # four independent draws
    tables = [table.weight for side in ("collaborative", "content") for table in model.model.id_embedding_tables(side)]
    assert not torch.equal(tables[0], tables[2]) and not torch.equal(tables[1], tables[3])


def test_id_embedding_dropout_drops_id_tokens_in_training_only():
    model = tiny_model(CLLM4RecForCollaborativeLM, num_users=NUM_USERS, num_items=NUM_ITEMS, id_embedding_dropout=0.5)
    base_model = model.model
    is_id = COLLABORATIVE_IDS >= USER
    kept = base_model.embed_tokens(COLLABORATIVE_IDS)
    assert torch.equal(base_model.embed_tokens(COLLABORATIVE_IDS), kept)  # evaluation: no dropout
    model.train()
    torch.manual_seed(0)
    dropped = base_model.embed_tokens(COLLABORATIVE_IDS)
    assert torch.equal(dropped[~is_id], kept[~is_id])  # words as the backbone has them
    zeroed = dropped[is_id] == 0
    assert 0.3 < zeroed.float().mean().item() < 0.7
    torch.testing.assert_close(dropped[is_id][~zeroed], 2 * kept[is_id][~zeroed])
    model.config.id_embedding_dropout = 0.0  # read at every call: a loaded model's rate can be changed
    assert torch.equal(base_model.embed_tokens(COLLABORATIVE_IDS), kept)
    model.eval()
    assert torch.equal(base_model.embed_tokens(COLLABORATIVE_IDS), kept)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_id_embeddings_drawn_from_the_vocabulary_match_its_statistics_and_survive_loading(backbone, tmp_path):
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(tiny_text_config(backbone))
    with torch.no_grad():  # words far from N(0, 0.02): an offset and a spread per dimension
        words = reference.get_input_embeddings().weight
        words.copy_(
            torch.linspace(-1, 1, words.shape[1]) + torch.linspace(0.1, 0.5, words.shape[1]) * torch.randn_like(words)
        )
    reference.save_pretrained(tmp_path / "backbone")
    model = CLLM4RecForCollaborativeLM.from_backbone(
        tmp_path / "backbone", num_users=400, num_items=600, id_embedding_init="vocabulary"
    )
    words = model.get_input_embeddings().weight.detach()  # the backbone's, through the usual accessor
    assert model.get_input_embeddings() is model.model.backbone.get_input_embeddings()
    torch.testing.assert_close(words, reference.get_input_embeddings().weight, rtol=0, atol=0)
    for side in ("collaborative", "content"):
        for table in model.model.id_embedding_tables(side):
            torch.testing.assert_close(table.weight.mean(0), words.mean(0), rtol=0, atol=0.1)
            torch.testing.assert_close(table.weight.std(0), words.std(0), rtol=0.15, atol=0)
    model.save_pretrained(tmp_path / "cllm4rec")
    loaded = CLLM4RecForCollaborativeLM.from_pretrained(tmp_path / "cllm4rec")
    assert loaded.config.id_embedding_init == "vocabulary"
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), f"{name} changed in loading"


# Training


def expected_trainable(name: str, backbone_training: str) -> bool:
    if ("_embeddings." in name or name == "model.item_head.weight") and not name.startswith("model.backbone."):
        return True  # the four ID tables and an untied item head
    return backbone_training == "full" or (backbone_training == "lora" and "lora_" in name)


def training_step(model, optimizer, step: int):
    """One optimizer step, alternating collaborative / content documents (or recommendation / content)."""
    optimizer.zero_grad()
    if step % 2 == 1:
        loss = model(CONTENT_IDS, CONTENT_MASK, CONTENT_LABELS, document_type="content").loss
    elif isinstance(model, CLLM4RecForItemPrediction):
        loss = model(*right_pad(RECOMMENDATION_PROMPTS), labels=RECOMMENDATION_TARGETS).loss
    else:
        loss = model(COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS).loss
    loss.backward()
    optimizer.step()
    return loss


def train(model, steps: int = 4):
    model.train()
    # every parameter goes to the optimizer: only requires_grad decides what moves
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        assert torch.isfinite(training_step(model, optimizer, step))
    return model.eval()


def assert_trains_exactly_the_trainable_parameters(model, backbone_training):
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    expected = {name for name, _ in model.named_parameters() if expected_trainable(name, backbone_training)}
    assert trainable == expected
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    train(model)
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter)
        assert changed == (name in trainable), f"{name} changed={changed}, trainable={name in trainable}"


@pytest.mark.parametrize("backbone_training", ["frozen", "full", "lora"])
@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_training_changes_exactly_the_trainable_parameters(backbone, model_class, backbone_training):
    model = tiny_model(model_class, backbone)
    apply_backbone_training(model, backbone_training)
    if backbone_training == "lora":
        lora_names = [name for name, _ in model.named_parameters() if "lora_" in name]
        assert lora_names and any("lora_B" in name for name in lora_names)
    assert_trains_exactly_the_trainable_parameters(model, backbone_training)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_untied_item_head_scores_items_trains_and_reloads(backbone, model_class, tmp_path):
    model = tiny_model(model_class, backbone, id_std=1.0, tie_item_head=False)
    head = model.model.item_head.weight
    assert head.shape == model.model.item_collaborative_embeddings.weight.shape and head.requires_grad
    assert model.model.item_head_weight() is head
    # the scores are the hidden states times the head; the collaborative item table only feeds the input
    input_ids, attention_mask = right_pad(RECOMMENDATION_PROMPTS)
    with torch.no_grad():
        hidden = model.model.read_out_hidden_states(input_ids, attention_mask)
        torch.testing.assert_close(model.model.read_out_item_logits(input_ids, attention_mask), hidden @ head.T)
    apply_backbone_training(model, "frozen")
    assert_trains_exactly_the_trainable_parameters(model, "frozen")

    model.save_pretrained(tmp_path)
    loaded, info = CLLM4RecForItemPrediction.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not loaded.config.tie_item_head and torch.equal(loaded.model.item_head.weight, head)
    if model_class is CLLM4RecForItemPrediction:
        assert_same_outputs(model_outputs(model), model_outputs(loaded.eval()))
    with pytest.raises(ValueError, match="tie_item_head=False, but tie_item_head=True"):
        CLLM4RecForItemPrediction.from_pretrained(tmp_path, tie_item_head=True)


def lora_model(backbone: str, frozen):
    """`frozen` with LoRA adapters (rank 4, alpha 8) on its backbone, as training adds them; and their peft tuner."""
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone)
    model.load_state_dict(frozen.state_dict())
    return model, apply_backbone_training(model, "lora", lora_rank=4, lora_alpha=8)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_lora_starts_from_the_backbone_and_merges_into_plain_weights(backbone, tmp_path):
    frozen = tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0)
    lora, adapters = lora_model(backbone, frozen)
    # LoRA's B matrices start at zero: with the frozen model's weights, the adapted model computes what it does
    assert all(not parameter.any() for name, parameter in lora.named_parameters() if "lora_B" in name)
    assert_same_outputs(model_outputs(frozen), model_outputs(lora))
    with pytest.raises(ValueError, match="already holds LoRA adapters"):
        apply_backbone_training(lora, "full")

    train(lora)
    trained = model_outputs(lora)
    assert not torch.allclose(trained["collaborative_logits"], model_outputs(frozen)["collaborative_logits"])
    adapters.merge_and_unload()
    assert not any("lora_" in name or "base_layer" in name for name in lora.state_dict())
    merged = model_outputs(lora)
    assert_same_outputs(trained, merged, atol=5e-5)  # the merged weights add up in another order
    lora.save_pretrained(tmp_path)
    assert_same_outputs(merged, model_outputs(CLLM4RecForCollaborativeLM.from_pretrained(tmp_path).eval()))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_saved_lora_adapters_are_folded_into_the_weights_on_loading(backbone, tmp_path):
    """A checkpoint of a run with LoRA, or of an earlier version, holds its adapters apart: it loads plain."""
    lora, _ = lora_model(backbone, tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0))
    train(lora)
    trained = model_outputs(lora)
    lora.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as stored:
        assert any("lora_B" in name for name in stored.keys())
    # without the adapters' settings, the adapted weights are missing: loading reports them
    _, info = CLLM4RecForCollaborativeLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"]
    # a training run writes them beside the checkpoint; an earlier version kept them in config.json
    (tmp_path / modeling_cllm4rec.LORA_ADAPTERS_NAME).write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    loaded, info = CLLM4RecForCollaborativeLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_same_outputs(trained, model_outputs(loaded.eval()), atol=5e-5)  # merged: added up in another order
    (tmp_path / modeling_cllm4rec.LORA_ADAPTERS_NAME).unlink()
    config = json.loads((tmp_path / "config.json").read_text())
    retired = {"backbone_training": "lora", "lora_rank": 4, "lora_alpha": 8, "mask_ratio": 0.2}
    (tmp_path / "config.json").write_text(json.dumps({**config, **retired}))
    assert_same_outputs(trained, model_outputs(CLLM4RecForCollaborativeLM.from_pretrained(tmp_path).eval()), 5e-5)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_tied_heads_share_storage_after_training_and_loading(backbone, tmp_path):
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone)
    before = input_output_embeddings(model)[0].detach().clone()
    train(model)
    word_embeddings, lm_head = input_output_embeddings(model)
    assert not torch.equal(before, word_embeddings)
    assert word_embeddings.data_ptr() == lm_head.data_ptr()
    model.save_pretrained(tmp_path)
    for model_class in MODEL_CLASSES:
        loaded = model_class.from_pretrained(tmp_path)
        word_embeddings, lm_head = input_output_embeddings(loaded)
        assert word_embeddings.data_ptr() == lm_head.data_ptr()
        assert torch.equal(lm_head, input_output_embeddings(model)[1])
        # still tied once the loaded model trains
        train(loaded)
        word_embeddings, lm_head = input_output_embeddings(loaded)
        assert word_embeddings.data_ptr() == lm_head.data_ptr()


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradient_checkpointing_gives_the_same_gradients(backbone):
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0).train()

    def gradients():
        model.zero_grad()
        model(COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS).loss.backward()
        return {
            name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None
        }

    layer = model.model.backbone.base_model.h[0] if backbone == "gpt2" else model.model.backbone.model.layers[0]
    calls = []
    # the checkpointed function is the layer's forward: hooks on a module inside it see the recomputation
    layer.mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    expected = gradients()
    assert len(calls) == 1
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    calls.clear()
    actual = gradients()
    # checkpointing recomputes the layer in the backward pass
    assert len(calls) == 2
    assert actual.keys() == expected.keys()
    assert {name for name in expected if "user_collaborative" in name or "item_collaborative" in name}
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


# ID routing


@pytest.mark.parametrize("backbone", BACKBONES)
def test_id_tokens_read_the_table_of_their_side(backbone):
    model = tiny_model(CLLM4RecModel, backbone, id_std=1.0)
    input_ids = torch.cat([COLLABORATIVE_IDS, torch.full((2, 2), ITEM + 6)], dim=1)
    word_table = model.get_input_embeddings().weight
    with torch.no_grad():
        for side in ("collaborative", "content"):
            user_table, item_table = (table.weight for table in model.id_embedding_tables(side))
            expected = torch.stack(
                [
                    torch.stack(
                        [
                            word_table[token]
                            if token < USER
                            else user_table[token - USER]
                            if token < ITEM
                            else item_table[token - ITEM]
                            for token in row.tolist()
                        ]
                    )
                    for row in input_ids
                ]
            )
            assert torch.equal(model.embed_tokens(input_ids, side), expected)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_zeroing_one_side_changes_only_that_side(backbone):
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0)
    before = model_outputs(model)
    with torch.no_grad():
        model.model.user_content_embeddings.weight.zero_()
        model.model.item_content_embeddings.weight.zero_()
    after = model_outputs(model)
    torch.testing.assert_close(after["collaborative_logits"], before["collaborative_logits"], rtol=0, atol=0)
    assert not torch.allclose(after["content_logits"], before["content_logits"])
    # the zeroed ID positions of content documents embed to zero, the words do not
    embeddings = model.model.embed_tokens(CONTENT_IDS, "content")
    is_id = CONTENT_IDS >= USER
    assert not embeddings[is_id].any() and embeddings[~is_id].abs().sum(-1).min() > 0


def test_unknown_document_type_raises():
    model = tiny_model(CLLM4RecForCollaborativeLM)
    with pytest.raises(ValueError, match="document type"):
        model(CONTENT_IDS, document_type="reviews")
    with pytest.raises(ValueError, match="document_type"):
        tiny_model(CLLM4RecForItemPrediction)(CONTENT_IDS, document_type="collab")


# Losses


def manual_lm_loss(logits, labels, offset=0):
    """Token-level mean cross-entropy of next-token `logits` against shifted `labels`, over labelled positions."""
    targets = labels[:, 1:]
    is_target = targets != -100
    return F.cross_entropy(logits[:, :-1][is_target], targets[is_target] - offset)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_collaborative_loss_counts_the_main_text_from_its_first_item(backbone):
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0, lambda_v=0.0)
    with torch.no_grad():
        logits = model(COLLABORATIVE_IDS, COLLABORATIVE_MASK).logits
        output = model(COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS)
    assert logits.shape == (2, 8, NUM_ITEMS)
    # by hand: the first item is predicted from the prompt's last token, every item from the one before it
    positions = [(0, 3, 3), (0, 4, 0), (0, 5, 5), (0, 6, 2), (1, 3, 6), (1, 4, 0)]
    manual = -torch.stack([logits[row, position].log_softmax(-1)[item] for row, position, item in positions]).mean()
    torch.testing.assert_close(output.lm_loss, manual)
    torch.testing.assert_close(output.lm_loss, manual_lm_loss(logits, COLLABORATIVE_LABELS, ITEM))
    assert output.regularization_loss == 0
    torch.testing.assert_close(output.loss, output.lm_loss)
    assert output.logits is None


@pytest.mark.parametrize("item_bias", [False, True])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_remaining_items_targets_predict_every_item_that_follows_each_position(backbone, item_bias):
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0, lambda_v=0.7, item_bias=item_bias)
    with torch.no_grad():
        logits = model(COLLABORATIVE_IDS, COLLABORATIVE_MASK).logits
        arguments = (COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS)
        output = model(*arguments, collaborative_targets="remaining_items")
        next_item = model(*arguments)
    # by hand: each position that predicts an item predicts, with equal weight, every item from that one to the end
    documents = {0: (3, [3, 0, 5, 2]), 1: (3, [6, 0])}
    per_position = [
        -logits[row, first + offset].log_softmax(-1)[items[offset:]].mean()
        for row, (first, items) in documents.items()
        for offset in range(len(items))
    ]
    torch.testing.assert_close(output.lm_loss, torch.stack(per_position).mean())
    torch.testing.assert_close(output.regularization_loss, next_item.regularization_loss)
    assert not torch.isclose(output.lm_loss, next_item.lm_loss)  # they differ wherever more than one item remains


@pytest.mark.parametrize("item_bias", [False, True])
def test_remaining_items_targets_of_a_catalogue_scored_in_chunks(monkeypatch, item_bias):
    model = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0, item_bias=item_bias)
    arguments = (COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS)
    with torch.no_grad():
        whole = model(*arguments, collaborative_targets="remaining_items").lm_loss
        monkeypatch.setattr(modeling_cllm4rec, "ITEM_CHUNK_SIZE", 3)  # 7 items in chunks of 3, 3 and 1
        chunked = model(*arguments, collaborative_targets="remaining_items").lm_loss
    torch.testing.assert_close(chunked, whole)


@pytest.mark.parametrize("collaborative_targets", COLLABORATIVE_TARGETS)
def test_the_item_bias_adds_to_every_item_score_and_loss_and_learns(collaborative_targets):
    model = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0, item_bias=True)
    unbiased = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0)  # the same seed: the same other weights
    bias = model.model.item_bias
    arguments = (COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS)
    prompts = right_pad(RECOMMENDATION_PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(model(*arguments[:2]).logits, unbiased(*arguments[:2]).logits + bias)
        torch.testing.assert_close(model.score_items(*prompts), unbiased.score_items(*prompts) + bias)
        biased_loss = model(*arguments, collaborative_targets=collaborative_targets).lm_loss
        bias.zero_()
        torch.testing.assert_close(
            model(*arguments, collaborative_targets=collaborative_targets).lm_loss,
            unbiased(*arguments, collaborative_targets=collaborative_targets).lm_loss,
        )
    assert not torch.isclose(biased_loss, unbiased(*arguments, collaborative_targets=collaborative_targets).lm_loss)
    model(*arguments, collaborative_targets=collaborative_targets).loss.backward()
    assert bias.grad is not None and (bias.grad != 0).all()


def test_unknown_collaborative_targets_are_refused():
    model = tiny_model(CLLM4RecForCollaborativeLM)
    with pytest.raises(ValueError, match="collaborative_targets must be one of"):
        model(COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS, collaborative_targets="all_items")


# The items the item softmax normalizes over: items 1 and 4 are in no collaborative document above.
SOFTMAX_ITEMS = torch.tensor([True, False, True, True, False, True, True])


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("collaborative_targets", COLLABORATIVE_TARGETS)
def test_items_left_out_of_the_softmax_take_no_probability_and_no_gradient(
    monkeypatch, collaborative_targets, chunk_size
):
    model = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0, lambda_v=0.0)
    if chunk_size is not None:
        monkeypatch.setattr(modeling_cllm4rec, "ITEM_CHUNK_SIZE", chunk_size)
    arguments = (COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS)
    with torch.no_grad():
        kept_log_probabilities = model(*arguments[:2]).logits.masked_fill(~SOFTMAX_ITEMS, -torch.inf).log_softmax(-1)
    # by hand, as the tests above, over the kept items: item 1 and 4 have no share of any normalizer
    documents = {0: (3, [3, 0, 5, 2]), 1: (3, [6, 0])}
    targets = (lambda items: items[:1]) if collaborative_targets == "next_item" else (lambda items: items)
    manual = torch.stack(
        [
            -kept_log_probabilities[row, first + offset][targets(items[offset:])].mean()
            for row, (first, items) in documents.items()
            for offset in range(len(items))
        ]
    ).mean()
    output = model(*arguments, collaborative_targets=collaborative_targets, softmax_items=SOFTMAX_ITEMS)
    torch.testing.assert_close(output.lm_loss, manual)
    output.loss.backward()
    gradient = model.model.item_collaborative_embeddings.weight.grad.abs().sum(-1)
    assert (gradient[~SOFTMAX_ITEMS] == 0).all() and (gradient[SOFTMAX_ITEMS] > 0).all()
    model.zero_grad()
    model(*arguments, collaborative_targets=collaborative_targets).loss.backward()  # over all items they are pushed
    assert (model.model.item_collaborative_embeddings.weight.grad.abs().sum(-1) > 0).all()


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_multinomial_loss_over_some_items(monkeypatch, chunk_size):
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0)
    input_ids, attention_mask = right_pad(RECOMMENDATION_PROMPTS)
    if chunk_size is not None:  # the catalogue scored in chunks, without logits
        monkeypatch.setattr(modeling_cllm4rec, "ITEM_CHUNK_SIZE", chunk_size)
    softmax_items = torch.arange(NUM_ITEMS) != 4  # item 4 is no target
    with torch.no_grad():
        logits = model(input_ids, attention_mask).logits
        output = model(input_ids, attention_mask, labels=RECOMMENDATION_TARGETS, softmax_items=softmax_items)
    log_probabilities = logits.masked_fill(~softmax_items, -torch.inf).log_softmax(-1)
    is_target = RECOMMENDATION_TARGETS != -100
    manual = -log_probabilities.gather(1, RECOMMENDATION_TARGETS.clamp(min=0))[is_target].mean()
    torch.testing.assert_close(output.recommendation_loss, manual)


@pytest.mark.parametrize(
    "softmax_items, message",
    [
        (torch.arange(NUM_ITEMS) != 3, "Target item 3 is left out of softmax_items"),
        (torch.ones(NUM_ITEMS + 1, dtype=torch.bool), "a boolean mask of shape \\(7,\\)"),
        (torch.ones(NUM_ITEMS), "a boolean mask of shape"),
    ],
)
def test_softmax_items_that_leave_out_a_target_or_do_not_fit_are_refused(softmax_items, message):
    for model_class, (ids, mask, labels) in [
        (CLLM4RecForCollaborativeLM, (COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS)),
        (CLLM4RecForItemPrediction, (*right_pad(RECOMMENDATION_PROMPTS), RECOMMENDATION_TARGETS)),
    ]:
        with pytest.raises(ValueError, match=message):
            tiny_model(model_class)(ids, mask, labels, softmax_items=softmax_items)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_content_loss_counts_the_main_text_from_its_first_word(backbone):
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0, lambda_v=0.0)
    with torch.no_grad():
        logits = model(CONTENT_IDS, CONTENT_MASK, document_type="content").logits
        output = model(CONTENT_IDS, CONTENT_MASK, CONTENT_LABELS, document_type="content")
    assert logits.shape == (2, 10, TINY_VOCAB_SIZE)
    positions = [(0, 5, 40), (0, 6, 41), (0, 7, 42), (0, 8, 43), (1, 5, 50), (1, 6, 51)]
    manual = -torch.stack([logits[row, position].log_softmax(-1)[word] for row, position, word in positions]).mean()
    torch.testing.assert_close(output.lm_loss, manual)
    torch.testing.assert_close(output.lm_loss, manual_lm_loss(logits, CONTENT_LABELS))


@pytest.mark.parametrize("document_type", ["collaborative", "content"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_padding_does_not_change_the_loss(backbone, document_type):
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0, lambda_v=0.7)
    ids, mask, labels = (
        (COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS)
        if document_type == "collaborative"
        else (CONTENT_IDS, CONTENT_MASK, CONTENT_LABELS)
    )
    length = int(mask[1].sum())
    unpadded = (ids[1:, :length], mask[1:, :length], labels[1:, :length])
    # padded with the pad token, and with an ID token that is not in the document (masked, so not regularized)
    for pad in (PAD, ITEM + 1):
        padded_ids = torch.cat([ids[1:, :length], torch.full((1, 5), pad)], dim=1)
        padded = (padded_ids, torch.cat([mask[1:, :length], torch.zeros(1, 5, dtype=torch.long)], dim=1))
        padded_labels = torch.cat([labels[1:, :length], torch.full((1, 5), -100)], dim=1)
        with torch.no_grad():
            expected = model(*unpadded, document_type=document_type)
            actual = model(*padded, padded_labels, document_type=document_type)
        for name in ("loss", "lm_loss", "regularization_loss"):
            torch.testing.assert_close(actual[name], expected[name], msg=name)


def manual_regularization(model, side, user_ids, item_ids, lambda_v, num_targets):
    """`lambda_v / 2 * sum ||z_side - z_other||^2` over every occurrence of the ids, per prediction target."""
    other = "content" if side == "collaborative" else "collaborative"
    (user_table, item_table), (other_user, other_item) = (
        model.model.id_embedding_tables(side),
        model.model.id_embedding_tables(other),
    )
    squared = [((user_table.weight[u] - other_user.weight[u]) ** 2).sum() for u in user_ids]
    squared += [((item_table.weight[i] - other_item.weight[i]) ** 2).sum() for i in item_ids]
    return lambda_v / 2 * torch.stack(squared).sum() / num_targets


@pytest.mark.parametrize("backbone", BACKBONES)
def test_regularization_matches_a_hand_computation_and_ignores_batch_size(backbone):
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0, lambda_v=0.7)
    cases = [
        # every real (unmasked) ID token of each batch (item 0 twice), and the number of main-text targets
        ("collaborative", COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS, [1, 3], [3, 0, 5, 2, 6, 0], 6),
        ("content", CONTENT_IDS, CONTENT_MASK, CONTENT_LABELS, [2, 1], [4, 3], 6),
    ]
    with torch.no_grad():
        for side, ids, mask, labels, users, items, num_targets in cases:
            output = model(ids, mask, labels, document_type=side)
            manual = manual_regularization(model, side, users, items, 0.7, num_targets)
            torch.testing.assert_close(output.regularization_loss, manual)
            torch.testing.assert_close(output.loss, output.lm_loss + manual)
            doubled = model(ids.repeat(2, 1), mask.repeat(2, 1), labels.repeat(2, 1), document_type=side)
            torch.testing.assert_close(doubled.regularization_loss, output.regularization_loss)
            torch.testing.assert_close(doubled.lm_loss, output.lm_loss)


@pytest.mark.parametrize("document_type", ["collaborative", "content", "recommendation"])
def test_losses_split_across_batches_add_up_with_num_items_in_batch(document_type):
    # what gradient accumulation and data parallelism rely on: per-part losses over the whole batch's target count
    model_class = CLLM4RecForItemPrediction if document_type == "recommendation" else CLLM4RecForCollaborativeLM
    model = tiny_model(model_class, id_std=1.0, lambda_v=0.7)
    if document_type == "recommendation":
        (ids, mask), labels = right_pad(RECOMMENDATION_PROMPTS), RECOMMENDATION_TARGETS
        num_targets = int((labels != -100).sum())
        names = ("loss", "recommendation_loss", "regularization_loss")
    else:
        ids, mask, labels = (
            (COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS)
            if document_type == "collaborative"
            else (CONTENT_IDS, CONTENT_MASK, CONTENT_LABELS)
        )
        num_targets = int((labels[:, 1:] != -100).sum())
        names = ("loss", "lm_loss", "regularization_loss")
    with torch.no_grad():
        whole = model(ids, mask, labels, document_type=document_type)
        parts = [
            model(
                ids[row : row + 1],
                mask[row : row + 1],
                labels[row : row + 1],
                document_type=document_type,
                num_items_in_batch=num_targets,
            )
            for row in range(ids.shape[0])
        ]
    for name in names:
        torch.testing.assert_close(sum(part[name] for part in parts), whole[name], msg=name)
    assert whole.regularization_loss > 0


def test_regularization_is_zero_when_lambda_is_zero():
    model = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0, lambda_v=0.0)
    output = model(COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS)
    assert output.regularization_loss == 0
    torch.testing.assert_close(output.loss, output.lm_loss)


@pytest.mark.parametrize("side", ["collaborative", "content"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_no_gradient_flows_into_the_other_sides_tables(backbone, side):
    model = tiny_model(CLLM4RecForCollaborativeLM, backbone, id_std=1.0, lambda_v=1.0)
    if side == "collaborative":
        loss = model(COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS).loss
    else:
        loss = model(CONTENT_IDS, CONTENT_MASK, CONTENT_LABELS, document_type="content").loss
    loss.backward()
    other = "content" if side == "collaborative" else "collaborative"
    for table in model.model.id_embedding_tables(other):
        assert table.weight.grad is None or not table.weight.grad.any()
    for table in model.model.id_embedding_tables(side):
        assert table.weight.grad is not None and table.weight.grad.any()


def test_item_prediction_runs_content_steps_like_the_collaborative_lm(tmp_path):
    model = tiny_model(CLLM4RecForCollaborativeLM, "gpt2", id_std=1.0)
    model.save_pretrained(tmp_path)
    predictor = CLLM4RecForItemPrediction.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model(CONTENT_IDS, CONTENT_MASK, CONTENT_LABELS, document_type="content")
        actual = predictor(CONTENT_IDS, CONTENT_MASK, CONTENT_LABELS, document_type="content")
    for name in ("loss", "lm_loss", "regularization_loss"):
        torch.testing.assert_close(actual[name], expected[name])


# Item prediction


@pytest.mark.parametrize("backbone", BACKBONES)
def test_item_logits_read_the_last_real_token_under_right_padding(backbone):
    model = tiny_model(CLLM4RecForItemPrediction, backbone, id_std=1.0)
    input_ids, attention_mask = right_pad(RECOMMENDATION_PROMPTS)
    with torch.no_grad():
        logits = model(input_ids, attention_mask).logits
        assert logits.shape == (len(RECOMMENDATION_PROMPTS), NUM_ITEMS)
        for row, prompt in enumerate(RECOMMENDATION_PROMPTS):
            alone = model(torch.tensor([prompt])).logits
            torch.testing.assert_close(logits[row : row + 1], alone, rtol=1e-5, atol=1e-5)
            # by hand: the last hidden state against the collaborative item table
            hidden = model.model(torch.tensor([prompt])).last_hidden_state[0, -1]
            torch.testing.assert_close(alone[0], model.model.item_collaborative_embeddings.weight @ hidden)
        # reading another position would differ
        assert not torch.allclose(logits[1], model(input_ids[1:2]).logits[0])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_multinomial_loss_matches_a_hand_computation(backbone):
    model = tiny_model(CLLM4RecForItemPrediction, backbone, id_std=1.0, lambda_v=0.3)
    input_ids, attention_mask = right_pad(RECOMMENDATION_PROMPTS)
    with torch.no_grad():
        output = model(input_ids, attention_mask, labels=RECOMMENDATION_TARGETS)
    log_probabilities = output.logits.log_softmax(-1)
    manual = (
        -(
            (log_probabilities[0, 3] + log_probabilities[0, 5])
            + (log_probabilities[1, 0] + log_probabilities[1, 1] + log_probabilities[1, 2])
            + log_probabilities[2, 6]
        )
        / 6
    )
    torch.testing.assert_close(output.recommendation_loss, manual)
    # regularization over every user and item token of the prompts, and the target items, per target
    users = [0, 0, 4, 4, 2, 2]
    items = [1, 2, 6, 0, 3, 5, 4] + [3, 5, 0, 1, 2, 6]
    with torch.no_grad():
        regularization = manual_regularization(model, "collaborative", users, items, 0.3, 6)
    torch.testing.assert_close(output.regularization_loss, regularization)
    torch.testing.assert_close(output.loss, manual + regularization)


def test_item_prediction_regularization_includes_targets_outside_the_prompt():
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0, lambda_v=1.0)
    prompt = torch.tensor([[USER + 1, 10, ITEM + 0, 11]])
    with torch.no_grad():
        output = model(prompt, labels=torch.tensor([[4, 6]]))
        torch.testing.assert_close(
            output.regularization_loss, manual_regularization(model, "collaborative", [1], [0, 4, 6], 1.0, 2)
        )


# Recommendation


def random_histories(generator, count, max_length, num_items=NUM_ITEMS):
    lengths = torch.randint(1, max_length + 1, (count,), generator=generator)
    return [torch.randperm(num_items, generator=generator)[:length].tolist() for length in lengths]


def prompts(model, tokenizer, user_ids, histories, **kwargs):
    """The prompts a head reads its scores from: the collaborative LM's documents, else recommendation prompts."""
    prompt = "collaborative" if isinstance(model, CLLM4RecForCollaborativeLM) else "recommendation"
    return tokenizer(user_ids, histories, prompt=prompt, **kwargs)


def padded_item_ids(histories):
    """Histories as `exclude_item_ids`: `(batch, longest)`, padded with -1."""
    return pad_sequence([torch.tensor(history) for history in histories], batch_first=True, padding_value=-1)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_recommend_never_returns_excluded_items(backbone, model_class):
    num_items = 40
    model = tiny_model(model_class, backbone, id_std=1.0, num_users=30, num_items=num_items)
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    generator = torch.Generator().manual_seed(0)
    user_ids = torch.randperm(30, generator=generator).tolist()
    histories = random_histories(generator, len(user_ids), max_length=15, num_items=num_items)
    k = num_items - 15  # every user still has at least k candidates
    encoding = prompts(model, tokenizer, user_ids, histories)
    output = model.recommend(**encoding, k=k, exclude_item_ids=padded_item_ids(histories))
    assert output.item_ids.shape == output.scores.shape == (len(user_ids), k)
    assert torch.isfinite(output.scores).all()
    assert (output.scores[:, :-1] >= output.scores[:, 1:]).all()
    for row, history in enumerate(histories):
        assert not set(output.item_ids[row].tolist()) & set(history)
        assert len(set(output.item_ids[row].tolist())) == k
    # the scores are the model's own, best first
    scores = model.score_items(**encoding)
    torch.testing.assert_close(output.scores, scores.gather(1, output.item_ids))
    # a history truncated in the prompt is still excluded in full
    truncated = prompts(model, tokenizer, user_ids, histories, max_length=12)
    assert truncated["input_ids"].shape[1] == 12
    output = model.recommend(**truncated, k=k, exclude_item_ids=padded_item_ids(histories))
    for row, history in enumerate(histories):
        assert not set(output.item_ids[row].tolist()) & set(history)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_bfloat16_weights_serve_like_float32(backbone, tmp_path):
    """A checkpoint loaded with `dtype=torch.bfloat16`, as for serving, scores and recommends as in float32."""
    model = tiny_model(CLLM4RecForItemPrediction, backbone, id_std=1.0)
    model.save_pretrained(tmp_path)
    served = CLLM4RecForItemPrediction.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in served.parameters()} == {torch.bfloat16}
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    histories = [[0, 1], [3], [2, 4, 5]]
    encoding = tokenizer([0, 1, 2], histories)
    scores = served.score_items(**encoding)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, model.score_items(**encoding), atol=0.2, rtol=0.02)
    exclude = padded_item_ids(histories)
    expected = model.recommend(**encoding, k=3, exclude_item_ids=exclude).item_ids
    assert torch.equal(served.recommend(**encoding, k=3, exclude_item_ids=exclude).item_ids, expected)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_recommend_with_k_beyond_the_items_left_fails(model_class):
    model = tiny_model(model_class, id_std=1.0)
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    encoding = prompts(model, tokenizer, [0, 1], [[0, 1, 2], [3]])
    exclude = torch.tensor([[0, 1, 2], [3, -1, -1]])
    # the first user has only 4 items left: k=5 could only be filled with excluded items
    with pytest.raises(ValueError, match=r"k=5.*only 4 items"):
        model.recommend(**encoding, k=5, exclude_item_ids=exclude)
    assert model.recommend(**encoding, k=4, exclude_item_ids=exclude).item_ids.shape == (2, 4)
    # an item excluded twice is one excluded item
    repeated = torch.tensor([[0, 0, 1, 1, 2, 2], [3, 3, 3, -1, -1, -1]])
    assert model.recommend(**encoding, k=4, exclude_item_ids=repeated).item_ids.shape == (2, 4)
    # without exclusions every item may be recommended
    everything = model.recommend(**encoding, k=NUM_ITEMS).item_ids
    assert all(sorted(row) == list(range(NUM_ITEMS)) for row in everything.tolist())


def test_recommend_for_a_cold_start_user():
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0)
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    histories = [[1, 4], [1, 4]]
    output = model.recommend(**tokenizer([None, 2], histories), k=3, exclude_item_ids=padded_item_ids(histories))
    assert output.item_ids.shape == (2, 3)
    for row in range(2):
        assert not set(output.item_ids[row].tolist()) & {1, 4}
    cold_prompt = tokenizer.render("cold_start_prompt", history=[1, 4])
    assert cold_prompt == tokenizer.encode(
        "A new user has interacted with <item_1> <item_4>, the user will interact with"
    )
    with torch.no_grad():
        cold_logits = model(torch.tensor([cold_prompt])).logits[0]
    cold_logits[[1, 4]] = -torch.inf
    assert output.item_ids[0].tolist() == cold_logits.topk(3).indices.tolist()
    # the cold-start prompt has no user token: a known user's prompt scores differently
    assert not torch.allclose(output.scores[0], output.scores[1])


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_recommend_rejects_bad_arguments(model_class):
    model = tiny_model(model_class)
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    encoding = prompts(model, tokenizer, [0], [[1]])
    for k in (0, -1, NUM_ITEMS + 1, 2.0, True):
        with pytest.raises(ValueError, match=rf"k must lie in \[1, {NUM_ITEMS}\]"):
            model.recommend(**encoding, k=k)
    for exclude in (torch.tensor([1]), torch.tensor([[1], [2]])):
        with pytest.raises(ValueError, match=r"`exclude_item_ids` must be \(batch, n\)"):
            model.recommend(**encoding, k=2, exclude_item_ids=exclude)
    for bad_item in (NUM_ITEMS, -2):
        with pytest.raises(ValueError, match=rf"item ids in \[0, {NUM_ITEMS}\), padded with -1"):
            model.recommend(**encoding, k=2, exclude_item_ids=torch.tensor([[1, bad_item]]))


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_recommend_refuses_nan_scores(model_class):
    model = tiny_model(model_class, id_std=1.0)
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    encoding = prompts(model, tokenizer, [0], [[1]])
    with torch.no_grad():
        model.model.item_collaborative_embeddings.weight[3] = float("nan")  # the head's row of item 3
    assert model.score_items(**encoding)[0].isnan().tolist() == [item == 3 for item in range(NUM_ITEMS)]
    with pytest.raises(ValueError, match="The model's weights hold NaN"):
        model.recommend(**encoding, k=2)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_scores_of_a_padded_batch_equal_the_prompts_one_by_one(model_class):
    model = tiny_model(model_class, id_std=1.0, num_users=30, num_items=40)
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    histories = random_histories(torch.Generator().manual_seed(1), 12, max_length=15, num_items=40)
    cold = model_class is CLLM4RecForItemPrediction  # only the item predictor serves users without a user token
    user_ids = [None if cold and row % 3 == 0 else row for row in range(12)]
    batched = model.score_items(**prompts(model, tokenizer, user_ids, histories, max_length=20))
    one_by_one = torch.cat(
        [
            model.score_items(**prompts(model, tokenizer, [user], [history], max_length=20))
            for user, history in zip(user_ids, histories, strict=True)
        ]
    )
    torch.testing.assert_close(batched, one_by_one)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_backbones_attention_implementation_decides_and_scores_alike(backbone):
    tokenizer = None
    scores = {}
    for implementation in ("eager", "sdpa"):
        model = tiny_model(CLLM4RecForItemPrediction, backbone, id_std=1.0, attn_implementation=implementation)
        assert model.model.backbone.config._attn_implementation == implementation
        tokenizer = tokenizer or CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
        scores[implementation] = model.score_items(**tokenizer([0, None, 3], [[1, 2], [4], [5, 6, 0, 1]]))
    torch.testing.assert_close(scores["eager"], scores["sdpa"], rtol=1e-5, atol=1e-5)


# Bad inputs


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize("bad_token", [-1, ITEM + NUM_ITEMS, ITEM + NUM_ITEMS + 100])
def test_out_of_range_token_ids_raise(model_class, bad_token):
    model = tiny_model(model_class)
    input_ids = torch.tensor([[USER, 10, bad_token, 11]])
    with pytest.raises(
        ValueError, match=rf"Token id {bad_token} is outside the extended vocabulary.*{ITEM + NUM_ITEMS}"
    ):
        model(input_ids)


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([[3, -100], [-100, -100], [6, -100]]), "at least one target"),
        (torch.tensor([[3, NUM_ITEMS], [0, -100], [6, -100]]), rf"\[0, {NUM_ITEMS}\)"),
        (torch.tensor([[3, -2], [0, -100], [6, -100]]), rf"\[0, {NUM_ITEMS}\)"),
        (torch.tensor([[3], [0]]), "labels"),
    ],
)
def test_item_prediction_rejects_bad_labels(labels, message):
    model = tiny_model(CLLM4RecForItemPrediction)
    with pytest.raises(ValueError, match=message):
        model(*right_pad(RECOMMENDATION_PROMPTS), labels=labels)


def replaced(labels, row, column, value):
    labels = labels.clone()
    labels[row, column] = value
    return labels


@pytest.mark.parametrize(
    "document_type, labels, message",
    [
        ("collaborative", replaced(COLLABORATIVE_LABELS, 0, 5, 12), "item tokens"),
        ("collaborative", replaced(COLLABORATIVE_LABELS, 0, 5, USER + 1), "item tokens"),
        ("collaborative", replaced(COLLABORATIVE_LABELS, 0, 5, ITEM + NUM_ITEMS), "item tokens"),
        ("collaborative", replaced(COLLABORATIVE_LABELS, 0, 5, -5), "item tokens"),
        ("collaborative", torch.full_like(COLLABORATIVE_LABELS, -100), "every label is -100"),
        ("collaborative", COLLABORATIVE_LABELS[:, :-1], "shape"),
        ("content", replaced(CONTENT_LABELS, 0, 7, ITEM + 1), "word tokens"),
        ("content", replaced(CONTENT_LABELS, 0, 7, -5), "word tokens"),
        ("content", torch.full_like(CONTENT_LABELS, -100), "every label is -100"),
        ("content", CONTENT_LABELS[:1], "shape"),
    ],
)
def test_language_modelling_rejects_bad_labels(document_type, labels, message):
    model = tiny_model(CLLM4RecForCollaborativeLM)
    ids, mask = (
        (COLLABORATIVE_IDS, COLLABORATIVE_MASK) if document_type == "collaborative" else (CONTENT_IDS, CONTENT_MASK)
    )
    with pytest.raises(ValueError, match=message):
        model(ids, mask, labels, document_type=document_type)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_attention_mask_of_another_shape_raises(model_class):
    model = tiny_model(model_class)
    with pytest.raises(ValueError, match="attention_mask"):
        model(COLLABORATIVE_IDS, COLLABORATIVE_MASK[:, :-1])


@pytest.mark.parametrize("document_type", ["collaborative", "content"])
def test_losses_scored_in_chunks_equal_the_whole_batch(document_type, monkeypatch):
    model = tiny_model(CLLM4RecForCollaborativeLM, "gpt2", id_std=1.0)
    input_ids, attention_mask, labels = {
        "collaborative": (COLLABORATIVE_IDS, COLLABORATIVE_MASK, COLLABORATIVE_LABELS),
        "content": (CONTENT_IDS, CONTENT_MASK, CONTENT_LABELS),
    }[document_type]

    def loss_and_gradients():
        model.zero_grad()
        output = model(input_ids, attention_mask, labels=labels, document_type=document_type)
        output.lm_loss.backward()
        return output.lm_loss.detach(), {
            name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None
        }

    whole_loss, whole_gradients = loss_and_gradients()
    # a budget below one target's logits: one target per chunk
    monkeypatch.setattr(modeling_cllm4rec, "LOSS_CHUNK_ELEMENTS", 2)
    calls = []
    monkeypatch.setattr(
        modeling_cllm4rec, "checkpoint", lambda *args, **kwargs: calls.append(1) or checkpoint(*args, **kwargs)
    )
    chunked_loss, chunked_gradients = loss_and_gradients()
    assert len(calls) > 1
    torch.testing.assert_close(chunked_loss, whole_loss)
    assert chunked_gradients.keys() == whole_gradients.keys()
    for name, gradient in whole_gradients.items():
        torch.testing.assert_close(chunked_gradients[name], gradient, msg=lambda m, n=name: f"{n}: {m}")
