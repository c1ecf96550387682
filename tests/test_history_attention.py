"""The read-out prompt's history read in both directions (`history_attention`), and as a set."""

import pytest
import torch
from tiny_models import BACKBONES, tiny_cllm4rec_config, tiny_model, tiny_word_tokenizer

from hf_cllm4rec import CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction, CLLM4RecTokenizer

HISTORIES = [[3, 0, 5, 2], [6, 1]]


def prompts(model, histories=HISTORIES, prompt="recommendation"):
    """Tokenized read-out prompts of users 1 and 3, right-padded."""
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    return tokenizer([1, 3], histories, prompt=prompt)


def test_history_items_see_each_other_and_the_rest_stays_causal():
    model = tiny_model(CLLM4RecForItemPrediction, history_attention="bidirectional")
    encoding = prompts(model)
    input_ids, attention_mask = encoding["input_ids"], encoding["attention_mask"]
    visible = model.model.history_attention_inputs(input_ids, attention_mask)["attention_mask"]
    length = input_ids.shape[1]
    assert visible.shape == (2, 1, length, length) and visible.dtype == torch.bool
    for row in range(2):
        is_history = input_ids[row] >= model.config.item_token_offset
        real = attention_mask[row].bool()
        history = is_history.nonzero().flatten().tolist()
        last = int(real.nonzero().max())
        for query in range(length):
            for key in range(length):
                expected = bool(real[key]) and (key <= query or (query in history and key in history))
                if not real[query]:  # padding sees itself alone
                    expected = key == query
                assert bool(visible[row, 0, query, key]) == expected, (row, query, key)
        # a history item sees a later one; the words after the history and the read-out see everything before them
        assert visible[row, 0, history[0], history[-1]]
        assert not visible[row, 0, history[-1], history[-1] + 1]
        assert visible[row, 0, last, : last + 1].all() and not visible[row, 0, last, last + 1 :].any()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_prompt_before_the_history_reads_as_before_and_the_history_changes_the_read_out(backbone):
    causal = tiny_model(CLLM4RecForItemPrediction, backbone, id_std=1.0)
    bidirectional = tiny_model(CLLM4RecForItemPrediction, backbone, id_std=1.0, history_attention="bidirectional")
    encoding = prompts(causal)
    input_ids, attention_mask = encoding["input_ids"], encoding["attention_mask"]
    first_item = int((input_ids[0] >= causal.config.item_token_offset).nonzero().min())
    hidden = {}
    for name, model in (("causal", causal), ("bidirectional", bidirectional)):
        inputs = {"attention_mask": attention_mask}
        if name == "bidirectional":
            inputs = model.model.history_attention_inputs(input_ids, attention_mask)
        hidden[name] = model.model(input_ids, **inputs).last_hidden_state
    # before the history nothing changes: the prompt's words stay causal
    torch.testing.assert_close(hidden["causal"][:, :first_item], hidden["bidirectional"][:, :first_item])
    assert not torch.allclose(hidden["causal"][:, first_item:], hidden["bidirectional"][:, first_item:])
    assert not torch.allclose(causal.score_items(**encoding), bidirectional.score_items(**encoding))


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_history_read_as_a_set_scores_the_same_in_any_order(backbone, implementation):
    model = tiny_model(CLLM4RecForItemPrediction, backbone, id_std=1.0, history_attention="set")
    model.set_attn_implementation(implementation)
    scores = model.score_items(**prompts(model))
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        shuffled = [[history[i] for i in torch.randperm(len(history), generator=generator)] for history in HISTORIES]
        torch.testing.assert_close(model.score_items(**prompts(model, shuffled)), scores)


def test_sequential_positions_keep_the_order_of_a_bidirectional_history():
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0, history_attention="bidirectional")
    reversed_histories = [history[::-1] for history in HISTORIES]
    assert not torch.allclose(
        model.score_items(**prompts(model)), model.score_items(**prompts(model, reversed_histories))
    )


@pytest.mark.parametrize("history_attention", ["bidirectional", "set"])
def test_eager_and_sdpa_attention_give_the_same_scores(history_attention):
    model = tiny_model(CLLM4RecForItemPrediction, "llama", id_std=1.0, history_attention=history_attention)
    encoding = prompts(model)
    scores = model.score_items(**encoding)
    model.set_attn_implementation("eager")
    torch.testing.assert_close(model.score_items(**encoding), scores)


def test_a_right_padded_prompt_scores_as_it_does_alone():
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0, history_attention="set")
    batch = model.score_items(**prompts(model))
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    alone = model.score_items(**tokenizer([3], HISTORIES[1:]))
    torch.testing.assert_close(batch[1:], alone)


def test_collaborative_documents_are_read_causally_whatever_the_setting():
    causal = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0)
    bidirectional = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0, history_attention="bidirectional")
    input_ids = torch.tensor([prompts(causal, prompt="collaborative")["input_ids"][0].tolist()])
    labels = input_ids.masked_fill(input_ids < causal.config.item_token_offset, -100)
    torch.testing.assert_close(
        bidirectional(input_ids, labels=labels).loss, causal(input_ids, labels=labels).loss, rtol=0, atol=0
    )


def test_fine_tuning_trains_through_the_bidirectional_read_out():
    model = tiny_model(CLLM4RecForItemPrediction, history_attention="set").train()
    encoding = prompts(model)
    loss = model(**encoding, labels=torch.tensor([[4, -100], [2, 5]])).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.item_collaborative_embeddings.weight.grad.abs().sum() > 0


def test_the_setting_survives_saving_and_loading(tmp_path):
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0, history_attention="set")
    model.save_pretrained(tmp_path)
    loaded = CLLM4RecForItemPrediction.from_pretrained(tmp_path).eval()
    assert loaded.config.history_attention == "set"
    encoding = prompts(model)
    torch.testing.assert_close(loaded.score_items(**encoding), model.score_items(**encoding))


def test_the_default_reads_causally():
    assert tiny_cllm4rec_config().history_attention == "causal"
