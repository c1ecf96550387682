import numpy as np
import pytest
import torch
from tiny_models import GPT2_VOCAB_SIZE, gpt2_tokenizer, tiny_cllm4rec_config
from transformers import BatchEncoding

from hf_cllm4rec import CLLM4RecConfig, CLLM4RecTokenizer

NUM_USERS, NUM_ITEMS = 5, 7
TEMPLATES = ("collaborative_prompt", "review_prompt", "item_text_prompt", "recommendation_prompt", "cold_start_prompt")


@pytest.fixture(scope="module")
def base_tokenizer():
    return gpt2_tokenizer()


def make_tokenizer(base_tokenizer, backbone="gpt2", **overrides) -> CLLM4RecTokenizer:
    config = tiny_cllm4rec_config(
        backbone, num_users=NUM_USERS, num_items=NUM_ITEMS, vocab_size=GPT2_VOCAB_SIZE, **overrides
    )
    return CLLM4RecTokenizer(base_tokenizer, config)


@pytest.fixture(scope="module")
def tokenizer(base_tokenizer):
    return make_tokenizer(base_tokenizer)


def test_id_token_layout(tokenizer):
    config = tokenizer.config
    assert len(tokenizer) == GPT2_VOCAB_SIZE + NUM_USERS + NUM_ITEMS
    assert tokenizer.encode("<user_0>") == [GPT2_VOCAB_SIZE]
    assert tokenizer.encode("<user_4>") == [GPT2_VOCAB_SIZE + 4]
    assert tokenizer.encode("<item_0>") == [GPT2_VOCAB_SIZE + NUM_USERS]
    assert tokenizer.encode("<item_6>") == [GPT2_VOCAB_SIZE + NUM_USERS + 6]
    assert tokenizer.user_token_ids([0, 3]).tolist() == [config.user_token_offset, config.user_token_offset + 3]
    assert tokenizer.item_token_ids(np.array([6, 1])).tolist() == [
        config.item_token_offset + 6,
        config.item_token_offset + 1,
    ]
    assert tokenizer.token_kind(15496) == ("word", 15496)
    assert tokenizer.token_kind(GPT2_VOCAB_SIZE + 2) == ("user", 2)
    assert tokenizer.token_kind(GPT2_VOCAB_SIZE + NUM_USERS + 5) == ("item", 5)
    # GPT-2 has no pad token: its end-of-text token pads (and is always masked out)
    assert tokenizer.pad_token_id == 50256


@pytest.mark.parametrize(
    "text",
    [
        "<user_3> writes the following review for <item_6>: Great stuff, would buy again!",
        "<user_0> has interacted with <item_1> <item_2> <item_0>",
        "<item_4>",
        "Hello <item_1>world",
        "The tags of <item_2> are: lipstick, red, matte",
        "<user_1> has interacted with <item_3>, <user_1> will interact with",
        "plain text without any ID token, 1234 and ünïcödé.",
    ],
)
def test_encode_decode_round_trip(tokenizer, text):
    token_ids = tokenizer.encode(text)
    assert tokenizer.decode(token_ids) == text
    id_tokens = [token for token in token_ids if token >= GPT2_VOCAB_SIZE]
    assert len(id_tokens) == text.count("<user_") + text.count("<item_")


def test_text_without_id_tokens_is_tokenized_as_the_base_tokenizer_does(tokenizer, base_tokenizer):
    for text in [
        "Hello world",
        " leading space",
        "Multiple sentences. With punctuation!\nAnd a newline.",
        "ünïcödé 123",
    ]:
        assert tokenizer.encode(text) == base_tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode_text(["Hello world", " a"]) == [[15496, 995], base_tokenizer.encode(" a")]


def test_text_around_id_tokens_is_tokenized_as_the_base_tokenizer_does(tokenizer, base_tokenizer):
    def base(text):
        return base_tokenizer.encode(text, add_special_tokens=False)

    user_3, item_6 = GPT2_VOCAB_SIZE + 3, GPT2_VOCAB_SIZE + NUM_USERS + 6
    text = "Then <user_3> writes the following review for <item_6>: Great stuff!"
    # the space before an ID token belongs to it; the text after it keeps its leading space
    expected = base("Then") + [user_3] + base(" writes the following review for") + [item_6] + base(": Great stuff!")
    assert tokenizer.encode(text) == expected
    # the word pieces are the ones GPT-2 produces mid-sentence (" writes", not "writes")
    assert base(" writes") != base("writes")
    assert tokenizer.encode("<user_3> writes")[1:] == base(" writes")
    assert tokenizer.encode("<item_6>writes")[1:] == base("writes")


