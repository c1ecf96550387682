"""
The `cllm4rec` command line.

```
cllm4rec prepare --source amazon --reviews reviews_Beauty_5.json.gz --meta meta_Beauty.json.gz --out data/beauty
cllm4rec prepare --source synthetic --out data/synthetic
cllm4rec pretrain --data data/beauty --backbone gpt2 --output_dir runs/pretrain --num_train_epochs 100
cllm4rec finetune --data data/beauty --pretrained runs/pretrain --output_dir runs/finetune --num_train_epochs 150
cllm4rec evaluate --model runs/finetune --data data/beauty --split test
cllm4rec recommend --model runs/finetune --users A3CIUOJXQ5VDQ2 --k 10
cllm4rec recommend --model runs/finetune --histories new_users.csv --output recommendations.json
cllm4rec recommend --model runs/finetune --all-users --k 100 --batch-size 1024 --output recommendations.csv
cllm4rec export-embeddings --model runs/finetune --out runs/finetune-embeddings
```

Each subcommand is an `add_<name>_command(subparsers)` function that declares its arguments and sets `handler` to the
function that runs it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm
from transformers import HfArgumentParser
from transformers.utils import logging as transformers_logging

from .data import (
    RecommendationData,
    apply_protocol,
    make_synthetic_data,
    read_amazon_reviews,
    read_authors_split,
    read_interaction_table,
    read_movielens,
)

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


class _UsageError(Exception):
    """An argument combination that argparse cannot check by itself."""


class _ArgumentParser(argparse.ArgumentParser):
    """Reports a usage error as one line, `cllm4rec: error: ...`, with exit code 2."""

    def error(self, message: str):
        self.exit(2, f"cllm4rec: error: {message}\n")


class _DataclassArgumentParser(_ArgumentParser, HfArgumentParser):
    """`HfArgumentParser` with the one-line usage errors of `cllm4rec`."""


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
    parser.add_argument("--out", required=True, help="Directory to write the prepared data set to.")
    parser.add_argument(
        "--overwrite", action="store_true", default=False, help="Replace a prepared data set already at --out."
    )
    parser.add_argument(
        "--name", default=None, help="Name recorded in the manifest (default: from the input's file name)."
    )

    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--reviews", help="amazon: review JSON lines (.json or .json.gz).")
    inputs.add_argument("--meta", help="amazon: metadata JSON lines, for item text (optional).")
    inputs.add_argument("--path", help="authors, movielens: the directory; table: the interaction table.")
    inputs.add_argument("--user-column", help="table: the user id column.")
    inputs.add_argument("--item-column", help="table: the item id column.")
    inputs.add_argument("--rating-column", help="table: the rating column (optional).")
    inputs.add_argument("--timestamp-column", help="table: the timestamp column, Unix seconds or dates (optional).")
    inputs.add_argument("--text-column", help="table: the review text column (optional).")
    inputs.add_argument("--item-text", help="table: a table of item text keyed by --item-column (optional).")
    inputs.add_argument("--item-text-column", help="table: the text column of --item-text (default: text).")

    synthetic = parser.add_argument_group("synthetic data set")
    synthetic.add_argument("--num-users", type=int, help="Number of users (default: 300).")
    synthetic.add_argument("--num-items", type=int, help="Number of items (default: 120).")
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
    if Path(args.out).exists() and not args.overwrite:
        raise _UsageError(f"{args.out} already exists; pass --overwrite to replace it")
    data = _read_source(args)
    if args.name:
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
    protocol = {option: given.get(option, default) for option, default in PROTOCOL_DEFAULTS.items()}
    return apply_protocol(raw.interactions, raw.item_text, name=name, sources=raw.sources, **protocol)


def _check_source_options(args: argparse.Namespace) -> None:
    required, optional = SOURCE_OPTIONS[args.source]
    for option in required:
        if not hasattr(args, option):
            raise _UsageError(f"--source {args.source} needs --{option.replace('_', '-')}")
    for option in {option for options in SOURCE_OPTIONS.values() for option in (*options[0], *options[1])}:
        if option not in (*required, *optional) and hasattr(args, option):
            raise _UsageError(f"--{option.replace('_', '-')} does not apply to --source {args.source}")


def _stem(path: str) -> str:
    """A data set name from a path: `reviews_Beauty_5.json.gz` -> `reviews_Beauty_5`."""
    return Path(path).name.split(".")[0] or Path(path).resolve().name


def add_pretrain_command(subparsers: argparse._SubParsersAction) -> None:
    _add_training_command(
        subparsers,
        "pretrain",
        "Pretrain the user and item embeddings of a backbone (collaborative and content language modelling).",
        "run_pretraining",
    )


def add_finetune_command(subparsers: argparse._SubParsersAction) -> None:
    _add_training_command(
        subparsers,
        "finetune",
        "Fine-tune a pretraining checkpoint for item prediction (--pretrained), keeping the best round.",
        "run_finetuning",
    )


def _add_training_command(subparsers: argparse._SubParsersAction, name: str, help: str, recipe: str) -> None:
    # every argument, --help included, goes to the HfArgumentParser of the recipe's dataclasses
    parser = subparsers.add_parser(name, add_help=False, help=help, description=help)
    parser.set_defaults(handler=train, recipe=recipe, forwards_arguments=True)


def train(args: argparse.Namespace) -> int:
    """Runs `cllm4rec pretrain` / `finetune`: the recipe of `training/recipes.py` on the forwarded arguments."""
    from accelerate import PartialState

    from .training import CLLM4RecTrainingArguments, recipes

    parser = _DataclassArgumentParser(
        (recipes.ModelArguments, recipes.DataArguments, CLLM4RecTrainingArguments), prog=f"cllm4rec {args.command}"
    )
    model_args, data_args, training_args, unknown = parser.parse_args_into_dataclasses(
        args=args.forwarded, return_remaining_strings=True
    )
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    metrics = getattr(recipes, args.recipe)(model_args, data_args, training_args)
    PartialState().destroy_process_group()  # a clean exit for every process of `accelerate launch`
    print(json.dumps(metrics, indent=2))
    return 0


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every command that scores items for users: batch size, prompt length, history orders."""
    parser.add_argument("--batch-size", type=int, default=64, help="Users per forward pass (default: 64).")
    parser.add_argument("--max-length", type=int, help="Longest prompt in tokens (default: the backbone's, <= 1024).")
    parser.add_argument(
        "--history-permutations",
        type=int,
        help="Average the scores over this many random orders of each history (default: the checkpoint's).",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        help="Padded prompt tokens per forward pass at most; users with short prompts then share larger batches, "
        "up to --batch-size (default: no token limit).",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="The weights' dtype: bfloat16 halves their memory and is faster on GPUs (default: float32).",
    )


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Recall@K and NDCG@K of a model on a split of a prepared data set.",
        description="Rank every item for every user with held-out items in --split, training items excluded (the "
        "paper's protocol), and print Recall@K and NDCG@K.",
    )
    parser.add_argument("--model", required=True, help="Folder or Hub name of a CLLM4Rec checkpoint.")
    parser.add_argument("--data", required=True, help="A folder written by `cllm4rec prepare`, or 'builtin'.")
    parser.add_argument("--split", default="test", choices=["validation", "test"], help="Default: test.")
    parser.add_argument("--recall-ks", type=int, nargs="+", default=[20, 40], help="Default: 20 40.")
    parser.add_argument("--ndcg-ks", type=int, nargs="+", default=[100], help="Default: 100.")
    add_scoring_arguments(parser)
    parser.add_argument("--output", help="Also write the metrics to this JSON file.")
    parser.set_defaults(handler=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    """Runs `cllm4rec evaluate`: loads the checkpoint and the data set, prints the metrics."""
    from .training.recipes import DataArguments, load_data
    from .training.trainer import check_model_fits_data, default_max_length, evaluate_model

    _check_positive(
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_tokens=args.max_tokens,
        k=min(args.recall_ks + args.ndcg_ks),
        history_permutations=args.history_permutations,
    )
    model, tokenizer = _load_checkpoint(args.model, args.history_permutations, args.dtype)
    data = load_data(DataArguments(data=args.data))
    check_model_fits_data(model, data)
    if data.tables[args.split].num_rows == 0:
        raise _UsageError(f"the {args.split} split of {data.name!r} has no held-out items")
    metrics = evaluate_model(
        model,
        tokenizer,
        data,
        args.split,
        batch_size=args.batch_size,
        max_length=args.max_length or default_max_length(model.config),
        recall_ks=args.recall_ks,
        ndcg_ks=args.ndcg_ks,
        max_tokens=args.max_tokens,
    )
    print(f"{args.split} split of {data.name!r}: {int(metrics['num_users'])} users")
    for name, value in metrics.items():
        if name != "num_users":
            print(f"  {name:<16}{value:.4f}")
    if args.output:
        with _replacing(Path(args.output)) as file:
            json.dump({f"{args.split}_{name}": value for name, value in metrics.items()}, file)
    return 0


def add_recommend_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recommend",
        help="Top-k items for known users (raw ids) or new users (histories of raw item ids).",
        description="Top-k items, with their text and score, for users of the training data (by their raw ids, "
        "prompted with the training history the checkpoint ships in id_mappings.json) or for new users given by a "
        "history of raw item ids (the cold-start prompt). Items of a history the model does not know are reported "
        "on stderr and left out.",
    )
    parser.add_argument("--model", required=True, help="Folder or Hub name of a fine-tuned CLLM4Rec checkpoint.")
    users = parser.add_mutually_exclusive_group(required=True)
    users.add_argument("--users", nargs="+", metavar="USER_ID", help="Raw ids of users of the training data.")
    users.add_argument(
        "--all-users",
        action="store_true",
        help="Every user of the training data with training items, e.g. to precompute lists with --output.",
    )
    users.add_argument(
        "--histories",
        metavar="FILE",
        help='New users\' histories: JSON ({"name": [item ids], ...} or [[item ids], ...]) or CSV with the '
        "columns user,item (one row per interaction).",
    )
    parser.add_argument("--k", type=int, default=10, help="How many items per user (default: 10).")
    add_scoring_arguments(parser)
    parser.add_argument("--output", metavar="FILE", help="Write the recommendations to a .json or .csv file.")
    parser.set_defaults(handler=recommend)


