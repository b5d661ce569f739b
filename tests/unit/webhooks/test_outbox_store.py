"""Outbox rows of every kind on both stores, and a database from before kinds existed."""

from __future__ import annotations

import importlib.util
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from calltrackd.store import create_store
from calltrackd.store.base import Store
from calltrackd.tracking.model import CallRecord, WebhookDelivery

_spec = importlib.util.spec_from_file_location(
    "store_conftest", Path(__file__).resolve().parents[1] / "store" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_store_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_store_conftest)
RedisServer: Any = _store_conftest.RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path}/calltrackd.db"
    else:
        server = request.getfixturevalue("redis_server")
        server.flush()
        url = server.url
    s = create_store(url)
    await s.open()
    yield s
    await s.close()


CALL = CallRecord("c_1", "acme", "+74990000001", "+79161234567",
                  datetime(2026, 11, 22, 10, 0, tzinfo=UTC), outcome="busy")


def row(did: str, kind: str, url: str, at: float = 100.0) -> WebhookDelivery:
    return WebhookDelivery(id=did, event_id="evt_" + did, event="call.ended", tracker="acme",
                           url=url, body=b'{"x":1}', created_at=at, next_attempt_at=at,
                           kind=kind)


async def test_rows_keep_their_kind_through_the_outbox(store: Store) -> None:
    rows = [row("d_hook", "webhook", "https://crm.example/hook"),
            row("d_ga", "ga4", "ga4:G-ABC123"), row("d_ym", "metrica", "metrica:1", at=160.0),
            row("d_tg", "telegram", "telegram:-100")]
    await store.save_call(CALL, rows)
    due = {d.id: d.kind for d in await store.due_deliveries(120.0, 10)}
    assert due == {"d_hook": "webhook", "d_ga": "ga4", "d_tg": "telegram"}
    await store.mark_delivered_many(["d_hook", "d_ga"], 130.0)
    await store.mark_failed("d_tg", 1, "HTTP 400: chat not found")
    listed = {d.id: (d.kind, d.status) for d in await store.list_deliveries(None, 10)}
    assert listed == {"d_hook": ("webhook", "delivered"), "d_ga": ("ga4", "delivered"),
                      "d_ym": ("metrica", "pending"), "d_tg": ("telegram", "failed")}
    assert [d.attempts for d in await store.list_deliveries("delivered", 10)] == [1, 1]
    assert [d.id for d in await store.list_deliveries(None, 10, "metrica")] == ["d_ym"]
    assert [d.id for d in await store.list_deliveries("delivered", 10, "ga4")] == ["d_ga"]
    assert await store.requeue("d_tg", 200.0)
    assert {d.id for d in await store.due_deliveries(200.0, 10)} == {"d_ym", "d_tg"}


async def test_a_database_from_before_kinds_opens_with_its_rows_as_webhooks(
    tmp_path: Path,
) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE deliveries (
  id TEXT PRIMARY KEY, event_id TEXT NOT NULL, event TEXT NOT NULL, tracker TEXT NOT NULL,
  url TEXT NOT NULL, body BLOB NOT NULL, created_at REAL NOT NULL,
  attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL, status TEXT NOT NULL,
  last_error TEXT, delivered_at REAL);
INSERT INTO deliveries VALUES ('d_old', 'evt_old', 'call.ended', 'acme',
  'https://crm.example/hook', X'7B7D', 100.0, 2, 100.0, 'pending', 'HTTP 500', NULL);
""")
    conn.commit()
    conn.close()
    store = create_store(f"sqlite://{db}")
    await store.open()
    try:
        (old,) = await store.due_deliveries(150.0, 10)
        assert (old.id, old.kind, old.attempts, old.last_error) == ("d_old", "webhook", 2,
                                                                      "HTTP 500")
        await store.save_call(CALL, [row("d_new", "slack", "slack:abc")])
        kinds = {d.id: d.kind for d in await store.list_deliveries(None, 10)}
        assert kinds == {"d_old": "webhook", "d_new": "slack"}
    finally:
        await store.close()
    again = create_store(f"sqlite://{db}")  # the migration is idempotent
    await again.open()
    assert len(await again.list_deliveries(None, 10)) == 2
    await again.close()


async def test_due_rows_of_excluded_destinations_are_left_out(store: Store) -> None:
    rows = [row(f"d_a{i}", "webhook", "https://crm.example/a", at=100.0 + i) for i in range(5)]
    rows.append(row("d_tg", "telegram", "telegram:-100", at=200.0))
    await store.save_call(CALL, rows)
    due = await store.due_deliveries(300.0, 3, exclude_urls={"https://crm.example/a"})
    assert [d.id for d in due] == ["d_tg"]  # not hidden behind the older rows of /a
    await store.unlease(["d_tg"])
    assert [d.id for d in await store.due_deliveries(300.0, 3)] == ["d_a0", "d_a1", "d_a2"]
