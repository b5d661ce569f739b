"""The shared store for several calltrackd nodes: Redis (redis.asyncio, hiredis parser).

Same behaviour as the SQLite store, built so that any node can serve any request:
- reservations are two sorted sets per pool (free numbers by the time they may be handed
  out, held numbers by expiry) changed only by Lua scripts (`redis_lua.py`), so allocation
  is atomic across nodes and takes the number idle longest;
- the webhook outbox is a sorted set of due deliveries; handing deliveries out leases them
  (their due time moves 60 s ahead in the same script), so two nodes polling together
  never send the same delivery at once, and a node that dies mid-delivery leaves the
  lease to expire and another node to retry. We chose the sorted-set lease over Streams
  consumer groups because deliveries are rescheduled at arbitrary times (backoff), which
  a stream models poorly (pending entries would have to be claimed and re-added);
- a CDR and its outbox rows are written by one script, so they land together.

Every Redis failure surfaces as StoreError within about a second (short socket timeouts):
the tracking service then keeps records in memory and calls go on (fail open).
Durability is Redis's: run it with `appendonly yes` (docs/redis.md).

The store is one class made of four parts: plumbing.py (connections, scripts, the
write-behind), reservations.py (sessions, visits, reservations), records.py (call records,
statistics, reports) and outbox.py (deliveries, liveness).
"""

from __future__ import annotations

from calltrackd.store.base import BACKFILL_RETRY

from .outbox import RedisOutbox
from .plumbing import LEASE, SESSION_TTL
from .records import RedisRecords
from .reservations import RedisReservations

__all__ = ["BACKFILL_RETRY", "LEASE", "SESSION_TTL", "RedisStore"]


class RedisStore(RedisReservations, RedisRecords, RedisOutbox):
    """`Store` over Redis, shared by several nodes."""
