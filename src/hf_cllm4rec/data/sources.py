"""
Readers for raw recommendation data: Amazon review dumps, MovieLens 100K, any interaction table, and the split
published with the CLLM4Rec code.

Raw readers return `RawInteractions` (string ids, one row per interaction) for `apply_protocol` to filter and split;
the published split is already split and becomes a `RecommendationData` directly.

A file that cannot be read as what it should be (corrupt or truncated gzip or zip data, text that is not UTF-8, a
line that is not a JSON object, a value that would be stored wrongly: a list where one id belongs, a fractional id, a
rating that is not finite, a timestamp beyond int64 seconds) raises `DataFormatError`, naming the file and, where
known, the line and the value.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import os
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pj
import pyarrow.parquet as pq
import scipy.sparse as sp
from tqdm.auto import tqdm
from tqdm.utils import CallbackIOWrapper

from .prepared import SPLITS, DataFormatError, RecommendationData, file_sha256

MOVIELENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
AUTHORS_SPLIT_FILES = {"train": "train_matrix.npz", "validation": "val_matrix.npz", "test": "test_matrix.npz"}
# Peak memory of preparing one interaction beyond its text (codes, sort orders, masks, the split tables), measured
# at 10M interactions, with headroom.
PREPARATION_BYTES_PER_ROW = 140
# Text columns: pandas strings stored by Arrow, missing values as NaN.
TEXT = pd.StringDtype("pyarrow", na_value=np.nan)
# How a corrupt or truncated gzip stream fails, besides `gzip.BadGzipFile` (an `OSError`).
GZIP_ERRORS = (gzip.BadGzipFile, zlib.error, EOFError)
# How a malformed .npz fails: NumPy's checks, zip and zlib errors, and zipfile's NotImplementedError (an unknown
# compression method) and RuntimeError (an encrypted member).
NPZ_ERRORS = (
    ValueError,
    OSError,
    KeyError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
)


@dataclass
class RawInteractions:
    """
    Interactions as a source gives them, before the protocol.

    Args:
        interactions (`pd.DataFrame`):
            One row per interaction, in file order: `user`, `item` (string ids) and, where the source has them,
            `rating` (float32), `timestamp` (int64 Unix seconds) and `text` (the review).
        item_text (`dict[str, str]`):
            Item-side text (title, brand, categories, tags or genres joined by ", ") keyed by raw item id.
        sources (`dict[str, str]`):
            SHA-256 of each file read, keyed by file name.
    """

    interactions: pd.DataFrame
    item_text: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def read_amazon_reviews(reviews: str | os.PathLike, meta: str | os.PathLike | None = None) -> RawInteractions:
    """
    Reads an Amazon review dump (2014 or 2018 release, JSON lines, optionally gzipped): `reviewerID`, `asin`,
    `overall`, `unixReviewTime`, and `summary` + `reviewText` as the review text. The optional metadata file (JSON
    lines, or the Python-literal lines of the 2014 release) gives item text from `title`, `brand` and
    `categories` (2014) or `category` (2018).
    """
    reviews = _existing_file(reviews)
    columns = {
        "user": "reviewerID",
        "item": "asin",
        "rating": "overall",
        "timestamp": "unixReviewTime",
        "text": "review",
    }

    def typed(frame: pd.DataFrame, lines: Sequence[int]) -> pd.DataFrame:
        frame["review"] = _review_texts(frame.get("summary"), frame.get("reviewText"), len(frame))
        return _typed_columns(frame, columns, reviews, lines, optional=("rating", "timestamp"))

    fields = ("reviewerID", "asin", "overall", "unixReviewTime", "summary", "reviewText")
    interactions = _typed_json_lines(reviews, fields, typed)
    raw = RawInteractions(interactions, sources={reviews.name: file_sha256(reviews)})
    if meta is not None:
        meta = _existing_file(meta)
        raw.item_text = _read_amazon_metadata(meta)
        raw.sources[meta.name] = file_sha256(meta)
    return raw


def read_movielens(path: str | os.PathLike) -> RawInteractions:
    """
    Reads MovieLens 100K from a directory holding either the GroupLens files (`u.data`, `u.item`) or RecBole's atomic
    files (`<name>.inter`, `<name>.item`). Item text is the title followed by the genres.
    """
    path = _existing_directory(path)
    if (path / "u.data").exists():
        return _read_grouplens(path)
    inter_files = sorted(path.glob("*.inter"))
    if len(inter_files) == 1:
        return _read_recbole(inter_files[0])
    raise DataFormatError(
        f"{path} holds neither the GroupLens MovieLens files (u.data, u.item) nor one RecBole .inter file"
    )


def read_interaction_table(
    path: str | os.PathLike,
    *,
    user_column: str,
    item_column: str,
    rating_column: str | None = None,
    timestamp_column: str | None = None,
    text_column: str | None = None,
    item_text_path: str | os.PathLike | None = None,
    item_text_column: str = "text",
    memory_budget: int | None = None,
) -> RawInteractions:
    """
    Reads interactions from a table: CSV, TSV, Parquet or JSON lines (`.csv`, `.tsv`, `.parquet`, `.json`, `.jsonl`;
    text formats may be gzipped) with the given column names. Timestamps may be Unix seconds or dates.
    `item_text_path` is an optional table of item text, with columns `item_column` and `item_text_column`.

    A table too large to prepare in `memory_budget` bytes (default: the memory available now) is refused before it
    is read, with an estimate of what it needs: from the row count and column sizes in a Parquet file's metadata,
    from the file size for the text formats.
    """
    path = _existing_file(path)
    _check_memory(path, [column for column in (user_column, item_column, text_column) if column], memory_budget)
    columns = {
        "user": user_column,
        "item": item_column,
        "rating": rating_column,
        "timestamp": timestamp_column,
        "text": text_column,
    }
    columns = {name: column for name, column in columns.items() if column is not None}
    named = list(columns.values())
    twice = next((column for column in named if named.count(column) > 1), None)
    if twice is not None:
        roles = " and ".join(f"{name}_column" for name, column in columns.items() if column == twice)
        raise ValueError(f"{roles} name the same column, {twice!r}: each role needs a column of its own.")
    raw = RawInteractions(_read_typed_table(path, columns), sources={path.name: file_sha256(path)})
    if item_text_path is not None:
        item_text_path = _existing_file(item_text_path)
        items = _read_typed_table(item_text_path, {"item": item_column, "text": item_text_column})
        raw.item_text = dict(zip(items["item"], items["text"], strict=True))
        raw.sources[item_text_path.name] = file_sha256(item_text_path)
    return raw


def read_authors_split(path: str | os.PathLike) -> RecommendationData:
    """
    Reads the split published with the CLLM4Rec code: `train_matrix.npz`, `val_matrix.npz`, `test_matrix.npz`
    (users x items sparse matrices), `meta.pkl` (the two counts) and `item_tags.json` (`{"<item id>": [tags]}`, the
    item text). Ids are kept as given; raw ids are their decimal strings.
    """
    path = _existing_directory(path)
    matrices = {split: _load_sparse(_existing_file(path / name)) for split, name in AUTHORS_SPLIT_FILES.items()}
    shapes = {matrix.shape for matrix in matrices.values()}
    if len(shapes) != 1:
        raise DataFormatError(f"{path}: the split matrices differ in shape: {sorted(shapes)}")
    num_users, num_items = shapes.pop()
    counts = _load_plain_pickle(_existing_file(path / "meta.pkl"))
    if counts.get("num_users") != num_users or counts.get("num_items") != num_items:
        raise DataFormatError(f"{path / 'meta.pkl'} says {counts}, but the matrices are {num_users} x {num_items}")
    for index, split in enumerate(SPLITS):
        for other in SPLITS[index + 1 :]:
            if matrices[split].multiply(matrices[other]).nnz:
                raise DataFormatError(f"{path}: the {split} and {other} matrices share interactions")
    splits = {}
    for split, matrix in matrices.items():
        matrix = matrix.tocoo()
        pairs = pd.DataFrame({"user_id": matrix.row.astype(np.int64), "item_id": matrix.col.astype(np.int64)})
        splits[split] = pairs.sort_values(["user_id", "item_id"], ignore_index=True)
    file_names = [*AUTHORS_SPLIT_FILES.values(), "meta.pkl", "item_tags.json"]
    return RecommendationData.from_frames(
        name=path.name,
        splits=splits,
        user_raw_ids=[str(user) for user in range(num_users)],
        item_raw_ids=[str(item) for item in range(num_items)],
        item_texts=_read_item_tags(_existing_file(path / "item_tags.json"), num_items),
        sources={name: file_sha256(path / name) for name in file_names},
    )


def available_memory() -> int:
    """Bytes of memory available to a new process now (`MemAvailable`), or the physical memory where unknown."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def preparation_memory(path: Path, text_columns: Sequence[str]) -> int:
    """
    Estimated peak bytes to read and prepare a table: `PREPARATION_BYTES_PER_ROW` per interaction plus twice the
    text of `text_columns` (ids and reviews, held once read and once encoded). Parquet gives both in its metadata;
    for a text format, a line counts as an interaction and every byte (decompressed, for gzip) as text.
    """
    if path.suffix.lower() == ".parquet":
        try:
            metadata = pq.read_metadata(path)
        except (OSError, pa.ArrowException) as error:
            raise DataFormatError(f"{path} cannot be read: {error}") from None
        text_bytes = sum(
            chunk.total_uncompressed_size
            for group in range(metadata.num_row_groups)
            for chunk in (metadata.row_group(group).column(index) for index in range(metadata.num_columns))
            if chunk.path_in_schema in text_columns
        )
        return metadata.num_rows * PREPARATION_BYTES_PER_ROW + 2 * text_bytes
    text_bytes, lines = _text_size(path)
    return 2 * text_bytes + lines * PREPARATION_BYTES_PER_ROW