def recommend(args: argparse.Namespace) -> int:
    """Runs `cllm4rec recommend`: resolves raw ids, recommends in batches by prompt length, prints or writes the top k."""
    from .evaluation import prompt_length_batches
    from .hub import IdMappings
    from .training.trainer import default_max_length

    _check_positive(
        k=args.k,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_tokens=args.max_tokens,
        history_permutations=args.history_permutations,
    )
    if args.output and Path(args.output).suffix not in (".json", ".csv"):
        raise _UsageError(f"--output must be a .json or .csv file, got {args.output}")
    model, tokenizer = _load_checkpoint(args.model, args.history_permutations, args.dtype)
    mappings = IdMappings.load(args.model)
    if args.histories:
        requests = _new_users(args.histories, mappings)
    else:
        requests = _known_users(args.users, mappings) if args.users else _all_users(mappings)
    user_ids, histories = [user for _, user, _ in requests], [history for _, _, history in requests]
    max_length = args.max_length or default_max_length(model.config)
    batches = prompt_length_batches(
        model, tokenizer, user_ids, histories, args.batch_size, max_length, args.max_tokens
    )
    ranked_by_row = [None] * len(requests)
    with tqdm(total=len(requests), desc="Recommending", unit=" users", disable=None) as progress:
        for batch in batches:
            output = model.recommend(
                [user_ids[row] for row in batch],
                [histories[row] for row in batch],
                k=args.k,
                tokenizer=tokenizer,
                max_length=max_length,
            )
            for row, items, scores in zip(batch, output.item_ids.cpu(), output.scores.cpu(), strict=True):
                ranked_by_row[row] = mappings.ranked_items(items, scores)
            progress.update(len(batch))
    results = {label: ranked for (label, _, _), ranked in zip(requests, ranked_by_row, strict=True)}
    if args.output:
        _write_recommendations(results, Path(args.output))
        print(f"Wrote {args.k} items for each of {len(results)} users to {args.output}")
        return 0
    for (label, user, history), ranked in zip(requests, results.values(), strict=True):
        kind = "user" if user is not None else "new user"
        print(f"{kind} {label} ({len(history)} items in the history)")
        for rank, item in enumerate(ranked, start=1):
            print(f"  {rank:>3}. {item['item_id']}  score {item['score']:.4f}  {item['text'][:100]}")
    return 0


