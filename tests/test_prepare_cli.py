import io
import json
import subprocess
import sys

import pytest
from datasets import DatasetDict
from test_data_sources import write_json_lines

from hf_cllm4rec.cli import main
from hf_cllm4rec.data import RecommendationData


def run_cli(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as exit:
        return exit.code


def assert_usage_error(capsys, *args: str, message: str) -> None:
    assert run_cli(*args) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("cllm4rec: error: ") and stderr.count("\n") == 1
    assert message in stderr


def test_synthetic(tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert (
        run_cli("prepare", "--source", "synthetic", "--num-users", "50", "--num-items", "30", "--out", str(out)) == 0
    )
    data = RecommendationData.load(out)
    assert (data.num_users, data.num_items) == (50, 30)
    assert data.manifest["protocol"]["seed"] == 0
    stdout = capsys.readouterr().out
    assert "users: 50  items: 30" in stdout and f"train {data.manifest['num_interactions']['train']}" in stdout


def test_amazon(tmp_path, shared_data):
    reviews = shared_data / "amazon-all-beauty-2018" / "All_Beauty_5.json.gz"
    out = tmp_path / "beauty"
    assert run_cli("prepare", "--source", "amazon", "--reviews", str(reviews), "--out", str(out)) == 0
    data = RecommendationData.load(out)
    assert (data.name, data.num_users, data.num_items) == ("All_Beauty_5", 134, 24)
    assert sum(data.manifest["num_interactions"].values()) == 671
    assert data.manifest["protocol"] == {
        "min_rating": 3.0, "k_core": 5, "seed": 98765, "validation_fraction": 0.1, "test_fraction": 0.1
    }  # fmt: skip
    assert list(data.manifest["sources"]) == ["All_Beauty_5.json.gz"]


def test_authors(tmp_path, shared_data):
    out = tmp_path / "authors"
    assert (
        run_cli("prepare", "--source", "authors", "--path", str(shared_data / "amazon-beauty"), "--out", str(out)) == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["num_users"], manifest["num_items"]) == (10553, 6086)
    assert manifest["num_interactions"] == {"train": 70614, "validation": 11767, "test": 11767}


def test_movielens(tmp_path, shared_data):
    out = tmp_path / "ml"
    args = ("--source", "movielens", "--path", str(shared_data / "ml-100k"), "--min-rating", "none", "--k-core", "0")
    assert run_cli("prepare", *args, "--name", "ml-100k-all", "--out", str(out)) == 0
    data = RecommendationData.load(out)
    assert (data.name, data.num_users, data.num_items) == ("ml-100k-all", 943, 1682)
    assert sum(data.manifest["num_interactions"].values()) == 100000
    assert data.manifest["protocol"]["min_rating"] is None


def test_table(tmp_path):
    table = tmp_path / "ratings.csv"
    rows = [f"u{user},i{(user + step) % 8},{1 + step % 5}" for user in range(10) for step in range(6)]
    table.write_text("user,item,stars\n" + "\n".join(rows) + "\n")
    out = tmp_path / "table"
    args = ("--source", "table", "--path", str(table), "--user-column", "user", "--item-column", "item")
    assert (
        run_cli("prepare", *args, "--rating-column", "stars", "--min-rating", "1", "--k-core", "3", "--out", str(out))
        == 0
    )
    data = RecommendationData.load(out)
    assert data.name == "ratings" and data.num_users == 10
    assert data.tables["train"].column_names == ["user_id", "item_id", "rating"]


def test_overwrite(tmp_path, capsys):
    out = tmp_path / "synthetic"
    args = ("prepare", "--source", "synthetic", "--num-users", "30", "--num-items", "20", "--out", str(out))
    assert run_cli(*args) == 0
    assert_usage_error(capsys, *args, message="already exists; pass --overwrite")
    assert run_cli(*args, "--seed", "1", "--overwrite") == 0
    assert RecommendationData.load(out).manifest["protocol"]["seed"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "the following arguments are required: command"),
        (("prepare", "--out", "x"), "the following arguments are required: --source"),
        (("prepare", "--source", "yelp", "--out", "x"), "invalid choice: 'yelp'"),
        (("prepare", "--source", "amazon", "--out", "x"), "--source amazon needs --reviews"),
        (("prepare", "--source", "table", "--path", "t.csv", "--out", "x"), "--source table needs --user-column"),
        (("prepare", "--source", "authors", "--path", "p", "--k-core", "3", "--out", "x"), "--k-core does not apply"),
        (("prepare", "--source", "synthetic", "--path", "p", "--out", "x"), "--path does not apply"),
        (("prepare", "--source", "synthetic", "--k-core", "x", "--out", "x"), "invalid int value: 'x'"),
        (("prepare", "--source", "movielens", "--path", "absent", "--out", "x"), "absent does not exist"),
        # the protocol's options are checked before the source is read (here: it is not there)
        (("prepare", "--source", "movielens", "--path", "absent", "--k-core", "-1", "--out", "x"), "--k-core must be"),
        (
            ("prepare", "--source", "amazon", "--reviews", "absent.json", "--test-fraction", "1", "--out", "x"),
            "--test-fraction must be in [0, 1), got 1.0",
        ),
        (
            (
                "prepare",
                "--source",
                "table",
                "--path",
                "a.csv",
                "--user-column",
                "u",
                "--item-column",
                "i",
                "--out",
                "x",
            ),
            "--min-rating 3.0 needs a --rating-column",
        ),
        (("prepare", "--source", "synthetic", "--num-clusters", "20", "--out", "x"), "--num-clusters must be"),
        (
            ("prepare", "--source", "synthetic", "--num-items", "3", "--out", "x"),
            "--num-clusters 6 exceeds --num-items 3",
        ),
        (("prepare", "--source", "synthetic", "--out", ""), "argument --out: must not be empty"),
        (("prepare", "--source", "synthetic", "--name", "", "--out", "x"), "argument --name: must not be empty"),
        (
            (
                "prepare",
                "--source",
                "table",
                "--path",
                "t.csv",
                "--user-column",
                "u",
                "--item-column",
                "i",
                "--item-text-column",
                "title",
                "--out",
                "x",
            ),
            "--item-text-column needs --item-text",
        ),
    ],
)
def test_bad_arguments(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(capsys, *args, message=message)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_leaves_no_output(tmp_path, capsys):
    reviews = tmp_path / "reviews.json"
    reviews.write_text(
        '{"reviewerID": "u", "asin": "a", "overall": 5}\n{"reviewerID": "u", "asin": "b", "overall": "x"}\n'
    )
    args = ("prepare", "--source", "amazon", "--reviews", str(reviews), "--out", str(tmp_path / "out"))
    assert_usage_error(capsys, *args, message="reviews.json, line 2: 'overall' is not a number")
    reviews.write_text(
        '{"reviewerID": "u", "asin": "a", "overall": 5}\n{"reviewerID": "u", "asin": "b", "overall": 4}\n'
    )
    assert_usage_error(capsys, *args, message="no interactions left after filtering (--min-rating 3.0, --k-core 5)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["reviews.json"]


def test_protocol_errors_name_the_options(tmp_path, capsys):
    table = tmp_path / "ratings.csv"
    table.write_text("user,item\nu1,a\nu2,b\n")
    args = ("prepare", "--source", "table", "--path", str(table), "--user-column", "user", "--item-column", "item")
    message = "--min-rating 3.0 needs a --rating-column; pass --min-rating none to keep all"
    assert_usage_error(capsys, *args, "--out", str(tmp_path / "out"), message=message)
    same = (*args[:-1], "user", "--min-rating", "none", "--out", str(tmp_path / "out"))
    assert_usage_error(capsys, *same, message="user_column and item_column name the same column, 'user'")
    args += ("--min-rating", "none", "--k-core", "0", "--validation-fraction", "0.5", "--test-fraction", "0.4")
    message = "--validation-fraction 0.5 and --test-fraction 0.4 leave users with 1 interactions no training item"
    assert_usage_error(capsys, *args, "--out", str(tmp_path / "out"), message=message)
    assert [path.name for path in tmp_path.iterdir()] == ["ratings.csv"]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_an_empty_folder_is_written_as_a_new_one(tmp_path, overwrite):
    out = tmp_path / "synthetic"
    out.mkdir()
    assert (
        run_cli(
            "prepare", "--source", "synthetic", "--num-users", "30", "--num-items", "20", "--out", str(out), *overwrite
        )
        == 0
    )
    assert RecommendationData.load(out).num_users == 30
    assert [path.name for path in tmp_path.iterdir()] == ["synthetic"]


def test_failed_write_leaves_no_output(tmp_path, monkeypatch, capsys):
    def fail_midway(tables, path, **kwargs):
        (path / "train").mkdir()
        raise OSError("No space left on device")

    monkeypatch.setattr(DatasetDict, "save_to_disk", fail_midway)
    out = tmp_path / "data" / "synthetic"
    assert_usage_error(
        capsys, "prepare", "--source", "synthetic", "--out", str(out), message="No space left on device"
    )
    assert list((tmp_path / "data").iterdir()) == []


def test_console_script(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hf_cllm4rec.cli", "prepare", "--source", "amazon", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr == "cllm4rec: error: --source amazon needs --reviews\n"


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, where progress bars show by default."""

    def isatty(self) -> bool:
        return True


def test_reading_a_source_shows_progress_on_a_terminal(tmp_path, monkeypatch, capsys):
    records = [
        {"reviewerID": f"u{user}", "asin": f"i{item}", "overall": 5.0, "unixReviewTime": user * 10 + item}
        for user in range(6)
        for item in range(6)
    ]
    reviews = write_json_lines(tmp_path / "reviews.json", records)
    args = ("prepare", "--source", "amazon", "--reviews", str(reviews), "--k-core", "2")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert run_cli(*args, "--out", str(tmp_path / "shown")) == 0
    assert "Reading reviews.json: 100%" in terminal.getvalue()
    monkeypatch.undo()
    assert run_cli(*args, "--out", str(tmp_path / "hidden")) == 0
    assert "Reading" not in capsys.readouterr().err, "no progress bar where stderr is no terminal"
