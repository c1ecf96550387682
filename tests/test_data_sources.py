import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from hf_cllm4rec.data import (
    DataFormatError,
    read_amazon_reviews,
    read_authors_split,
    read_interaction_table,
    read_movielens,
)


def write_json_lines(path: Path, records: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as file:
        file.writelines(json.dumps(record) + "\n" for record in records)
    return path


def write_authors_split(directory: Path, num_users: int = 4, num_items: int = 5) -> Path:
    """A tiny split in the format published with the CLLM4Rec code."""
    directory.mkdir()
    rows = {"train": ([0, 0, 1, 2, 3], [0, 1, 2, 3, 4]), "val": ([0, 1], [2, 3]), "test": ([0, 2], [3, 4])}
    for split, (users, items) in rows.items():
        matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(num_users, num_items))
        sp.save_npz(directory / f"{split}_matrix.npz", matrix)
    (directory / "meta.pkl").write_bytes(pickle.dumps({"num_users": num_users, "num_items": num_items}))
    tags = {str(item): ["Beauty", f"tag {item}"] for item in range(num_items - 1)}
    (directory / "item_tags.json").write_text(json.dumps(tags))
    return directory


class TestAuthorsSplit:
    def test_real_split(self, shared_data):
        data = read_authors_split(shared_data / "amazon-beauty")
        assert (data.num_users, data.num_items) == (10553, 6086)
        assert data.manifest["num_interactions"] == {"train": 70614, "validation": 11767, "test": 11767}
        assert all(data.item_texts())
        assert data.user_raw_ids[:3] == ["0", "1", "2"]
        assert sum(len(history) for history in data.histories("train")) == 70614
        reference = sp.load_npz(shared_data / "amazon-beauty" / "val_matrix.npz")
        assert (data.to_sparse("validation") != reference).nnz == 0
        assert set(data.manifest["sources"]) == {
            "train_matrix.npz", "val_matrix.npz", "test_matrix.npz", "meta.pkl", "item_tags.json"
        }  # fmt: skip

    def test_small_split(self, tmp_path):
        data = read_authors_split(write_authors_split(tmp_path / "split"))
        assert data.name == "split"
        assert data.manifest["num_interactions"] == {"train": 5, "validation": 2, "test": 2}
        assert data.item_texts() == ["Beauty, tag 0", "Beauty, tag 1", "Beauty, tag 2", "Beauty, tag 3", ""]
        assert data.tables["reviews"].num_rows == 0
        assert data.tables["train"].column_names == ["user_id", "item_id"]
        assert [history.tolist() for history in data.histories("test")] == [[3], [], [4], []]

    def test_refuses_pickled_objects(self, tmp_path):
        directory = write_authors_split(tmp_path / "split")
        (directory / "meta.pkl").write_bytes(pickle.dumps({"num_users": 4, "num_items": 5, "path": Path("x")}))
        with pytest.raises(DataFormatError, match="refusing to load"):
            read_authors_split(directory)

    def test_refuses_pickled_matrices(self, tmp_path):
        directory = write_authors_split(tmp_path / "split")
        np.savez(directory / "val_matrix.npz", format=np.array([object()], dtype=object))
        with pytest.raises(DataFormatError, match="val_matrix.npz"):
            read_authors_split(directory)

    def test_counts_must_match_matrices(self, tmp_path):
        directory = write_authors_split(tmp_path / "split")
        (directory / "meta.pkl").write_bytes(pickle.dumps({"num_users": 4, "num_items": 6}))
        with pytest.raises(DataFormatError, match="4 x 5"):
            read_authors_split(directory)

    def test_splits_must_be_disjoint(self, tmp_path):
        directory = write_authors_split(tmp_path / "split")
        sp.save_npz(directory / "test_matrix.npz", sp.load_npz(directory / "train_matrix.npz"))
        with pytest.raises(DataFormatError, match="share interactions"):
            read_authors_split(directory)

    def test_missing_file(self, tmp_path):
        directory = write_authors_split(tmp_path / "split")
        (directory / "item_tags.json").unlink()
        with pytest.raises(FileNotFoundError, match="item_tags.json"):
            read_authors_split(directory)