def _known_users(raw_ids: list[str], mappings) -> list[tuple[str, int, list[int]]]:
    requests = []
    for raw_id in dict.fromkeys(raw_ids):
        try:
            user = mappings.user_index(raw_id)
            history = mappings.history(user)
        except KeyError as error:
            raise _UsageError(error.args[0]) from None
        if not history:
            raise _UsageError(f"user {raw_id!r} has no training items: give their history with --histories")
        requests.append((raw_id, user, history))
    return requests


def _all_users(mappings) -> list[tuple[str, int, list[int]]]:
    if not mappings.histories:
        raise _UsageError("the checkpoint's id_mappings.json holds no training histories: give them with --histories")
    requests = [
        (raw_id, user, history)
        for user, (raw_id, history) in enumerate(zip(mappings.users, mappings.histories, strict=True))
    ]
    without_history = sum(not history for _, _, history in requests)
    if without_history:
        print(f"cllm4rec: warning: {without_history} users without training items left out", file=sys.stderr)
    return [request for request in requests if request[2]]


def _new_users(path: str, mappings) -> list[tuple[str, None, list[int]]]:
    histories = _read_histories(Path(path))
    requests = []
    for label, raw_history in histories.items():
        history, unknown = mappings.item_indices(raw_history)
        if not history:
            unknown_ids = f" (unknown: {', '.join(unknown)})" if unknown else ""
            raise _UsageError(f"history {label!r} in {path} holds no item the model knows{unknown_ids}")
        if unknown:
            print(
                f"cllm4rec: warning: history {label!r}: unknown item ids left out: {', '.join(unknown)}",
                file=sys.stderr,
            )
        requests.append((label, None, history))
    return requests


