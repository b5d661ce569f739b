"""The PostgreSQL store (asyncpg): call records, the webhook outbox and reports in a
database server, for report volumes the embedded store answers slowly.

- `[store] url = "postgresql://user:password@host:5432/dbname"` (also `postgres://`;
  libpq-style query options such as `?sslmode=require` are passed to asyncpg).
- Reservations, visitor sessions and returning visitors live in this process's memory
  (`MemoryState`, as on SQLite: an allocation is atomic on the event loop) and are
  written behind to the database every `flush_interval`, restored at start. So one
  daemon node per database: the store holds an advisory lock while open, and a second
  node's store refuses to open (it would hand out the same numbers). CDRs, open calls
  and heartbeats are kept per `node_id` all the same.
- CDRs, outbox rows, report facts and CRM updates are written through: `save_call`
  returns once its transaction committed; concurrent `save_call`s share a transaction.
  Handing out due deliveries leases them for `LEASE` seconds (`FOR UPDATE SKIP
  LOCKED`), so that a restarted worker or a second one never sends a row twice at once.
- Reports run in SQL over `report_calls` (one narrow row per call) and `report_visits`
  (visitor counters per hour and source); days and hours in the query's zone are
  computed from the timestamp (`reports.time_sql`).

The store is one class made of five parts: plumbing.py (the pool, the schema, the node
lock, the write-behind's transaction), reservations.py (sessions, visits, callers),
records.py (call records, statistics, CRM updates, retention), reports.py (reports and
spend in SQL) and outbox.py (deliveries, liveness).
"""

from __future__ import annotations

from .outbox import LEASE, PostgresOutbox
from .plumbing import SCHEMA_VERSION, SCHEMES
from .records import CDR_BATCH_WINDOW, PostgresRecords
from .reports import REPORT_WORK_MEM, PostgresReports
from .reservations import PostgresReservations

__all__ = ["CDR_BATCH_WINDOW", "LEASE", "REPORT_WORK_MEM", "SCHEMA_VERSION", "SCHEMES",
           "PostgresStore", "postgres_store"]


class PostgresStore(PostgresReservations, PostgresRecords, PostgresReports, PostgresOutbox):
    """`Store` over a PostgreSQL database (asyncpg connection pool); reservations in
    memory (`InMemoryReservations`, written behind by `WriteBehind`)."""


def postgres_store(url: str, retention: float | None = None) -> PostgresStore:
    """The store of a `[store] url` that starts with postgresql:// or postgres://."""
    return PostgresStore.from_url(url, retention)
