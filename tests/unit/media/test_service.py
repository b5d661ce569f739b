"""The daemon's media object: recordings counted by result, the call object's
`recording` field for a WAV and for a kept pcap."""

from __future__ import annotations

from pathlib import Path

from calltrackd.config import MediaSettings
from calltrackd.http.recordings import recording_json
from calltrackd.media.service import Media
from calltrackd.metrics import Metrics
from tests.unit.media.test_store import spool_call


async def test_collected_recordings_are_counted_and_described(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool_call(spool, "c_wav")
    spool_call(spool, "c_g729", pts="18 101")
    metrics = Metrics()
    media = Media(MediaSettings(spool_dir=str(spool), recordings_dir=str(tmp_path / "rec")),
                  metrics)
    assert media.client is None and await media.health() == {}
    assert (await media.collect("c_wav", wait=1.0)) is not None
    assert (await media.collect("c_g729", wait=1.0)) is not None
    assert (await media.collect("c_missing", wait=0.1)) is None
    text = metrics.render().decode()
    for result in ("wav", "pcap", "failed"):
        assert f'calltrackd_recordings_total{{result="{result}"}} 1.0' in text
    wav = recording_json(media.recordings, "c_wav")
    assert wav is not None and set(wav) == {"url", "seconds", "bytes"}
    assert wav["url"] == "/v1/calls/c_wav/recording" and wav["seconds"] == 1.0
    pcap = recording_json(media.recordings, "c_g729")
    assert pcap is not None and pcap["format"] == "pcap" and "G729" in pcap["note"]
    assert recording_json(media.recordings, "c_missing") is None
