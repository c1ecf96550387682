from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real data sets beside the repository (../shared/data); skips the test where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present: real data sets are not redistributed")
    return SHARED_DATA
