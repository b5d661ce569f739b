"""The recordings API on the running daemon: a real call through SIPp, a WAV placed in
the recordings directory for its id, then GET /v1/calls/{id}/recording with and without
Range; /healthz and /metrics report a real rtpengine, up and then stopped."""

from __future__ import annotations

import struct
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

from calltrackd.http.recordings import recording_json
from calltrackd.media.store import RecordingStore
from tests.audio import tone

from .conftest import (
    ADMIN,
    Daemon,
    daemon_toml,
    free_port,
    need,
    pbx_uri,
    start_daemon,
    tracker,
)
from .rtpengine import Rtpengine
from .test_metrics import call

DID = "+74990000100"


def config(sip: int, http: int, pbx: int, rtpengine: str, recordings: Path) -> str:
    return daemon_toml(
        sip, http, tracker("acme", "+74990000000", pbx_uri(pbx), media="anchor", record=True,
                           static=[{"number": DID, "channel": "billboard"}]),
        sip={"shutdown_grace": "5s"},
        media={"rtpengine": [rtpengine], "timeout": "500ms", "retransmit": "100ms",
               "recordings_dir": str(recordings), "recording_retention": "30d"})


def get(daemon: Daemon, path: str, headers: dict[str, str] | None = None,
        admin: bool = True) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(daemon.base + path, headers=headers or {})
    if admin:
        req.add_header("Authorization", f"Bearer {ADMIN}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def place_wav(path: Path, seconds: float) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    left, right = tone(440, seconds), tone(1000, seconds)
    frames = b"".join(struct.pack("<hh", a, b) for a, b in zip(left, right, strict=True))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(frames)
    return path.read_bytes()


def test_recording_served_with_ranges_and_rtpengine_in_health(tmp_path: Path) -> None:
    need("sipp")
    rtp = Rtpengine(tmp_path / "rtpengine")
    rtp.start()
    recordings = tmp_path / "recordings"
    sip, http, pbx = free_port(), free_port(), free_port()
    daemon = start_daemon(tmp_path, config(sip, http, pbx, rtp.address, recordings), sip, http)
    try:
        for attempt in range(5):  # a loaded machine may shed the first INVITE (503)
            try:
                call(tmp_path, daemon, attempt, DID, pbx, "uas_answer.xml", "uac_call.xml",
                     "-d", "200")
                break
            except AssertionError:
                if attempt == 4:
                    raise
                time.sleep(2)
        record = daemon.wait_call(lambda c: c["did"] == DID)
        call_id = record["id"]
        store = RecordingStore(recordings)

        status, _, body = get(daemon, f"/v1/calls/{call_id}/recording")
        assert status == 404 and b"no recording" in body
        assert recording_json(store, call_id) is None

        wav = place_wav(store.path_for(call_id), 2.0)
        status, headers, body = get(daemon, f"/v1/calls/{call_id}/recording")
        assert status == 200 and body == wav
        assert headers["Content-Type"] == "audio/wav"
        assert headers.get("Accept-Ranges") == "bytes"

        status, headers, body = get(daemon, f"/v1/calls/{call_id}/recording",
                                    {"Range": "bytes=44-1043"})
        assert status == 206 and body == wav[44:1044]
        assert headers["Content-Range"] == f"bytes 44-1043/{len(wav)}"
        status, headers, body = get(daemon, f"/v1/calls/{call_id}/recording",
                                    {"Range": "bytes=-100"})
        assert status == 206 and body == wav[-100:]
        status, headers, _ = get(daemon, f"/v1/calls/{call_id}/recording",
                                 {"Range": f"bytes={len(wav) + 10}-"})
        assert status == 416

        assert recording_json(store, call_id) == {
            "url": f"/v1/calls/{call_id}/recording", "seconds": 2.0, "bytes": len(wav)}
        assert get(daemon, f"/v1/calls/{call_id}/recording", admin=False)[0] == 401
        assert get(daemon, "/v1/calls/..%2f..%2fetc/recording")[0] == 404
        assert get(daemon, "/v1/calls/c_unknown/recording")[0] == 404

        status, health = daemon.http("GET", "/healthz", admin=False)
        assert status == 200 and health["checks"]["rtpengine"] == "ok"
        _, _, metrics = get(daemon, "/metrics", admin=False)
        assert f'calltrackd_rtpengine_up{{instance="{rtp.address}"}} 1.0' in metrics.decode()

        rtp.stop()
        # rtpengine down: reported, and not fatal (calls would go direct)
        status, health = daemon.http("GET", "/healthz", admin=False)
        assert status == 200 and health["checks"]["rtpengine"] != "ok"
        assert rtp.address in health["checks"]["rtpengine"]
        _, _, metrics = get(daemon, "/metrics", admin=False)
        text = metrics.decode()
        assert f'calltrackd_rtpengine_up{{instance="{rtp.address}"}} 0.0' in text
        assert "calltrackd_rtpengine_errors_total{" in text
    finally:
        daemon.stop()
        rtp.stop()
