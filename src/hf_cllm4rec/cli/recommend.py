"""`cllm4rec recommend`: top-k items for known users, new users' histories or every user."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from .common import UsageError, add_scoring_arguments, check_positive, load_checkpoint, replacing


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
    from ..evaluation import default_max_length, prompt_length_batches
    from ..serving import IdMappings

    check_positive(
        k=args.k,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_tokens=args.max_tokens,
        history_permutations=args.history_permutations,
    )
    if args.output and Path(args.output).suffix not in (".json", ".csv"):
        raise UsageError(f"--output must be a .json or .csv file, got {args.output}")
    model, tokenizer = load_checkpoint(args.model, args.history_permutations, args.dtype)
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
            raise UsageError(error.args[0]) from None
        if not history:
            raise UsageError(f"user {raw_id!r} has no training items: give their history with --histories")
        requests.append((raw_id, user, history))
    return requests


def _all_users(mappings) -> list[tuple[str, int, list[int]]]:
    if not mappings.histories:
        raise UsageError("the checkpoint's id_mappings.json holds no training histories: give them with --histories")
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
            raise UsageError(f"history {label!r} in {path} holds no item the model knows{unknown_ids}")
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
        raise UsageError(f"no histories file at {path}")
    if path.suffix == ".json":
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise UsageError(f"{path} is not valid JSON: {error}") from None
        if isinstance(stored, list):
            stored = {str(position): history for position, history in enumerate(stored)}
        if not isinstance(stored, dict) or not all(isinstance(history, list) for history in stored.values()):
            raise UsageError(f"{path} must hold {{name: [item ids]}} or [[item ids], ...]")
        histories = {str(label): [str(item) for item in history] for label, history in stored.items()}
    elif path.suffix == ".csv":
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            if not {"user", "item"} <= set(reader.fieldnames or ()):
                raise UsageError(f"{path} must have the columns user,item; found {reader.fieldnames}")
            histories = {}
            for row in reader:
                histories.setdefault(row["user"], []).append(row["item"])
    else:
        raise UsageError(f"--histories must be a .json or .csv file, got {path}")
    if not histories:
        raise UsageError(f"{path} holds no history")
    return histories


def _write_recommendations(results: dict[str, list[dict]], path: Path) -> None:
    with replacing(path) as file:
        if path.suffix == ".json":
            json.dump(results, file, indent=2)
        else:
            writer = csv.writer(file)
            writer.writerow(["user", "rank", "item_id", "score", "text"])
            for label, ranked in results.items():
                for rank, item in enumerate(ranked, start=1):
                    writer.writerow([label, rank, item["item_id"], item["score"], item["text"]])
