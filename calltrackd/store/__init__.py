"""Storage: one interface (`base.Store`), backends chosen by the `[store] url`."""

from __future__ import annotations

import importlib
from typing import cast

from calltrackd.store.base import Store, StoreError

__all__ = ["Store", "StoreError", "create_store"]


def create_store(url: str, retention: float | None = None) -> Store:
    """The store for a `[store] url` (not opened yet): `sqlite://...`, `redis://...` or
    `postgresql://...` (`postgres/`).

    Raises ValueError naming `store.url` when the URL is not usable. `retention`
    (seconds, `[store] retention`): call records older than that are deleted in the
    background; None or 0 keeps them all.
    """
    if url.startswith("sqlite://"):
        from calltrackd.store.sqlite import SqliteStore

        return SqliteStore.from_url(url, retention or None)
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:  # the Redis backend lands later; imported by name so this builds without it
            module = importlib.import_module("calltrackd.store.redis")
        except ImportError:
            raise ValueError(f"store.url: the redis backend is not available: {url!r}") from None
        return cast(Store, module.RedisStore.from_url(url, retention or None))
    if url.startswith(("postgresql://", "postgres://")):
        from calltrackd.store.postgres import postgres_store

        return postgres_store(url, retention or None)
    raise ValueError(f"store.url: expected sqlite://, redis:// or postgresql://, got {url!r}")
