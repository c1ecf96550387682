"""The query vector of a read-out prompt: its last token (`read_out="last"`) or the mean over its history ("mean")."""

import pytest
import torch
from tiny_models import BACKBONES, tiny_cllm4rec_config, tiny_model, tiny_word_tokenizer

from hf_cllm4rec import CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction, CLLM4RecTokenizer
from hf_cllm4rec.serving.embeddings import user_query_vectors

HISTORIES = [[3, 0, 5, 2], [6, 1]]


def prompts(model, histories=HISTORIES, prompt="recommendation", user_ids=(1, 3)):
    """Tokenized read-out prompts, right-padded."""
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    return tokenizer(list(user_ids), histories, prompt=prompt)


def read_span(input_ids, attention_mask, item_token_offset):
    """Per row: the positions from the token before the first history item to the last real token."""
    spans = []
    for ids, mask in zip(input_ids, attention_mask, strict=True):
        history = (ids >= item_token_offset).nonzero().flatten()
        last = int(mask.nonzero().max())
        spans.append(range(int(history.min()) - 1, last + 1))
    return spans


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("prompt", ["recommendation", "collaborative"])
def test_the_mean_read_out_averages_the_hidden_states_over_the_history(backbone, prompt):
    model = tiny_model(CLLM4RecForItemPrediction, backbone, id_std=1.0, read_out="mean")
    encoding = prompts(model, prompt=prompt)
    hidden = model.model(**encoding).last_hidden_state
    spans = read_span(encoding["input_ids"], encoding["attention_mask"], model.config.item_token_offset)
    expected = torch.stack([hidden[row, list(span)].mean(0) for row, span in enumerate(spans)])
    torch.testing.assert_close(model.query_vectors(**encoding), expected)
    torch.testing.assert_close(model.score_items(**encoding), expected @ model.model.item_head_weight().T)


def test_the_collaborative_lm_ranks_by_the_geometric_mean_of_its_next_item_distributions():
    model = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0, read_out="mean")
    encoding = prompts(model, prompt="collaborative")
    hidden = model.model(**encoding).last_hidden_state
    spans = read_span(encoding["input_ids"], encoding["attention_mask"], model.config.item_token_offset)
    scores = model.score_items(**encoding)
    for row, span in enumerate(spans):
        # every read position predicts the next item after a prefix of the history (the last: after all of it)
        log_probabilities = model.model.item_logits(hidden[row, list(span)]).log_softmax(-1).mean(0)
        difference = scores[row] - log_probabilities
        torch.testing.assert_close(difference, difference[:1].expand_as(difference))  # equal up to a constant


def test_the_mean_read_out_depends_less_on_the_order_of_the_history():
    orders = [[3, 0, 5, 2, 4, 6], [6, 4, 2, 5, 0, 3], [0, 2, 4, 6, 3, 5], [5, 3, 6, 0, 4, 2]]
    spread = {}
    for read_out in ("last", "mean"):
        model = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0, read_out=read_out)
        scores = model.score_items(**prompts(model, orders, prompt="collaborative", user_ids=[1] * len(orders)))
        spread[read_out] = (scores - scores.mean(0)).abs().mean()
    assert spread["mean"] < spread["last"]


def test_a_right_padded_prompt_reads_out_as_it_does_alone():
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0, read_out="mean")
    together = model.score_items(**prompts(model))
    for row, (user, history) in enumerate(zip((1, 3), HISTORIES, strict=True)):
        torch.testing.assert_close(together[row], model.score_items(**prompts(model, [history], user_ids=[user]))[0])


def test_a_prompt_without_item_tokens_reads_its_last_token():
    mean = tiny_model(CLLM4RecForItemPrediction, id_std=1.0, read_out="mean")
    last = tiny_model(CLLM4RecForItemPrediction, id_std=1.0)
    input_ids = torch.tensor([[5, 7, 9, mean.config.user_token_offset + 2]])
    torch.testing.assert_close(mean.score_items(input_ids), last.score_items(input_ids))


def test_fine_tuning_trains_the_mean_read_out():
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0, read_out="mean").train()
    encoding = prompts(model)
    labels = torch.tensor([[4, -100], [2, 5]])
    output = model(**encoding, labels=labels)
    with torch.no_grad():
        log_probabilities = model.score_items(**encoding).log_softmax(-1)
    expected = -(log_probabilities[0, 4] + log_probabilities[1, 2] + log_probabilities[1, 5]) / 3
    torch.testing.assert_close(output.recommendation_loss, expected)
    output.loss.backward()
    assert model.model.item_collaborative_embeddings.weight.grad.abs().sum() > 0


def test_exported_query_vectors_score_as_the_model_does():
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0, read_out="mean")
    tokenizer = CLLM4RecTokenizer(tiny_word_tokenizer(), model.config)
    queries = user_query_vectors(model, tokenizer, [1, 3], HISTORIES)
    torch.testing.assert_close(queries @ model.model.item_head_weight().T, model.score_items(**prompts(model)))


def test_the_setting_survives_saving_and_loading_and_loading_can_change_it(tmp_path):
    model = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0, read_out="mean")
    model.save_pretrained(tmp_path)
    loaded = CLLM4RecForCollaborativeLM.from_pretrained(tmp_path).eval()
    assert loaded.config.read_out == "mean"
    encoding = prompts(model, prompt="collaborative")
    torch.testing.assert_close(loaded.score_items(**encoding), model.score_items(**encoding))
    as_last = CLLM4RecForCollaborativeLM.from_pretrained(tmp_path, read_out="last").eval()
    assert not torch.allclose(as_last.score_items(**encoding), model.score_items(**encoding))


def test_the_default_is_the_papers_last_token():
    assert tiny_cllm4rec_config().read_out == "last"


@pytest.mark.parametrize("prompt", ["recommendation", "collaborative"])
def test_the_prefix_power_weighs_each_position_by_the_history_items_it_has_read(prompt):
    model = tiny_model(CLLM4RecForItemPrediction, id_std=1.0, read_out="mean", read_out_prefix_power=2)
    encoding = prompts(model, prompt=prompt)
    hidden = model.model(**encoding).last_hidden_state
    spans = read_span(encoding["input_ids"], encoding["attention_mask"], model.config.item_token_offset)
    expected = []
    for row, span in enumerate(spans):
        weights = torch.arange(1, len(span) + 1, dtype=torch.float32) ** 2  # the first position has read no item
        expected.append((weights[:, None] * hidden[row, list(span)]).sum(0) / weights.sum())
    torch.testing.assert_close(model.query_vectors(**encoding), torch.stack(expected))


def test_a_large_prefix_power_reads_the_last_token_and_none_the_plain_mean():
    plain = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0, read_out="mean")
    encoding = prompts(plain, prompt="collaborative")
    for power, reference in ((0, plain), (300, tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0))):
        weighted = tiny_model(CLLM4RecForCollaborativeLM, id_std=1.0, read_out="mean", read_out_prefix_power=power)
        torch.testing.assert_close(weighted.score_items(**encoding), reference.score_items(**encoding))
