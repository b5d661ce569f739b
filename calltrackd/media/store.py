"""Recordings on disk: `<recordings_dir>/<2 hex>/<call id>.wav` (or `.pcap` with a
`.json` note when the codec could not be converted), with retention.

The two-character directory is a hash of the call id, so no directory grows past what a
file system lists comfortably and a lookup needs only the id. Files are written under a
temporary name and renamed, so a reader never sees half a recording. Retention deletes
files whose modification time is older than `retention` seconds (0 keeps everything),
in a worker thread, once an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import structlog

from .recording import Conversion, RecordingError, convert_files

__all__ = ["RecordingInfo", "RecordingStore"]

log = structlog.get_logger("calltrackd.media")

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_FORMATS = {"wav": "audio/wav", "pcap": "application/vnd.tcpdump.pcap"}


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    call_id: str
    path: Path
    format: str  # "wav" or "pcap"
    bytes: int
    seconds: float | None
    note: str | None = None

    @property
    def content_type(self) -> str:
        return _FORMATS[self.format]


class RecordingStore:
    def __init__(self, root: str | Path, *, retention: float = 0.0,
                 spool: str | Path | None = None) -> None:
        self.root = Path(root)
        self.retention = retention
        self.spool = Path(spool) if spool is not None else None
        self._convert_lock = asyncio.Lock()

    def path_for(self, call_id: str, ext: str = "wav") -> Path:
        if not _SAFE_ID.match(call_id) or call_id.startswith("."):
            raise ValueError(f"not a call id: {call_id!r}")
        shard = hashlib.blake2b(call_id.encode(), digest_size=1).hexdigest()
        return self.root / shard / f"{call_id}.{ext}"

    def get(self, call_id: str) -> RecordingInfo | None:
        """The recording of a call, or None (also for ids that cannot be call ids)."""
        try:
            wav = self.path_for(call_id, "wav")
        except ValueError:
            return None
        try:
            size = wav.stat().st_size
            with wave.open(str(wav), "rb") as w:
                seconds = w.getnframes() / w.getframerate()
            return RecordingInfo(call_id, wav, "wav", size, round(seconds, 2))
        except (OSError, wave.Error, EOFError, ZeroDivisionError):
            pass
        pcap = wav.with_suffix(".pcap")
        try:
            size = pcap.stat().st_size
        except OSError:
            return None
        note = None
        with contextlib.suppress(OSError, ValueError):
            note = json.loads(wav.with_suffix(".json").read_text()).get("note")
        return RecordingInfo(call_id, pcap, "pcap", size, None, note)

    # -- from rtpengine's spool --------------------------------------------------

    def spool_files(self, rtp_call_id: str) -> tuple[Path, Path] | None:
        """(metadata, pcap) rtpengine left for a call once it was deleted there."""
        if self.spool is None:
            return None
        meta_dir = self.spool / "metadata"
        prefix = f"rtpengine-meta-{rtp_call_id}-"
        with contextlib.suppress(OSError):
            for entry in os.scandir(meta_dir):
                name = entry.name
                if name.startswith(prefix) and name.endswith(".txt"):
                    tail = name[len(prefix):-4]
                    pcap = self.spool / "pcaps" / f"{rtp_call_id}-{tail}.pcap"
                    return Path(entry.path), pcap
        return None

    async def import_call(self, call_id: str, rtp_call_id: str | None = None, *,
                          wait: float = 10.0) -> RecordingInfo | None:
        """After `delete`: waits up to `wait` s for rtpengine's metadata file, converts
        the call's pcap (one conversion at a time, in a worker thread), stores the WAV
        (or keeps the pcap when the codec is not G.711) and clears the spool files."""
        rtp_id = rtp_call_id or call_id
        deadline = time.monotonic() + wait
        found = self.spool_files(rtp_id)
        while found is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            found = self.spool_files(rtp_id)
        if found is None:
            return None
        meta, pcap = found
        async with self._convert_lock:
            result = await asyncio.to_thread(self._store, call_id, meta, pcap)
        return result

    def _store(self, call_id: str, meta: Path, pcap: Path) -> RecordingInfo | None:
        out = self.path_for(call_id, "wav")
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            conv = convert_files(meta, out, pcap if pcap.exists() else None)
        except RecordingError as exc:
            conv = Conversion(False, 0.0, f"not converted: {exc}")
        if conv.wav:
            pcap.unlink(missing_ok=True)
        else:
            with contextlib.suppress(OSError):
                shutil.move(str(pcap), str(out.with_suffix(".pcap")))
            out.with_suffix(".json").write_text(json.dumps({"note": conv.reason}))
        meta.unlink(missing_ok=True)
        log.info("media.wav_stored", call_id=call_id, wav=conv.wav, seconds=conv.seconds,
                 note=conv.reason)
        return self.get(call_id)

    # -- retention ---------------------------------------------------------------

    def purge(self, now: float | None = None) -> int:
        """Deletes recordings older than the retention; how many files went."""
        if self.retention <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - self.retention
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for shard in os.scandir(self.root):
                if not shard.is_dir():
                    continue
                for entry in os.scandir(shard.path):
                    try:
                        if entry.is_file() and entry.stat().st_mtime < cutoff:
                            os.unlink(entry.path)
                            removed += 1
                    except OSError:
                        continue
        return removed

    async def run_retention(self, stop: asyncio.Event, every: float = 3600.0) -> None:
        while not stop.is_set():
            try:
                removed = await asyncio.to_thread(self.purge)
            except OSError as exc:
                log.warning("media.retention_failed", error=str(exc))
            else:
                if removed:
                    log.info("media.retention_purged", files=removed,
                             retention_days=round(self.retention / 86400, 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
