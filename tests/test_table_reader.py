"""CSV and TSV interaction tables, read by Arrow: every value the text as written, quoting as in the CSV standard."""

import gzip

import pandas as pd
import pytest

from hf_cllm4rec.data import DataFormatError, read_interaction_table

LONG_IDS = ("12345678901234567890", "98765432109876543210")  # beyond int64: ids, not numbers


def read(path, **columns):
    return read_interaction_table(path, user_column="user", item_column="item", **columns).interactions


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_long_integer_ids_and_quoted_delimiters_are_kept_as_written(tmp_path, delimiter):
    path = tmp_path / ("interactions.csv" if delimiter == "," else "interactions.tsv")
    rows = [
        ("user", "item", "stars", "review"),
        (LONG_IDS[0], "007", "5", f'"good{delimiter} really"'),
        (LONG_IDS[0], "42", "3", ""),
        (LONG_IDS[1], f'"B0{delimiter}1"', "4", '"said ""fine""\non two lines"'),
    ]
    path.write_text("\n".join(delimiter.join(row) for row in rows) + "\n")
    frame = read(path, rating_column="stars", text_column="review")
    assert frame["user"].tolist() == [LONG_IDS[0], LONG_IDS[0], LONG_IDS[1]]
    assert frame["item"].tolist() == ["007", "42", f"B0{delimiter}1"]
    assert frame["rating"].tolist() == [5.0, 3.0, 4.0]
    assert frame["text"].tolist() == [f"good{delimiter} really", "", 'said "fine"\non two lines']


def test_gzipped_tsv_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "interactions.tsv.gz"
    path.write_bytes(gzip.compress("\ufeffuser\titem\tother\nu1\ta\tx\nu2\tb\ty\n".encode()))
    frame = read(path)
    assert frame.columns.tolist() == ["user", "item"]
    assert frame["user"].tolist() == ["u1", "u2"] and frame["item"].tolist() == ["a", "b"]


def test_a_missing_column_is_named_with_the_columns_the_file_has(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text('"user id",item\nu1,a\n')
    with pytest.raises(DataFormatError, match=r"interactions.csv has no column 'user' \(it has user id, item\)"):
        read(path)


def test_text_that_is_not_utf8_names_its_line_and_column(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_bytes(b"user,item\nu1,a\nu2,b\xff\n")
    with pytest.raises(
        DataFormatError, match=r"interactions.csv cannot be read: 'utf-8' codec .* \(line 3, column 'item'\)"
    ):
        read(path)


def test_an_unclosed_quote_or_a_short_row_cannot_be_read(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text('user,item\nu1,"a\nu2,b\n')  # the quote swallows the last line
    with pytest.raises(
        DataFormatError, match=r"interactions.csv cannot be read: unexpected end of data \(in the record from line 2\)"
    ):
        read(path)
    path.write_text("user,item\nu1,a\nu2\n")
    with pytest.raises(DataFormatError, match="interactions.csv cannot be read: CSV parse error"):
        read(path)


@pytest.mark.parametrize("zone", [None, "Europe/Berlin"])
def test_parquet_datetimes_become_unix_seconds_whatever_their_unit(tmp_path, zone):
    moments = pd.Series(pd.to_datetime(["2020-09-24 20:16:04", "2021-01-01 00:00:00"]).as_unit("us"))
    if zone:
        moments = moments.dt.tz_localize(zone)
    pd.DataFrame({"user": ["u1", "u2"], "item": ["a", "b"], "ts": moments}).to_parquet(tmp_path / "t.parquet")
    offset = 7200 if zone else 0  # Berlin's summer time in September; winter time is one hour
    expected = [1600978564 - offset, 1609459200 - (3600 if zone else 0)]
    assert read(tmp_path / "t.parquet", timestamp_column="ts")["timestamp"].tolist() == expected


def test_gzip_is_recognised_whatever_the_case_of_its_suffix(tmp_path):
    (tmp_path / "t.jsonl.GZ").write_bytes(gzip.compress(b'{"user": "u1", "item": "a"}\n{"user": "u2", "item": "b"}\n'))
    assert read(tmp_path / "t.jsonl.GZ")["item"].tolist() == ["a", "b"]