class TestAmazon:
    def test_real_file(self, shared_data):
        raw = read_amazon_reviews(shared_data / "amazon-all-beauty-2018" / "All_Beauty_5.json.gz")
        frame = raw.interactions
        assert len(frame) == 5269
        assert (frame["user"].nunique(), frame["item"].nunique()) == (991, 85)
        assert len(frame[["user", "item"]].drop_duplicates()) == 4092
        assert (frame["text"] != "").sum() >= 5264
        assert frame["rating"].dtype == np.float32 and frame["timestamp"].dtype == np.int64
        assert list(raw.sources) == ["All_Beauty_5.json.gz"]

    def test_fields_and_review_text(self, tmp_path):
        records = [
            {"reviewerID": "u1", "asin": "a", "overall": 5.0, "unixReviewTime": 10},
            {"reviewerID": "u2", "asin": "a", "overall": 2.0, "unixReviewTime": 11},
            {"reviewerID": "u2", "asin": "b", "overall": 4.0, "unixReviewTime": 12},
        ]
        records[0] |= {"summary": "Great", "reviewText": "Soft."}
        records[1] |= {"summary": "Meh!", "reviewText": "Dry."}
        reviews = write_json_lines(tmp_path / "reviews.json.gz", records)
        frame = read_amazon_reviews(reviews).interactions
        assert frame["user"].tolist() == ["u1", "u2", "u2"]
        assert frame["text"].tolist() == ["Great. Soft.", "Meh! Dry.", ""]
        assert frame["rating"].tolist() == [5.0, 2.0, 4.0]

    def test_metadata_2014_and_2018(self, tmp_path):
        reviews = write_json_lines(tmp_path / "reviews.json", [{"reviewerID": "u", "asin": "a"}])
        meta_2014 = tmp_path / "meta_2014.json"
        meta_2014.write_text(
            str({"asin": "a", "title": "Rose Oil", "categories": [["Beauty", "Skin Care"], ["Beauty", "Oils"]]}) + "\n"
            + str({"asin": "b", "brand": "Acme", "salesRank": {"Beauty": 3}}) + "\n"
        )  # fmt: skip
        raw = read_amazon_reviews(reviews, meta_2014)
        assert raw.item_text == {"a": "Rose Oil, Beauty, Skin Care, Oils", "b": "Acme"}
        assert set(raw.sources) == {"reviews.json", "meta_2014.json"}
        meta_2018 = write_json_lines(
            tmp_path / "meta_2018.json", [{"asin": "a", "title": "Rose Oil", "brand": "Acme", "category": ["Beauty"]}]
        )
        assert read_amazon_reviews(reviews, meta_2018).item_text == {"a": "Rose Oil, Acme, Beauty"}

    def test_malformed_line(self, tmp_path):
        reviews = tmp_path / "reviews.json"
        reviews.write_text('{"reviewerID": "u", "asin": "a"}\n\n{"reviewerID": "u", "asin": \n')
        with pytest.raises(DataFormatError, match=r"reviews.json, line 3: not a JSON object"):
            read_amazon_reviews(reviews)

    def test_literal_lines_never_run_code(self, tmp_path):
        meta = tmp_path / "meta.json"
        meta.write_text("__import__('os').system('echo unsafe')\n")
        reviews = write_json_lines(tmp_path / "reviews.json", [{"reviewerID": "u", "asin": "a"}])
        with pytest.raises(DataFormatError, match="meta.json, line 1"):
            read_amazon_reviews(reviews, meta)

    def test_missing_field(self, tmp_path):
        reviews = write_json_lines(tmp_path / "reviews.json", [{"reviewerID": "u", "asin": "a"}, {"reviewerID": "v"}])
        with pytest.raises(DataFormatError, match=r"reviews.json, line 2: 'asin' is empty"):
            read_amazon_reviews(reviews)
        reviews = write_json_lines(tmp_path / "reviews.json", [{"user": "u", "asin": "a"}])
        with pytest.raises(DataFormatError, match=r"reviews.json has no column 'reviewerID'"):
            read_amazon_reviews(reviews)

    def test_empty_and_missing_files(self, tmp_path):
        (tmp_path / "empty.json").touch()
        with pytest.raises(DataFormatError, match="empty.json is empty"):
            read_amazon_reviews(tmp_path / "empty.json")
        (tmp_path / "blank.json").write_text("\n\n")
        with pytest.raises(DataFormatError, match="blank.json holds no records"):
            read_amazon_reviews(tmp_path / "blank.json")
        with pytest.raises(FileNotFoundError, match="absent.json does not exist"):
            read_amazon_reviews(tmp_path / "absent.json")


