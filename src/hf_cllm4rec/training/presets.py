"""
Named training recipes: the defaults of `cllm4rec pretrain` and `cllm4rec finetune` (and of the example scripts) that
one option, `--recipe NAME`, sets. Options given explicitly win over a recipe's.

A recipe holds training policy: schedule, batch size, learning rate, regularization, weight averaging and how rounds
are selected. It holds the backbone only where the recipe was measured with one (`small-cpu`: a random 2-layer
256-dimension GPT-2; `smollm2`: SmolLM2-135M): an explicit `--backbone` replaces the recipe's backbone with its shape
(`random_init`, `backbone_overrides`), and keeps the rest of the recipe; likewise an explicit `--eval_strategy`
replaces the recipe's selection of rounds (evaluation, checkpoints, early stopping) with what the options given say,
and an explicit `--read_out` the recipe's choice of how the mean read-out is weighted.

The recipes that select on validation stop a stage once the validation selection score has not improved for
`early_stopping_patience` rounds, out of a generous maximum (`num_train_epochs`), and keep the best round. Their
learning rate is constant: a decay sized for the maximum would be cut short wherever early stopping ends the run,
while the weight average of the trained weights (`weight_average_decay`) does the annealing over the steps actually
run.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

# Options of the backbone that a recipe names: an explicit `--backbone` drops them all.
BACKBONE_OPTIONS = ("backbone", "random_init", "backbone_overrides")
# Every round is evaluated and checkpointed; the run stops after `early_stopping_patience` rounds without a better
# validation selection score, and ends with the best round's model.
EARLY_STOPPING = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "load_best_model_at_end": True,
    "save_total_limit": 1,
    "early_stopping_patience": 3,
    "per_device_eval_batch_size": 512,
}
# The small recipe's validation creeps up through its noise for many rounds after a pause: a patience of 3 stops
# short of its best round (MovieLens 100K and Beauty, three seeds each; `benchmarks/README.md`).
SMALL_CPU_EARLY_STOPPING = {**EARLY_STOPPING, "early_stopping_patience": 10}
# Options that go with another: given explicitly, the option replaces the recipe's settings of all of them.
DEPENDENT_OPTIONS = {
    "backbone": BACKBONE_OPTIONS,
    "eval_strategy": tuple(EARLY_STOPPING),
    "read_out": ("read_out_prefix_powers",),  # the weighting of the mean read-out
}
SMALL_GPT2_SHAPE = {"n_layer": 2, "n_embd": 256, "n_head": 4}


@dataclass(frozen=True)
class Recipe:
    """A named set of option defaults for each training stage."""

    name: str
    description: str
    pretraining: dict = field(default_factory=dict)
    finetuning: dict = field(default_factory=dict)
    # False where the pretrained model recommends better than its fine-tuned one did (fine-tuning stays possible)
    fine_tunes: bool = True

    def defaults(self, stage: str, explicit: set[str] = frozenset()) -> dict:
        """
        The recipe's defaults for `stage` (`"pretrain"` or `"finetune"`), less those that options named in `explicit`
        replace: the option itself and the settings that go with it (`DEPENDENT_OPTIONS`).
        """
        settings = {"pretrain": self.pretraining, "finetune": self.finetuning}[stage]
        replaced = set(explicit).union(*(DEPENDENT_OPTIONS[name] for name in explicit if name in DEPENDENT_OPTIONS))
        return {name: value for name, value in settings.items() if name not in replaced}


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "paper",
            "The paper's schedule: 10 content epochs, 100 pretraining rounds, 150 fine-tuning rounds with the best "
            "kept on validation; GPT-2 frozen, batch 20, learning rates 1e-3 and 1e-4, no early stopping.",
            pretraining={
                "backbone": "gpt2",
                "content_warmup_epochs": 10,
                "num_train_epochs": 110,
                "per_device_train_batch_size": 20,
                "learning_rate": 1e-3,
                "lr_scheduler_type": "constant",
                "content_documents": "user_item",
                "save_strategy": "no",
            },
            finetuning={
                "num_train_epochs": 150,
                "per_device_train_batch_size": 20,
                "learning_rate": 1e-4,
                "lr_scheduler_type": "constant",
                "content_documents": "user_item",
                "eval_strategy": "epoch",
                "save_strategy": "epoch",
                "load_best_model_at_end": True,
                "save_total_limit": 1,
            },
        ),
        Recipe(
            "small-cpu",
            "A random 2-layer 256-dimension GPT-2 (dropout 0.4) trained on collaborative documents alone, each "
            "position predicting the items that remain, batch 64, learning rate 1e-3, weight average 0.999, early "
            "stopping on validation, items scored by the mean read-out over the history, its weighting of the "
            "longer prefixes chosen on validation: the best quality per CPU hour measured. Its pretrained model "
            "recommends; fine-tuning is optional.",
            pretraining={
                "backbone": "gpt2",
                "random_init": True,
                "backbone_overrides": json.dumps(SMALL_GPT2_SHAPE),
                "backbone_dropout": 0.4,
                "read_out": "mean",
                "read_out_prefix_powers": [0, 1, 2, 4, 8],
                "collaborative_targets": "remaining_items",
                "content_steps": False,
                "content_warmup_epochs": 0,
                "num_train_epochs": 100,
                "per_device_train_batch_size": 64,
                "learning_rate": 1e-3,
                "lr_scheduler_type": "constant",
                "weight_average_decay": 0.999,
                **SMALL_CPU_EARLY_STOPPING,
            },
            finetuning={
                "content_steps": False,
                "num_train_epochs": 100,
                "per_device_train_batch_size": 64,
                "learning_rate": 1e-4,
                "lr_scheduler_type": "constant",
                "weight_average_decay": 0.999,
                **SMALL_CPU_EARLY_STOPPING,
            },
            fine_tunes=False,
        ),
        Recipe(
            "smollm2",
            "SmolLM2-135M with LoRA adapters, ID embeddings drawn from its word embeddings with dropout 0.3, an item "
            "head of its own, no mutual regularization, collaborative documents alone grouped by length, batch 32, "
            "learning rate 1e-3 (held constant, 2e-3 learns markedly slower), weight decay 0.3, weight average 0.998, "
            "early stopping on validation.",
            pretraining={
                "backbone": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "id_embedding_init": "vocabulary",
                "id_embedding_dropout": 0.3,
                "untie_item_head": True,
                "lambda_v": 0.0,
                "backbone_training": "lora",
                "train_sampling_strategy": "group_by_length",
                "content_steps": False,
                "content_warmup_epochs": 0,
                "num_train_epochs": 50,
                "per_device_train_batch_size": 32,
                "learning_rate": 1e-3,
                "lr_scheduler_type": "constant",
                "weight_decay": 0.3,
                "weight_average_decay": 0.998,
                **EARLY_STOPPING,
            },
            finetuning={
                "backbone_training": "lora",
                "train_sampling_strategy": "group_by_length",
                "content_steps": False,
                "num_train_epochs": 50,
                "per_device_train_batch_size": 32,
                "learning_rate": 1e-4,
                "lr_scheduler_type": "constant",
                "weight_decay": 0.3,
                "weight_average_decay": 0.998,
                **EARLY_STOPPING,
            },
            fine_tunes=False,
        ),
    )
}
# The recipe that measured best per CPU hour.
DEFAULT_RECIPE = "small-cpu"


# What `--search` tries, per stage: the settings that no recipe can fix for every data set, each trial early-stopped.
# Pretraining: dropout, and the batch size, which sets how many steps an epoch of a small data set takes.
SEARCH_GRIDS = {
    "pretrain": {"backbone_dropout": (0.2, 0.4), "per_device_train_batch_size": (16, 64)},
    "finetune": {"id_embedding_dropout": (0.2, 0.4), "weight_decay": (0.0, 0.1)},
}


def given_options(parser: argparse.ArgumentParser, args: Sequence[str] | None = None) -> set[str]:
    """The destinations of the parser's options that `args` (default, as argparse's: `sys.argv[1:]`) give explicitly."""
    args = sys.argv[1:] if args is None else args
    return {
        parser._option_string_actions[option].dest
        for option in (arg.split("=")[0] for arg in args if arg.startswith("--"))
        if option in parser._option_string_actions
    }


def apply_recipe(parser: argparse.ArgumentParser, args: Sequence[str], stage: str) -> dict:
    """
    Adds `--recipe` to the parser of a training stage (`"pretrain"` or `"finetune"`) and makes the defaults of the
    recipe that `args` name (default: `DEFAULT_RECIPE`) those of its options; options given in `args` keep their
    values. Returns what the run records: the recipe's name, the settings it gave and the options given instead.
    """
    parser.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        help=f"The defaults of the options (default: {DEFAULT_RECIPE}); options given explicitly win. "
        + " ".join(f"{name}: {recipe.description}" for name, recipe in RECIPES.items()),
    )
    recipe_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    recipe_parser.add_argument("--recipe", default=DEFAULT_RECIPE)
    recipe = get_recipe(recipe_parser.parse_known_args(args)[0].recipe)
    given = given_options(parser, args)
    settings = recipe.defaults(stage, given)
    parser.set_defaults(**settings)
    overridden = sorted(given & set(recipe.defaults(stage)))
    return {"recipe": recipe.name, "settings": settings, "given_instead": overridden}


def describe_recipe(record: dict) -> str:
    """One line of what a run's recipe set, as `apply_recipe` records it."""
    settings = " ".join(f"{name}={value}" for name, value in record["settings"].items())
    line = f"Recipe {record['recipe']}: {settings}"
    return f"{line}; given instead: {' '.join(record['given_instead'])}" if record["given_instead"] else line


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; a `ValueError` naming the recipes for any other name."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}.")
    return RECIPES[name]


__all__ = [
    "Recipe",
    "RECIPES",
    "DEFAULT_RECIPE",
    "EARLY_STOPPING",
    "SEARCH_GRIDS",
    "apply_recipe",
    "describe_recipe",
    "get_recipe",
    "given_options",
]
