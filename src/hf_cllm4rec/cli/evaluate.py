"""`cllm4rec evaluate`: Recall@K and NDCG@K of a checkpoint on a split of a prepared data set."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..writing import replaced_file
from .common import UsageError, add_scoring_arguments, check_output_file, check_positive, load_checkpoint, non_empty


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Recall@K and NDCG@K of a model on a split of a prepared data set.",
        description="Rank every item for every user with held-out items in --split, training items excluded (the "
        "paper's protocol), and print Recall@K and NDCG@K.",
    )
    parser.add_argument("--model", required=True, type=non_empty, help="Folder or Hub name of a CLLM4Rec checkpoint.")
    parser.add_argument(
        "--data", required=True, type=non_empty, help="A folder written by `cllm4rec prepare`, or 'builtin'."
    )
    parser.add_argument("--split", default="test", choices=["validation", "test"], help="Default: test.")
    # the defaults, the paper's, are reported whatever the catalogue's size; Ks given must lie within it
    parser.add_argument("--recall-ks", type=int, nargs="+", help="At most the number of items (default: 20 40).")
    parser.add_argument("--ndcg-ks", type=int, nargs="+", help="At most the number of items (default: 100).")
    add_scoring_arguments(parser)
    parser.add_argument("--output", type=non_empty, help="Also write the metrics to this JSON file.")
    parser.set_defaults(handler=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    """Runs `cllm4rec evaluate`: loads the checkpoint and the data set, ranks with a progress bar, prints the metrics."""
    from ..evaluation import (
        DEFAULT_NDCG_KS,
        DEFAULT_RECALL_KS,
        check_model_fits_data,
        default_max_length,
        evaluate_model,
    )
    from ..serving import check_checkpoint_ids
    from ..training.recipes import DataArguments, load_data

    check_positive(
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_tokens=args.max_tokens,
        recall_ks=min(args.recall_ks or (), default=None),
        ndcg_ks=min(args.ndcg_ks or (), default=None),
        history_permutations=args.history_permutations,
    )
    if args.output is not None:
        check_output_file(Path(args.output))
    model, tokenizer = load_checkpoint(args.model, args.dtype, args.read_out)
    for option, ks in (("--recall-ks", args.recall_ks), ("--ndcg-ks", args.ndcg_ks)):
        if ks and max(ks) > model.config.num_items:
            raise UsageError(f"{option} {max(ks)} exceeds the model's {model.config.num_items} items")
    tokenizer.checked_max_length(args.max_length)  # before the data set is read
    data = load_data(DataArguments(data=args.data))
    check_model_fits_data(model, data)
    if not check_checkpoint_ids(args.model, data):
        print(
            f"cllm4rec: warning: {args.model} has no id mappings: only the user and item counts of --data are checked",
            file=sys.stderr,
        )
    metrics = evaluate_model(
        model,
        tokenizer,
        data,
        args.split,
        batch_size=args.batch_size,
        max_length=args.max_length or default_max_length(model.config),
        recall_ks=args.recall_ks or DEFAULT_RECALL_KS,
        ndcg_ks=args.ndcg_ks or DEFAULT_NDCG_KS,
        max_tokens=args.max_tokens,
        history_permutations=args.history_permutations,
    )
    print(f"{args.split} split of {data.name!r}: {int(metrics['num_users'])} users")
    for name, value in metrics.items():
        if name != "num_users":
            print(f"  {name:<16}{value:.4f}")
    if args.output is not None:
        with replaced_file(args.output) as file:
            json.dump({f"{args.split}_{name}": value for name, value in metrics.items()}, file)
    return 0
