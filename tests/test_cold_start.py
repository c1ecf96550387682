"""New users: recommendations from the cold-start prompt, which has no user token."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmarks.cold_start import warm_and_cold_metrics
from test_prepare_cli import assert_usage_error, run_cli
from tiny_checkpoints import save_tiny_checkpoint

from hf_cllm4rec import Recommender
from hf_cllm4rec.evaluation import evaluate_recommender

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cold_start") / "checkpoint"
    model, tokenizer, data = save_tiny_checkpoint(folder)
    return folder, model, tokenizer, data


def test_the_cold_start_prompt_has_no_user_token(checkpoint):
    _, model, tokenizer, _ = checkpoint
    history = [4, 0, 9]
    prompt = tokenizer([None], [history])["input_ids"][0].tolist()
    assert prompt == tokenizer.render("cold_start_prompt", history=history)
    config = model.config
    assert not [token for token in prompt if config.user_token_offset <= token < config.item_token_offset]
    assert [token - config.item_token_offset for token in prompt if token >= config.item_token_offset] == history
    assert tokenizer.decode(prompt).startswith("A new user has interacted with <item_4> <item_0> <item_9>")


def test_new_users_are_ranked_every_item_but_their_history(checkpoint):
    _, model, tokenizer, data = checkpoint
    recommender = Recommender(model, tokenizer)
    histories = [[0], [5, 2, 11, 7], list(range(0, data.num_items, 3))]
    for history in histories:
        k = data.num_items - len(history)  # everything that may be recommended
        output = recommender.recommend([None], [history], k=k)
        assert sorted(output.item_ids[0].tolist()) == sorted(set(range(data.num_items)) - set(history))
        assert torch.isfinite(output.scores).all() and (output.scores[0].diff() <= 0).all()
    # a batch of new users (padded) is the same as one at a time; a repeated item is still never recommended
    batch = recommender.recommend([None, None], [[1], [5, 2, 5]], k=4)
    alone = recommender.recommend([None], [[1]], k=4)
    assert batch.item_ids[0].tolist() == alone.item_ids[0].tolist()
    torch.testing.assert_close(batch.scores[0], alone.scores[0])
    assert 1 not in batch.item_ids[0].tolist() and not {5, 2} & set(batch.item_ids[1].tolist())


def test_the_user_token_changes_the_scores(checkpoint):
    _, model, tokenizer, data = checkpoint
    history = data.histories("train")[6]
    scores = Recommender(model, tokenizer).score([6, None, 7], [history] * 3)
    assert not torch.allclose(scores[0], scores[1]) and not torch.allclose(scores[0], scores[2])


def test_the_command_line_reports_unknown_items_of_new_users(checkpoint, capsys, tmp_path):
    folder, model, tokenizer, data = checkpoint
    items = data.item_raw_ids
    histories = tmp_path / "new_users.csv"
    rows = [("alice", items[3]), ("alice", "ghost"), ("alice", items[8]), ("bob", items[1]), ("bob", "phantom")]
    histories.write_text("user,item\n" + "".join(f"{user},{item}\n" for user, item in rows))
    output = tmp_path / "top.json"
    assert run_cli("recommend", "--model", str(folder), "--histories", str(histories), "--output", str(output)) == 0
    stderr = capsys.readouterr().err.splitlines()
    assert stderr == [
        "cllm4rec: warning: history 'alice': Unknown item ids left out of the history: ghost.",
        "cllm4rec: warning: history 'bob': Unknown item ids left out of the history: phantom.",
    ]
    expected = Recommender(model, tokenizer).recommend([None, None], [[3, 8], [1]], k=10)
    written = json.loads(output.read_text())
    for label, row in (("alice", 0), ("bob", 1)):
        assert [item["item_id"] for item in written[label]] == [items[i] for i in expected.item_ids[row].tolist()]
        np.testing.assert_allclose([item["score"] for item in written[label]], expected.scores[row], rtol=1e-6)

    as_json = tmp_path / "new_users.json"
    as_json.write_text(json.dumps([[items[3], items[8]]]))
    assert run_cli("recommend", "--model", str(folder), "--histories", str(as_json), "--k", "2") == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("new user 0 (2 items in the history)\n") and items[expected.item_ids[0, 0]] in stdout

    as_json.write_text(json.dumps({"carol": ["ghost", "phantom"]}))
    assert_usage_error(
        capsys,
        "recommend",
        "--model",
        str(folder),
        "--histories",
        str(as_json),
        message="holds no item the model knows",
    )
    as_json.write_text(json.dumps({"carol": "not a list"}))
    assert_usage_error(capsys, "recommend", "--model", str(folder), "--histories", str(as_json), message="must hold")


def test_warm_and_cold_benchmark(checkpoint):
    _, model, tokenizer, data = checkpoint
    results = warm_and_cold_metrics(model, tokenizer, data, "test", batch_size=8)
    histories = data.histories("train")
    train, test = data.to_sparse("train"), data.to_sparse("test")
    recommender = Recommender(model, tokenizer)
    for name, user_ids in (
        ("warm", lambda users: [int(user) for user in users]),
        ("cold", lambda users: [None] * len(users)),
    ):
        expected = evaluate_recommender(
            lambda users, user_ids=user_ids: recommender.score(user_ids(users), [histories[user] for user in users]),
            test,
            exclude=train,
        )
        for metric in ("recall@20", "recall@40", "ndcg@100", "num_users"):
            assert results[name][metric] == pytest.approx(expected[metric])
    assert results["cold_over_warm"]["ndcg@100"] == pytest.approx(
        results["cold"]["ndcg@100"] / results["warm"]["ndcg@100"]
    )


def test_cold_start_script_records_what_produced_its_figures(checkpoint, tmp_path):
    folder, _, _, data = checkpoint
    data.save(tmp_path / "data")
    output = tmp_path / "cold_start.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.cold_start", "--model", str(folder), "--data", str(tmp_path / "data")]
        + ["--batch_size", "8", "--output_file", str(output)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    report = json.loads(output.read_text())
    assert report["benchmark"] == "cold_start" and report["git_commit"] and report["device"]
    assert report["configuration"]["model"] == folder.name and report["configuration"]["data"] == "data"
    assert "output_file" not in report["configuration"]
    assert report["warm"]["num_users"] == report["cold"]["num_users"] > 0
