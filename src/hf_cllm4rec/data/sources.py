"""
Readers for raw recommendation data: Amazon review dumps, MovieLens 100K, any interaction table, and the split
published with the CLLM4Rec code.

Raw readers return `RawInteractions` (string ids, one row per interaction) for `apply_protocol` to filter and split;
the published split is already split and becomes a `RecommendationData` directly.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import pickle
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from .prepared import SPLITS, DataFormatError, RecommendationData, file_sha256

MOVIELENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
AUTHORS_SPLIT_FILES = {"train": "train_matrix.npz", "validation": "val_matrix.npz", "test": "test_matrix.npz"}


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
    records, lines = _read_json_lines(reviews)
    for record in records:
        record["review"] = _review_text(record.get("summary"), record.get("reviewText"))
    columns = {
        "user": "reviewerID",
        "item": "asin",
        "rating": "overall",
        "timestamp": "unixReviewTime",
        "text": "review",
    }
    frame = pd.DataFrame.from_records(records)
    interactions = _typed_columns(frame, columns, reviews, lines, optional=("rating", "timestamp"))
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
) -> RawInteractions:
    """
    Reads interactions from a table: CSV, TSV, Parquet or JSON lines (`.csv`, `.tsv`, `.parquet`, `.json`, `.jsonl`;
    text formats may be gzipped) with the given column names. Timestamps may be Unix seconds or dates.
    `item_text_path` is an optional table of item text, with columns `item_column` and `item_text_column`.
    """
    path = _existing_file(path)
    columns = {
        "user": user_column,
        "item": item_column,
        "rating": rating_column,
        "timestamp": timestamp_column,
        "text": text_column,
    }
    frame, lines, unit = _read_table(path)
    columns = {name: column for name, column in columns.items() if column is not None}
    raw = RawInteractions(_typed_columns(frame, columns, path, lines, unit), sources={path.name: file_sha256(path)})
    if item_text_path is not None:
        item_text_path = _existing_file(item_text_path)
        frame, lines, unit = _read_table(item_text_path)
        items = _typed_columns(frame, {"item": item_column, "text": item_text_column}, item_text_path, lines, unit)
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


def _iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """Yields `(line number, record)`; a line that is not JSON may be a Python literal (2014 Amazon metadata)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        for number, line in enumerate(_progress(file, path), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                try:
                    record = ast.literal_eval(line.strip())
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    record = None
            if not isinstance(record, dict):
                raise DataFormatError(f"{path}, line {number}: not a JSON object")
            yield number, record


def _read_json_lines(path: Path) -> tuple[list[dict], list[int]]:
    try:
        numbered = list(_iter_json_lines(path))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise DataFormatError(f"{path} cannot be read as text: {error}") from None
    if not numbered:
        raise DataFormatError(f"{path} holds no records")
    lines, records = zip(*numbered, strict=True)
    return list(records), list(lines)


def _read_table(path: Path) -> tuple[pd.DataFrame, Sequence[int], str]:
    """Reads a table; returns it with the line (or row) number of each record and the word for that number."""
    kind = next((suffix.lower() for suffix in reversed(path.suffixes) if suffix.lower() != ".gz"), "")
    try:
        if kind in (".csv", ".tsv"):
            frame = pd.read_csv(path, sep="," if kind == ".csv" else "\t", dtype=str, keep_default_na=False)
            return frame, np.arange(len(frame)) + 2, "line"
        if kind == ".parquet":
            frame = pd.read_parquet(path)
            return frame, np.arange(len(frame)) + 1, "row"
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise DataFormatError(f"{path} cannot be read: {error}") from None
    if kind in (".json", ".jsonl"):
        records, lines = _read_json_lines(path)
        return pd.DataFrame.from_records(records), lines, "line"
    raise DataFormatError(f"{path}: unknown table format {kind!r}; expected .csv, .tsv, .parquet, .json or .jsonl")


def _typed_columns(
    frame: pd.DataFrame,
    columns: dict[str, str],
    path: Path,
    lines: Sequence[int],
    unit: str = "line",
    optional: Collection[str] = (),
) -> pd.DataFrame:
    """
    Takes the file's `columns` (our name -> the file's name) out of `frame` and types them: `user` and `item` are
    non-empty strings, `rating` is float32, `timestamp` int64 Unix seconds (from numbers or dates), anything else
    text. Names in `optional` are skipped when the file lacks them; any other missing column is an error. A bad
    value is reported with its `unit` number taken from `lines`.
    """
    missing = [column for name, column in columns.items() if column not in frame and name not in optional]
    if missing:
        raise DataFormatError(f"{path} has no column {', '.join(map(repr, missing))} (it has {', '.join(frame)})")
    if frame.empty:
        raise DataFormatError(f"{path} holds no records")
    typed = pd.DataFrame(index=frame.index)
    for name, column in columns.items():
        if column not in frame:
            continue
        values = frame[column]
        if name in ("user", "item"):
            typed[name] = values.astype(str).str.strip()
            problem, bad = "is empty", values.isna() | (typed[name] == "")
        elif name == "rating":
            typed[name] = pd.to_numeric(values, errors="coerce").astype(np.float32)
            problem, bad = "is not a number", typed[name].isna()
        elif name == "timestamp":
            typed[name] = _unix_seconds(values)
            problem, bad = "is neither Unix seconds nor a date", typed[name].isna()
        else:
            typed[name] = values.fillna("").astype(str)
            continue
        if bad.any():
            position = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataFormatError(
                f"{path}, {unit} {lines[position]}: {column!r} {problem} ({values.iloc[position]!r})"
            )
    if "timestamp" in typed:
        typed["timestamp"] = typed["timestamp"].astype(np.int64)
    return typed.reset_index(drop=True)


def _unix_seconds(values: pd.Series) -> pd.Series:
    seconds = pd.to_numeric(values, errors="coerce")
    not_numbers = seconds.isna() & values.notna()
    if not_numbers.any():
        dates = pd.to_datetime(values[not_numbers].astype(str), errors="coerce", utc=True, format="mixed")
        seconds[not_numbers] = (dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds


def _review_text(summary: str | None, body: str | None) -> str:
    """The summary and the review as one text, as in "Five stars. Leaves my hair soft."."""
    parts = [part.strip() for part in (summary, body) if isinstance(part, str) and part.strip()]
    if len(parts) == 2 and parts[0][-1] not in ".!?":
        parts[0] += "."
    return " ".join(parts)


def _read_amazon_metadata(path: Path) -> dict[str, str]:
    records, lines = _read_json_lines(path)
    item_text = {}
    for record, line in zip(records, lines, strict=True):
        if not record.get("asin"):
            raise DataFormatError(f"{path}, line {line}: no 'asin'")
        categories = record.get("categories", record.get("category")) or []
        if categories and isinstance(categories[0], list):  # 2014: a list of category paths
            categories = [category for category_path in categories for category in category_path]
        parts = [record.get("title"), record.get("brand"), *categories]
        parts = [part.strip() for part in parts if isinstance(part, str) and part.strip()]
        item_text[str(record["asin"])] = ", ".join(dict.fromkeys(parts))
    return item_text


def _read_grouplens(path: Path) -> RawInteractions:
    data_path, item_path = _existing_file(path / "u.data"), _existing_file(path / "u.item")
    names = ["user", "item", "rating", "timestamp"]
    frame = _read_delimited(data_path, "\t", names)
    interactions = _typed_columns(frame, {name: name for name in names}, data_path, np.arange(len(frame)) + 1)
    names = ["item", "title", "release_date", "video_release_date", "url", *MOVIELENS_GENRES]
    catalogue = _read_delimited(item_path, "|", names, encoding="latin-1")
    genre_flags = catalogue[list(MOVIELENS_GENRES)].to_numpy() == "1"
    item_text = {
        item.strip(): ", ".join([title.strip(), *np.asarray(MOVIELENS_GENRES)[flags]])
        for item, title, flags in zip(catalogue["item"], catalogue["title"], genre_flags, strict=True)
    }
    return RawInteractions(interactions, item_text, {file.name: file_sha256(file) for file in (data_path, item_path)})


def _read_recbole(inter_path: Path) -> RawInteractions:
    """RecBole atomic files: tab-separated tables with typed header names such as `item_id:token`."""
    item_path = _existing_file(inter_path.with_suffix(".item"))
    frame = _read_delimited(inter_path, "\t")
    columns = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}
    interactions = _typed_columns(
        frame, columns, inter_path, np.arange(len(frame)) + 2, optional=("rating", "timestamp")
    )
    frame = _read_delimited(item_path, "\t")
    columns = {"item": "item_id", "title": "movie_title", "genres": "class"}
    catalogue = _typed_columns(frame, columns, item_path, np.arange(len(frame)) + 2, optional=("genres",))
    genres = catalogue["genres"].str.split() if "genres" in catalogue else [[]] * len(catalogue)
    item_text = {
        item: ", ".join([title.strip(), *item_genres])
        for item, title, item_genres in zip(catalogue["item"], catalogue["title"], genres, strict=True)
    }
    return RawInteractions(interactions, item_text, {file.name: file_sha256(file) for file in (inter_path, item_path)})


def _read_delimited(
    path: Path, separator: str, names: list[str] | None = None, encoding: str = "utf-8"
) -> pd.DataFrame:
    """
    Reads a delimited text file as strings, checking that every line has as many fields as `names`; without `names`,
    the first line is a RecBole header (`name:type` fields).
    """
    try:
        with open(path, encoding=encoding) as file:
            rows = [line.rstrip("\r\n").split(separator) for line in _progress(file, path) if line.strip()]
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path} cannot be read as {encoding} text: {error}") from None
    first_line = 1
    if names is None:
        names, first_line = [name.split(":")[0] for name in rows.pop(0)], 2
    if not rows:
        raise DataFormatError(f"{path} holds no records")
    for number, row in enumerate(rows, start=first_line):
        if len(row) != len(names):
            raise DataFormatError(f"{path}, line {number}: {len(row)} fields, expected {len(names)}")
    return pd.DataFrame(rows, columns=names)


def _load_sparse(path: Path) -> sp.csr_matrix:
    try:
        matrix = sp.load_npz(path)  # numpy.load with allow_pickle=False
    except (ValueError, OSError, KeyError) as error:
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
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DataFormatError(f"{path} is not a pickled dict of counts: {error}") from None
    if not isinstance(value, dict):
        raise DataFormatError(f"{path} is not a pickled dict of counts: it holds a {type(value).__name__}")
    return value


def _read_item_tags(path: Path, num_items: int) -> list[str]:
    try:
        tags = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(tags, dict):
        raise DataFormatError(f"{path} must map item ids to lists of tags")
    texts = [""] * num_items
    for key, item_tags in tags.items():
        if not key.isdigit() or int(key) >= num_items:
            raise DataFormatError(f"{path}: {key!r} is not an item id in 0..{num_items - 1}")
        if not isinstance(item_tags, list):
            raise DataFormatError(f"{path}: the tags of item {key} are not a list")
        texts[int(key)] = ", ".join(dict.fromkeys(str(tag).strip() for tag in item_tags if str(tag).strip()))
    return texts
