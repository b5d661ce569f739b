"""The media side of the daemon as one object for app.py: the ng client (when `[media]
rtpengine` is set), the recordings store and its retention, rtpengine's health.

Built once at start: `[media]` changes need a restart. A tracker's `media`/`record` are
read per call from the current settings (`settings.media.for_tracker(id)`), so SIGHUP
changes them for new calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from .ng import NgClient, NgError, NgUnavailable, OfferOptions
from .recording import LATE_OFFER
from .store import RecordingInfo, RecordingStore

if TYPE_CHECKING:
    from ..b2bua.commands import CallInfo
    from ..config import MediaSettings
    from ..metrics import Metrics

__all__ = ["Media", "rtpengine_health"]

log = structlog.get_logger("calltrackd.media")


class Media:
    def __init__(self, settings: MediaSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.client: NgClient | None = None
        if settings.rtpengine:
            self.client = NgClient(
                settings.rtpengine, timeout=settings.timeout, retransmit=settings.retransmit,
                tries=settings.tries, recheck=settings.recheck,
                options=OfferOptions(settings.direction, settings.ice, settings.flags,
                                     settings.replace),
                on_error=self._error)
        self.recordings = RecordingStore(settings.recordings_dir,
                                         retention=settings.recording_retention,
                                         spool=settings.spool_dir)
        # a recorded call's file is stored (or could not be): the app sends call.recording
        self.on_recording: Callable[[CallInfo, RecordingInfo | None], None] = \
            lambda info, rec: None
        self.tasks: set[asyncio.Task[None]] = set()

    # -- the call engine's MediaControl (b2bua/media_tasks.py) -------------------------

    def _client(self) -> NgClient:
        if self.client is None:
            raise NgUnavailable("no rtpengine configured", command="offer")
        return self.client

    async def offer(self, call_id: str, from_tag: str, sdp: str, *, record: bool,
                    to_tag: str | None = None, late: bool = False) -> str:
        """The call's offer, or (`to_tag`) a re-INVITE's or UPDATE's in its dialog, or
        (`late`) the target's offer to the caller of a call whose INVITE had no SDP:
        the recording's metadata says so (`LATE_OFFER`), as rtpengine's offer went to
        the caller then. Re-offers leave the metadata as the call's first offer set it."""
        extra = {"to-tag": to_tag} if to_tag is not None else None
        metadata = f"calltrackd call {call_id}" + (f" {LATE_OFFER}" if late else "")
        result = await self._client().offer(call_id, from_tag, sdp, record=record,
                                            metadata=metadata if late or to_tag is None
                                            else None, extra=extra)
        return result.sdp

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str) -> str:
        result = await self._client().answer(call_id, from_tag, to_tag, sdp)
        return result.sdp

    async def idle(self, call_id: str) -> float | None:
        """Seconds since the quieter side of the call last sent RTP (since the call was
        created in rtpengine for a side that never sent), from `query`."""
        stats = await self._client().query(call_id)
        times = list(stats.last_rtp.values())
        if len(times) < 2 and stats.created is not None:
            times.append(stats.created)
        return time.time() - min(times) if times else None

    async def finish(self, info: CallInfo, from_tag: str, *, record: bool) -> None:
        """The call ended: `delete` in rtpengine, then (recorded calls) the WAV stored
        and `on_recording` told. Never raises: a failure is logged and counted."""
        if (info.extra.get("media") or {}).get("mode") == "anchor":
            self.anchored(info.tracker.id)
        try:
            await self._client().delete(info.id, from_tag)
        except NgError as exc:
            log.warning("media.delete_failed", call=info.id, error=str(exc)[:200])
        if not record:
            return
        try:
            rec = await self.collect(info.id)
        except Exception:  # a bad pcap must not stop the next ones
            log.exception("media.recording_failed", call=info.id)
            rec = None
        if rec is None:
            log.warning("media.recording_missing", call=info.id)
        else:
            log.info("media.recording_stored", call=info.id, format=rec.format,
                     seconds=rec.seconds, bytes=rec.bytes)
        self.on_recording(info, rec)

    def anchored(self, tracker_id: str) -> None:
        """Counts a call whose offer and answer went through rtpengine."""
        if self.metrics is not None:
            self.metrics.media_anchored.labels(tracker_id).inc()

    async def collect(self, call_id: str, rtp_call_id: str | None = None, *,
                      wait: float = 10.0) -> RecordingInfo | None:
        """After the call's `delete`: its recording converted and stored (counted)."""
        info = await self.recordings.import_call(call_id, rtp_call_id, wait=wait)
        if self.metrics is not None:
            self.metrics.recordings.labels("failed" if info is None else info.format).inc()
        return info

    async def run(self, stop: asyncio.Event) -> None:
        await self.recordings.run_retention(stop)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    async def health(self) -> dict[str, str]:
        """{"rtpengine": ...} when rtpengine is configured, else nothing."""
        if self.client is None:
            return {}
        status = await rtpengine_health(self.client)
        if self.metrics is not None:
            for name in self.client.instances:
                self.metrics.rtpengine_up.labels(name).set(1 if self.client.alive(name) else 0)
        return {"rtpengine": status}

    def _error(self, instance: str, command: str, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.rtpengine_errors.labels(instance, command, kind).inc()


async def rtpengine_health(client: NgClient) -> str:
    """"ok" when every instance answers `ping` within the client's budget, else which
    did not ("udp:10.0.0.5:2223 timeout: ...; 1 of 2 up")."""
    results = await client.check()
    bad = {name: why for name, why in results.items() if why != "ok"}
    if not bad:
        return "ok"
    up = len(results) - len(bad)
    return ("; ".join(f"{name} {why}" for name, why in bad.items())
            + f"; {up} of {len(results)} up")[:300]
