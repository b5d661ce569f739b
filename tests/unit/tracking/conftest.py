"""What the tracking tests share: a SQLite store in the test's own directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from calltrackd.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore.from_url(f"sqlite://{tmp_path}/t.db")
    await s.open()
    yield s
    await s.close()
