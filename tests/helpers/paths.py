"""Where the repository, its committed fixtures and the tests' fetched data are."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
# Real data, fetched once by modelyard's own fetch stage and reused across runs (git-ignored).
TEST_DATA_DIR = Path(os.environ.get("MODELYARD_TEST_DATA_DIR", REPO / "tests" / ".data"))
