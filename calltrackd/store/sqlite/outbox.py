"""The SQLite store's outbox (webhook and export deliveries) and node liveness."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

from calltrackd.store.sql import Params, deliveries_sql
from calltrackd.tracking.model import (
    WebhookDelivery,
)

from .plumbing import SqlitePlumbing

DELIVERY_COLS = (
    "id, event_id, event, tracker, url, body, created_at, attempts, next_attempt_at, status,"
    " last_error, kind"
)
NDELIVERY_COLS = 12


def delivery_row(d: WebhookDelivery) -> tuple[Any, ...]:
    return (d.id, d.event_id, d.event, d.tracker, d.url, d.body, d.created_at, d.attempts,
            d.next_attempt_at, d.status, d.last_error, d.kind)


def _delivery(row: tuple[Any, ...]) -> WebhookDelivery:
    return WebhookDelivery(
        id=row[0], event_id=row[1], event=row[2], tracker=row[3], url=row[4], body=bytes(row[5]),
        created_at=row[6], attempts=row[7], next_attempt_at=row[8], status=row[9],
        last_error=row[10], kind=row[11],
    )


class SqliteOutbox(SqlitePlumbing):
    """Deliveries due, marked, rescheduled, listed; the heartbeat crash recovery reads."""

    # --- webhook outbox --------------------------------------------------------------

    async def _execute(self, sql: str, args: tuple[Any, ...]) -> int:
        return await self._write(lambda c: c.execute(sql, args).rowcount)

    async def due_deliveries(self, now: float, limit: int,
                             exclude_urls: Collection[str] = ()) -> list[WebhookDelivery]:
        excluded = tuple(exclude_urls)
        sql = (
            f"SELECT {DELIVERY_COLS} FROM deliveries INDEXED BY deliveries_pending_due"
            " WHERE status = 'pending' AND next_attempt_at <= ?"
            + (f" AND url NOT IN ({','.join('?' * len(excluded))})" if excluded else "")
            + " ORDER BY next_attempt_at, created_at LIMIT ?"
        )
        rows = await self._read(lambda c: c.execute(sql, (now, *excluded, limit)).fetchall())
        return [_delivery(r) for r in rows]

    async def mark_delivered(self, delivery_id: str, now: float) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1,"
            " delivered_at = ?, last_error = NULL WHERE id = ?",
            (now, delivery_id),
        )

    async def mark_delivered_many(self, delivery_ids: Sequence[str], now: float) -> None:
        """`mark_delivered` for the rows one request carried, in one transaction."""
        rows = [(now, i) for i in delivery_ids]

        def write(conn: sqlite3.Connection) -> None:
            def body() -> None:
                conn.executemany(
                    "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1,"
                    " delivered_at = ?, last_error = NULL WHERE id = ?", rows)

            self._tx(conn, body)

        await self._write(write)

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'pending', attempts = ?, next_attempt_at = ?,"
            " last_error = ? WHERE id = ? AND status != 'delivered'",
            (attempts, next_attempt_at, error, delivery_id),
        )

    async def mark_failed(self, delivery_id: str, attempts: int, error: str) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'failed', attempts = ?, last_error = ?"
            " WHERE id = ? AND status != 'delivered'",
            (attempts, error, delivery_id),
        )

    async def list_deliveries(
        self, status: str | None, limit: int, kind: str | None = None
    ) -> list[WebhookDelivery]:
        a = Params(numbered=False)
        sql = deliveries_sql(a, DELIVERY_COLS, status, kind, limit)
        rows = await self._read(lambda c: c.execute(sql, a.values).fetchall())
        return [_delivery(r) for r in rows]

    async def requeue(self, delivery_id: str, now: float) -> bool:
        changed = await self._execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?"
            " WHERE id = ? AND status != 'delivered'",
            (now, delivery_id),
        )
        return changed > 0

    async def unlease(self, delivery_ids: Sequence[str]) -> None:
        return None  # due rows are not leased here: each poll sees them again

    async def pending_count(self) -> int:
        sql = "SELECT count(*) FROM deliveries WHERE status = 'pending'"
        n: int = (await self._read(lambda c: c.execute(sql).fetchone()))[0]
        return n

    # --- node liveness and crash recovery (one file is one node's: node_id is a label) ---

    async def heartbeat(self, now: float) -> None:
        sql = "INSERT OR REPLACE INTO heartbeat VALUES (?, ?)"
        await self._write(lambda c: c.execute(sql, (self.node_id, now)) and None)

    async def last_heartbeat(self) -> float | None:
        sql = "SELECT max(ts) FROM heartbeat"
        row = await self._read(lambda c: c.execute(sql).fetchone())
        return float(row[0]) if row and row[0] is not None else None

