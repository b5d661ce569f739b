"""A carrier and a PBX on IPv6 loopback, over UDP and TCP: the call goes through and is
recorded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Sipp, daemon_toml, free_port, pbx_uri, start_daemon, tracker


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_call_over_ipv6(tmp_path: Path, sipp_factory: Callable[..., Sipp], transport: str) -> None:
    sip, http, pbx = free_port(), free_port(), free_port()
    daemon = start_daemon(tmp_path, daemon_toml(
        sip, http, tracker("v6", "+74990000001", pbx_uri(pbx, transport, host="[::1]")),
        sip={"listen": [f"udp:[::1]:{sip}", f"tcp:[::1]:{sip}"]},
        carriers=[{"name": "v6", "addresses": ["::1/128"]}]), sip, http)
    try:
        uas = sipp_factory("pbx", "uas_answer.xml", pbx, "-i", "::1", "-m", "1",
                           "-timeout", "20s", transport=transport)
        uac = sipp_factory("carrier", "uac_call.xml", free_port(), "-i", "::1", "-m", "1",
                           "-d", "500", "-s", "+74990000001", "-timeout", "20s",
                           "-timeout_error", remote=f"[::1]:{sip}", transport=transport)
        res = uac.wait(30)
        assert res.ok, res.output
        assert uas.wait(10).ok
        cdr = daemon.wait_call(lambda c: True)
        assert cdr["outcome"] == "answered" and cdr["target"].startswith("sip:[::1]:")
        assert cdr["target"].endswith(f"transport={transport}")
    finally:
        daemon.stop()
