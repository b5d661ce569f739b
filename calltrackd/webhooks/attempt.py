"""One attempt of the delivery worker: a request carrying rows of one destination, and
what it came to for each row.

Every attempt is prepared at send time from the *current* configuration (a rotated secret
applies to retries), and ends in one store write per row (recording.py makes it):
`mark_delivered` on acknowledgement, `reschedule` with backoff on anything else,
`mark_failed` once the event is older than `max_age`, its destination is gone from the
configuration, or the destination refused it (too old for the service). The request is a
POST on one HTTP session with keep-alive that serves every request (`Sender`); its answer
feeds the destination key's adaptive window (window.py).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Final

import aiohttp

from calltrackd.tracking.model import WebhookDelivery

from .backoff import RETRY_AFTER_STATUSES, RetryPolicy, parse_retry_after
from .destinations import Destination, Prepared, Request, redact
from .outbox import DeliveryOutcome, OutboxStore
from .recording import Recorder, Write
from .window import AdaptiveWindow

ENDPOINT_REMOVED: Final = "endpoint removed"

# (HTTP status or None if none came, error or None if acknowledged, Retry-After seconds)
Answer = tuple[int | None, str | None, float | None]


class Sender:
    """POSTs of prepared requests on one HTTP session (made at first use unless given,
    and then closed by `aclose`)."""

    def __init__(self, session: aiohttp.ClientSession | None, *, timeout: float,
                 connections: int, clock: Callable[[], float]) -> None:
        self._session = session
        self._owns_session = session is None
        self._timeout = timeout
        self._connections = connections
        self._clock = clock

    async def send(self, prepared: Prepared, dest: Destination) -> Answer:
        req: Request | None = prepared.request
        assert req is not None
        for _ in range(2):
            try:
                return await self._post(req, dest)
            except aiohttp.ServerDisconnectedError:
                # A kept-alive connection the receiver closed just as we reused it: once more
                # on a new one (at-least-once: it may have been processed; receivers dedupe).
                continue
            except TimeoutError:
                return None, f"timeout after {self._timeout:g}s", None
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                return None, redact(f"{type(exc).__name__}: {exc}", req.secrets), None
        return None, "ServerDisconnectedError: the receiver closed the connection", None

    async def _post(self, req: Request, dest: Destination) -> Answer:
        async with self._get_session().post(
            req.url,
            data=req.body,
            headers=req.headers,
            # A redirect is not an acknowledgement, and following one would send the
            # event somewhere the configuration does not name.
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
        ) as resp:
            body = await resp.content.read(64 * 1024)
            error = dest.accepted(resp.status, body)
            if error is None:
                return resp.status, None, None
            retry_after = None
            if resp.status in RETRY_AFTER_STATUSES:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock())
                told = getattr(dest, "retry_after", None)  # a service's own way to say it
                if retry_after is None and callable(told):
                    retry_after = told(body)
            return resp.status, redact(error, req.secrets), retry_after

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # keep-alive: connections to a receiver are reused between requests
                connector=aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=15.0),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session if this sender created it."""
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()


class Attempts:
    """Makes attempts: prepares the rows, sends, decides each row's outcome and has it
    recorded. A row whose destination refused it (too old for the service) is told to
    `on_skip(kind, reason)` and not counted as an outcome."""

    def __init__(self, store: OutboxStore, policy: RetryPolicy, sender: Sender,
                 recorder: Recorder, clock: Callable[[], float],
                 on_skip: Callable[[str, str], None] | None = None) -> None:
        self._store = store
        self._policy = policy
        self._sender = sender
        self._recorder = recorder
        self._clock = clock
        self._on_skip = on_skip

    async def run(self, rows: list[WebhookDelivery], dest: Destination | None,
                  win: AdaptiveWindow | None = None, waiting: bool = False
                  ) -> list[DeliveryOutcome]:
        """One request carrying `rows` (all of one destination, None: gone from the
        configuration); the outcome of each. `win` is told how the request went;
        `waiting`: rows of its key wait for a slot (the window may grow)."""
        if dest is None:
            return [await self._finish(
                row, DeliveryOutcome(row.id, "failed", row.attempts, error=ENDPOINT_REMOVED,
                                     kind=row.kind),
                functools.partial(self._store.mark_failed, row.id, row.attempts,
                                  ENDPOINT_REMOVED))
                for row in rows]
        prepared = dest.prepare(rows, self._clock())
        out = [await self._skip(row, reason) for row, reason in prepared.skip]
        if prepared.request is None or not prepared.send:
            return out
        started = time.monotonic()
        status, error, retry_after = await self._sender.send(prepared, dest)
        ended = time.monotonic()
        if win is not None:
            if error is None:
                win.acknowledged(ended - started, waiting)
            elif status is None or status >= 500 or status == 429:
                win.failed(started, ended)
        now = self._clock()
        if error is None:
            ids = [r.id for r in prepared.send]
            recorded = await self._recorder.acknowledge(ids, now)
            for row in prepared.send:
                o = DeliveryOutcome(row.id, "ok", row.attempts + 1, status=status,
                                    recorded=recorded, kind=row.kind)
                self._recorder.report(row, o)
                out.append(o)
            return out
        write: Write
        for row in prepared.send:
            attempts = row.attempts + 1
            next_at = self._policy.next_attempt_at(
                created_at=row.created_at, attempts=attempts, now=now, retry_after=retry_after)
            if next_at is None:
                o = DeliveryOutcome(row.id, "failed", attempts, status=status, error=error,
                                    kind=row.kind)
                write = functools.partial(self._store.mark_failed, row.id, attempts, error)
            else:
                o = DeliveryOutcome(row.id, "retry", attempts, status=status, error=error,
                                    next_attempt_at=next_at, kind=row.kind)
                write = functools.partial(self._store.reschedule, row.id, attempts, next_at,
                                          error)
            out.append(await self._finish(row, o, write))
        return out

    async def _skip(self, row: WebhookDelivery, reason: str) -> DeliveryOutcome:
        o = DeliveryOutcome(row.id, "failed", row.attempts, error=reason, kind=row.kind)
        if self._on_skip is not None:
            with contextlib.suppress(Exception):
                self._on_skip(row.kind, reason)
        return await self._finish(
            row, o, functools.partial(self._store.mark_failed, row.id, row.attempts, reason),
            count=False)

    async def _finish(self, row: WebhookDelivery, outcome: DeliveryOutcome, write: Write,
                      count: bool = True) -> DeliveryOutcome:
        if not await self._recorder.record([row.id], write):
            outcome = replace(outcome, recorded=False)
        self._recorder.report(row, outcome, count)
        return outcome
