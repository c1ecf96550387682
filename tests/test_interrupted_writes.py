"""
Every writer of the package (id mappings, exported embeddings, the outputs of `recommend` and `evaluate`; prepared data
sets are tested in test_bad_input_data.py) leaves its target whole or as it was: after a failure such as a full disk,
after SIGTERM, and when told to overwrite a folder that holds anything else.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import DatasetDict
from test_bad_input_data import terminate_when_ready
from test_prepare_cli import assert_usage_error, run_cli
from tiny_checkpoints import save_tiny_checkpoint

from hf_cllm4rec import CLLM4RecForItemPrediction, CLLM4RecTokenizer, IdMappings, save_for_hub
from hf_cllm4rec.serving.embeddings import EMBEDDINGS_NAME, export_embeddings
from hf_cllm4rec.writing import replaced_file


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (hidden ones included) with its bytes (`None` for folders)."""
    return {
        path.relative_to(root).as_posix(): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("writes")
    model, _, data = save_tiny_checkpoint(root / "checkpoint")
    data.save(root / "data")
    return root, model, data


def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")


# A full disk: the target stays as it was, nothing half-written beside it.


def test_a_failed_export_leaves_no_partial_tree(checkpoint, tmp_path, monkeypatch, capsys):
    root, model, _ = checkpoint
    out = tmp_path / "embeddings"
    save_to_disk = DatasetDict.save_to_disk

    def save_then_fail(tables, path, **kwargs):  # the tensors are written, then the tables fill the disk
        save_to_disk(tables, path, **kwargs)
        full_disk()

    monkeypatch.setattr(DatasetDict, "save_to_disk", save_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        export_embeddings(model, out, IdMappings.load(root / "checkpoint"))
    assert list(tmp_path.iterdir()) == []
    capsys.readouterr()
    args = ("export-embeddings", "--model", str(root / "checkpoint"), "--out", str(out))
    assert_usage_error(capsys, *args, message="No space left on device")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()  # an earlier export is kept whole by a failed overwrite
    assert run_cli(*args) == 0
    before = snapshot(tmp_path)
    monkeypatch.setattr(DatasetDict, "save_to_disk", save_then_fail)
    assert_usage_error(capsys, *args, "--overwrite", message="No space left on device")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["recommend", "evaluate"])
def test_a_failed_output_leaves_the_earlier_file(checkpoint, tmp_path, monkeypatch, capsys, command):
    root, _, data = checkpoint
    output = tmp_path / "out.json"
    output.write_text("earlier")
    monkeypatch.setattr(json, "dump", full_disk)
    args = {
        "recommend": ("recommend", "--model", str(root / "checkpoint"), "--users", data.user_raw_ids[0]),
        "evaluate": ("evaluate", "--model", str(root / "checkpoint"), "--data", str(root / "data")),
    }[command]
    assert_usage_error(capsys, *args, "--output", str(output), message="No space left on device")
    assert snapshot(tmp_path) == {"out.json": b"earlier"}


# Overwriting replaces an export, never a folder that holds anything else.


@pytest.mark.parametrize(
    "extra, named",
    [("notes.txt", "notes.txt"), ("tables/items/notes.txt", "tables/items/notes.txt"), ("runs/model.bin", "runs")],
)
def test_overwrite_keeps_a_folder_holding_other_files(checkpoint, tmp_path, capsys, extra, named):
    root, model, _ = checkpoint
    out = tmp_path / "embeddings"
    args = ("export-embeddings", "--model", str(root / "checkpoint"), "--out", str(out), "--overwrite")
    assert run_cli(*args) == 0
    (out / extra).parent.mkdir(parents=True, exist_ok=True)
    (out / extra).write_text("mine")
    before = snapshot(tmp_path)
    message = f"holds files that are not part of exported embeddings: {named}; refusing to replace it"
    assert_usage_error(capsys, *args, message=message)
    with pytest.raises(FileExistsError, match=message):
        export_embeddings(model, out, IdMappings.load(root / "checkpoint"), overwrite=True)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_an_export_and_an_empty_folder_is_written(checkpoint, tmp_path, capsys):
    root, _, _ = checkpoint
    out = tmp_path / "embeddings"
    out.mkdir()
    args = ("export-embeddings", "--model", str(root / "checkpoint"), "--out", str(out))
    assert run_cli(*args) == 0
    first = snapshot(out)
    assert_usage_error(capsys, *args, message="already exists and is not an empty folder; pass --overwrite")
    (tmp_path / "file").write_text("mine")
    assert_usage_error(capsys, *args[:-1], str(tmp_path / "file"), "--overwrite", message="exists and is not a folder")
    assert run_cli(*args, "--overwrite") == 0
    assert snapshot(out).keys() == first.keys()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["embeddings", "file"]


def test_a_stale_staging_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "top.json"
    stale, live = (tmp_path / f".top.json.{digit * 32}.tmp" for digit in "01")
    for path in (stale, live):
        path.write_text("partial")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    with replaced_file(target) as file:
        file.write("new")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([live.name, "top.json"])


# SIGTERM: the process still ends by the signal, after removing what it had staged.

INTERRUPTED_WRITE = """
import json, sys, time
from pathlib import Path
from datasets import DatasetDict
from hf_cllm4rec import CLLM4RecForItemPrediction, CLLM4RecTokenizer, IdMappings, save_for_hub
from hf_cllm4rec.cli import main
from hf_cllm4rec.serving import id_mappings

ready, kind, target, root = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])

def wait_for_sigterm():
    ready.touch()
    time.sleep(60)

save_to_disk, dump = DatasetDict.save_to_disk, json.dump

def slow_save_to_disk(tables, path, **kwargs):
    save_to_disk(tables, path, **kwargs)
    wait_for_sigterm()

def slow_dump(value, file, **kwargs):
    file.write(json.dumps(value)[:10])
    file.flush()
    wait_for_sigterm()

def slow_save_file(tensors, path, metadata=None):
    Path(path).write_bytes(b"half")
    wait_for_sigterm()

DatasetDict.save_to_disk, json.dump = slow_save_to_disk, slow_dump
id_mappings.save_file = slow_save_file
model, data = str(root / "checkpoint"), str(root / "data")
if kind == "id mappings":
    IdMappings.load(model).save(target.parent)
elif kind == "save_for_hub":
    from hf_cllm4rec import CLLM4RecForItemPrediction, CLLM4RecTokenizer, save_for_hub

    loaded = CLLM4RecForItemPrediction.from_pretrained(model)
    save_for_hub(loaded, CLLM4RecTokenizer.from_pretrained(model), target, mappings=IdMappings.load(model))
elif kind == "export-embeddings":
    main(["export-embeddings", "--model", model, "--out", str(target), "--overwrite"])
elif kind == "recommend":
    main(["recommend", "--model", model, "--all-users", "--output", str(target)])
else:
    main(["evaluate", "--model", model, "--data", data, "--output", str(target)])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM cannot be sent to a process on Windows")
@pytest.mark.parametrize("kind", ["id mappings", "export-embeddings", "recommend", "evaluate", "save_for_hub"])
@pytest.mark.parametrize("earlier", [False, True], ids=["new", "replacing"])
def test_sigterm_during_a_write_leaves_no_staging_path(checkpoint, tmp_path, kind, earlier):
    root, model, _ = checkpoint
    folder = tmp_path / "out"
    folder.mkdir()
    names = {"id mappings": "id_mappings.safetensors", "export-embeddings": "embeddings", "save_for_hub": "model"}
    target = folder / names.get(kind, "out.json")
    if earlier and kind == "export-embeddings":
        export_embeddings(model, target, IdMappings.load(root / "checkpoint"))
    elif earlier and kind == "save_for_hub":
        shutil.copytree(root / "checkpoint", target)
    elif earlier:
        target.write_text("earlier")
    before = snapshot(folder)
    terminate_when_ready(tmp_path, INTERRUPTED_WRITE, kind, str(target), str(root))
    assert snapshot(folder) == before
    if earlier and kind == "export-embeddings":
        assert (target / EMBEDDINGS_NAME).is_file()


def test_a_failed_save_for_hub_leaves_the_folder_as_it_was(checkpoint, tmp_path, monkeypatch):
    root, model, _ = checkpoint
    folder = Path(shutil.copytree(root / "checkpoint", tmp_path / "model"))
    (folder / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    monkeypatch.setattr(IdMappings, "save", full_disk)  # after the weights and the tokenizer are written
    with pytest.raises(OSError, match="No space left on device"):
        save_for_hub(model, CLLM4RecTokenizer.from_pretrained(folder), folder, mappings=IdMappings.load(folder))
    assert snapshot(tmp_path) == before


def test_save_for_hub_keeps_other_files_and_replaces_weights_saved_in_other_shards(checkpoint, tmp_path):
    root, model, data = checkpoint
    folder = tmp_path / "model"
    model.save_pretrained(folder, max_shard_size="20KB")
    shards = sorted(path.name for path in folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    (folder / "notes.txt").write_text("mine")
    save_for_hub(model, CLLM4RecTokenizer.from_pretrained(root / "checkpoint"), folder, data=data)
    assert not any((folder / shard).exists() for shard in shards)
    assert not (folder / "model.safetensors.index.json").exists() and (folder / "notes.txt").read_text() == "mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
    loaded = CLLM4RecForItemPrediction.from_pretrained(folder)
    for name, weight in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], weight), name
