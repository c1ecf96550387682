"""What produced a benchmark result: the device, the library versions and the code's git commit."""

import platform
import subprocess

import torch
import transformers


def device_name() -> str:
    """The GPU's name, or the CPU with the number of threads torch uses."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def git_commit() -> str:
    """`HEAD`'s hash, marked `+uncommitted` when tracked files differ from it; read it when a run starts."""
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD"], stderr=subprocess.DEVNULL).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+uncommitted" if changed else commit
