"""What produced a benchmark result: the arguments, the device, the library versions and the code's git commit."""

import argparse
import json
import platform
import subprocess
from pathlib import Path

import torch
import transformers

from hf_cllm4rec.writing import replaced_file

# Arguments naming a model, pretrained model, backbone, tokenizer or data set, which may be a local path.
LOCATION_ARGUMENTS = ("model", "pretrained", "backbone", "tokenizer", "data")
# Arguments naming where a run writes its outputs: not what produced the result.
OUTPUT_ARGUMENTS = ("output", "output_dir", "output_file", "results_dir")


def recorded_location(location: str | None) -> str | None:
    """
    A model, backbone, tokenizer or data set as a result records it: a Hub name or a path inside the repository as
    given, any other local path by its last component (where a folder lies on one machine says nothing about the run).
    """
    if location is None:
        return None
    path = Path(location)
    return path.name if path.is_absolute() or ".." in path.parts else location


def recorded_arguments(args) -> dict:
    """A script's parsed arguments as its result records them: locations by `recorded_location`, no outputs."""
    return {
        key: recorded_location(value) if key in LOCATION_ARGUMENTS else value
        for key, value in vars(args).items()
        if key not in OUTPUT_ARGUMENTS
    }


def device_name() -> str:
    """The GPU's name, or the CPU with the number of threads torch uses."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def write_result(path: str | Path, result: dict, commit: str) -> Path:
    """
    Writes a benchmark's result as JSON (never half-written), with what produced it: the device, the library versions
    and `commit`, the code's `git_commit()` read when the run started. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_file(path) as file:
        json.dump(
            {**result, "device": device_name(), "versions": versions(), "git_commit": commit},
            file,
            indent=2,
            default=str,
        )
        file.write("\n")
    return path


def git_commit() -> str:
    """`HEAD`'s hash, marked `+uncommitted` when tracked files differ from it; read it when a run starts."""
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD"], stderr=subprocess.DEVNULL).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+uncommitted" if changed else commit


def add_cudnn_attention_option(parser: argparse.ArgumentParser) -> None:
    """`--no_cudnn_attention`: switch off cuDNN's attention kernel, which costs host time on Hopper GPUs."""
    parser.add_argument(
        "--no_cudnn_attention",
        action="store_true",
        help="Switch off cuDNN's kernel of scaled_dot_product_attention before the run: on Hopper GPUs PyTorch picks "
        "it first, and it cost 3-6 ms of host time per attention call on batches whose length changes from step to "
        "step (benchmarks/README.md, Speed).",
    )


def apply_cudnn_attention_option(args: argparse.Namespace) -> None:
    """Switches cuDNN's attention kernel off where `--no_cudnn_attention` says so."""
    if args.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
