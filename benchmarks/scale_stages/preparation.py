"""
Data preparation at scale: `cllm4rec prepare --source table` on Parquet files of 1M, 10M and 100M power-law
interactions (users and items each a hundredth of the interactions: 1M x 1M at 100M), and the JSON-lines reader's
rows per second.

    python benchmarks/scale_stages/preparation.py --workdir DIR --out ROWS.json [--quick] [--sizes 1000000 ...]

Each table comes from `make_power_law_interactions` (seeded) and is written as Parquet first, untimed; then `cllm4rec
prepare` runs on it as a process of its own, with the paper's protocol (ratings above 3, 5-core, 10% validation, 10%
test): `wall_s` is that process's wall time, `peak_rss_gib` its peak resident memory (from `wait4`). The JSON-lines
rows time `read_amazon_reviews` on a generated review dump of the 2018 release's fields (and on the real Amazon file
where the project's shared data is present). `--quick` shrinks the sizes to 10k and 100k interactions and runs
`cllm4rec prepare` in a child forked from this process, for CI: no interpreter start-up in its wall time, and the
libraries it inherits in its peak memory.
"""

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.scale_stages.children import in_fork, in_interpreter  # noqa: E402
from hf_cllm4rec.cli import main as cllm4rec  # noqa: E402
from hf_cllm4rec.data import make_power_law_interactions, read_amazon_reviews  # noqa: E402

FULL = {"sizes": [1_000_000, 10_000_000, 100_000_000], "json_lines": 1_000_000}
QUICK = {"sizes": [10_000, 100_000], "json_lines": 20_000}
INTERACTIONS_PER_USER = 100  # users and items are each a hundredth of the interactions
REAL_REVIEWS = ROOT.parent / "shared" / "data" / "amazon-all-beauty-2018" / "All_Beauty_5.json.gz"


def preparation_row(interactions: int, workdir: Path, fork: bool = False) -> dict:
    """Writes the table, runs `cllm4rec prepare` on it in a child process (forked if `fork`), and returns the row."""
    users = items = max(interactions // INTERACTIONS_PER_USER, 10)
    table_path = workdir / f"interactions-{interactions}.parquet"
    out = workdir / f"prepared-{interactions}"
    start = time.perf_counter()
    pq.write_table(make_power_law_interactions(users, items, interactions, seed=0), table_path)
    generate_s = time.perf_counter() - start

    arguments = ["prepare", "--source", "table", "--path", str(table_path), "--out", str(out), "--overwrite"]
    arguments += ["--user-column", "user", "--item-column", "item", "--rating-column", "rating"]
    arguments += ["--timestamp-column", "timestamp"]
    start = time.perf_counter()
    if fork:
        code, peak_rss_gib = in_fork(cllm4rec, arguments)
        if code:
            raise SystemExit(f"cllm4rec prepare failed on {interactions:,} interactions (exit code {code})")
    else:
        _, peak_rss_gib = in_interpreter([sys.executable, "-m", "hf_cllm4rec.cli", *arguments])
    wall_s = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "stage": "preparation",
        "case": f"{_count(interactions)} interactions",
        "users": users,
        "items": items,
        "interactions": interactions,
        "wall_s": round(wall_s, 2),
        "peak_rss_gib": round(peak_rss_gib, 3),
        "rows_per_s": round(interactions / wall_s),
        "parquet_bytes": table_path.stat().st_size,
        "prepared_users": manifest["num_users"],
        "prepared_items": manifest["num_items"],
        "prepared_interactions": sum(manifest["num_interactions"].values()),
        "generate_and_write_s": round(generate_s, 2),
    }


def json_lines_row(path: Path, case: str) -> dict:
    """Times `read_amazon_reviews` on a review dump (after a first read, so that imports and caches are warm)."""
    read_amazon_reviews(path)
    start = time.perf_counter()
    rows = len(read_amazon_reviews(path).interactions)
    wall_s = time.perf_counter() - start
    return {
        "stage": "preparation",
        "case": case,
        "interactions": rows,
        "wall_s": round(wall_s, 3),
        "json_lines_rows_per_s": round(rows / wall_s),
    }


def write_reviews(path: Path, count: int) -> Path:
    """A gzipped review dump with the 2018 release's fields, `count` lines of power-law users and items."""
    table = make_power_law_interactions(max(count // 20, 1), max(count // 20, 1), count, seed=1)
    users, items = table["user"].to_numpy(), table["item"].to_numpy()
    ratings, times = table["rating"].to_numpy(), table["timestamp"].to_numpy()
    words = np.array(["soft", "great", "smells", "nice", "dry", "skin", "hair", "works", "well", "price"])
    rng = np.random.default_rng(1)
    with gzip.open(path, "wt", compresslevel=1) as file:
        for user, item, rating, when in zip(users, items, ratings, times, strict=True):
            record = {
                "overall": float(rating),
                "verified": True,
                "reviewTime": "01 1, 2015",
                "reviewerID": f"A{user:013d}",
                "asin": f"B{item:09d}",
                "style": {"Size:": " 1 oz"},
                "reviewerName": "A reviewer",
                "reviewText": " ".join(rng.choice(words, 12)),
                "summary": " ".join(rng.choice(words, 3)),
                "unixReviewTime": int(when),
            }
            file.write(json.dumps(record) + "\n")
    return path


def _count(number: int) -> str:
    """1000000 -> 1M, 100000 -> 100k."""
    for size, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
        if number >= size and number % size == 0:
            return f"{number // size}{suffix}"
    return f"{number:,}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="Folder for the generated tables and prepared data sets.")
    parser.add_argument("--out", required=True, help="JSON file to write the rows to.")
    parser.add_argument("--quick", action="store_true", help="Small sizes, for CI.")
    parser.add_argument("--sizes", type=int, nargs="+", help="Interaction counts to run instead of the defaults.")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    rows = []
    reviews = write_reviews(workdir / "reviews.json.gz", settings["json_lines"])
    cases = [(reviews, f"JSON lines, {_count(settings['json_lines'])} generated reviews")]
    if REAL_REVIEWS.exists():
        cases.append((REAL_REVIEWS, "JSON lines, Amazon All_Beauty 2018 (5-core)"))
    for path, case in cases:
        rows.append(json_lines_row(path, case))
        print(f"{case}: {rows[-1]['json_lines_rows_per_s']:,} rows/s", flush=True)
    for interactions in args.sizes or settings["sizes"]:
        rows.append(preparation_row(interactions, workdir, fork=args.quick))
        row = rows[-1]
        print(
            f"prepare {row['case']} ({row['users']:,} users x {row['items']:,} items): {row['wall_s']} s, "
            f"peak {row['peak_rss_gib']} GiB",
            flush=True,
        )
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
