"""How the `cllm4rec` command line reports errors: one line, `cllm4rec: error: ...`, exit code 2."""

import pytest
from test_prepare_cli import assert_usage_error
from tiny_checkpoints import save_tiny_checkpoint

from hf_cllm4rec import Recommender, cli
from hf_cllm4rec.data import RecommendationData
from hf_cllm4rec.training import CLLM4RecTrainer, recipes


def failing_command(error: Exception):
    def handler(args):
        raise error

    return handler


@pytest.mark.parametrize(
    "error",
    [ValueError("the first line names the problem\n  and the second says what to do"), OSError("disk full")],
)
def test_an_error_is_reported_on_one_line_with_all_of_its_message(monkeypatch, capsys, error):
    monkeypatch.setattr(cli.prepare, "prepare", failing_command(error))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare", "--source", "synthetic", "--out", "unused"])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert stderr.startswith("cllm4rec: error: ") and stderr.count("\n") == 1
    for line in str(error).splitlines():
        assert line.strip() in stderr


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_prepare_refuses_its_output_folder_before_reading_the_source(monkeypatch, capsys, tmp_path, overwrite):
    (tmp_path / "notes.txt").write_text("not a prepared data set")

    def read_source(args):
        raise AssertionError("the source was read before the output folder was checked")

    monkeypatch.setattr(cli.prepare, "_read_source", read_source)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare", "--source", "synthetic", "--out", str(tmp_path), *overwrite])
    assert exit_info.value.code == 2
    assert str(tmp_path) in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    _, _, data = save_tiny_checkpoint(root / "checkpoint")
    data.save(root / "data")
    return root, data


def refuse(what: str):
    def refused(*args, **kwargs):
        raise AssertionError(f"{what} before the arguments were checked")

    return refused


@pytest.mark.parametrize("option", ["--max-length", "--max_length"])
@pytest.mark.parametrize("command", ["pretrain", "finetune", "evaluate", "recommend"])
def test_a_prompt_length_beyond_the_context_is_refused_up_front(
    checkpoint, monkeypatch, capsys, tmp_path, command, option
):
    root, data = checkpoint
    model, data_dir, output_dir = str(root / "checkpoint"), str(root / "data"), tmp_path / "run"
    args = {
        "pretrain": ("pretrain", "--backbone", "builtin-tiny-gpt2", "--output_dir", str(output_dir)),
        "finetune": ("finetune", "--pretrained", model, "--data", data_dir, "--output_dir", str(output_dir)),
        "evaluate": ("evaluate", "--model", model, "--data", data_dir),
        "recommend": ("recommend", "--model", model, "--users", data.user_raw_ids[0]),
    }[command]
    monkeypatch.setattr(CLLM4RecTrainer, "train", refuse("training started"))
    monkeypatch.setattr(recipes, "load_data", refuse("the data set was read"))
    monkeypatch.setattr(Recommender, "recommend", refuse("users were scored"))
    if command in ("pretrain", "finetune"):
        monkeypatch.setattr(recipes, "load_data", lambda data_args: RecommendationData.load(data_dir))
    if option == "--max_length" and command in ("evaluate", "recommend"):  # their options are spelled with dashes
        message = "unrecognized arguments: --max_length 257"
    else:
        message = "max_length=257 exceeds the backbone's context of 256"
    assert_usage_error(capsys, *args, option, "257", message=message)
    assert not output_dir.exists()


def test_an_option_of_the_other_stage_is_named_even_where_it_begins_an_option_of_this_one(capsys, tmp_path):
    args = ("finetune", "--pretrained", "p", "--output_dir", str(tmp_path / "run"), "--backbone", "gpt2")
    assert_usage_error(
        capsys, *args, message="--backbone: an option of `cllm4rec pretrain`, not of `cllm4rec finetune`"
    )
    args = ("finetune", "--pretrained", "p", "--output_dir", str(tmp_path / "run"), "--mask", "0.3")
    assert_usage_error(capsys, *args, message="unrecognized arguments: --mask 0.3")
