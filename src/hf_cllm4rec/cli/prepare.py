"""`cllm4rec prepare`: a raw data set through the paper's protocol into a prepared data set."""

from __future__ import annotations

import argparse
import re
from contextlib import contextmanager
from pathlib import Path

import datasets

from ..data import (
    RecommendationData,
    apply_protocol,
    make_synthetic_data,
    read_amazon_reviews,
    read_authors_split,
    read_interaction_table,
    read_movielens,
)
from ..data.prepared import check_writable
from ..data.protocol import check_protocol_parameters
from .common import UsageError, check_output_folder, non_empty

PROTOCOL_DEFAULTS = {"min_rating": 3.0, "k_core": 5, "seed": 98765, "validation_fraction": 0.1, "test_fraction": 0.1}


# For each `prepare --source`: its required options and its optional ones (beyond --out, --overwrite, --name).
SOURCE_OPTIONS = {
    "amazon": (("reviews",), ("meta", *PROTOCOL_DEFAULTS)),
    "authors": (("path",), ()),
    "movielens": (("path",), tuple(PROTOCOL_DEFAULTS)),
    "table": (
        ("path", "user_column", "item_column"),
        ("rating_column", "timestamp_column", "text_column", "item_text", "item_text_column", *PROTOCOL_DEFAULTS),
    ),
    "synthetic": ((), ("num_users", "num_items", "num_clusters", "seed", "validation_fraction", "test_fraction")),
}
# Options that only apply beside another one.
OPTION_NEEDS = {"item_text_column": "item_text"}
# The parameters of the protocol and of the synthetic data that are options of `prepare` of the same name.
PARAMETER_OPTIONS = (*PROTOCOL_DEFAULTS, "num_users", "num_items", "num_clusters")


def _optional_float(value: str) -> float | None:
    return None if value.lower() == "none" else float(value)


def add_prepare_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        argument_default=argparse.SUPPRESS,  # an option left out is absent from the namespace
        help="Read a raw data set, apply the paper's protocol and save a prepared data set.",
        description="Read a raw data set, apply the paper's protocol (filter, k-core, per-user split) and save it "
        "as a prepared data set: a DatasetDict on disk with a manifest.json.",
    )
    parser.add_argument("--source", required=True, choices=list(SOURCE_OPTIONS), help="The kind of raw data.")
    parser.add_argument(
        "--out", required=True, type=non_empty, help="Directory to write the prepared data set to: new or empty."
    )
    parser.add_argument(
        "--overwrite", action="store_true", default=False, help="Replace a prepared data set already at --out."
    )
    parser.add_argument(
        "--name",
        default=None,
        type=non_empty,
        help="Name recorded in the manifest (default: from the input's file name).",
    )

    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--reviews", type=non_empty, help="amazon: review JSON lines (.json or .json.gz).")
    inputs.add_argument("--meta", type=non_empty, help="amazon: metadata JSON lines, for item text (optional).")
    inputs.add_argument(
        "--path", type=non_empty, help="authors, movielens: the directory; table: the interaction table."
    )
    inputs.add_argument("--user-column", type=non_empty, help="table: the user id column.")
    inputs.add_argument("--item-column", type=non_empty, help="table: the item id column.")
    inputs.add_argument("--rating-column", type=non_empty, help="table: the rating column (optional).")
    inputs.add_argument(
        "--timestamp-column", type=non_empty, help="table: the timestamp column, Unix seconds or dates (optional)."
    )
    inputs.add_argument("--text-column", type=non_empty, help="table: the review text column (optional).")
    inputs.add_argument(
        "--item-text", type=non_empty, help="table: a table of item text keyed by --item-column (optional)."
    )
    inputs.add_argument(
        "--item-text-column", type=non_empty, help="table: the text column of --item-text (default: text)."
    )

    synthetic = parser.add_argument_group("synthetic data set")
    synthetic.add_argument("--num-users", type=int, help="Number of users (default: 300).")
    synthetic.add_argument(
        "--num-items", type=int, help="Number of items, at least 3 and --num-clusters (default: 120)."
    )
    synthetic.add_argument("--num-clusters", type=int, help="Number of item themes (default: 6).")

    protocol = parser.add_argument_group("protocol (not for --source authors, which is already split)")
    protocol.add_argument(
        "--min-rating", type=_optional_float, help="Keep ratings above this; 'none' keeps all (default: 3.0)."
    )
    protocol.add_argument("--k-core", type=int, help="Every user and item keeps at least this many (default: 5).")
    protocol.add_argument(
        "--seed", type=int, help="Seed of the user and item shuffles (default: 98765; synthetic: 0)."
    )
    protocol.add_argument(
        "--validation-fraction", type=float, help="Share of each user's items held out (default: 0.1)."
    )
    protocol.add_argument("--test-fraction", type=float, help="Share of each user's items for test (default: 0.1).")
    parser.set_defaults(handler=prepare)