@pytest.mark.parametrize("template", TEMPLATES)
def test_render_equals_encode_of_the_filled_template(tokenizer, template):
    user, item, history = 2, 3, [6, 0, 4]
    text = getattr(tokenizer.config, template).format(
        user=f"<user_{user}>", item=f"<item_{item}>", history=" ".join(f"<item_{i}>" for i in history)
    )
    rendered = tokenizer.render(template, user=user, item=item, history=history)
    assert rendered == tokenizer.encode(text)
    assert tokenizer.decode(rendered) == text
    # cached template pieces give the same result on the next call, with other ids
    assert tokenizer.render(template, user=4, item=0, history=[1]) == tokenizer.encode(
        getattr(tokenizer.config, template).format(user="<user_4>", item="<item_0>", history="<item_1>")
    )


def test_render_of_custom_templates(base_tokenizer):
    tokenizer = make_tokenizer(
        base_tokenizer,
        recommendation_prompt="User {user} bought {history}; what will {user} buy next?",
        item_text_prompt="{item}'s title:",
        review_prompt="Review of {item} by {user}:",
    )
    cases = [
        ("recommendation_prompt", "User <user_1> bought <item_2> <item_5>; what will <user_1> buy next?"),
        ("item_text_prompt", "<item_2>'s title:"),
        ("review_prompt", "Review of <item_2> by <user_1>:"),
    ]
    for template, text in cases:
        assert tokenizer.render(template, user=1, item=2, history=[2, 5]) == tokenizer.encode(text)


def test_render_numpy_history(tokenizer):
    assert tokenizer.render("recommendation_prompt", user=1, history=np.array([3, 4])) == tokenizer.render(
        "recommendation_prompt", user=1, history=[3, 4]
    )


def test_history_truncation_keeps_the_end_of_the_prompt(tokenizer):
    history = [0, 1, 2, 3, 4, 5, 6]
    full = tokenizer.render("recommendation_prompt", user=1, history=history)
    suffix = tokenizer.encode(", <user_1> will interact with")
    assert full[-len(suffix) :] == suffix
    for dropped in range(1, len(history)):
        max_length = len(full) - dropped
        truncated = tokenizer.render("recommendation_prompt", user=1, history=history, max_length=max_length)
        assert len(truncated) == max_length
        # the oldest items go; the prompt's start and its end survive
        assert truncated == tokenizer.render("recommendation_prompt", user=1, history=history[dropped:])
        assert truncated[-len(suffix) :] == suffix
    # a max_length above the prompt's length changes nothing
    assert tokenizer.render("recommendation_prompt", user=1, history=history, max_length=len(full) + 5) == full
    cold_full = tokenizer.render("cold_start_prompt", history=history)
    cold = tokenizer.render("cold_start_prompt", history=history, max_length=len(cold_full) - 3)
    assert cold == tokenizer.render("cold_start_prompt", history=history[3:])
    with pytest.raises(ValueError, match="max_length"):
        tokenizer.render("recommendation_prompt", user=1, history=history, max_length=len(full) - len(history))


@pytest.mark.parametrize(
    "text, message",
    [("<user_5> has interacted with", r"user id 5 .*5 users"), ("<item_7>", r"item id 7 .*7 items")],
)
def test_out_of_range_ids_in_text_raise(tokenizer, text, message):
    with pytest.raises(ValueError, match=message):
        tokenizer.encode(text)


def test_out_of_range_ids_raise_naming_the_id_and_the_limit(tokenizer):
    with pytest.raises(ValueError, match=r"user id 9 .*5 users"):
        tokenizer.render("collaborative_prompt", user=9)
    with pytest.raises(ValueError, match=r"user id -1 .*5 users"):
        tokenizer.user_token_ids([0, -1])
    with pytest.raises(ValueError, match=r"item id 7 .*7 items"):
        tokenizer.render("review_prompt", user=0, item=7)
    with pytest.raises(ValueError, match=r"item id 12 .*7 items"):
        tokenizer.render("recommendation_prompt", user=0, history=[1, 12, 2])
    extended = GPT2_VOCAB_SIZE + NUM_USERS + NUM_ITEMS
    with pytest.raises(ValueError, match=rf"{extended}.*{extended}"):
        tokenizer.decode([15496, extended])
    # a negative id is no user token
    with pytest.raises(ValueError, match="-3"):
        tokenizer.token_kind(-3)
    with pytest.raises(ValueError, match="-1"):
        tokenizer.decode([15496, -1])


