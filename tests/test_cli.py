"""The `cllm4rec` training, evaluation, recommendation and export commands (`prepare` has its own tests)."""

import csv
import io
import json
import shutil
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from test_prepare_cli import assert_usage_error, run_cli
from tiny_checkpoints import save_tiny_checkpoint

from hf_cllm4rec import CLLM4RecForItemPrediction, IdMappings, Recommender
from hf_cllm4rec.evaluation import evaluate_model
from hf_cllm4rec.serving.embeddings import EMBEDDINGS_NAME, TABLES_NAME
from hf_cllm4rec.writing import replaced_file

TINY_TRAINING = (
    "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--content_documents", "item",
    "--max_length", "64", "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
    "--disable_tqdm", "true", "--use_cpu", "true", "--learning_rate", "0.01",
)  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model, tokenizer, data = save_tiny_checkpoint(root / "checkpoint")
    data.save(root / "data")
    return root, model, tokenizer, data


@pytest.mark.parametrize("command", ["prepare", "pretrain", "finetune", "evaluate", "recommend", "export-embeddings"])
def test_every_command_has_help(command, capsys):
    assert run_cli(command, "--help") == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("usage: cllm4rec " + command)
    if command == "pretrain":  # the stage's arguments and the Trainer's
        assert "--backbone " in stdout and "--output_dir" in stdout and "--content_warmup_epochs" in stdout
    if command == "finetune":
        assert "--pretrained" in stdout and "--output_dir" in stdout and "--mask_ratio" in stdout


def test_pretrain_finetune_evaluate_chain(checkpoint, capsys):
    root, _, _, data = checkpoint
    pretrained, finetuned = root / "pretrained", root / "finetuned"
    common = ("--data", str(root / "data"), *TINY_TRAINING)
    pretrain = ("--backbone", "builtin-tiny-gpt2", "--content_warmup_epochs", "0", "--read_out", "mean")
    assert run_cli("pretrain", *common, *pretrain, "--output_dir", str(pretrained)) == 0
    assert json.loads((pretrained / "config.json").read_text())["read_out"] == "mean"
    capsys.readouterr()
    new_users = root / "new_users.json"
    new_users.write_text(json.dumps({"someone": data.item_raw_ids[:2]}))
    recommend_new_users = ("recommend", "--model", str(pretrained), "--histories", str(new_users))
    assert_usage_error(capsys, *recommend_new_users, message="a new user needs a fine-tuned model")
    finetune = ("--pretrained", str(pretrained), "--id_embedding_dropout", "0.2", "--read_out", "last")
    finetune += ("--history_attention", "bidirectional")
    assert run_cli("finetune", *common, *finetune, "--output_dir", str(finetuned)) == 0
    capsys.readouterr()
    finetuned_config = json.loads((finetuned / "config.json").read_text())
    assert finetuned_config["id_embedding_dropout"] == 0.2 and finetuned_config.get("read_out", "last") == "last"
    assert finetuned_config["history_attention"] == "bidirectional"
    measured = json.loads((finetuned / "test_results.json").read_text())
    assert ModelCard.load(finetuned / "README.md").data.eval_results[0].metric_value == measured["test_recall@20"]
    assert "**pretraining** stage" in (pretrained / "README.md").read_text()

    output = root / "metrics.json"
    assert run_cli("evaluate", "--model", str(finetuned), "--data", str(root / "data"), "--output", str(output)) == 0
    stdout = capsys.readouterr().out
    assert f"test split of 'synthetic': {int(measured['test_num_users'])} users" in stdout
    for name in ("recall@20", "recall@40", "ndcg@100"):
        assert f"  {name:<16}{measured['test_' + name]:.4f}" in stdout
    assert json.loads(output.read_text()) == pytest.approx(measured)


def test_evaluate_is_the_trainers_evaluation(checkpoint, capsys):
    root, model, tokenizer, data = checkpoint
    args = ("evaluate", "--model", str(root / "checkpoint"), "--data", str(root / "data"), "--split", "validation")
    expected = evaluate_model(model, tokenizer, data, "validation", recall_ks=(5, 10), ndcg_ks=(10,))
    for batching in ([], ["--batch-size", "1000", "--max-tokens", "100"]):
        assert run_cli(*args, "--recall-ks", "5", "10", "--ndcg-ks", "10", *batching) == 0
        stdout = capsys.readouterr().out
        for name in ("recall@5", "recall@10", "ndcg@10"):
            assert f"  {name:<16}{expected[name]:.4f}" in stdout


