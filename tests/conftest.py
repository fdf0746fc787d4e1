"""Shared fixtures: the project's own copy of the published test vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Property tests check results, not speed: on a shared 2-core machine a busy
# moment (a ledger child committing, a benchmark) pushed a DES example past
# hypothesis' default 200 ms deadline and failed a correct test.
settings.register_profile("switchd", deadline=None)
settings.load_profile("switchd")

VECTORS = Path(__file__).parent / "vectors" / "security.json"


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    return json.loads(VECTORS.read_text())