def _read_histories(path: Path) -> dict[str, list[str]]:
    """New users' histories from a JSON or CSV file, by label, in raw item ids."""
    if not path.is_file():
        raise _UsageError(f"no histories file at {path}")
    if path.suffix == ".json":
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise _UsageError(f"{path} is not valid JSON: {error}") from None
        if isinstance(stored, list):
            stored = {str(position): history for position, history in enumerate(stored)}
        if not isinstance(stored, dict) or not all(isinstance(history, list) for history in stored.values()):
            raise _UsageError(f"{path} must hold {{name: [item ids]}} or [[item ids], ...]")
        histories = {str(label): [str(item) for item in history] for label, history in stored.items()}
    elif path.suffix == ".csv":
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            if not {"user", "item"} <= set(reader.fieldnames or ()):
                raise _UsageError(f"{path} must have the columns user,item; found {reader.fieldnames}")
            histories = {}
            for row in reader:
                histories.setdefault(row["user"], []).append(row["item"])
    else:
        raise _UsageError(f"--histories must be a .json or .csv file, got {path}")
    if not histories:
        raise _UsageError(f"{path} holds no history")
    return histories


def _write_recommendations(results: dict[str, list[dict]], path: Path) -> None:
    with _replacing(path) as file:
        if path.suffix == ".json":
            json.dump(results, file, indent=2)
        else:
            writer = csv.writer(file)
            writer.writerow(["user", "rank", "item_id", "score", "text"])
            for label, ranked in results.items():
                for rank, item in enumerate(ranked, start=1):
                    writer.writerow([label, rank, item["item_id"], item["score"], item["text"]])