def test_evaluate_over_several_history_orders(checkpoint, capsys):
    root, model, tokenizer, data = checkpoint
    args = ("evaluate", "--model", str(root / "checkpoint"), "--data", str(root / "data"), "--split", "validation")
    assert run_cli(*args, "--history-permutations", "3") == 0
    expected = evaluate_model(model, tokenizer, data, "validation", history_permutations=3)
    stdout = capsys.readouterr().out
    for name in ("recall@20", "recall@40", "ndcg@100"):
        assert f"  {name:<16}{expected[name]:.4f}" in stdout


def test_evaluate_and_recommend_with_another_read_out(checkpoint, capsys):
    root, _, tokenizer, data = checkpoint
    mean_model = CLLM4RecForItemPrediction.from_pretrained(root / "checkpoint", read_out="mean").eval()
    expected = evaluate_model(mean_model, tokenizer, data, "validation")
    args = ("evaluate", "--model", str(root / "checkpoint"), "--data", str(root / "data"), "--split", "validation")
    assert run_cli(*args, "--read-out", "mean") == 0
    stdout = capsys.readouterr().out
    for name in ("recall@20", "recall@40", "ndcg@100"):
        assert f"  {name:<16}{expected[name]:.4f}" in stdout
    users = data.user_raw_ids[:8]
    recommend = ("recommend", "--model", str(root / "checkpoint"), "--users", *users, "--k", "5")
    rankings = {}
    for read_out in ("last", "mean"):
        assert run_cli(*recommend, "--read-out", read_out) == 0
        rankings[read_out] = capsys.readouterr().out
    assert rankings["last"] != rankings["mean"]
    assert_usage_error(capsys, *args, "--read-out", "max", message="--read-out")


def test_recommend_known_users_by_raw_id(checkpoint, capsys, tmp_path):
    root, model, tokenizer, data = checkpoint
    users = [data.user_raw_ids[0], data.user_raw_ids[9]]
    histories = data.histories("train")
    assert run_cli("recommend", "--model", str(root / "checkpoint"), "--users", *users, "--k", "3") == 0
    stdout = capsys.readouterr().out
    expected = Recommender(model, tokenizer).recommend([0, 9], [histories[0], histories[9]], k=3)
    mappings = IdMappings.from_data(data)
    assert f"user {users[0]} ({len(histories[0])} items in the history)" in stdout
    for rank, item in enumerate(mappings.ranked_items(expected.item_ids[1], expected.scores[1]), start=1):
        assert f"{rank:>5}. {item['item_id']}  score {item['score']:.4f}  {item['text']}" in stdout

    output = tmp_path / "top.json"
    assert (
        run_cli(
            "recommend", "--model", str(root / "checkpoint"), "--users", *users, "--k", "3", "--output", str(output)
        )
        == 0
    )
    written = json.loads(output.read_text())
    assert list(written) == users
    assert [item["item_id"] for item in written[users[0]]] == [
        data.item_raw_ids[i] for i in expected.item_ids[0].tolist()
    ]
    csv_output = tmp_path / "top.csv"
    assert (
        run_cli("recommend", "--model", str(root / "checkpoint"), "--users", users[0], "--output", str(csv_output))
        == 0
    )
    lines = csv_output.read_text().splitlines()
    assert lines[0] == "user,rank,item_id,score,text" and len(lines) == 11


