"""Media tasks: the calls' rtpengine commands run as asyncio tasks.

`MediaTasks` adds to the executor (executor.py) the commands of media anchoring:
MediaOffer and MediaAnswer go to rtpengine (`media`, a `MediaControl`) within its
budget and come back to the call as MediaDone, with rtpengine's SDP or why there is
none (the call then goes direct: tracking never costs a call); MediaDelete ends the
call in rtpengine and collects its recording. `watch_media` asks rtpengine, every third
of `[media] media_timeout`, when each anchored call last had RTP, and ends those gone
quiet with MediaTimeout. A call on hold (its latest SDPs: `Call.on_hold`) is left
alone, and taken off hold its silence counts from then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal, Protocol

import structlog

from .call import Call, State
from .commands import CallInfo, MediaAnswer, MediaDelete, MediaDone, MediaOffer, MediaTimeout
from .executor import Executor

log = structlog.get_logger("calltrackd.b2bua")


class MediaControl(Protocol):
    """What the engine asks of rtpengine (media/service.py's `Media`); SDPs as text.
    Each ends within its budget and raises (NgError, OSError, ...) when it cannot: the
    call then goes direct."""

    async def offer(self, call_id: str, from_tag: str, sdp: str, *, record: bool,
                    to_tag: str | None = None, late: bool = False) -> str: ...
    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str) -> str: ...
    async def finish(self, info: CallInfo, from_tag: str, *, record: bool) -> None: ...
    async def idle(self, call_id: str) -> float | None: ...


class MediaTasks(Executor):
    """The executor with rtpengine's commands (see the module's docstring)."""

    def _init_layer(self) -> None:
        """rtpengine, the tasks running its commands, and their runners."""
        super()._init_layer()
        self.media: MediaControl | None = None  # rtpengine, when [media] configures one
        self.media_errors = 0  # offers/answers that failed: those calls went direct
        self._media_tasks: set[asyncio.Task[None]] = set()
        self._runners[MediaOffer] = self._run_media
        self._runners[MediaAnswer] = self._run_media
        self._runners[MediaDelete] = self._run_media_delete

    def _run_media(self, call: Call, c: MediaOffer | MediaAnswer, now: float) -> None:
        self._spawn(self._media(call, c))

    def _run_media_delete(self, call: Call, c: MediaDelete, now: float) -> None:
        if self.media is not None and call.info is not None:
            self._spawn(self.media.finish(call.info, c.from_tag, record=c.record))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """A media task, held until done (the loop keeps only weak references)."""
        task = self.stack.loop.create_task(work)
        if task is not None:  # None in the tests' fake loop, which runs it at once
            self._media_tasks.add(task)
            task.add_done_callback(self._media_tasks.discard)

    async def _media(self, call: Call, c: MediaOffer | MediaAnswer) -> None:
        """An offer or answer through rtpengine within its budget; the result (or why
        there is none) goes back to the call as MediaDone."""
        media = self.media
        kind: Literal["offer", "answer"] = "offer" if isinstance(c, MediaOffer) else "answer"
        seq = c.seq
        event: MediaDone
        try:
            if media is None:
                raise OSError("no rtpengine configured")
            sdp = c.sdp.decode("utf-8", "surrogateescape")
            if isinstance(c, MediaOffer):
                work = media.offer(call.id, c.from_tag, sdp, record=c.record,
                                   to_tag=c.to_tag, late=c.late)
            else:
                work = media.answer(call.id, c.from_tag, c.to_tag, sdp)
            out = await work
            event = MediaDone(kind, out.encode("utf-8", "surrogateescape"), None, seq)
        except Exception as exc:  # tracking never costs a call: any failure → direct
            self.media_errors += 1
            why = str(exc) or type(exc).__name__
            log.warning("media.failed", call=call.id, command=kind, error=why[:200])
            event = MediaDone(kind, None, why[:200], seq)
        self._input(call, event)

    async def watch_media(self, stop: asyncio.Event) -> None:
        """Ends anchored calls whose RTP stopped: every third of `[media] media_timeout`
        (0: off) rtpengine is asked when each side last sent."""
        while not stop.is_set():
            timeout = self.settings().media.media_timeout
            every = max(1.0, timeout / 3) if timeout > 0 else 5.0
            try:
                await asyncio.wait_for(stop.wait(), every)
                return
            except TimeoutError:
                pass
            if timeout > 0:
                await self.check_media(timeout)

    async def check_media(self, limit: float) -> None:
        media = self.media
        if media is None:
            return
        for call in [c for c in self.calls.values()
                     if c.state is State.CONNECTED and c.offer_sdp is not None]:
            if call.on_hold:  # a side sends no RTP on purpose: not a dead call
                continue
            try:
                idle = await media.idle(call.id)
            except Exception as exc:  # rtpengine gone: the call goes on
                log.info("media.query_failed", call=call.id, error=str(exc)[:200])
                continue
            if idle is None or call.on_hold or call.id not in self.calls:
                continue
            if call.resumed_at:  # taken off hold: silent since then at most
                idle = min(idle, self.stack.clock() - call.resumed_at)
            if idle >= limit:
                self._input(call, MediaTimeout(idle))