def is_gzipped(path: Path) -> bool:
    """Whether a file is read through gzip: its name ends in `.gz`, in any case."""
    return path.suffix.lower() == ".gz"


def _text_size(path: Path) -> tuple[int, int]:
    """Bytes and lines of a text file (decompressed, for gzip), extrapolated from its first megabyte."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as raw:
            sample = (gzip.GzipFile(fileobj=raw) if is_gzipped(path) else raw).read(1 << 20)
            read = raw.tell()
    except (OSError, *GZIP_ERRORS):  # the reader names the problem
        return size, 0
    text_bytes = len(sample) * size // max(read, 1)
    return text_bytes, (sample.count(b"\n") + 1) * text_bytes // max(len(sample), 1)


def _check_memory(path: Path, text_columns: Sequence[str], budget: int | None) -> None:
    needed = preparation_memory(path, text_columns)
    budget = available_memory() if budget is None else budget
    if needed > budget:
        raise DataFormatError(
            f"{path} is too large to prepare in memory: it needs about {needed / 2**30:.1f} GiB, "
            f"{budget / 2**30:.1f} GiB are available; split the table or prepare it on a larger machine"
        )


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_file():
        raise DataFormatError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise DataFormatError(f"{path} is empty")
    return path


def _existing_directory(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        raise DataFormatError(f"{path} is not a directory")
    return path


def _progress(lines: Iterable[str], path: Path) -> Iterable[str]:
    return tqdm(lines, desc=f"Reading {path.name}", unit=" lines", disable=None)


@contextmanager
def _byte_progress(file: BinaryIO, path: Path) -> Iterator[BinaryIO]:
    """`file`, showing the bytes read on a progress bar (on a terminal)."""
    total = path.stat().st_size
    with tqdm(desc=f"Reading {path.name}", total=total, unit="B", unit_scale=True, disable=None) as bar:
        yield CallbackIOWrapper(bar.update, file, "read")


def _iter_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yields `(line number, text)` of a text file, gzipped if its name ends in `.gz`; blank lines are skipped."""
    opener = gzip.open if is_gzipped(path) else open
    number = 0
    try:
        with opener(path, "rb") as file:
            for number, line in enumerate(_progress(file, path), start=1):
                try:
                    text = line.decode(encoding)
                except UnicodeDecodeError as error:
                    raise DataFormatError(
                        f"{path}, line {number}: not {encoding} text ({error.reason} at byte {error.start})"
                    ) from None
                if text.strip():
                    yield number, text
    except GZIP_ERRORS as error:
        raise DataFormatError(f"{path}: corrupt or truncated gzip data after line {number} ({error})") from None