def test_scoring_in_bfloat16(checkpoint, capsys):
    root, model, tokenizer, data = checkpoint
    served = CLLM4RecForItemPrediction.from_pretrained(root / "checkpoint", dtype=torch.bfloat16)
    history = data.histories("train")[4]
    expected = Recommender(served, tokenizer).recommend([4], [history], k=5)
    in_float32 = Recommender(model, tokenizer).recommend([4], [history], k=5)
    assert not torch.equal(expected.scores.float(), in_float32.scores), "bfloat16 should round the scores"
    args = ("recommend", "--model", str(root / "checkpoint"), "--users", data.user_raw_ids[4], "--k", "5")
    assert run_cli(*args, "--dtype", "bfloat16") == 0
    stdout = capsys.readouterr().out
    for rank, item in enumerate(
        IdMappings.from_data(data).ranked_items(expected.item_ids[0], expected.scores[0].float()), 1
    ):
        assert f"{rank:>5}. {item['item_id']}  score {item['score']:.4f}" in stdout


def test_recommend_all_users_in_batches_by_prompt_length(checkpoint, capsys, tmp_path):
    root, model, tokenizer, data = checkpoint
    folder = tmp_path / "checkpoint"
    shutil.copytree(root / "checkpoint", folder)
    loaded = IdMappings.load(folder)
    histories = list(loaded.histories)
    histories[5] = []  # a user without training items gets no list
    mappings = IdMappings(loaded.users, loaded.items, loaded.item_texts, histories)
    mappings.save(folder)
    users = [user for user, history in enumerate(mappings.histories) if history]
    expected = Recommender(model, tokenizer).recommend(users, [mappings.histories[user] for user in users], k=3)

    output = tmp_path / "all.csv"
    args = ("recommend", "--model", str(folder), "--all-users", "--k", "3", "--output", str(output))
    assert run_cli(*args, "--batch-size", "5", "--max-tokens", "40") == 0
    assert "1 users without training items left out" in capsys.readouterr().err
    written = {}
    for row in csv.DictReader(output.open()):
        written.setdefault(row["user"], []).append(row["item_id"])
    assert written == {
        data.user_raw_ids[user]: [data.item_raw_ids[item] for item in items]
        for user, items in zip(users, expected.item_ids.tolist(), strict=True)
    }
    assert sorted(path.name for path in tmp_path.iterdir()) == ["all.csv", "checkpoint"]

    IdMappings(loaded.users, loaded.items, loaded.item_texts).save(folder)
    assert_usage_error(
        capsys, "recommend", "--model", str(folder), "--all-users", message="holds no training histories"
    )