def test_render_missing_values_raise(tokenizer):
    with pytest.raises(ValueError, match="user"):
        tokenizer.render("collaborative_prompt")
    with pytest.raises(ValueError, match="item"):
        tokenizer.render("review_prompt", user=1)
    with pytest.raises(ValueError, match="history"):
        tokenizer.render("recommendation_prompt", user=1, history=[])


def test_save_load_round_trip(base_tokenizer, tmp_path):
    tokenizer = make_tokenizer(base_tokenizer, item_text_prompt="The title of {item} is:")
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists()
    loaded = CLLM4RecTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded.config, CLLM4RecConfig)
    assert (loaded.config.num_users, loaded.config.num_items, len(loaded)) == (NUM_USERS, NUM_ITEMS, len(tokenizer))
    text = "<user_3> writes the following review for <item_6>: Great stuff!"
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    for template in TEMPLATES:
        assert loaded.render(template, user=1, item=2, history=[3, 4]) == tokenizer.render(
            template, user=1, item=2, history=[3, 4]
        )
    assert loaded.render("item_text_prompt", item=2) == tokenizer.encode("The title of <item_2> is:")


@pytest.mark.parametrize("backbone", ["gpt2", "llama"])
def test_tokenizer_bigger_than_the_backbone_vocabulary_is_rejected(base_tokenizer, backbone):
    config = tiny_cllm4rec_config(backbone, vocab_size=99)
    with pytest.raises(ValueError, match=r"50257 tokens.*only 99"):
        CLLM4RecTokenizer(base_tokenizer, config)
    # a backbone vocabulary padded beyond the tokenizer (as GPT-2 checkpoints often are) is fine
    assert len(CLLM4RecTokenizer(base_tokenizer, tiny_cllm4rec_config(backbone, vocab_size=50304))) == 50304 + 5 + 7


@pytest.mark.parametrize("max_length", [None, 14, 20])
def test_render_batch_equals_the_prompts_written_out(tokenizer, max_length):
    rng = np.random.default_rng(0)
    users = rng.integers(0, NUM_USERS, size=40)
    histories = [rng.integers(0, NUM_ITEMS, size=rng.integers(1, 12)) for _ in range(40)]
    batch = tokenizer.render_batch("recommendation_prompt", users=users, histories=histories, max_length=max_length)
    assert batch["input_ids"].shape[0] == 40
    for row, (user, history) in enumerate(zip(users, histories, strict=True)):
        length = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
        if max_length is not None:
            assert length <= max_length
        kept = [int(item) for item in history]
        text_of = lambda items, user=user: (  # noqa: E731
            f"<user_{user}> has interacted with {' '.join(f'<item_{item}>' for item in items)}, "
            f"<user_{user}> will interact with"
        )
        while max_length is not None and len(tokenizer.encode(text_of(kept))) > max_length:
            kept = kept[1:]
        assert batch["input_ids"][row, :length].tolist() == tokenizer.encode(text_of(kept))


def test_render_batch_rejects_mismatched_and_empty_inputs(tokenizer):
    with pytest.raises(ValueError, match="one per row"):
        tokenizer.render_batch("recommendation_prompt", users=[0, 1], histories=[[1]])
    with pytest.raises(ValueError, match="non-empty history"):
        tokenizer.render_batch("recommendation_prompt", users=[0, 1], histories=[[1], []])
    with pytest.raises(ValueError, match="needs `history`"):
        tokenizer.render_batch("recommendation_prompt", users=[0])


# Calling the tokenizer: the prompts of a batch of users


def test_call_renders_recommendation_and_cold_start_prompts_right_padded(tokenizer):
    user_ids, histories = [3, None, 0, None], [[1, 2], [4], [6, 5, 0, 3], np.array([2, 2, 5])]
    encoding = tokenizer(user_ids, histories)
    assert isinstance(encoding, BatchEncoding) and set(encoding) == {"input_ids", "attention_mask"}
    assert isinstance(encoding["input_ids"], torch.Tensor) and encoding["input_ids"].dtype == torch.long
    expected = [
        tokenizer.render("recommendation_prompt", user=user, history=history)
        if user is not None
        else tokenizer.render("cold_start_prompt", history=history)
        for user, history in zip(user_ids, histories, strict=True)
    ]
    assert encoding["input_ids"].shape == encoding["attention_mask"].shape == (4, max(map(len, expected)))
    for row, prompt in enumerate(expected):
        length = int(encoding["attention_mask"][row].sum())
        assert encoding["input_ids"][row, :length].tolist() == prompt
        assert encoding["attention_mask"][row, :length].all() and not encoding["attention_mask"][row, length:].any()
        assert (encoding["input_ids"][row, length:] == tokenizer.pad_token_id).all()
    # a cold-start row has no user token
    cold = encoding["input_ids"][1][encoding["attention_mask"][1].bool()]
    assert not ((cold >= tokenizer.config.user_token_offset) & (cold < tokenizer.config.item_token_offset)).any()
    as_numpy = tokenizer(user_ids, histories, return_tensors="np")
    assert isinstance(as_numpy["input_ids"], np.ndarray)
    np.testing.assert_array_equal(as_numpy["input_ids"], encoding["input_ids"].numpy())


