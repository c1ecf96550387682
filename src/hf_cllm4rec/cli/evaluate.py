"""`cllm4rec evaluate`: Recall@K and NDCG@K of a checkpoint on a split of a prepared data set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..writing import replaced_file
from .common import UsageError, add_scoring_arguments, check_output_file, check_positive, load_checkpoint


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
    """Runs `cllm4rec evaluate`: loads the checkpoint and the data set, ranks with a progress bar, prints the metrics."""
    from ..evaluation import check_model_fits_data, default_max_length, evaluate_model
    from ..training.recipes import DataArguments, load_data

    check_positive(
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_tokens=args.max_tokens,
        k=min(args.recall_ks + args.ndcg_ks),
        history_permutations=args.history_permutations,
    )
    if args.output:
        check_output_file(Path(args.output))
    model, tokenizer = load_checkpoint(args.model, args.dtype, args.read_out)
    tokenizer.checked_max_length(args.max_length)  # before the data set is read
    data = load_data(DataArguments(data=args.data))
    check_model_fits_data(model, data)
    if data.tables[args.split].num_rows == 0:
        raise UsageError(f"the {args.split} split of {data.name!r} has no held-out items")
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
        history_permutations=args.history_permutations,
    )
    print(f"{args.split} split of {data.name!r}: {int(metrics['num_users'])} users")
    for name, value in metrics.items():
        if name != "num_users":
            print(f"  {name:<16}{value:.4f}")
    if args.output:
        with replaced_file(args.output) as file:
            json.dump({f"{args.split}_{name}": value for name, value in metrics.items()}, file)
    return 0
