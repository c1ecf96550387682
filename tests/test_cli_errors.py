"""How the `cllm4rec` command line reports errors: one line, `cllm4rec: error: ...`, exit code 2."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file as save_numpy_file
from safetensors.torch import load_file, save_file
from test_prepare_cli import assert_usage_error, run_cli
from tiny_checkpoints import TINY_DATA, save_tiny_checkpoint
from transformers import GPT2Config

from hf_cllm4rec import IdMappings, Recommender, cli
from hf_cllm4rec.data import RecommendationData, make_synthetic_data
from hf_cllm4rec.serving import id_mappings
from hf_cllm4rec.training import CLLM4RecTrainer, recipes

ITEM_TABLE = "model.item_collaborative_embeddings.weight"


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


@pytest.mark.parametrize(
    "out, message",
    [
        ("file", "file exists and is not a prepared data set: it is not a directory; refusing to replace it"),
        ("file/data", "--out {root}/file/data: {root}/file is not a folder"),
    ],
    ids=["a file", "a path under a file"],
)
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_prepare_refuses_an_out_it_cannot_write_without_advising_overwrite(
    monkeypatch, capsys, tmp_path, out, message, overwrite
):
    (tmp_path / "file").write_text("mine")
    monkeypatch.setattr(cli.prepare, "_read_source", refuse("the source was read"))
    out = str(tmp_path / out)
    assert_usage_error(
        capsys, "prepare", "--source", "synthetic", "--out", out, *overwrite, message=message.format(root=tmp_path)
    )
    assert [path.name for path in tmp_path.iterdir()] == ["file"]


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


def edit_json(path: Path, edit) -> None:
    stored = json.loads(path.read_text())
    edit(stored)
    path.write_text(json.dumps(stored))


def edit_mappings(folder: Path, edit) -> None:
    """Edits a checkpoint's id mappings as lists (`users`, `items`, `item_texts`, `histories`), saved unchecked."""
    mappings = IdMappings.load(folder)
    stored = {name: list(getattr(mappings, name)) for name in (*id_mappings.STRING_COLUMNS, "histories")}
    edit(stored)
    tensors = {}
    for name in id_mappings.STRING_COLUMNS:
        tensors[f"{name}_bytes"], tensors[f"{name}_offsets"] = id_mappings.encoded_strings(stored[name])
    lengths = [len(history) for history in stored["histories"]]
    tensors["history_indptr"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tensors["history_indices"] = np.array([item for history in stored["histories"] for item in history], np.int64)
    metadata = {"format": id_mappings.FORMAT, "format_version": id_mappings.FORMAT_VERSION}
    save_numpy_file(tensors, folder / id_mappings.ID_MAPPINGS_NAME, metadata=metadata)


def edit_weights(folder: Path, edit) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def put_nan(weights: dict) -> None:
    weights[ITEM_TABLE] = weights[ITEM_TABLE].clone()
    weights[ITEM_TABLE][0, 0] = float("nan")


# Each damage of a checkpoint folder, and a phrase of the error that names it (the file or the weights).
DAMAGED_CHECKPOINTS = {
    "missing item table": (
        lambda folder: edit_weights(folder, lambda weights: weights.pop(ITEM_TABLE)),
        f"do not fit the model: missing {ITEM_TABLE}",
    ),
    "NaN weights": (lambda folder: edit_weights(folder, put_nan), f"hold NaN or infinite values, in {ITEM_TABLE}"),
    "truncated weights": (lambda folder: cut_in_half(folder / "model.safetensors"), "not a valid safetensors file"),
    "empty weights": (lambda folder: (folder / "model.safetensors").write_bytes(b""), "it is empty"),
    "garbage weights": (
        lambda folder: (folder / "model.safetensors").write_bytes(b"\x00" * 8 + b"garbage" * 50),
        "not a valid safetensors file",
    ),
    "counts the weights do not have": (
        lambda folder: edit_json(folder / "config.json", lambda config: config.update(num_items=31)),
        "has num_items=31, but its weights",
    ),
    "a field of the wrong type": (
        lambda folder: edit_json(folder / "config.json", lambda config: config.update(num_items="30")),
        "config.json: Invalid CLLM4Rec config: Field 'num_items' expected int",
    ),
    "a count read as a huge number": (
        lambda folder: edit_json(folder / "config.json", lambda config: config.update(num_items=10**12)),
        "`num_items` must be a positive integer of at most",
    ),
    "a regularization weight of nan": (
        lambda folder: edit_json(folder / "config.json", lambda config: config.update(lambda_v=float("nan"))),
        "config.json: `lambda_v` must be a finite number, got nan",
    ),
    "deeply nested config": (
        lambda folder: (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000),
        "config.json is not a valid config: its JSON is nested too deeply",
    ),
    "a plain backbone's config": (
        lambda folder: GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50).save_pretrained(folder),
        "config.json describes a 'gpt2' checkpoint, not a CLLM4Rec one: a backbone is where training starts",
    ),
}
ID_MAPPINGS_DAMAGE = {
    "id mappings shorter than the catalogue": (
        lambda folder: edit_mappings(
            folder,
            lambda mappings: mappings.update(users=mappings["users"][:-2], histories=mappings["histories"][:-2]),
        ),
        "The id mappings hold 22 users and 30 items, but the model has 24 users and 30 items",
    ),
    "id mappings with fewer items than the histories name": (
        lambda folder: edit_mappings(
            folder,
            lambda mappings: mappings.update(items=mappings["items"][:5], item_texts=mappings["item_texts"][:5]),
        ),
        "id_mappings.safetensors is not valid id mappings: The history of user",
    ),
    "duplicate raw ids in the id mappings": (
        lambda folder: edit_mappings(folder, lambda mappings: mappings["users"].__setitem__(1, mappings["users"][0])),
        "appears twice (users 0 and 1): raw ids must be unique",
    ),
    "id mappings that are not a safetensors file": (
        lambda folder: (folder / "id_mappings.safetensors").write_bytes(b"{not safetensors"),
        "id_mappings.safetensors is not valid id mappings: not a safetensors file",
    ),
    "no id mappings": (
        lambda folder: (folder / "id_mappings.safetensors").unlink(),
        "has no id_mappings.safetensors",
    ),
}


