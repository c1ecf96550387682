"""What the `cllm4rec` commands share: one-line usage errors, scoring options, checkpoint loading, output checks."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import HfArgumentParser

from ..configuration_cllm4rec import READ_OUTS


class UsageError(Exception):
    """An argument combination that argparse cannot check by itself."""


class ArgumentParser(argparse.ArgumentParser):
    """Reports a usage error as one line, `cllm4rec: error: ...`, with exit code 2."""

    def error(self, message: str):
        self.exit(2, f"cllm4rec: error: {message}\n")


class DataclassArgumentParser(ArgumentParser, HfArgumentParser):
    """`HfArgumentParser` with the one-line usage errors of `cllm4rec`."""


def one_line(error: Exception) -> str:
    """An error's message on one line, every line of it kept: some errors explain the remedy on a line of its own."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def non_empty(value: str) -> str:
    """The `type` of an option that names a file, folder or name: an empty value is refused, not taken as absent."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every command that scores items: batch size, prompt length, history orders, read-out."""
    parser.add_argument("--batch-size", type=int, default=64, help="Users per forward pass (default: 64).")
    parser.add_argument("--max-length", type=int, help="Longest prompt in tokens (default: the backbone's, <= 1024).")
    parser.add_argument(
        "--history-permutations",
        type=int,
        default=1,
        help="Average the scores over this many random orders of each history, each one more forward pass, at most "
        "64 (default: 1, the history in the order given).",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        help="Padded prompt tokens per forward pass at most; users with short prompts then share larger batches, "
        "up to --batch-size (default: no token limit).",
    )
    parser.add_argument(
        "--read-out",
        choices=READ_OUTS,
        help="Score with this read-out instead of the checkpoint's: 'last', the prompt's last token, or 'mean', the "
        "mean over the history (default: the checkpoint's config.read_out).",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="The weights' dtype: bfloat16 halves their memory and is faster on GPUs (default: float32).",
    )


def load_checkpoint(path: str, dtype: str = "float32", read_out: str | None = None):
    """The model (by its saved architecture, in `dtype`, with `read_out` where given) and tokenizer of a checkpoint
    folder or Hub repository, for inference."""
    from ..configuration_cllm4rec import CLLM4RecConfig
    from ..modeling_cllm4rec import saved_model_class
    from ..tokenization_cllm4rec import CLLM4RecTokenizer

    local = Path(path).expanduser()
    if not local.exists() and (local.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1):
        raise UsageError(f"no model folder at {path}")
    if local.exists() and not (local / "config.json").is_file():
        raise UsageError(f"{path} is not a model folder: it has no config.json")
    config = CLLM4RecConfig.from_pretrained(path)
    model_class = saved_model_class(config.architectures)
    overrides = {} if read_out is None else {"read_out": read_out}
    model = model_class.from_pretrained(path, dtype=getattr(torch, dtype), **overrides)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, CLLM4RecTokenizer.from_pretrained(path)


def check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")


def check_output_folder(path: Path, check: Callable[[str | os.PathLike, bool], None], overwrite: bool) -> None:
    """
    Refuses, before any work is done, an `--out` folder that could not be written: one under a file, or one that the
    writer's own `check` (`check_writable`, `check_exportable`) refuses, its advice told as options.
    """
    parent = next((parent for parent in path.parents if parent.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--out {path}: {parent} is not a folder")
    try:
        check(path, overwrite)
    except FileExistsError as error:
        raise UsageError(str(error).replace("overwrite=True", "--overwrite")) from None


def check_output_file(path: Path, suffixes: tuple[str, ...] = ()) -> None:
    """Refuses, before any work is done, an `--output` that could not be written: a folder, a file in a folder that
    does not exist, or (with `suffixes`) a file of another kind."""
    if path.is_dir():
        raise UsageError(f"--output {path} is a directory: give the file to write")
    if not path.parent.is_dir():
        raise UsageError(f"--output {path}: the folder {path.parent} does not exist")
    if suffixes and path.suffix not in suffixes:
        raise UsageError(f"--output must be a {' or '.join(suffixes)} file, got {path}")
