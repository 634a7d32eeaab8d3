import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEGATRON_TIBETAN_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        raise FileNotFoundError(f"shared data not found at {SHARED_DATA} (set MEGATRON_TIBETAN_DATA)")
    return SHARED_DATA