def prepare(args: argparse.Namespace) -> int:
    """Runs `cllm4rec prepare`: reads the source, applies the protocol, writes the data set and prints its counts."""
    _check_source_options(args)
    check_output_folder(Path(args.out), check_writable, args.overwrite)  # before the source is read (minutes)
    data = _read_source(args)
    if args.name is not None:
        data.manifest["name"] = args.name
    datasets.disable_progress_bars()
    data.save(args.out, overwrite=args.overwrite)

    counts = data.manifest["num_interactions"]
    print(f"Prepared {data.name!r} in {args.out}")
    print(f"  users: {data.num_users:,}  items: {data.num_items:,}  reviews: {data.manifest['num_reviews']:,}")
    print("  interactions: " + "  ".join(f"{split} {count:,}" for split, count in counts.items()))
    return 0


def _read_source(args: argparse.Namespace) -> RecommendationData:
    given = {option: getattr(args, option) for option in SOURCE_OPTIONS[args.source][1] if hasattr(args, option)}
    if args.source == "authors":
        return read_authors_split(args.path)
    if args.source == "synthetic":
        with _parameters_as_options():
            return make_synthetic_data(**given)
    if args.source == "amazon":
        raw, name = read_amazon_reviews(args.reviews, given.get("meta")), _stem(args.reviews)
    elif args.source == "movielens":
        raw, name = read_movielens(args.path), _stem(args.path)
    else:
        columns = {
            column: given[column] for column in ("rating_column", "timestamp_column", "text_column") if column in given
        }
        if "item_text" in given:
            columns |= {
                "item_text_path": given["item_text"],
                "item_text_column": given.get("item_text_column", "text"),
            }
        raw = read_interaction_table(args.path, user_column=args.user_column, item_column=args.item_column, **columns)
        name = _stem(args.path)
    with _parameters_as_options():
        return apply_protocol(raw.interactions, raw.item_text, name=name, sources=raw.sources, **_protocol(args))


def _protocol(args: argparse.Namespace) -> dict:
    """The protocol's parameters: the options given, the defaults for the others."""
    return {option: getattr(args, option, default) for option, default in PROTOCOL_DEFAULTS.items()}


@contextmanager
def _parameters_as_options():
    """
    Tells a `ValueError` of the protocol or of the synthetic data as a usage error that names options, not parameters:
    `min_rating=None` as `--min-rating none`, `k_core` as `--k-core`.
    """
    try:
        yield
    except ValueError as error:
        message = re.sub(
            rf"\b({'|'.join(PARAMETER_OPTIONS)})\b(=(None\b)?)?",
            lambda match: f"--{match[1].replace('_', '-')}" + (" none" if match[3] else " " if match[2] else ""),
            str(error),
        )
        raise UsageError(message) from None


def _check_source_options(args: argparse.Namespace) -> None:
    required, optional = SOURCE_OPTIONS[args.source]
    for option in required:
        if not hasattr(args, option):
            raise UsageError(f"--source {args.source} needs --{option.replace('_', '-')}")
    for option in {option for options in SOURCE_OPTIONS.values() for option in (*options[0], *options[1])}:
        if option not in (*required, *optional) and hasattr(args, option):
            raise UsageError(f"--{option.replace('_', '-')} does not apply to --source {args.source}")
    for option, needed in OPTION_NEEDS.items():
        if hasattr(args, option) and not hasattr(args, needed):
            raise UsageError(f"--{option.replace('_', '-')} needs --{needed.replace('_', '-')}")
    if set(PROTOCOL_DEFAULTS) <= set(optional):  # a source the protocol splits: its options, before the source is read
        protocol = _protocol(args)
        with _parameters_as_options():
            check_protocol_parameters(**protocol)
        if args.source == "table" and protocol["min_rating"] is not None and not hasattr(args, "rating_column"):
            raise UsageError(
                f"--min-rating {protocol['min_rating']} needs a --rating-column; pass --min-rating none to keep all"
            )


def _stem(path: str) -> str:
    """A data set name from a path: `reviews_Beauty_5.json.gz` -> `reviews_Beauty_5`."""
    return Path(path).name.split(".")[0] or Path(path).resolve().name