def test_call_renders_collaborative_documents_cut_before_the_next_item(tokenizer):
    rng = np.random.default_rng(2)
    users = rng.integers(0, NUM_USERS, size=12).tolist()
    histories = [rng.integers(0, NUM_ITEMS, size=rng.integers(1, 15)) for _ in range(12)]
    encoding = tokenizer(users, histories, prompt="collaborative", max_length=12)
    for row, (user, history) in enumerate(zip(users, histories, strict=True)):
        prompt = tokenizer.render("collaborative_prompt", user=user)
        kept = history[-(12 - len(prompt)) :]  # the oldest items go
        text = f"<user_{user}> has interacted with " + " ".join(f"<item_{item}>" for item in kept)
        length = int(encoding["attention_mask"][row].sum())
        assert encoding["input_ids"][row, :length].tolist() == tokenizer.encode(text)
        assert not encoding["attention_mask"][row, length:].any()
    with pytest.raises(ValueError, match="row 1 has none"):
        tokenizer([2, None], [[1], [2]], prompt="collaborative")
    with pytest.raises(ValueError, match="already holds the history"):
        tokenizer.render_batch("recommendation_prompt", users=[0], histories=[[1]], followed_by_history=True)


def test_call_truncates_histories_to_the_backbones_context(tokenizer):
    context = tokenizer.model_max_length
    assert context == tokenizer.config.text_config.n_positions == 256
    history = np.arange(400) % NUM_ITEMS  # far longer than the context
    encoding = tokenizer([1, None], [history, history[:3]])
    assert encoding["input_ids"].shape[1] == context
    suffix = tokenizer.encode(", <user_1> will interact with")
    assert encoding["input_ids"][0, -len(suffix) :].tolist() == suffix  # the oldest items went, the end stayed
    shorter = tokenizer([1], [history], max_length=30)
    assert shorter["input_ids"].shape == (1, 30)
    assert shorter["input_ids"][0].tolist() == tokenizer.render(
        "recommendation_prompt", user=1, history=history, max_length=30
    )


def test_call_refuses_a_max_length_beyond_the_context(tokenizer):
    with pytest.raises(ValueError, match="max_length=257 exceeds the backbone's context of 256 tokens"):
        tokenizer([0], [[1]], max_length=257)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            tokenizer([0], [[1]], max_length=bad)


@pytest.mark.parametrize(
    "user_ids, histories, message",
    [
        ([], [], "no users"),
        ([0, 1], [[1]], "2 user ids but 1 histories"),
        ([0], [None], "History of row 0 must be a sequence"),
        ([0, 1], [[1], "item_2"], "History of row 1 must be a sequence"),
        ([0], [[1.5, 2]], "History of row 0 must be a 1-D sequence of integer"),
        ([0], [[[1, 2]]], "History of row 0 must be a 1-D sequence of integer"),
        ([0], [[[1, 2], [3]]], "History of row 0 must be a 1-D sequence of integer"),
        ([0], [[]], "History of row 0 is empty"),
        (["a"], [[1]], "User id of row 0 must be an integer or None"),
        ([True], [[1]], "User id of row 0 must be an integer or None"),
        (0, [[1]], "`user_ids` must be a list"),
        ([9], [[1]], r"user id 9 .*5 users"),
        ([0], [[1, 7]], r"item id 7 .*7 items"),
    ],
)
def test_call_rejects_bad_inputs_naming_the_problem(tokenizer, user_ids, histories, message):
    with pytest.raises(ValueError, match=message):
        tokenizer(user_ids, histories)


def test_call_rejects_unknown_prompts_and_tensor_types(tokenizer):
    with pytest.raises(ValueError, match="`prompt` must be 'recommendation' or 'collaborative'"):
        tokenizer([0], [[1]], prompt="review")
    with pytest.raises(ValueError, match="`return_tensors` must be 'pt' or 'np'"):
        tokenizer([0], [[1]], return_tensors="tf")
