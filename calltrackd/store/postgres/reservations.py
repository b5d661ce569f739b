"""The PostgreSQL store's reads for what memory does not hold (older sessions, visitors,
callers; `WriteBehind` in calltrackd/store/writebehind.py asks memory first), and the
callers and the hunt round_robin's rotation counters written through.
"""

from __future__ import annotations

from collections.abc import Sequence

from calltrackd.store.writebehind import VisitorRow

from .plumbing import _CALLER_INSERT, PostgresPlumbing, _t


class PostgresReservations(PostgresPlumbing):
    """The reads a memory miss falls back on; `record_caller`."""

    async def _read_session(self, session_id: str) -> tuple[str, float, bool] | None:
        row = await self._fetchrow("SELECT data, last_seen, dynamic FROM sessions WHERE id = $1",
                                   session_id)
        return None if row is None else (row[0], row[1], row[2])

    async def _read_visits(self, tracker: str, keys: Sequence[str]) -> list[VisitorRow]:
        rows = await self._fetch("SELECT key, session_id, number, at FROM visitors"
                                 " WHERE tracker = $1 AND key = ANY($2::text[])",
                                 tracker, list(keys))
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def _read_caller(self, tracker: str, caller: str) -> bool:
        seen = await self._fetchrow(
            "SELECT 1 FROM callers WHERE tracker = $1 AND caller = $2", tracker, _t(caller))
        return seen is not None

    async def record_caller(self, tracker: str, caller: str, now: float) -> None:
        await self._execute(_CALLER_INSERT, tracker, _t(caller), now)

    # --- hunt round_robin: rotation counters (one statement: atomic) ------------------

    async def rotate(self, key: str) -> int:
        row = await self._fetchrow(
            "INSERT INTO rotations VALUES ($1, 1) ON CONFLICT (key) DO UPDATE"
            " SET n = rotations.n + 1 RETURNING n", key)
        assert row is not None  # RETURNING always gives the row
        return int(row[0])