def _iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """Yields `(line number, record)`; a line that is not JSON may be a Python literal (2014 Amazon metadata)."""
    for number, line in _iter_lines(path):
        try:
            record = json.loads(line)
        except RecursionError:
            raise DataFormatError(f"{path}, line {number}: nested too deeply") from None
        except ValueError:  # not JSON, or an integer too long to convert
            try:
                with warnings.catch_warnings():  # an odd escape such as "\d" in a string is not worth a warning
                    warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
                    record = ast.literal_eval(line.strip())
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                record = None
        if not isinstance(record, dict):
            raise DataFormatError(f"{path}, line {number}: not a JSON object")
        yield number, record


def _read_json_lines(path: Path) -> tuple[list[dict], list[int]]:
    numbered = list(_iter_json_lines(path))
    if not numbered:
        raise DataFormatError(f"{path} holds no records")
    lines, records = zip(*numbered, strict=True)
    return list(records), list(lines)


def _read_typed_table(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    """Reads a table's `columns` (our name -> the file's name) and types them as `_typed_columns` does."""
    kind = next((suffix.lower() for suffix in reversed(path.suffixes) if suffix.lower() != ".gz"), "")
    if kind in (".json", ".jsonl"):
        return _typed_json_lines(
            path, columns.values(), lambda frame, lines: _typed_columns(frame, columns, path, lines)
        )
    try:
        if kind in (".csv", ".tsv"):
            frame, names = _read_csv_columns(path, "," if kind == ".csv" else "\t", columns.values())
            return _typed_columns(frame, columns, path, np.arange(len(frame)) + 2, names=names)
        if kind == ".parquet":
            names = pq.read_schema(path).names
            wanted = [column for column in dict.fromkeys(columns.values()) if column in names]
            frame = pq.read_table(path, columns=wanted).to_pandas() if wanted else pd.DataFrame(columns=names)
            return _typed_columns(frame, columns, path, np.arange(len(frame)) + 1, unit="row", names=names)
    except GZIP_ERRORS as error:
        raise DataFormatError(f"{path}: corrupt or truncated gzip data ({error})") from None
    except (ValueError, OSError, pa.ArrowException, csv.Error) as error:  # UnicodeDecodeError is a ValueError
        if isinstance(error, DataFormatError):
            raise
        raise DataFormatError(f"{path} cannot be read: {error}") from None
    raise DataFormatError(f"{path}: unknown table format {kind!r}; expected .csv, .tsv, .parquet, .json or .jsonl")


def _read_csv_columns(path: Path, delimiter: str, columns: Iterable[str]) -> tuple[pd.DataFrame, list[str]]:
    """
    The `columns` of a CSV or TSV file (with a header, maybe gzipped) that it has, every value the text as written (an
    empty field an empty string), and the file's column names. Arrow parses the file, in parallel.
    """
    opener = gzip.open if is_gzipped(path) else open
    with opener(path, "rb") as file:
        lines = (line.decode("utf-8-sig") for line in file)
        names = next(csv.reader(lines, delimiter=delimiter), [])  # decodes the header's lines, no more
    wanted = [column for column in dict.fromkeys(columns) if column in names]
    if not wanted:
        return pd.DataFrame(columns=names), names
    with opener(path, "rb") as file:  # gzip's own errors, not Arrow's, for a corrupt file
        table = pcsv.read_csv(
            file,
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            # bytes, then text: a value that is not UTF-8 is reported as Python decoding it reports it
            convert_options=pcsv.ConvertOptions(
                include_columns=wanted, column_types=dict.fromkeys(wanted, pa.binary())
            ),
        )
    last_row = table.slice(max(table.num_rows - 1, 0)).to_pylist()
    if any(b"\n" in value or b"\r" in value for row in last_row for value in row.values()):
        _check_quotes_closed(path, opener, delimiter)  # Arrow ends a quote left open at the end of the file
    try:
        return table.cast(pa.schema([(column, pa.string()) for column in wanted])).to_pandas(), names
    except pa.ArrowInvalid:
        for column in wanted:
            for line, value in enumerate(table.column(column).to_pylist(), start=2):
                try:
                    value.decode()
                except UnicodeDecodeError as error:
                    raise DataFormatError(f"{path} cannot be read: {error} (line {line}, column {column!r})") from None
        raise


def _check_quotes_closed(path: Path, opener: Callable, delimiter: str) -> None:
    """Reads the file record by record, strictly: a quote left open fails at the end of the file."""
    with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as file:
        records, line = csv.reader(file, delimiter=delimiter, strict=True), 1
        try:
            for _ in records:
                line = records.line_num + 1
        except csv.Error as error:
            raise DataFormatError(f"{path} cannot be read: {error} (in the record from line {line})") from None


def _typed_json_lines(
    path: Path, fields: Collection[str], typed: Callable[[pd.DataFrame, Sequence[int]], pd.DataFrame]
) -> pd.DataFrame:
    """
    Reads the `fields` of JSON lines and types them with `typed(frame, line numbers)`. Arrow parses the file in
    blocks; where it
    cannot (a line that is not a JSON object, values of different kinds in one field) or a value is refused, the
    file is read again record by record, so that what is accepted and every error are those of that reading, with
    the line named.
    """
    try:
        with open(path, "rb") as file, _byte_progress(file, path) as progress:
            stream = pa.CompressedInputStream(progress, "gzip") if is_gzipped(path) else progress
            table = pj.read_json(stream, parse_options=pj.ParseOptions(newlines_in_values=False))
        frame = table.select([field for field in fields if field in table.column_names]).to_pandas()
        return typed(frame, np.arange(len(frame)) + 1)
    except (pa.ArrowException, OSError, ValueError, *GZIP_ERRORS):  # DataFormatError and UnicodeDecodeError included
        records, lines = _read_json_lines(path)
        return typed(pd.DataFrame.from_records(records), lines)


def _typed_columns(
    frame: pd.DataFrame,
    columns: dict[str, str],
    path: Path,
    lines: Sequence[int],
    unit: str = "line",
    optional: Collection[str] = (),
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """
    Takes the file's `columns` (our name -> the file's name) out of `frame` and types them: `user` and `item` are
    non-empty strings (an integer or a whole float becomes its digits), `rating` is a finite float32, `timestamp`
    int64 Unix seconds (from numbers or dates), anything else text. A list or mapping where one value belongs is an
    error. Names in `optional` are skipped when the file lacks them; any other missing column is an error. A bad value
    is reported with its `unit` number taken from `lines`. `names` are the file's columns, where `frame` holds only
    those read.
    """
    missing = [column for name, column in columns.items() if column not in frame and name not in optional]
    if missing:
        names = frame.columns if names is None else names
        raise DataFormatError(f"{path} has no column {', '.join(map(repr, missing))} (it has {', '.join(names)})")
    if frame.empty:
        raise DataFormatError(f"{path} holds no records")
    typed = pd.DataFrame(index=frame.index)
    for name, column in columns.items():
        if column not in frame:
            continue
        values = frame[column]
        checks = [("holds a list or mapping, not one value", values.map(_is_nested))] if values.dtype == object else []
        if name in ("user", "item"):
            ids = _id_texts(values)
            checks += [
                ("is empty", values.isna() | (ids == "")),
                ("is not a string or an integer", ids.isna() & values.notna()),
            ]
            typed_values = ids
        elif name == "rating":
            numbers = pd.to_numeric(values, errors="coerce")
            beyond_float32 = ~(numbers.abs() <= np.finfo(np.float32).max)
            checks += [
                ("is not a number", numbers.isna()),
                ("is not a finite number", beyond_float32 & numbers.notna()),
            ]
            typed_values = numbers
        elif name == "timestamp":
            seconds = _unix_seconds(values)
            beyond_int64 = ~(seconds.abs() < 2.0**63)
            checks += [
                ("is neither Unix seconds nor a date", seconds.isna()),
                ("is out of range for Unix seconds", beyond_int64 & seconds.notna()),
            ]
            typed_values = seconds
        else:
            typed_values = values.fillna("")
        for problem, bad in checks:
            if bad.any():
                position = int(np.flatnonzero(bad.to_numpy())[0])
                value = _plain(values.iloc[position])
                raise DataFormatError(f"{path}, {unit} {lines[position]}: {column!r} {problem} ({value!r})")
        typed[name] = typed_values.astype({"rating": np.float32, "timestamp": np.int64}.get(name, str))
    return typed.reset_index(drop=True)


def _is_nested(value) -> bool:
    return isinstance(value, (list, tuple, dict, set, np.ndarray))


def _id_texts(values: pd.Series) -> pd.Series:
    """
    Raw ids as text: strings stripped, integers and whole floats as their digits; missing (`NA`) where a value is
    anything else. Vectorized for columns of one type; a column of mixed values (from JSON lines) goes value by value.
    """
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return pd.Series(pd.NA, index=values.index, dtype="str")
    if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype):
        if pd.api.types.is_float_dtype(dtype):
            values = values.where((values % 1 == 0) & (values.abs() < 2**53))
        digits = pa.array(values.to_numpy(), from_pandas=True).cast(pa.int64()).cast(pa.large_string())
        return pd.Series(digits, index=values.index, dtype=TEXT)
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        return values.str.strip()
    return values.map(_id_text).astype("str")


def _id_text(value) -> str | None:
    """One raw id as text, as `_id_texts` makes it."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (float, np.floating)) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return None


def _plain(value):
    """A value as Python shows it: NumPy scalars and arrays as Python numbers and lists."""
    return value.tolist() if isinstance(value, (np.generic, np.ndarray)) else value


def _unix_seconds(values: pd.Series) -> pd.Series:
    """Unix seconds of numbers (taken as seconds), datetimes (naive ones as UTC) and date strings; NaN where none."""
    epoch = pd.Timestamp(0, tz="UTC").as_unit("s")
    if pd.api.types.is_datetime64_any_dtype(values):  # a typed column (Parquet): its integers are in its own unit
        dates = values.dt.tz_localize("UTC") if values.dt.tz is None else values
        return (dates - epoch) // pd.Timedelta(seconds=1)
    seconds = pd.to_numeric(values, errors="coerce")
    not_numbers = seconds.isna() & values.notna()
    if not_numbers.any():
        dates = pd.to_datetime(values[not_numbers].astype(str), errors="coerce", utc=True, format="mixed")
        # An epoch in whole seconds keeps the dates' own unit, so dates past 2262 do not overflow nanoseconds.
        seconds[not_numbers] = (dates - epoch) // pd.Timedelta(seconds=1)
    return seconds


def _review_texts(summary: pd.Series | None, body: pd.Series | None, length: int) -> pd.Series:
    """The summary and the review as one text, as in "Five stars. Leaves my hair soft."; non-text parts are left out."""
    summary, body = (_stripped_texts(part, length) for part in (summary, body))
    both = (summary != "") & (body != "")
    summary = summary.where(~both | summary.str.endswith((".", "!", "?")), summary + ".")
    return (summary + " " + body).where(both, summary + body)


def _stripped_texts(values: pd.Series | None, length: int) -> pd.Series:
    """Text values stripped; `""` where there is none or a value is not text."""
    if values is None:
        return pd.Series([""] * length, dtype="str")
    if values.dtype == object:
        values = values.map(lambda value: value if isinstance(value, str) else None)
    elif not pd.api.types.is_string_dtype(values.dtype):
        return pd.Series([""] * length, index=values.index, dtype="str")
    return values.astype("str").str.strip().fillna("")


def _read_amazon_metadata(path: Path) -> dict[str, str]:
    records, lines = _read_json_lines(path)
    items = _typed_columns(pd.DataFrame.from_records(records), {"item": "asin"}, path, lines)["item"]
    item_text = {}
    for item, record, line in zip(items, records, lines, strict=True):
        key = "categories" if "categories" in record else "category"
        parts = [record.get("title"), record.get("brand"), *_category_names(record.get(key), key, path, line)]
        parts = [part.strip() for part in parts if isinstance(part, str) and part.strip()]
        item_text[item] = ", ".join(dict.fromkeys(parts))
    return item_text


def _category_names(value, key: str, path: Path, line: int) -> list:
    """Metadata categories as one flat list: from a list of names, a list of category paths (2014), or one name."""
    if value is None or isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise DataFormatError(f"{path}, line {line}: {key!r} is neither a list nor a string ({value!r})")
    return [name for entry in value for name in (entry if isinstance(entry, list) else [entry])]


def _read_grouplens(path: Path) -> RawInteractions:
    data_path, item_path = _existing_file(path / "u.data"), _existing_file(path / "u.item")
    names = ["user", "item", "rating", "timestamp"]
    frame, lines = _read_delimited(data_path, "\t", names)
    interactions = _typed_columns(frame, {name: name for name in names}, data_path, lines)
    names = ["item", "title", "release_date", "video_release_date", "url", *MOVIELENS_GENRES]
    frame, lines = _read_delimited(item_path, "|", names, encoding="latin-1")
    catalogue = _typed_columns(frame, {"item": "item", "title": "title"}, item_path, lines)
    genre_flags = frame[list(MOVIELENS_GENRES)].to_numpy() == "1"
    item_text = {
        item: ", ".join([title.strip(), *np.asarray(MOVIELENS_GENRES)[flags]])
        for item, title, flags in zip(catalogue["item"], catalogue["title"], genre_flags, strict=True)
    }
    return RawInteractions(interactions, item_text, {file.name: file_sha256(file) for file in (data_path, item_path)})


def _read_recbole(inter_path: Path) -> RawInteractions:
    """RecBole atomic files: tab-separated tables with typed header names such as `item_id:token`."""
    item_path = _existing_file(inter_path.with_suffix(".item"))
    frame, lines = _read_delimited(inter_path, "\t")
    columns = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}
    interactions = _typed_columns(frame, columns, inter_path, lines, optional=("rating", "timestamp"))
    frame, lines = _read_delimited(item_path, "\t")
    columns = {"item": "item_id", "title": "movie_title", "genres": "class"}
    catalogue = _typed_columns(frame, columns, item_path, lines, optional=("genres",))
    genres = catalogue["genres"].str.split() if "genres" in catalogue else [[]] * len(catalogue)
    item_text = {
        item: ", ".join([title.strip(), *item_genres])
        for item, title, item_genres in zip(catalogue["item"], catalogue["title"], genres, strict=True)
    }
    return RawInteractions(interactions, item_text, {file.name: file_sha256(file) for file in (inter_path, item_path)})


def _read_delimited(
    path: Path, separator: str, names: list[str] | None = None, encoding: str = "utf-8"
) -> tuple[pd.DataFrame, list[int]]:
    """
    Reads a delimited text file as strings, with the line number of each row, checking that every line has as many
    fields as `names`; without `names`, the first line is a RecBole header (`name:type` fields).
    """
    numbered = [(number, line.rstrip("\r\n").split(separator)) for number, line in _iter_lines(path, encoding)]
    if names is None and numbered:
        names = [name.split(":")[0] for name in numbered.pop(0)[1]]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DataFormatError(f"{path}, line 1: the header names {', '.join(map(repr, repeated))} twice")
    if not numbered:
        raise DataFormatError(f"{path} holds no records")
    for number, row in numbered:
        if len(row) != len(names):
            raise DataFormatError(f"{path}, line {number}: {len(row)} fields, expected {len(names)}")
    lines, rows = zip(*numbered, strict=True)
    return pd.DataFrame(list(rows), columns=names), list(lines)


def _load_sparse(path: Path) -> sp.csr_matrix:
    try:
        with open(path, "rb") as file:  # opened here, so that it is closed even when it is not a zip archive
            matrix = sp.load_npz(file)  # numpy.load with allow_pickle=False
    except NPZ_ERRORS as error:
        raise DataFormatError(f"{path} is not a scipy sparse matrix: {error}") from None
    matrix = sp.csr_matrix(matrix)
    matrix.eliminate_zeros()
    return matrix


class _PlainDataUnpickler(pickle.Unpickler):
    """Loads only built-in containers and scalars: every class or function reference is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_plain_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            value = _PlainDataUnpickler(file).load()
    except Exception as error:  # bytes that are not a pickle can fail in many ways, MemoryError included
        raise DataFormatError(
            f"{path} is not a pickled dict of counts: {str(error) or type(error).__name__}"
        ) from None
    if not isinstance(value, dict):
        raise DataFormatError(f"{path} is not a pickled dict of counts: it holds a {type(value).__name__}")
    return value


def _read_item_tags(path: Path, num_items: int) -> list[str]:
    try:
        tags = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise DataFormatError(f"{path} is not valid JSON: nested too deeply") from None
    except ValueError as error:  # not JSON, not UTF-8, or an integer too long to convert
        raise DataFormatError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(tags, dict):
        raise DataFormatError(f"{path} must map item ids to lists of tags")
    texts = [""] * num_items
    for key, item_tags in tags.items():
        if not (key.isascii() and key.isdigit()) or int(key) >= num_items:
            raise DataFormatError(f"{path}: {key!r} is not an item id in 0..{num_items - 1}")
        if not isinstance(item_tags, list):
            raise DataFormatError(f"{path}: the tags of item {key} are not a list")
        if not all(isinstance(tag, str) for tag in item_tags):
            raise DataFormatError(f"{path}: the tags of item {key} are not strings")
        texts[int(key)] = ", ".join(dict.fromkeys(tag.strip() for tag in item_tags if tag.strip()))
    return texts
