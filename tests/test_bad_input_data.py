"""
Bad input on the data side: refused with a clear error that names the file, never read into silently wrong values,
never a raw traceback, and never a lost folder or partial output.
"""

import gzip
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_data_protocol import grid_interactions
from test_data_sources import write_authors_split, write_json_lines
from test_prepare_cli import assert_usage_error

from hf_cllm4rec.data import (
    DataFormatError,
    RecommendationData,
    apply_protocol,
    make_synthetic_data,
    read_amazon_reviews,
    read_authors_split,
    read_interaction_table,
    read_movielens,
)
from hf_cllm4rec.data.prepared import MANIFEST_KEYS
from hf_cllm4rec.data.sources import MOVIELENS_GENRES

SYNTHETIC_ARGS = ("prepare", "--source", "synthetic", "--num-users", "30", "--num-items", "20")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (`None` for folders), to check that nothing changed."""
    return {
        path.relative_to(root).as_posix(): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def small_data() -> RecommendationData:
    return make_synthetic_data(num_users=20, num_items=10, num_clusters=2)


# 1. Overwriting replaces only a folder that `save` wrote, and only when it holds nothing else.


def write_app(folder: Path, manifest: str = '{"name": "app", "version": "1.0.0"}') -> Path:
    (folder / "src").mkdir(parents=True)
    (folder / "manifest.json").write_text(manifest)
    (folder / "src" / "main.js").write_text("console.log('hello')\n")
    return folder


NOT_OUR_MANIFESTS = {
    "web app": ('{"name": "app", "version": "1.0.0"}', "manifest.json is not one this package wrote"),
    "not JSON": ("{", "manifest.json is not valid JSON"),
    "a list": ("[1, 2]", "manifest.json is not one this package wrote"),
    "other version": (
        json.dumps(dict.fromkeys(MANIFEST_KEYS, 0) | {"format_version": 7}),
        "manifest.json is not one this package wrote",
    ),
    "missing keys": ('{"format_version": 1, "name": "x"}', "manifest.json is not one this package wrote"),
}


def test_overwrite_keeps_a_file(tmp_path):
    (tmp_path / "data").write_text("mine")
    with pytest.raises(FileExistsError, match="data exists and is not a prepared data set: it is not a directory"):
        small_data().save(tmp_path / "data", overwrite=True)
    assert snapshot(tmp_path) == {"data": b"mine"}


def test_an_empty_folder_is_written_as_a_new_one(tmp_path):
    (tmp_path / "data").mkdir()
    small_data().save(tmp_path / "data")
    assert RecommendationData.load(tmp_path / "data").manifest == small_data().manifest
    assert [path.name for path in tmp_path.iterdir()] == ["data"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_what_is_never_replaced_is_said_without_advising_overwrite(tmp_path, overwrite):
    (tmp_path / "data").write_text("mine")
    write_app(tmp_path / "app")
    write_data_set_with_notes(tmp_path / "notes")
    before = snapshot(tmp_path)
    for folder, message in (
        ("data", "data exists and is not a prepared data set: it is not a directory; refusing"),
        ("app", "app exists and is not a prepared data set: its manifest.json is not one this package wrote"),
        ("notes", "notes holds files that are not part of a prepared data set: notes.txt; refusing"),
    ):
        with pytest.raises(FileExistsError, match=message):
            small_data().save(tmp_path / folder, overwrite=overwrite)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("manifest, message", NOT_OUR_MANIFESTS.values(), ids=NOT_OUR_MANIFESTS)
def test_overwrite_keeps_a_folder_that_is_not_a_data_set(tmp_path, manifest, message):
    write_app(tmp_path / "app", manifest)
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match=f"app exists and is not a prepared data set: its {message}"):
        small_data().save(tmp_path / "app", overwrite=True)
    assert snapshot(tmp_path) == before


EXTRA_ENTRIES = {
    "file beside the tables": (["notes.txt"], "notes.txt"),
    "file inside a table": (["train/notes.txt"], "train/notes.txt"),
    "unknown folder": (["checkpoints/model.bin"], "checkpoints"),
    "several": (["b.txt", "a.txt", "test/x.arrow"], "a.txt, b.txt, test/x.arrow"),
}


@pytest.mark.parametrize("extras, named", EXTRA_ENTRIES.values(), ids=EXTRA_ENTRIES)
def test_overwrite_keeps_a_data_set_holding_other_files(tmp_path, extras, named):
    small_data().save(tmp_path / "data")
    for extra in extras:
        (tmp_path / "data" / extra).parent.mkdir(exist_ok=True)
        (tmp_path / "data" / extra).write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match=f"data holds files that are not part of a prepared data set: {named};"):
        small_data().save(tmp_path / "data", overwrite=True)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_data_set_with_cache_files(tmp_path):
    small_data().save(tmp_path / "data")
    RecommendationData.load(tmp_path / "data").tables["train"].map(lambda row: row)  # writes a cache file
    assert any(path.name.startswith("cache-") for path in (tmp_path / "data" / "train").iterdir())
    other = make_synthetic_data(num_users=25, num_items=10, num_clusters=2, seed=5)
    other.save(tmp_path / "data", overwrite=True)
    assert RecommendationData.load(tmp_path / "data").manifest == other.manifest
    assert [path.name for path in tmp_path.iterdir()] == ["data"]


def write_data_set_with_notes(folder: Path) -> Path:
    small_data().save(folder)
    (folder / "notes.txt").write_text("mine")
    return folder


@pytest.mark.parametrize(
    "write, message",
    [
        (write_app, "app exists and is not a prepared data set: its manifest.json is not one this package wrote"),
        (write_data_set_with_notes, "app holds files that are not part of a prepared data set: notes.txt;"),
    ],
    ids=["web app", "data set with notes"],
)
def test_prepare_overwrite_keeps_other_files(tmp_path, capsys, write, message):
    app = write(tmp_path / "app")
    before = snapshot(tmp_path)
    assert_usage_error(capsys, *SYNTHETIC_ARGS, "--out", str(app), "--overwrite", message=message)
    assert snapshot(tmp_path) == before


# 2. An interrupted save leaves no staging folder, and the target absent or as it was.

INTERRUPTED_SAVE = """
import sys, time
from pathlib import Path
from datasets import DatasetDict
from hf_cllm4rec.data import make_synthetic_data

