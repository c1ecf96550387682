"""How the `cllm4rec` command line reports errors: one line, `cllm4rec: error: ...`, exit code 2."""

import pytest

from hf_cllm4rec import cli


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
