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

Each subcommand is a module of this package with an `add_<name>_command(subparsers)` function that declares its arguments and sets `handler` to the
function that runs it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import datasets
from transformers.utils import logging as transformers_logging

from .common import ArgumentParser, UsageError, one_line
from .evaluate import add_evaluate_command
from .export_embeddings import add_export_embeddings_command
from .prepare import add_prepare_command
from .recommend import add_recommend_command
from .train import add_finetune_command, add_pretrain_command


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="cllm4rec", description="CLLM4Rec: collaborative LLMs for recommendation.")
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
    except (UsageError, ValueError, OSError) as error:
        parser.error(one_line(error))
