"""`cllm4rec pretrain` and `cllm4rec finetune`: the training recipes on the forwarded arguments."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .common import DataclassArgumentParser, one_line

# Each command: its help, the recipe it runs, its (model, training) argument classes, and the other stage's command.
STAGES = {
    "pretrain": (
        "Pretrain the user and item embeddings of a backbone (collaborative and content language modelling).",
        "run_pretraining",
        ("PretrainingModelArguments", "PretrainingArguments"),
        "finetune",
    ),
    "finetune": (
        "Fine-tune a pretraining checkpoint for item prediction (--pretrained).",
        "run_finetuning",
        ("FineTuningModelArguments", "FineTuningArguments"),
        "pretrain",
    ),
}


def add_pretrain_command(subparsers: argparse._SubParsersAction) -> None:
    _add_training_command(subparsers, "pretrain")


def add_finetune_command(subparsers: argparse._SubParsersAction) -> None:
    _add_training_command(subparsers, "finetune")


def _add_training_command(subparsers: argparse._SubParsersAction, name: str) -> None:
    # every argument, --help included, goes to the HfArgumentParser of the stage's dataclasses
    help = STAGES[name][0]
    parser = subparsers.add_parser(name, add_help=False, help=help, description=help)
    parser.set_defaults(handler=train, forwards_arguments=True)


def stage_parser(command: str, prog: str | None = None) -> DataclassArgumentParser:
    """The parser of `cllm4rec pretrain` or `cllm4rec finetune`: the stage's model, data and training arguments."""
    from .. import training
    from ..training import recipes

    model_arguments, training_arguments = STAGES[command][2]
    dataclasses = (getattr(recipes, model_arguments), recipes.DataArguments, getattr(training, training_arguments))
    # no abbreviations: an option of the other stage is named as such, not taken for the start of one of this stage
    return DataclassArgumentParser(dataclasses, prog=prog or f"cllm4rec {command}", allow_abbrev=False)


def option_names(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def parse_stage_arguments(command: str, argv: Sequence[str], prog: str | None = None) -> tuple:
    """
    Reads the command line of a training stage (`"pretrain"` or `"finetune"`) as `cllm4rec` and the example scripts
    do: the defaults of `--recipe` (`training/presets.py`) under the options given, and a one-line usage error for an
    option that is unknown, of the other stage, tried by `--search`, or that these runs have no use for. Returns the
    model, data and training arguments, the options `--search` and its grid, and the recipe's record.
    """
    from ..training.presets import SEARCH_GRIDS, apply_recipe, given_options

    parser = stage_parser(command, prog)
    grid = SEARCH_GRIDS[command]
    parser.add_argument(
        "--search",
        action="store_true",
        help="Train once for every combination of "
        + ", ".join(f"{name} in {{{', '.join(map(str, values))}}}" for name, values in grid.items())
        + ", each early-stopped on validation, and keep the best on validation (every trial is recorded in "
        "recipe.json).",
    )
    try:
        recipe = apply_recipe(parser, argv, command)
        model_args, data_args, training_args, options, unknown = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True
        )
    except ValueError as error:  # a value the arguments' own checks refuse
        parser.error(one_line(error))
    if unknown:
        other = STAGES[command][3]
        elsewhere = [
            option
            for option in unknown
            if option.split("=")[0] in option_names(stage_parser(other)) - option_names(parser)
        ]
        if elsewhere:
            parser.error(f"{', '.join(elsewhere)}: an option of `cllm4rec {other}`, not of `cllm4rec {command}`")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    given = given_options(parser, argv)
    searched = sorted(given & set(grid)) if options.search else []
    if searched:
        parser.error(f"--{', --'.join(searched)}: --search tries its own values of {', '.join(searched)}")
    script_switches = sorted(given & {"do_train", "do_eval", "do_predict"})
    if script_switches:
        parser.error(
            f"--{', --'.join(script_switches)}: these runs always train, evaluate as eval_strategy says "
            "and end with the test split"
        )
    return model_args, data_args, training_args, options, recipe


def train(args: argparse.Namespace) -> int:
    """Runs `cllm4rec pretrain` / `finetune` ([`run_stage`])."""
    run_stage(args.command, args.forwarded)
    return 0


def run_stage(command: str, argv: Sequence[str], prog: str | None = None) -> dict[str, float]:
    """
    Runs a training stage (`"pretrain"` or `"finetune"`) on its command line ([`parse_stage_arguments`]), as
    `cllm4rec` and the example scripts do: the stage's run of `training/recipes.py`, or with `--search` every trial of
    its grid; prints the recipe, then the test metrics. Returns the test metrics.
    """
    from accelerate import PartialState

    from ..training import recipes
    from ..training.presets import SEARCH_GRIDS, describe_recipe

    model_args, data_args, training_args, options, recipe = parse_stage_arguments(command, argv, prog)
    if training_args.should_log:
        print(describe_recipe(recipe))
    if options.search:
        metrics = recipes.run_search(model_args, data_args, training_args, SEARCH_GRIDS[command], recipe)
    else:
        metrics = getattr(recipes, STAGES[command][1])(model_args, data_args, training_args, recipe)
    PartialState().destroy_process_group()  # a clean exit for every process of `accelerate launch`
    if training_args.should_log:
        print(recipes.results_summary(metrics, training_args.output_dir))
    return metrics