def test_outputs_replace_a_file_only_once_fully_written(tmp_path):
    path = tmp_path / "top.json"
    path.write_text("earlier")
    with pytest.raises(RuntimeError), replaced_file(path) as file:
        file.write("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "earlier" and list(tmp_path.iterdir()) == [path]
    with replaced_file(path) as file:
        file.write("new")
    assert path.read_text() == "new" and list(tmp_path.iterdir()) == [path]


def test_export_embeddings(checkpoint, capsys, tmp_path):
    root, model, _, data = checkpoint
    out = tmp_path / "embeddings"
    assert run_cli("export-embeddings", "--model", str(root / "checkpoint"), "--out", str(out)) == 0
    assert (out / EMBEDDINGS_NAME).is_file() and (out / TABLES_NAME / "items").is_dir()
    hidden_size = model.config.hidden_size
    assert (
        f"{data.num_users} user and {data.num_items} item embeddings ({hidden_size} dims)" in capsys.readouterr().out
    )
    assert_usage_error(
        capsys, "export-embeddings", "--model", str(root / "checkpoint"), "--out", str(out), message="--overwrite"
    )
    assert run_cli("export-embeddings", "--model", str(root / "checkpoint"), "--out", str(out), "--overwrite") == 0
    (tmp_path / "file").write_text("mine")
    for where, message in (
        ("file", "file exists and is not a folder"),
        ("file/x", f"{tmp_path / 'file'} is not a folder"),
    ):
        args = ("export-embeddings", "--model", str(root / "checkpoint"), "--out", str(tmp_path / where))
        assert_usage_error(capsys, *args, "--overwrite", message=message)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["embeddings", "file"]


def test_usage_errors(checkpoint, capsys, tmp_path):
    root, _, _, data = checkpoint
    model, data_dir = str(root / "checkpoint"), str(root / "data")
    cases = [
        (("recommend", "--model", model, "--users", "nobody"), "unknown user id 'nobody'"),
        (("recommend", "--model", str(tmp_path / "missing"), "--users", "x"), "no model folder at"),
        (("recommend", "--model", data_dir, "--users", "x"), "has no config.json"),
        (("recommend", "--model", model, "--users", data.user_raw_ids[0], "--k", "0"), "--k must be positive"),
        (("recommend", "--model", model, "--users", data.user_raw_ids[0], "--k", "1000"), "k must lie in"),
        (("recommend", "--model", model), "one of the arguments --users --all-users --histories is required"),
        (("recommend", "--model", model, "--users", "x", "--histories", "h.json"), "not allowed with argument"),
        (("recommend", "--model", model, "--users", "x", "--output", "top.txt"), "--output must be a .json or .csv"),
        (("evaluate", "--model", model, "--data", str(tmp_path / "nothing")), "no prepared data set at"),
        (("evaluate", "--model", model, "--data", data_dir, "--unknown-option"), "unrecognized arguments"),
        (("evaluate", "--model", model, "--data", "builtin"), "a checkpoint from another data set"),
        (("evaluate", "--model", model, "--data", data_dir, "--history-permutations", "0"), "must be positive"),
        (("evaluate", "--model", model, "--data", data_dir, "--history-permutations", "65"), "at most 64"),
        (("recommend", "--model", model, "--all-users", "--history-permutations", "65"), "at most 64"),
        (("recommend", "--model", model, "--all-users", "--max-length", "100000"), "exceeds the backbone's context"),
        (("evaluate", "--model", model, "--data", data_dir, "--max-tokens", "0"), "--max-tokens must be positive"),
        (("evaluate", "--model", model, "--data", data_dir, "--recall-ks", "5", "0"), "--recall-ks must be positive"),
        (("evaluate", "--model", model, "--data", data_dir, "--ndcg-ks", "-1"), "--ndcg-ks must be positive"),
        (
            ("evaluate", "--model", model, "--data", data_dir, "--recall-ks", "31"),
            "--recall-ks 31 exceeds the model's 30",
        ),
        (("evaluate", "--model", model, "--data", data_dir, "--ndcg-ks", "10", "100"), "--ndcg-ks 100 exceeds"),
        (("recommend", "--model", model, "--all-users", "--max-tokens", "-1"), "--max-tokens must be positive"),
        (("finetune", "--data", data_dir, "--output_dir", str(tmp_path / "f")), "--pretrained"),
        (("pretrain", "--output_dir", str(tmp_path / "p"), "--no_such_argument", "1"), "unrecognized arguments"),
    ]
    for args, message in cases:
        assert_usage_error(capsys, *args, message=message)


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, where progress bars show by default."""

    def isatty(self) -> bool:
        return True


def test_recommend_and_evaluate_show_progress_on_a_terminal(checkpoint, monkeypatch, capsys):
    root, _, _, data = checkpoint
    for args, bar in (
        (("recommend", "--model", str(root / "checkpoint"), "--all-users", "--k", "2"), "Recommending: 100%"),
        (("evaluate", "--model", str(root / "checkpoint"), "--data", str(root / "data")), "Ranking: 100%"),
    ):
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert run_cli(*args) == 0
        assert bar in terminal.getvalue()
        monkeypatch.undo()
        assert run_cli(*args) == 0
        assert bar not in capsys.readouterr().err, "no progress bar where stderr is no terminal"


@pytest.mark.parametrize("command", ["evaluate", "recommend"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    command, checkpoint, capsys, tmp_path, monkeypatch
):
    root, _, _, data = checkpoint
    args = {
        "evaluate": ("evaluate", "--model", str(root / "checkpoint"), "--data", str(root / "data")),
        "recommend": ("recommend", "--model", str(root / "checkpoint"), "--users", data.user_raw_ids[0]),
    }[command]
    loads = []
    monkeypatch.setattr(f"hf_cllm4rec.cli.{command}.load_checkpoint", lambda *args: loads.append(args))
    assert_usage_error(capsys, *args, "--output", str(tmp_path), message="is a directory")
    assert_usage_error(capsys, *args, "--output", str(tmp_path / "missing" / "out.json"), message="does not exist")
    assert not loads, "the checkpoint was loaded before the output was checked"
    assert list(tmp_path.iterdir()) == []