def assert_refused(checkpoint, tmp_path, capsys, command, damage, message):
    root, data = checkpoint
    folder = Path(shutil.copytree(root / "checkpoint", tmp_path / "checkpoint"))
    damage(folder)
    output = str(tmp_path / "top.json")
    args = {
        "recommend": ("recommend", "--model", str(folder), "--users", data.user_raw_ids[0], "--output", output),
        "evaluate": ("evaluate", "--model", str(folder), "--data", str(root / "data"), "--output", output),
        "export-embeddings": ("export-embeddings", "--model", str(folder), "--out", str(tmp_path / "embeddings")),
        "finetune": ("finetune", "--pretrained", str(folder), "--data", str(root / "data"), "--output_dir", output),
    }[command]
    assert_usage_error(capsys, *args, message=message)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint"]  # nothing written


@pytest.mark.parametrize("damage, message", DAMAGED_CHECKPOINTS.values(), ids=DAMAGED_CHECKPOINTS)
@pytest.mark.parametrize("command", ["recommend", "evaluate", "export-embeddings"])
def test_a_damaged_checkpoint_is_a_one_line_error(checkpoint, tmp_path, capsys, command, damage, message):
    assert_refused(checkpoint, tmp_path, capsys, command, damage, message)


@pytest.mark.parametrize("damage, message", ID_MAPPINGS_DAMAGE.values(), ids=ID_MAPPINGS_DAMAGE)
@pytest.mark.parametrize("command", ["recommend", "export-embeddings"])  # evaluate compares them with --data: below
def test_damaged_id_mappings_are_a_one_line_error(checkpoint, tmp_path, capsys, command, damage, message):
    assert_refused(checkpoint, tmp_path, capsys, command, damage, message)


@pytest.mark.parametrize("command", ["evaluate", "finetune"])
@pytest.mark.parametrize("kind", ["user", "item"])
def test_a_checkpoint_of_other_ids_with_the_same_counts_is_refused(checkpoint, tmp_path, capsys, kind, command):
    _, data = checkpoint
    ids = data.user_raw_ids if kind == "user" else data.item_raw_ids
    message = f"{kind.capitalize()} 0 is {ids[1]!r} in the id mappings but {ids[0]!r} in the data set 'synthetic'"

    def swap_first_two(mappings: dict) -> None:
        mappings[f"{kind}s"][:2] = mappings[f"{kind}s"][1::-1]

    assert_refused(
        checkpoint, tmp_path, capsys, command, lambda folder: edit_mappings(folder, swap_first_two), message
    )