class TestMovieLens:
    def test_real_recbole_files(self, shared_data):
        raw = read_movielens(shared_data / "ml-100k")
        frame = raw.interactions
        assert len(frame) == 100000
        assert (frame["user"].nunique(), frame["item"].nunique()) == (943, 1682)
        assert len(raw.item_text) == 1682
        assert raw.item_text["1"] == "Toy Story, Animation, Children's, Comedy"
        assert frame.iloc[0].to_dict() == {"user": "196", "item": "242", "rating": 3.0, "timestamp": 881250949}

    def test_grouplens_files(self, tmp_path):
        (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\t881250950\n2\t20\t4\t881250951\n")
        flags = ["0"] * 19
        comedy, romance = flags.copy(), flags.copy()
        comedy[5] = romance[5] = romance[14] = "1"
        items = [
            "10|Café Society (1995)|01-Jan-1995||http://x|" + "|".join(comedy),
            "20|Amélie (2001)|01-Jan-2001||http://y|" + "|".join(romance),
        ]
        (tmp_path / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
        raw = read_movielens(tmp_path)
        assert raw.interactions["item"].tolist() == ["10", "10", "20"]
        assert raw.interactions["rating"].tolist() == [5.0, 3.0, 4.0]
        assert raw.item_text == {"10": "Café Society (1995), Comedy", "20": "Amélie (2001), Comedy, Romance"}
        assert set(raw.sources) == {"u.data", "u.item"}

    def test_wrong_number_of_fields(self, tmp_path):
        (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\n")
        (tmp_path / "u.item").write_text("10|A|||x|" + "|".join(["0"] * 19) + "\n")
        with pytest.raises(DataFormatError, match=r"u.data, line 2: 3 fields, expected 4"):
            read_movielens(tmp_path)

    def test_bad_value(self, tmp_path):
        (tmp_path / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t2\t4\n1\t3\tfive\n")
        (tmp_path / "ml.item").write_text("item_id:token\tmovie_title:token_seq\n2\tA\n3\tB\n")
        with pytest.raises(DataFormatError, match=r"ml.inter, line 3: 'rating' is not a number \('five'\)"):
            read_movielens(tmp_path)

    def test_unknown_directory(self, tmp_path):
        with pytest.raises(DataFormatError, match="neither the GroupLens"):
            read_movielens(tmp_path)
        with pytest.raises(FileNotFoundError):
            read_movielens(tmp_path / "absent")


class TestTable:
    FRAME = pd.DataFrame(
        {
            "uid": ["u1", "u1", "u2"],
            "iid": ["a", "b", "a"],
            "stars": [5, 4, 3],
            "when": [100, 200, 300],
            "review": ["good", "", "fine"],
        }
    )

    @pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl", ".csv.gz"])
    def test_formats(self, tmp_path, suffix):
        path = tmp_path / f"interactions{suffix}"
        if suffix == ".parquet":
            self.FRAME.to_parquet(path)
        elif suffix == ".jsonl":
            self.FRAME.to_json(path, orient="records", lines=True)
        else:
            self.FRAME.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
        raw = read_interaction_table(
            path,
            user_column="uid",
            item_column="iid",
            rating_column="stars",
            timestamp_column="when",
            text_column="review",
        )
        frame = raw.interactions
        assert frame.columns.tolist() == ["user", "item", "rating", "timestamp", "text"]
        assert frame["user"].tolist() == ["u1", "u1", "u2"] and frame["item"].tolist() == ["a", "b", "a"]
        assert frame["rating"].tolist() == [5.0, 4.0, 3.0] and frame["timestamp"].tolist() == [100, 200, 300]
        assert frame["text"].tolist() == ["good", "", "fine"]
        assert list(raw.sources) == [path.name]

    def test_dates_and_item_text(self, tmp_path):
        path = tmp_path / "interactions.csv"
        path.write_text("user,item,date\nu1,a,1970-01-02\nu2,a,1970-01-01 00:01:00\n")
        items = tmp_path / "items.csv"
        items.write_text("item,title\na,Red Shoes\nb,Blue Hat\n")
        raw = read_interaction_table(
            path, user_column="user", item_column="item", timestamp_column="date", item_text_path=items,
            item_text_column="title",
        )  # fmt: skip
        assert raw.interactions["timestamp"].tolist() == [86400, 60]
        assert raw.item_text == {"a": "Red Shoes", "b": "Blue Hat"}

    def test_missing_columns(self, tmp_path):
        path = tmp_path / "interactions.csv"
        self.FRAME.to_csv(path, index=False)
        with pytest.raises(DataFormatError, match=r"interactions.csv has no column 'user', 'rating'"):
            read_interaction_table(path, user_column="user", item_column="iid", rating_column="rating")

    def test_bad_values_name_the_line(self, tmp_path):
        path = tmp_path / "interactions.csv"
        path.write_text("user,item,when\nu1,a,100\n,b,200\n")
        with pytest.raises(DataFormatError, match=r"interactions.csv, line 3: 'user' is empty"):
            read_interaction_table(path, user_column="user", item_column="item")
        path.write_text("user,item,when\nu1,a,100\nu2,b,yesterday-ish\n")
        with pytest.raises(DataFormatError, match=r"line 3: 'when' is neither Unix seconds nor a date"):
            read_interaction_table(path, user_column="user", item_column="item", timestamp_column="when")

    def test_unreadable_tables(self, tmp_path):
        path = tmp_path / "interactions.xlsx"
        path.write_text("x")
        with pytest.raises(DataFormatError, match="unknown table format '.xlsx'"):
            read_interaction_table(path, user_column="user", item_column="item")
        path = tmp_path / "header.csv"
        path.write_text("user,item\n")
        with pytest.raises(DataFormatError, match="header.csv holds no records"):
            read_interaction_table(path, user_column="user", item_column="item")
        path = tmp_path / "ragged.csv"
        path.write_text("user,item\nu,a\nu,b,c,d\n")
        with pytest.raises(DataFormatError, match="ragged.csv cannot be read"):
            read_interaction_table(path, user_column="user", item_column="item")