ready, out, stage = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def wait_for_sigterm():
    ready.touch()
    time.sleep(60)

save_to_disk, rename = DatasetDict.save_to_disk, Path.rename

def slow_save_to_disk(tables, path, **kwargs):
    save_to_disk(tables, path, **kwargs)
    if stage == "writing":
        wait_for_sigterm()

def slow_rename(path, target):
    renamed = rename(path, target)
    if stage == "renaming" and str(target).endswith(".old"):
        wait_for_sigterm()
    return renamed

DatasetDict.save_to_disk, Path.rename = slow_save_to_disk, slow_rename
make_synthetic_data(num_users=30, num_items=20, num_clusters=2, seed=1).save(out, overwrite=True)
"""


def terminate_when_ready(tmp_path: Path, script: str, *args: str) -> None:
    """
    Runs `script` in a new interpreter with a file path and `args` as its arguments, sends it SIGTERM once it has
    created that file (on reaching the step to interrupt), and checks that the signal still ended it.
    """
    path, ready = tmp_path / "interrupted.py", tmp_path / "ready"
    path.write_text(textwrap.dedent(script))
    process = subprocess.Popen([sys.executable, str(path), str(ready), *args], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the script never reached the step to interrupt"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM  # the signal still ends the process, after the clean-up


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM cannot be sent to a process on Windows")
@pytest.mark.parametrize(
    "previous, stage",
    [(False, "writing"), (True, "writing"), (True, "renaming")],
    ids=["new", "replacing", "between the renames"],
)
def test_sigterm_during_save_leaves_no_staging_folder(tmp_path, previous, stage):
    out = tmp_path / "data" / "out"
    if previous:
        small_data().save(out)
    terminate_when_ready(tmp_path, INTERRUPTED_SAVE, str(out), stage)
    assert [path.name for path in (tmp_path / "data").iterdir()] == (["out"] if previous else [])
    if previous:
        assert RecommendationData.load(out).manifest == small_data().manifest


def test_save_removes_stale_staging_folders(tmp_path):
    stale, live, other = (
        tmp_path / f".{name}.{digit * 32}.tmp" for name, digit in (("data", "0"), ("data", "1"), ("other", "2"))
    )
    for folder in (stale, live, other):
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "data-00000-of-00001.arrow").write_bytes(b"partial")
    an_hour_ago = time.time() - 3600
    for path in (stale, other, *stale.rglob("*"), *other.rglob("*")):
        os.utime(path, (an_hour_ago, an_hour_ago))
    small_data().save(tmp_path / "data")
    assert sorted(path.name for path in tmp_path.iterdir()) == [live.name, other.name, "data"]


def test_save_restores_the_sigterm_handler(tmp_path):
    def handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        small_data().save(tmp_path / "data")
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


# 3. Values the readers would store wrongly are refused, naming the file, the line and the value.


def amazon_reviews(tmp_path: Path, **fields) -> Path:
    records = [{"reviewerID": "u1", "asin": "a", "overall": 5.0, "unixReviewTime": 10}]
    return write_json_lines(tmp_path / "reviews.json", records + [records[0] | fields])


def table(tmp_path: Path, suffix: str, **columns) -> Path:
    frame = pd.DataFrame({"user": ["u1", "u2"], "item": ["a", "b"], "stars": [4.0, 5.0], "when": [1, 2]} | columns)
    path = tmp_path / f"interactions{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)
    return path


def read_table(path: Path):
    return read_interaction_table(
        path, user_column="user", item_column="item", rating_column="stars", timestamp_column="when"
    )


def movielens(tmp_path: Path, data_line: str) -> Path:
    (tmp_path / "u.data").write_text(f"1\t10\t5\t881250949\n{data_line}\n")
    (tmp_path / "u.item").write_text("10|A|||x|" + "|".join(["0"] * 19) + "\n")
    return tmp_path


WRONG_VALUES = {
    "amazon timestamp 1e30": (
        lambda tmp: read_amazon_reviews(amazon_reviews(tmp, unixReviewTime=1e30)),
        r"reviews.json, line 2: 'unixReviewTime' is out of range for Unix seconds \(1e\+30\)",
    ),
    "csv timestamp 1e30": (
        lambda tmp: read_table(table(tmp, ".csv", when=["1", "1e30"])),
        r"interactions.csv, line 3: 'when' is out of range for Unix seconds \('1e30'\)",
    ),
    "movielens timestamp -1e30": (
        lambda tmp: read_movielens(movielens(tmp, "2\t10\t4\t-1e30")),
        r"u.data, line 2: 'timestamp' is out of range for Unix seconds \('-1e30'\)",
    ),
    "amazon float id": (
        lambda tmp: read_amazon_reviews(amazon_reviews(tmp, reviewerID=1.7)),
        r"reviews.json, line 2: 'reviewerID' is not a string or an integer \(1.7\)",
    ),
    "parquet float id": (
        lambda tmp: read_table(table(tmp, ".parquet", item=[3.0, 1.7])),
        r"interactions.parquet, row 2: 'item' is not a string or an integer \(1.7\)",
    ),
    "amazon list id": (
        lambda tmp: read_amazon_reviews(amazon_reviews(tmp, asin=["I3"])),
        r"reviews.json, line 2: 'asin' holds a list or mapping, not one value \(\['I3'\]\)",
    ),
    "jsonl nested history": (
        lambda tmp: read_table(table(tmp, ".jsonl", item=["a", ["b", "c"]])),
        r"interactions.jsonl, line 2: 'item' holds a list or mapping, not one value",
    ),
    "parquet list id": (
        lambda tmp: read_table(table(tmp, ".parquet", user=[["u1"], ["u2"]])),
        r"interactions.parquet, row 1: 'user' holds a list or mapping, not one value",
    ),
    "amazon rating inf": (
        lambda tmp: read_amazon_reviews(amazon_reviews(tmp, overall=float("inf"))),
        r"reviews.json, line 2: 'overall' is not a finite number \(inf\)",
    ),
    "amazon rating nan": (
        lambda tmp: read_amazon_reviews(amazon_reviews(tmp, overall=float("nan"))),
        r"reviews.json, line 2: 'overall' is not a number \(nan\)",
    ),
    "csv rating -inf": (
        lambda tmp: read_table(table(tmp, ".csv", stars=["4", "-inf"])),
        r"interactions.csv, line 3: 'stars' is not a finite number \('-inf'\)",
    ),
    "csv rating beyond float32": (
        lambda tmp: read_table(table(tmp, ".csv", stars=["1e300", "4"])),
        r"interactions.csv, line 2: 'stars' is not a finite number \('1e300'\)",
    ),
    "movielens rating inf": (
        lambda tmp: read_movielens(movielens(tmp, "2\t10\tinf\t881250950")),
        r"u.data, line 2: 'rating' is not a finite number \('inf'\)",
    ),
    "metadata list asin": (
        lambda tmp: read_amazon_reviews(
            amazon_reviews(tmp), write_json_lines(tmp / "meta.json", [{"asin": "a"}, {"asin": ["I3"], "title": "T"}])
        ),
        r"meta.json, line 2: 'asin' holds a list or mapping, not one value \(\['I3'\]\)",
    ),
    "metadata categories a number": (
        lambda tmp: read_amazon_reviews(
            amazon_reviews(tmp), write_json_lines(tmp / "meta.json", [{"asin": "a", "categories": 5}])
        ),
        r"meta.json, line 1: 'categories' is neither a list nor a string \(5\)",
    ),
}


@pytest.mark.parametrize("read, message", WRONG_VALUES.values(), ids=WRONG_VALUES)
def test_readers_refuse_values_they_would_store_wrongly(tmp_path, read, message):
    with pytest.raises(DataFormatError, match=message):
        read(tmp_path)


def test_whole_number_float_ids_become_integers(tmp_path):
    records = [{"reviewerID": 1, "asin": 2.0}, {"reviewerID": 1.0, "asin": "2"}, {"reviewerID": " 1 ", "asin": 3}]
    frame = read_amazon_reviews(write_json_lines(tmp_path / "reviews.json", records)).interactions
    assert frame["user"].tolist() == ["1", "1", "1"] and frame["item"].tolist() == ["2", "2", "3"]
    frame = read_table(table(tmp_path, ".parquet", user=[7.0, 8.0])).interactions
    assert frame["user"].tolist() == ["7", "8"]


def test_dates_outside_pandas_nanoseconds(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text("user,item,when\nu1,a,2320-01-02\nu2,a,1600-01-01\n")
    raw = read_interaction_table(path, user_column="user", item_column="item", timestamp_column="when")
    assert raw.interactions["timestamp"].tolist() == [11044944000, -11676096000]


def test_metadata_category_string_is_one_category(tmp_path):
    reviews = amazon_reviews(tmp_path)
    meta = write_json_lines(
        tmp_path / "meta.json",
        [
            {"asin": "a", "title": "Rose Oil", "categories": "notalist"},
            {"asin": "b", "category": "Beauty"},
            {"asin": "c", "categories": [["Beauty", "Oils"], "Skin Care", 5]},
        ],
    )
    assert read_amazon_reviews(reviews, meta).item_text == {
        "a": "Rose Oil, notalist", "b": "Beauty", "c": "Beauty, Oils, Skin Care"
    }  # fmt: skip


BAD_PROTOCOL = {
    "negative k_core": ({"k_core": -1}, r"k_core must be a non-negative integer, got -1"),
    "fractional k_core": ({"k_core": 2.5}, r"k_core must be a non-negative integer, got 2.5"),
    "negative fraction": ({"validation_fraction": -0.1}, r"validation_fraction must be in \[0, 1\), got -0.1"),
    "nan fraction": ({"test_fraction": float("nan")}, r"test_fraction must be in \[0, 1\), got nan"),
    "fractions summing to 1": (
        {"validation_fraction": 0.5, "test_fraction": 0.5},
        r"validation_fraction \+ test_fraction must be below 1, got 0.5 \+ 0.5",
    ),
    "nan min_rating": ({"min_rating": float("nan")}, r"min_rating must be a finite number or None, got nan"),
    "negative seed": ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\), got -1"),
}


@pytest.mark.parametrize("arguments, message", BAD_PROTOCOL.values(), ids=BAD_PROTOCOL)
def test_protocol_refuses_bad_parameters(arguments, message):
    with pytest.raises(ValueError, match=message):
        apply_protocol(grid_interactions(), **{"min_rating": None, "k_core": 0} | arguments)


BAD_FRAMES = {
    "inf rating": ("rating", 3, float("inf"), r"interactions: 'rating' at row 3 is not a finite number \(inf\)"),
    "list id": ("item", 2, ["i1", "i2"], r"interactions: 'item' at row 2 is not a string or an integer id"),
    "float id": ("user", 0, 1.5, r"interactions: 'user' at row 0 is not a string or an integer id \(1.5\)"),
}


@pytest.mark.parametrize("column, row, value, message", BAD_FRAMES.values(), ids=BAD_FRAMES)
def test_protocol_refuses_bad_values(column, row, value, message):
    interactions = grid_interactions().astype({column: object})
    interactions.at[row, column] = value
    with pytest.raises(ValueError, match=message):
        apply_protocol(interactions, min_rating=None, k_core=0)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--num-users", "100000000000", "--num-users must be a whole number from 1 to 100,000, got 100000000000"),
        ("--num-items", "-5", "--num-items must be a whole number from 3 to 100,000, got -5"),
        ("--num-items", "2", "--num-items must be a whole number from 3 to 100,000, got 2"),
        ("--num-items", "3", "--num-clusters 6 exceeds --num-items 3: every theme needs an item"),
        ("--seed", "-1", "--seed must be a non-negative whole number, got -1"),
    ],
)
def test_prepare_refuses_synthetic_counts_out_of_bounds(tmp_path, capsys, option, value, message):
    assert_usage_error(
        capsys, "prepare", "--source", "synthetic", option, value, "--out", str(tmp_path / "out"), message=message
    )
    assert list(tmp_path.iterdir()) == []


def test_synthetic_data_refuses_fewer_items_than_themes():
    with pytest.raises(ValueError, match="num_clusters=6 exceeds num_items=3: every theme needs an item"):
        make_synthetic_data(num_items=3)


def test_prepare_refuses_a_negative_k_core(tmp_path, capsys):
    table = tmp_path / "ratings.csv"
    table.write_text("user,item\nu1,a\nu2,b\n")
    assert_usage_error(
        capsys, "prepare", "--source", "table", "--path", str(table), "--user-column", "user", "--item-column",
        "item", "--min-rating", "none", "--k-core", "-1", "--out", str(tmp_path / "out"),
        message="--k-core must be a non-negative integer, got -1",
    )  # fmt: skip
    assert [path.name for path in tmp_path.iterdir()] == ["ratings.csv"]


# 4. Unreadable files become a `DataFormatError` naming the file and the problem, not a traceback.

GZIP_HEADER = gzip.compress(b"")[:10]


def corrupt_bytes(length: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(length)


def truncated_gzip(lines: list[str]) -> bytes:
    data = gzip.compress("".join(lines).encode())
    return data[: len(data) // 2]


REVIEW_LINES = [json.dumps({"reviewerID": f"u{n}", "asin": f"a{n % 7}", "overall": 5.0}) + "\n" for n in range(2000)]
TABLE_LINES = ["user,item\n"] + [f"u{n},a{n % 7}\n" for n in range(2000)]

UNREADABLE = {
    "corrupt json.gz": (
        "reviews.json.gz",
        GZIP_HEADER + corrupt_bytes(300),
        read_amazon_reviews,
        r"reviews.json.gz: corrupt or truncated gzip data after line 0",
    ),
    "truncated json.gz": (
        "reviews.json.gz",
        truncated_gzip(REVIEW_LINES),
        read_amazon_reviews,
        r"reviews.json.gz: corrupt or truncated gzip data after line \d+",
    ),
    "truncated csv.gz": (
        "interactions.csv.gz",
        truncated_gzip(TABLE_LINES),
        lambda path: read_interaction_table(path, user_column="user", item_column="item"),
        r"interactions.csv.gz: corrupt or truncated gzip data \(Compressed file ended",
    ),
    "corrupt csv.gz": (
        "interactions.csv.gz",
        GZIP_HEADER + corrupt_bytes(300),
        lambda path: read_interaction_table(path, user_column="user", item_column="item"),
        r"interactions.csv.gz: corrupt or truncated gzip data",
    ),
    "invalid utf-8 csv": (
        "interactions.csv",
        b"user,item\nu1,a\nu\xff,b\n",
        lambda path: read_interaction_table(path, user_column="user", item_column="item"),
        r"interactions.csv cannot be read: 'utf-8' codec can't decode byte 0xff",
    ),
    "deeply nested json": (
        "reviews.json",
        (REVIEW_LINES[0] + "[" * 100_000 + "\n").encode(),
        read_amazon_reviews,
        r"reviews.json, line 2: nested too deeply",
    ),
    "unhashable literal": (
        "reviews.json",
        b"{[1]: 2}\n",
        read_amazon_reviews,
        r"reviews.json, line 1: not a JSON object",
    ),
    "huge integer": (
        "reviews.json",
        b'{"asin": ' + b"1" * 5000 + b"}\n",
        read_amazon_reviews,
        r"reviews.json, line 1: not a JSON object",
    ),
    "invalid utf-8 json": (
        "reviews.json",
        (REVIEW_LINES[0] + '{"reviewerID": "u\xff"}\n').encode("latin-1"),
        read_amazon_reviews,
        r"reviews.json, line 2: not utf-8 text \(invalid start byte at byte 17\)",
    ),
    "invalid utf-8 json.gz": (
        "reviews.json.gz",
        gzip.compress(REVIEW_LINES[0].encode() + b"\n\n\xc3\x28\n"),
        read_amazon_reviews,
        r"reviews.json.gz, line 4: not utf-8 text \(invalid continuation byte at byte 0\)",
    ),
}


@pytest.mark.parametrize("name, content, read, message", UNREADABLE.values(), ids=UNREADABLE)
def test_unreadable_files(tmp_path, name, content, read, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataFormatError, match=message):
        read(tmp_path / name)


def test_unreadable_movielens(tmp_path):
    movielens(tmp_path, "2\t10\t4\t881250950")
    (tmp_path / "u.data").write_bytes(b"1\t10\t5\t881250949\n\n2\t1\xff\t4\t881250950\n")
    with pytest.raises(DataFormatError, match=r"u.data, line 3: not utf-8 text \(invalid start byte at byte 3\)"):
        read_movielens(tmp_path)
    (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n\n2\t10\t4\n")
    with pytest.raises(DataFormatError, match=r"u.data, line 3: 3 fields, expected 4"):
        read_movielens(tmp_path)


UNREADABLE_SPLITS = {
    "corrupt npz": (
        "val_matrix.npz",
        b"PK\x03\x04" + corrupt_bytes(400),
        r"val_matrix.npz is not a scipy sparse matrix",
    ),
    "truncated npz": ("test_matrix.npz", None, r"test_matrix.npz is not a scipy sparse matrix"),
    "unknown compression": (
        "val_matrix.npz",
        "method",
        r"val_matrix.npz is not a scipy sparse matrix: That compression",
    ),
    "encrypted npz": (
        "val_matrix.npz",
        "flags",
        r"val_matrix.npz is not a scipy sparse matrix: File '.*' is encrypted",
    ),
    "corrupt pickle": ("meta.pkl", b"\x80\x04\x95" + corrupt_bytes(40), r"meta.pkl is not a pickled dict of counts"),
    "deeply nested tags": ("item_tags.json", b"[" * 100_000, r"item_tags.json is not valid JSON: nested too deeply"),
    "nested tags": ("item_tags.json", b'{"0": [["Beauty"]]}', r"item_tags.json: the tags of item 0 are not strings"),
    "non-ascii digit key": (
        "item_tags.json",
        '{"\u00b2": []}'.encode(),
        r"item_tags.json: '\u00b2' is not an item id",
    ),
}


@pytest.mark.parametrize("name, content, message", UNREADABLE_SPLITS.values(), ids=UNREADABLE_SPLITS)
def test_unreadable_authors_split(tmp_path, name, content, message):
    directory = write_authors_split(tmp_path / "split")
    path = directory / name
    data = bytearray(path.read_bytes())
    if content is None:
        data = data[: len(data) // 2]
    elif content in ("method", "flags"):  # in the first entry of the zip archive's central directory
        entry = data.index(b"PK\x01\x02")
        if content == "method":
            data[entry + 10] = 99
        else:
            data[entry + 8] |= 1
    else:
        data = content
    path.write_bytes(data)
    with pytest.raises(DataFormatError, match=message):
        read_authors_split(directory)


# 5. Fuzz: truncated and corrupted copies of small inputs give typed data or a clean error, nothing else.


SIGNIFICANT_CHARACTERS = b'0123456789.-+eE,;|\t\n "[]{}:nNaIf'


def mutate(data: bytes, rng: random.Random) -> bytes:
    """
    A truncation, a few bytes flipped or replaced by characters that matter to the formats (digits, separators,
    brackets, quotes), or a run of random bytes spliced in.
    """
    kind = rng.choice(["truncate", "flip", "replace", "replace", "splice"])
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    data = bytearray(data)
    if kind == "splice":
        start = rng.randrange(len(data))
        return bytes(data[:start] + rng.randbytes(rng.randint(1, 64)) + data[start + rng.randint(0, 64) :])
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(len(data))
        data[position] = (
            data[position] ^ rng.randrange(1, 256) if kind == "flip" else rng.choice(SIGNIFICANT_CHARACTERS)
        )
    return bytes(data)


def check_raw(raw) -> None:
    """What a raw reader returns must be typed as documented."""
    frame = raw.interactions
    for column in ("user", "item"):
        assert frame[column].map(type).eq(str).all() and (frame[column] != "").all()
    if "rating" in frame:
        assert frame["rating"].dtype == np.float32 and np.isfinite(frame["rating"]).all()
    if "timestamp" in frame:
        assert frame["timestamp"].dtype == np.int64
    assert all(isinstance(key, str) and isinstance(text, str) for key, text in raw.item_text.items())


def fuzz(files: dict[str, bytes], read, folder: Path, cases: int, seed: int, split: bool = False) -> None:
    """
    Writes `cases` copies of `files` with one of them corrupted and reads each with `read(folder)`: the result must be
    typed data or a `DataFormatError` naming the file; with `split`, the protocol runs on what was read and may refuse
    it with a `ValueError` about the interactions.
    """
    rng = random.Random(seed)
    for case in range(cases):
        directory = folder / f"case{case}"
        directory.mkdir(parents=True)
        target = rng.choice(sorted(files))
        for name, content in files.items():
            if name == target:
                # A gzipped file is corrupted either as bytes or in its text, compressed again.
                if name.endswith(".gz") and rng.random() < 0.5:
                    content = gzip.compress(mutate(gzip.decompress(content), rng))
                else:
                    content = mutate(content, rng)
            (directory / name).write_bytes(content)
        try:
            result = read(directory)
        except DataFormatError as error:
            assert str(directory) in str(error), error
            continue
        if isinstance(result, RecommendationData):
            assert result.num_users > 0 and len(result.item_texts()) == result.num_items
            continue
        check_raw(result)
        if split:
            try:
                apply_protocol(result.interactions, result.item_text, min_rating=None, k_core=2)
            except ValueError as error:
                assert "interactions" in str(error), error


def read_reviews(directory: Path):
    meta = directory / "meta.json"
    return read_amazon_reviews(next(directory.glob("reviews.json*")), meta if meta.exists() else None)


def read_table_folder(directory: Path):
    return read_interaction_table(
        next(directory.glob("interactions.*")),
        user_column="user", item_column="item", rating_column="rating", timestamp_column="timestamp",
    )  # fmt: skip


def grouplens_files(rows: list[tuple], titles: dict[str, tuple[str, list[str]]]) -> dict[str, bytes]:
    """`u.data` and `u.item` (GroupLens MovieLens 100K format) from rows and `{item: (title, genres)}`."""
    data = "".join("\t".join(map(str, row)) + "\n" for row in rows)
    items = "".join(
        f"{item}|{title}|01-Jan-1995||http://x|"
        + "|".join("1" if g in genres else "0" for g in MOVIELENS_GENRES)
        + "\n"
        for item, (title, genres) in titles.items()
    )
    return {"u.data": data.encode(), "u.item": items.encode("latin-1", errors="replace")}


def csv_bytes(rows: list[tuple]) -> bytes:
    return ("user,item,rating,timestamp\n" + "".join(",".join(map(str, row)) + "\n" for row in rows)).encode()


def test_fuzz_synthetic_inputs(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"u{rng.integers(25)}", f"{rng.integers(12)}", int(rng.integers(1, 6)), 10**9 + n) for n in range(300)]
    reviews = "".join(
        json.dumps({"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": time, "summary": "ok"})
        + "\n"
        for user, item, rating, time in rows
    )
    meta = "".join(
        json.dumps({"asin": str(item), "title": f"T{item}", "category": ["A"]}) + "\n" for item in range(12)
    )
    amazon = {"reviews.json": reviews.encode(), "meta.json": meta.encode()}
    fuzz(amazon, read_reviews, tmp_path / "amazon", cases=8, seed=1, split=True)
    fuzz({"interactions.csv": csv_bytes(rows)}, read_table_folder, tmp_path / "csv", cases=8, seed=2, split=True)
    titles = {str(item): (f"Film {item}", [MOVIELENS_GENRES[item]]) for item in range(12)}
    fuzz(grouplens_files(rows, titles), read_movielens, tmp_path / "grouplens", cases=7, seed=3)
    directory = write_authors_split(tmp_path / "split")
    split = {path.name: path.read_bytes() for path in directory.iterdir()}
    fuzz(split, read_authors_split, tmp_path / "authors", cases=7, seed=4)


def head_lines(path: Path, count: int) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        return b"".join(itertools.islice(file, count))


def test_fuzz_real_inputs(tmp_path, shared_data):
    reviews = head_lines(shared_data / "amazon-all-beauty-2018" / "All_Beauty_5.json.gz", 200)
    fuzz({"reviews.json": reviews}, read_reviews, tmp_path / "amazon", cases=20, seed=11, split=True)
    fuzz({"reviews.json.gz": gzip.compress(reviews)}, read_reviews, tmp_path / "amazon-gz", cases=20, seed=12)

    inter = head_lines(shared_data / "ml-100k" / "ml-100k.inter", 300)
    catalogue = head_lines(shared_data / "ml-100k" / "ml-100k.item", 300)
    recbole = {"ml-100k.inter": inter, "ml-100k.item": catalogue}
    fuzz(recbole, read_movielens, tmp_path / "recbole", cases=20, seed=13, split=True)
    rows = [tuple(line.split("\t")) for line in inter.decode().splitlines()[1:]]
    titles = {
        item: (title, genres.split())
        for item, title, _, genres in (line.split("\t") for line in catalogue.decode("latin-1").splitlines()[1:])
    }
    fuzz(grouplens_files(rows, titles), read_movielens, tmp_path / "grouplens", cases=15, seed=14)
    fuzz({"interactions.csv": csv_bytes(rows)}, read_table_folder, tmp_path / "csv", cases=15, seed=15)
    csv_gz = {"interactions.csv.gz": gzip.compress(csv_bytes(rows))}
    fuzz(csv_gz, read_table_folder, tmp_path / "csv-gz", cases=10, seed=16)

    split = {path.name: path.read_bytes() for path in (shared_data / "amazon-beauty").iterdir()}
    fuzz(split, read_authors_split, tmp_path / "authors", cases=20, seed=17)