@contextmanager
def _replacing(path: Path):
    """A text file that takes the place of `path` once fully written: a failure leaves `path` as it was."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("w", newline="") as file:
            yield file
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def add_export_embeddings_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-embeddings",
        help="Write the user and item embeddings with their raw ids (safetensors and a datasets table).",
        description="Write a checkpoint's collaborative and content user and item embeddings, with the data set's "
        "raw ids, and the item head, as embeddings.safetensors and as a DatasetDict (tables/) for an "
        "approximate-nearest-neighbour index: a user's scores are the inner products of the hidden state of their "
        "prompt with the item head's rows (the item collaborative embeddings, unless the head is untied).",
    )
    parser.add_argument("--model", required=True, help="Folder or Hub name of a CLLM4Rec checkpoint.")
    parser.add_argument("--out", required=True, help="Directory to write to (new or empty, unless --overwrite).")
    parser.add_argument("--overwrite", action="store_true", help="Write into --out even if it holds files.")
    parser.set_defaults(handler=export_embeddings)


def export_embeddings(args: argparse.Namespace) -> int:
    """Runs `cllm4rec export-embeddings`."""
    from . import embeddings
    from .hub import IdMappings

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise _UsageError(f"{out} already exists and is not an empty directory; pass --overwrite to write into it")
    model, _ = _load_checkpoint(args.model)
    embeddings.export_embeddings(model, out, IdMappings.load(args.model))
    config = model.config
    print(f"Wrote {config.num_users} user and {config.num_items} item embeddings ({config.hidden_size} dims) to {out}")
    return 0


def _load_checkpoint(path: str, history_permutations: int | None = None, dtype: str = "float32"):
    """
    The model (by its saved architecture, in `dtype`) and tokenizer of a checkpoint folder or Hub repository, for
    inference; `history_permutations` overrides the checkpoint's.
    """
    from . import CLLM4RecConfig, CLLM4RecForCollaborativeLM, CLLM4RecForItemPrediction, CLLM4RecTokenizer

    local = Path(path).expanduser()
    if not local.exists() and (local.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1):
        raise _UsageError(f"no model folder at {path}")
    if local.exists() and not (local / "config.json").is_file():
        raise _UsageError(f"{path} is not a model folder: it has no config.json")
    config = CLLM4RecConfig.from_pretrained(path)
    model_classes = {cls.__name__: cls for cls in (CLLM4RecForItemPrediction, CLLM4RecForCollaborativeLM)}
    model_class = model_classes.get((config.architectures or [""])[0], CLLM4RecForItemPrediction)
    model = model_class.from_pretrained(path, dtype=getattr(torch, dtype))
    model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    if history_permutations is not None:
        model.config.history_permutations = history_permutations
    return model, CLLM4RecTokenizer.from_pretrained(path)


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise _UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="cllm4rec", description="CLLM4Rec: collaborative LLMs for recommendation.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for add_command in (
        add_prepare_command,
        add_pretrain_command,
        add_finetune_command,
        add_evaluate_command,
        add_recommend_command,
        add_export_embeddings_command,
    ):
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cllm4rec` console script; returns the exit code (2 for bad arguments or bad input)."""
    parser = build_parser()
    args, forwarded = parser.parse_known_args(argv)
    if forwarded and not getattr(args, "forwards_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(forwarded)}")
    args.forwarded = forwarded
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        return args.handler(args)
    except (_UsageError, ValueError, OSError) as error:
        parser.error(str(error).splitlines()[0] if str(error) else type(error).__name__)


if __name__ == "__main__":
    sys.exit(main())
