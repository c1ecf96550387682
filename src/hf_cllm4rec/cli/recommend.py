"""`cllm4rec recommend`: top-k items for known users, new users' histories or every user."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import warnings
from pathlib import Path

from ..writing import replaced_file
from .common import UsageError, add_scoring_arguments, check_output_file, check_positive, load_checkpoint, non_empty


def add_recommend_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recommend",
        help="Top-k items for known users (raw ids) or new users (histories of raw item ids).",
        description="Top-k items, with their text and score, for users of the training data (by their raw ids, "
        "prompted with the training history the checkpoint ships in its id mappings) or for new users given by a "
        "history of raw item ids (the cold-start prompt). Items of a history the model does not know are reported "
        "on stderr and left out.",
    )
    parser.add_argument(
        "--model", required=True, type=non_empty, help="Folder or Hub name of a fine-tuned CLLM4Rec checkpoint."
    )
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
        type=non_empty,
        help='New users\' histories: JSON ({"name": [item ids], ...} or [[item ids], ...]) or CSV with the '
        "columns user,item (one row per interaction).",
    )
    parser.add_argument("--k", type=int, default=10, help="How many items per user (default: 10).")
    add_scoring_arguments(parser)
    parser.add_argument(
        "--output", metavar="FILE", type=non_empty, help="Write the recommendations to a .json or .csv file."
    )
    parser.set_defaults(handler=recommend)


def recommend(args: argparse.Namespace) -> int:
    """Runs `cllm4rec recommend`: resolves raw ids, recommends through a `Recommender`, prints or writes the top k."""
    from ..evaluation import default_max_length
    from ..serving import IdMappings, Recommender

    check_positive(
        k=args.k,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_tokens=args.max_tokens,
        history_permutations=args.history_permutations,
    )
    if args.output is not None:
        check_output_file(Path(args.output), (".json", ".csv"))
    new_users = _read_histories(Path(args.histories)) if args.histories is not None else None
    model, tokenizer = load_checkpoint(args.model, args.dtype, args.read_out)
    mappings = IdMappings.load(args.model)
    recommender = Recommender(
        model,
        tokenizer,
        mappings,
        history_permutations=args.history_permutations,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        max_length=args.max_length or default_max_length(model.config),
    )
    if new_users is not None:
        requests = {label: {"history": history} for label, history in new_users.items()}
    else:
        requests = {raw_id: raw_id for raw_id in (args.users or _users_with_histories(mappings))}
    resolved = {label: _resolve(recommender, label, request) for label, request in requests.items()}
    output = recommender.recommend(
        [user for user, _ in resolved.values()], [history for _, history in resolved.values()], k=args.k
    )
    results = {
        label: mappings.ranked_items(items, scores)
        for label, items, scores in zip(resolved, output.item_ids, output.scores, strict=True)
    }
    if args.output is not None:
        _write_recommendations(results, Path(args.output))
        print(f"Wrote {args.k} items for each of {len(results)} users to {args.output}")
        return 0
    for (label, (user, history)), ranked in zip(resolved.items(), results.values(), strict=True):
        kind = "user" if user is not None else "new user"
        print(f"{kind} {label} ({len(history)} items in the history)")
        for rank, item in enumerate(ranked, start=1):
            print(f"  {rank:>3}. {item['item_id']}  score {item['score']:.4f}  {item['text'][:100]}")
    return 0


def _users_with_histories(mappings) -> list[str]:
    """The raw ids of every user with training items (`--all-users`); the others are counted on stderr."""
    if not mappings.histories:
        raise UsageError("the checkpoint's id mappings file holds no training histories: give them with --histories")
    users = [mappings.users[user] for user in mappings.users_with_histories().tolist()]
    if len(users) < len(mappings.users):
        print(
            f"cllm4rec: warning: {len(mappings.users) - len(users)} users without training items left out",
            file=sys.stderr,
        )
    return users


def _resolve(recommender, label: str, request) -> tuple[int | None, list[int]]:
    """A request's user and history (see `Recommender.resolve`), its warnings and errors told with its label."""
    kind = "history" if isinstance(request, dict) else "user"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            resolved = recommender.resolve(request)
        except KeyError as error:
            raise UsageError(error.args[0]) from None
        except ValueError as error:
            raise UsageError(f"{kind} {label!r}: {error}") from None
    for warning in caught:
        print(f"cllm4rec: warning: {kind} {label!r}: {warning.message}", file=sys.stderr)
    return resolved


def _read_histories(path: Path) -> dict[str, list[str]]:
    """New users' histories from a JSON or CSV file, by label, in raw item ids."""
    if not path.is_file():
        raise UsageError(f"no histories file at {path}")
    if path.suffix not in (".json", ".csv"):
        raise UsageError(f"--histories must be a .json or .csv file, got {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte order mark, as spreadsheets write, is skipped
    except UnicodeDecodeError as error:
        raise UsageError(f"{path} is not UTF-8 text: {error}") from None
    if path.suffix == ".json":
        try:
            stored = json.loads(text)
        except ValueError as error:
            raise UsageError(f"{path} is not valid JSON: {error}") from None
        except RecursionError:
            raise UsageError(f"{path} is not valid JSON: it is nested too deeply") from None
        if isinstance(stored, list):
            stored = {str(position): history for position, history in enumerate(stored)}
        if not isinstance(stored, dict) or not all(isinstance(history, list) for history in stored.values()):
            raise UsageError(f"{path} must hold {{name: [item ids]}} or [[item ids], ...]")
        for label, history in stored.items():
            odd = [item for item in history if isinstance(item, bool) or not isinstance(item, (str, int))]
            if odd:
                raise UsageError(f"{path}: the history {label!r} holds {odd[0]!r}; item ids are strings or integers")
        histories = {str(label): [str(item) for item in history] for label, history in stored.items()}
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            if not {"user", "item"} <= set(reader.fieldnames or ()):
                raise UsageError(f"{path} must have the columns user,item; found {reader.fieldnames}")
            histories = {}
            for row in reader:
                if not row["user"] or not row["item"]:
                    raise UsageError(f"{path}, line {reader.line_num}: a row needs a user and an item")
                histories.setdefault(row["user"], []).append(row["item"])
        except csv.Error as error:
            raise UsageError(f"{path} is not a valid CSV file: {error}") from None
    if not histories:
        raise UsageError(f"{path} holds no history")
    return histories


def _write_recommendations(results: dict[str, list[dict]], path: Path) -> None:
    with replaced_file(path) as file:
        if path.suffix == ".json":
            json.dump(results, file, indent=2)
        else:
            writer = csv.writer(file)
            writer.writerow(["user", "rank", "item_id", "score", "text"])
            for label, ranked in results.items():
                for rank, item in enumerate(ranked, start=1):
                    writer.writerow([label, rank, item["item_id"], item["score"], item["text"]])
