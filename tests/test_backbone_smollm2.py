"""CLLM4Rec around a real pretrained backbone: SmolLM2-135M, materialized offline by the shared tools script.

The model (about 540 MB) is written once to $CLLM4REC_BACKBONE_DIR, else ~/.cache/cllm4rec/smollm2-135m-instruct,
and reused afterwards; see `smollm2_backbone` in conftest.py.
"""

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_cllm4rec import CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction, CLLM4RecTokenizer, Recommender
from hf_cllm4rec.training import apply_backbone_training

pytestmark = pytest.mark.slow

NUM_USERS, NUM_ITEMS = 10, 20
PLAIN_TEXT = "The capital of France is Paris. It is known for the Eiffel Tower and its museums."


@pytest.fixture(scope="module")
def backbone_dir(smollm2_backbone) -> Path:
    """The SmolLM2 folder of conftest's `smollm2_backbone` (its first use writes ~540 MB; the session header says where)."""
    return smollm2_backbone


@pytest.fixture(scope="module")
def model(backbone_dir):
    return CLLM4RecForCollaborativeLM.from_backbone(backbone_dir, num_users=NUM_USERS, num_items=NUM_ITEMS).eval()


@pytest.fixture(scope="module")
def tokenizer(backbone_dir, model):
    return CLLM4RecTokenizer(AutoTokenizer.from_pretrained(backbone_dir), model.config)


def test_the_id_extension_leaves_the_backbone_unchanged_on_plain_text(backbone_dir, model, tokenizer):
    assert model.config.text_config.model_type == "llama"
    assert model.config.vocab_size == len(tokenizer.base_tokenizer) == 49152
    assert model.config.base_model_name_or_path == str(backbone_dir)
    reference = AutoModelForCausalLM.from_pretrained(backbone_dir).eval()
    input_ids = torch.tensor([tokenizer.encode(PLAIN_TEXT)])
    with torch.no_grad():
        expected = reference(input_ids, labels=input_ids)
        actual = model(input_ids, labels=input_ids, document_type="content")
        logits = model(input_ids, document_type="content").logits
    assert abs(actual.lm_loss.item() - expected.loss.item()) < 1e-5
    torch.testing.assert_close(logits, expected.logits, rtol=1e-5, atol=1e-4)
    # a pretrained model, not a random one: per-token perplexity far below the vocabulary size
    assert expected.loss.item() < 5
    assert actual.regularization_loss == 0  # no ID token in plain text
    # frozen by the training code, only the ID tables train
    apply_backbone_training(model, "frozen")
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {
        f"model.{kind}_{side}_embeddings.weight" for kind in ("user", "item") for side in ("collaborative", "content")
    }


def test_forward_with_id_tokens_gives_finite_losses(model, tokenizer):
    collaborative_prompt = tokenizer.render("collaborative_prompt", user=3)
    items = tokenizer.item_token_ids([5, 1, 17]).tolist()
    review_prompt = tokenizer.render("review_prompt", user=3, item=5)
    (review,) = tokenizer.encode_text([" Great lipstick, the color lasts all day."])
    documents = {
        "collaborative": (collaborative_prompt, items),
        "content": (review_prompt, review),
    }
    for document_type, (prompt, main) in documents.items():
        input_ids = torch.tensor([prompt + main])
        labels = torch.tensor([[-100] * len(prompt) + main])
        model.zero_grad()
        output = model(input_ids, labels=labels, document_type=document_type)
        assert torch.isfinite(output.loss) and output.lm_loss > 0 and output.regularization_loss > 0
        output.loss.backward()
        user_table, item_table = model.model.id_embedding_tables(document_type)
        assert user_table.weight.grad[3].abs().sum() > 0 and item_table.weight.grad[5].abs().sum() > 0
        assert torch.isfinite(user_table.weight.grad).all() and torch.isfinite(item_table.weight.grad).all()
    model.zero_grad()


def test_item_prediction_and_recommendation(backbone_dir, tokenizer):
    predictor = CLLM4RecForItemPrediction.from_backbone(backbone_dir, num_users=NUM_USERS, num_items=NUM_ITEMS).eval()
    prompt = tokenizer.render("recommendation_prompt", user=2, history=[4, 9, 11])
    output = predictor(torch.tensor([prompt]), labels=torch.tensor([[0, 7]]))
    assert output.logits.shape == (1, NUM_ITEMS) and torch.isfinite(output.loss)
    recommended = Recommender(predictor, tokenizer).recommend([2, None], [[4, 9, 11], [1]], k=NUM_ITEMS - 3)
    assert not set(recommended.item_ids[0].tolist()) & {4, 9, 11}
    assert 1 not in recommended.item_ids[1].tolist()


@pytest.mark.parametrize(
    "text",
    [
        "<user_3> writes the following review for <item_5>: Great stuff, would buy again!",
        "<user_0> has interacted with <item_1> <item_2> <item_19>, <user_0> will interact with",
        "The tags of <item_7> are: lipstick, red, matte",
    ],
)
def test_tokenizer_round_trips_over_the_smollm2_tokenizer(tokenizer, text):
    token_ids = tokenizer.encode(text)
    assert tokenizer.decode(token_ids) == text
    assert sum(token_id >= tokenizer.config.vocab_size for token_id in token_ids) == text.count("<")
    # the words are SmolLM2's own tokens of the text between ID tokens (the space before an ID token goes with it)
    pieces = re.split(r"<(?:user|item)_\d+>", text)
    pieces = [piece.rstrip() for piece in pieces[:-1]] + pieces[-1:]
    expected_words = [
        token_id
        for piece in pieces
        if piece.strip()
        for token_id in tokenizer.base_tokenizer.encode(piece, add_special_tokens=False)
    ]
    assert [token_id for token_id in token_ids if token_id < tokenizer.config.vocab_size] == expected_words


def test_tokenizer_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = CLLM4RecTokenizer.from_pretrained(tmp_path)
    text = "<user_3> writes the following review for <item_5>: Great stuff!"
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.render("recommendation_prompt", user=1, history=[2, 3]) == tokenizer.render(
        "recommendation_prompt", user=1, history=[2, 3]
    )


def test_vocabulary_initialized_ids_enter_at_the_scale_of_the_words(backbone_dir, model):
    """SmolLM2's words have row norms near 3.2 around a shared offset; N(0, 0.02) IDs are near 0.48, with none."""
    drawn = CLLM4RecForCollaborativeLM.from_backbone(
        backbone_dir, num_users=NUM_USERS, num_items=200, id_embedding_init="vocabulary"
    )
    words = drawn.get_input_embeddings().weight.detach()
    # plain floats: pytest 9's approx iterates a tensor expectation (looking for Decimals), which a 0-d tensor refuses
    word_norm = words.norm(dim=1).mean().item()
    ids = drawn.model.item_collaborative_embeddings.weight.detach()
    assert ids.norm(dim=1).mean().item() == pytest.approx(word_norm, rel=0.1)
    assert (ids.mean(0) - words.mean(0)).norm() < 0.1 * words.mean(0).norm()
    default_ids = model.model.item_collaborative_embeddings.weight.detach()
    assert default_ids.norm(dim=1).mean() < 0.25 * word_norm
