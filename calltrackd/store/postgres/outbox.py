"""The PostgreSQL store's outbox (webhook and export deliveries, leased to the worker
that took them) and node liveness."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import asyncpg

from calltrackd.store.sql import Params, deliveries_sql
from calltrackd.tracking.model import WebhookDelivery

from .plumbing import _DELIVERY_COLS, _SELECT_DELIVERY, PostgresPlumbing, _t

LEASE = 60.0  # seconds a delivery handed out stays the worker's


def delivery_row(d: WebhookDelivery) -> tuple[Any, ...]:
    return (d.id, d.event_id, d.event, d.tracker, d.url, d.body, d.created_at, d.attempts,
            d.next_attempt_at, d.status, _t(d.last_error), d.kind)


def _delivery(r: asyncpg.Record) -> WebhookDelivery:
    return WebhookDelivery(
        id=r[0], event_id=r[1], event=r[2], tracker=r[3], url=r[4], body=bytes(r[5]),
        created_at=r[6], attempts=r[7], next_attempt_at=r[8], status=r[9],
        last_error=r[10], kind=r[11])


class PostgresOutbox(PostgresPlumbing):
    """Deliveries due (leased), marked, rescheduled, listed; the heartbeat crash recovery
    reads."""

    async def due_deliveries(self, now: float, limit: int,
                             exclude_urls: Collection[str] = ()) -> list[WebhookDelivery]:
        rows = await self._fetch(
            f"WITH due AS (SELECT id FROM deliveries WHERE status = 'pending'"
            " AND next_attempt_at <= $1 AND (leased_until IS NULL OR leased_until <= $1)"
            " AND NOT (url = ANY($3::text[])) ORDER BY next_attempt_at, created_at"
            " LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " UPDATE deliveries d SET leased_until = $1 + $4::float8 FROM due"
            f" WHERE d.id = due.id RETURNING {', '.join('d.' + c for c in _DELIVERY_COLS)}",
            now, limit, list(exclude_urls), LEASE)
        out = [_delivery(r) for r in rows]
        out.sort(key=lambda d: (d.next_attempt_at, d.created_at))
        return out

    async def mark_delivered(self, delivery_id: str, now: float) -> None:
        await self.mark_delivered_many([delivery_id], now)

    async def mark_delivered_many(self, delivery_ids: Sequence[str], now: float) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1,"
            " delivered_at = $2, last_error = NULL, leased_until = NULL"
            " WHERE id = ANY($1::text[])", list(delivery_ids), now)

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'pending', attempts = $2, next_attempt_at = $3,"
            " last_error = $4, leased_until = NULL WHERE id = $1 AND status <> 'delivered'",
            delivery_id, attempts, next_attempt_at, _t(error))

    async def mark_failed(self, delivery_id: str, attempts: int, error: str) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'failed', attempts = $2, last_error = $3,"
            " leased_until = NULL WHERE id = $1 AND status <> 'delivered'",
            delivery_id, attempts, _t(error))

    async def list_deliveries(
        self, status: str | None, limit: int, kind: str | None = None
    ) -> list[WebhookDelivery]:
        a = Params(numbered=True)
        rows = await self._fetch(deliveries_sql(a, _SELECT_DELIVERY, status, kind, limit),
                                 *a.values)
        return [_delivery(r) for r in rows]

    async def requeue(self, delivery_id: str, now: float) -> bool:
        return await self._execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $2,"
            " leased_until = NULL WHERE id = $1 AND status <> 'delivered'",
            delivery_id, now) > 0

    async def pending_count(self) -> int:
        row = await self._fetchrow("SELECT count(*) FROM deliveries WHERE status = 'pending'")
        return int(row[0]) if row else 0

    async def unlease(self, delivery_ids: Sequence[str]) -> None:
        if delivery_ids:
            await self._execute("UPDATE deliveries SET leased_until = NULL"
                                " WHERE id = ANY($1::text[])", list(delivery_ids))

    # --- node liveness and crash recovery ---------------------------------------------

    async def heartbeat(self, now: float) -> None:
        await self._execute("INSERT INTO heartbeat VALUES ($1, $2) ON CONFLICT (node)"
                            " DO UPDATE SET ts = EXCLUDED.ts", self.node_id, now)

    async def last_heartbeat(self) -> float | None:
        row = await self._fetchrow("SELECT ts FROM heartbeat WHERE node = $1", self.node_id)
        return float(row[0]) if row else None
