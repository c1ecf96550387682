"""`cllm4rec pretrain` and `cllm4rec finetune`: the training recipes on the forwarded arguments."""

from __future__ import annotations

import argparse
import json

from .common import DataclassArgumentParser


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

    from ..training import CLLM4RecTrainingArguments, recipes

    parser = DataclassArgumentParser(
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