def test_evaluate_of_a_checkpoint_without_id_mappings_checks_the_counts(checkpoint, tmp_path, capsys):
    root, _ = checkpoint
    folder = Path(shutil.copytree(root / "checkpoint", tmp_path / "checkpoint"))
    (folder / id_mappings.ID_MAPPINGS_NAME).unlink()
    assert run_cli("evaluate", "--model", str(folder), "--data", str(root / "data")) == 0
    assert "has no id mappings: only the user and item counts of --data are checked" in capsys.readouterr().err


@pytest.mark.parametrize("split", ["validation", "test"])
def test_evaluate_of_a_split_without_held_out_items_is_refused(checkpoint, tmp_path, capsys, split):
    root, _ = checkpoint
    make_synthetic_data(**TINY_DATA, **{f"{split}_fraction": 0.0}).save(tmp_path / "data")
    args = ("evaluate", "--model", str(root / "checkpoint"), "--data", str(tmp_path / "data"), "--split", split)
    assert_usage_error(capsys, *args, message=f"The {split!r} split has no held-out items")


HISTORIES_FILES = {
    "deeply nested JSON": ("h.json", b"[" * 100_000, "h.json is not valid JSON: it is nested too deeply"),
    "JSON not in UTF-8": ("h.json", b'{"a": ["\xff"]}', "h.json is not UTF-8 text"),
    "CSV not in UTF-8": ("h.csv", b"user,item\na,\xff\n", "h.csv is not UTF-8 text"),
    "CSV row without an item": ("h.csv", b"user,item\na,x\na\n", "h.csv, line 3: a row needs a user and an item"),
    "JSON history holding null": ("h.json", b'{"a": ["x", null]}', "h.json: the history 'a' holds None"),
}


@pytest.mark.parametrize("name, content, message", HISTORIES_FILES.values(), ids=HISTORIES_FILES)
def test_a_histories_file_that_cannot_be_read_is_named(checkpoint, tmp_path, capsys, name, content, message):
    root, _ = checkpoint
    (tmp_path / name).write_bytes(content)
    args = ("recommend", "--model", str(root / "checkpoint"), "--histories", str(tmp_path / name))
    assert_usage_error(capsys, *args, message=str(tmp_path / message))


def test_a_histories_csv_with_a_byte_order_mark_is_read(checkpoint, tmp_path, capsys):
    root, data = checkpoint
    (tmp_path / "h.csv").write_text(f"user,item\nnew,{data.item_raw_ids[0]}\n", encoding="utf-8-sig")
    assert run_cli("recommend", "--model", str(root / "checkpoint"), "--histories", str(tmp_path / "h.csv")) == 0
    assert "new user new (1 items in the history)" in capsys.readouterr().out


# Each command with an empty value (not taken as absent): each is refused naming its option.
EMPTY_VALUES = [
    ("evaluate", "--model", "", "--data", "{data}"),
    ("evaluate", "--model", "{model}", "--data", ""),
    ("evaluate", "--model", "{model}", "--data", "{data}", "--output", ""),
    ("recommend", "--model", "{model}", "--histories", ""),
    ("recommend", "--model", "{model}", "--all-users", "--output", ""),
    ("export-embeddings", "--model", "{model}", "--out", ""),
]


@pytest.mark.parametrize("args", EMPTY_VALUES, ids=[f"{args[0]} {args[args.index('') - 1]}" for args in EMPTY_VALUES])
def test_an_empty_value_is_refused_naming_the_option(checkpoint, monkeypatch, tmp_path, capsys, args):
    root, _ = checkpoint
    monkeypatch.chdir(tmp_path)
    option = args[args.index("") - 1]
    args = [arg.format(model=root / "checkpoint", data=root / "data") for arg in args]
    assert_usage_error(capsys, *args, message=f"argument {option}: must not be empty")
    assert list(tmp_path.iterdir()) == []
