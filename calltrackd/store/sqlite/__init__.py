"""The embedded store: one node, stdlib sqlite3 in WAL mode, off the event loop.

- Reservations live in memory (`store.allocation.Allocator`): allocation runs on the
  loop with no await between check and take, so it is atomic within the one asyncio
  process. Number states, hourly pool usage and visitor sessions are written behind,
  batched every `flush_interval` (a kill loses at most that much reservation activity).
- CDRs and outbox rows are written through: `save_call` returns once its transaction
  committed. Concurrent `save_call`s are group-committed in one transaction.
- One writer thread and one reader thread (own connection: WAL readers never wait for
  the writer). `synchronous=NORMAL` (the default here): a commit is in the WAL file
  before `save_call` returns, so it survives a process kill; a power loss may lose the
  last commits. `sqlite:///path?synchronous=full` trades speed for that too.

The store is one class made of four parts: plumbing.py (connections, schema, the
write-behind's transaction), reservations.py (the reads behind sessions, visits and
callers), records.py (call records, statistics, reports) and outbox.py (deliveries,
liveness); what it does as PostgreSQL does is `WriteBehind`'s (store/writebehind.py).
"""

from __future__ import annotations

from .outbox import SqliteOutbox
from .plumbing import SCHEMA_VERSION, _execute_rows
from .records import CDR_BATCH_WINDOW, SqliteRecords
from .reservations import SqliteReservations

__all__ = ["CDR_BATCH_WINDOW", "SCHEMA_VERSION", "SqliteStore", "_execute_rows"]


class SqliteStore(SqliteReservations, SqliteRecords, SqliteOutbox):
    """`Store` over one SQLite file (or `:memory:` for tests)."""
