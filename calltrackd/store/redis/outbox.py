"""The Redis store's outbox (deliveries leased from a sorted set) and node liveness."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from calltrackd.tracking.model import (
    WebhookDelivery,
)

from .plumbing import (
    LEASE,
    RedisPlumbing,
    _s,
)


class RedisOutbox(RedisPlumbing):
    """Deliveries due (leased), marked, rescheduled, listed; the heartbeat."""

    # --- webhook outbox ----------------------------------------------------------------

    def _delivery(self, h: dict[Any, Any]) -> WebhookDelivery:
        f = {_s(k): v for k, v in h.items()}

        def s(name: str) -> str:
            return _s(f.get(name)) or ""

        return WebhookDelivery(
            id=s("id"), event_id=s("event_id"), event=s("event"), tracker=s("tracker"),
            url=s("url"), body=bytes(f.get("body") or b""),
            created_at=float(s("created_at") or 0), attempts=int(s("attempts") or 0),
            next_attempt_at=float(s("next_attempt_at") or 0),
            status=s("status") or "pending",  # type: ignore[arg-type]
            last_error=s("last_error") or None,
            kind=s("kind") or "webhook",  # rows written before kinds existed
        )

    async def _deliveries(self, ids: Sequence[str]) -> list[WebhookDelivery]:
        async def run() -> list[Any]:
            async with self.r.pipeline(transaction=False) as p:
                for i in ids:
                    p.hgetall(f"ctd:dlv:{i}")
                return list(await p.execute())

        return [self._delivery(h) for h in await self._do(run()) if h]

    async def due_deliveries(self, now: float, limit: int,
                             exclude_urls: Collection[str] = ()) -> list[WebhookDelivery]:
        ids = [_s(i) or "" for i in await self._script("LEASE_DUE", now, limit, LEASE,
                                                        *exclude_urls)]
        return await self._deliveries(ids) if ids else []

    async def mark_delivered(self, delivery_id: str, now: float) -> None:
        key = f"ctd:dlv:{delivery_id}"

        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(key, mapping={"status": "delivered", "last_error": ""})
                p.hincrby(key, "attempts", 1)
                p.zrem("ctd:outbox:due", delivery_id)
                await p.execute()

        await self._do(run())

    async def mark_delivered_many(self, delivery_ids: Sequence[str], now: float) -> None:
        """`mark_delivered` for the rows one request carried, in one round trip."""
        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                for delivery_id in delivery_ids:
                    key = f"ctd:dlv:{delivery_id}"
                    p.hset(key, mapping={"status": "delivered", "last_error": ""})
                    p.hincrby(key, "attempts", 1)
                p.zrem("ctd:outbox:due", *delivery_ids)
                await p.execute()

        if delivery_ids:
            await self._do(run())

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None:
        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(f"ctd:dlv:{delivery_id}", mapping={
                    "attempts": attempts, "next_attempt_at": next_attempt_at,
                    "last_error": error})
                p.zadd("ctd:outbox:due", {delivery_id: next_attempt_at})
                await p.execute()

        await self._do(run())

    async def mark_failed(self, delivery_id: str, attempts: int, error: str) -> None:
        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(f"ctd:dlv:{delivery_id}", mapping={
                    "status": "failed", "attempts": attempts, "last_error": error})
                p.zrem("ctd:outbox:due", delivery_id)
                await p.execute()

        await self._do(run())

    async def list_deliveries(self, status: str | None, limit: int,
                              kind: str | None = None) -> list[WebhookDelivery]:
        out: list[WebhookDelivery] = []
        offset = 0
        while len(out) < limit:
            ids = await self._do(self.r.zrevrange("ctd:outbox:all", offset, offset + 499))
            if not ids:
                break
            offset += len(ids)
            for d in await self._deliveries([_s(i) or "" for i in ids]):
                if (status is None or d.status == status) and (kind is None
                                                                or d.kind == kind):
                    out.append(d)
        return out[:limit]

    async def requeue(self, delivery_id: str, now: float) -> bool:
        key = f"ctd:dlv:{delivery_id}"
        status = _s(await self._do(self.r.hget(key, "status")))
        if status not in ("failed", "pending"):
            return False

        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(key, mapping={"status": "pending", "next_attempt_at": now})
                p.zadd("ctd:outbox:due", {delivery_id: now})
                await p.execute()

        await self._do(run())
        return True

    async def unlease(self, delivery_ids: Sequence[str]) -> None:
        if delivery_ids:
            await self._script("UNLEASE", *delivery_ids)

    async def pending_count(self) -> int:
        return int(await self._do(self.r.zcard("ctd:outbox:due")))

    # --- node liveness and crash recovery: per node id -----------------------------------

    async def heartbeat(self, now: float) -> None:
        await self._do(self.r.hset("ctd:heartbeat", self.node_id, repr(now)))

    async def last_heartbeat(self) -> float | None:
        raw = await self._do(self.r.hget("ctd:heartbeat", self.node_id))
        return float(_s(raw) or 0) if raw else None

