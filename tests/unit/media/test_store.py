"""The recordings store: lookups by call id, spool import, retention."""

from __future__ import annotations

import os
import time
from pathlib import Path

from calltrackd.media.store import RecordingStore
from tests.audio import ipv4_udp, pcap, rtp_packets, tone
from tests.unit.media.test_recording import CALLER, PORT_ANSWER, metadata


def spool_call(spool: Path, rtp_id: str, pts: str = "0 8 101") -> None:
    (spool / "pcaps").mkdir(parents=True, exist_ok=True)
    (spool / "metadata").mkdir(parents=True, exist_ok=True)
    pt = 18 if pts.startswith("18") else 0
    packets = list(rtp_packets("PCMU", tone(440, 1.0), pt=pt, ssrc=1))
    cap = pcap([(1796000000 + 0.02 * i, ipv4_udp(CALLER, ("127.0.0.1", PORT_ANSWER), p))
                for i, p in enumerate(packets)])
    pcap_path = spool / "pcaps" / f"{rtp_id}-0123abcd.pcap"
    pcap_path.write_bytes(cap)
    (spool / "metadata" / f"rtpengine-meta-{rtp_id}-0123abcd.txt").write_text(
        metadata(pts, pts).replace("/spool/pcaps/c_1-abc.pcap", str(pcap_path)))


async def test_import_converts_stores_and_clears_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool_call(spool, "c_abc")
    store = RecordingStore(tmp_path / "rec", spool=spool)
    info = await store.import_call("c_abc", wait=1.0)
    assert info is not None and info.format == "wav" and info.content_type == "audio/wav"
    assert info.seconds == 1.0 and info.bytes == info.path.stat().st_size
    assert info.path.parent.parent == tmp_path / "rec"
    assert not list((spool / "pcaps").iterdir()) and not list((spool / "metadata").iterdir())
    assert store.get("c_abc") == info


async def test_unconvertible_codec_keeps_the_pcap_with_a_note(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool_call(spool, "c_g729", pts="18 101")
    store = RecordingStore(tmp_path / "rec", spool=spool)
    info = await store.import_call("c_g729", wait=1.0)
    assert info is not None and info.format == "pcap"
    assert info.note is not None and "G729" in info.note


async def test_no_spool_files_within_the_wait_is_none(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "rec", spool=tmp_path / "spool")
    assert await store.import_call("c_none", wait=0.1) is None


def test_ids_that_are_not_call_ids_find_nothing(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    for bad in ("../etc/passwd", "a/b", "", ".hidden", "x" * 200, "c_1\x00"):
        assert store.get(bad) is None


def test_retention_deletes_only_old_recordings(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path, retention=7 * 86400)
    old, new = store.path_for("c_old"), store.path_for("c_new")
    for p in (old, new):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"RIFF")
    month_ago = time.time() - 30 * 86400
    os.utime(old, (month_ago, month_ago))
    assert store.purge() == 1
    assert not old.exists() and new.exists()
    assert RecordingStore(tmp_path, retention=0).purge(now=time.time() + 1e9) == 0
