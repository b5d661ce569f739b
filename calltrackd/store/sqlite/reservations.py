"""SQLite rows behind the sessions, visitors and callers kept in memory by `WriteBehind`
(calltrackd/store/writebehind.py), read on a miss; callers are written through, and so
are the hunt round_robin's rotation counters.
"""

from __future__ import annotations

from collections.abc import Sequence

from calltrackd.store.writebehind import VisitorRow

from .plumbing import SqlitePlumbing


class SqliteReservations(SqlitePlumbing):
    """What `WriteBehind` reads on a memory miss, and `record_caller`."""

    async def _read_session(self, session_id: str) -> tuple[str, float, bool] | None:
        sql = "SELECT data, last_seen, dynamic FROM sessions WHERE id = ?"
        row = await self._read(lambda c: c.execute(sql, (session_id,)).fetchone())
        return None if row is None else (row[0], row[1], bool(row[2]))

    async def _read_visits(self, tracker: str, keys: Sequence[str]) -> list[VisitorRow]:
        sql = (f"SELECT key, session_id, number, at FROM visitors"
               f" WHERE tracker = ? AND key IN ({','.join('?' * len(keys))})")
        rows: list[VisitorRow] = await self._read(
            lambda c: c.execute(sql, (tracker, *keys)).fetchall())
        return rows

    async def _read_caller(self, tracker: str, caller: str) -> bool:
        sql = "SELECT 1 FROM callers WHERE tracker = ? AND caller = ?"
        return await self._read(lambda c: c.execute(sql, (tracker, caller)).fetchone() is not None)

    async def record_caller(self, tracker: str, caller: str, now: float) -> None:
        sql = "INSERT OR IGNORE INTO callers VALUES (?,?,?)"
        await self._write(lambda c: c.execute(sql, (tracker, caller, now)) and None)

    # --- hunt round_robin: rotation counters (one statement: atomic) ------------------

    async def rotate(self, key: str) -> int:
        sql = ("INSERT INTO rotations VALUES (?, 1) ON CONFLICT (key) DO UPDATE"
               " SET n = n + 1 RETURNING n")
        return int(await self._write(lambda c: c.execute(sql, (key,)).fetchone()[0]))
