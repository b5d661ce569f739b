"""`[sip.tls]` settings and the name a TLS connection verifies (pure parts of tls.py)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from calltrackd.config import ConfigError, parse_config
from calltrackd.transport.tls import TlsContexts, parse_tls, server_name, tls_target

BASE = {
    "carriers": [{"name": "c", "addresses": ["127.0.0.1/32"]}],
    "trackers": [{"id": "a", "public_key": "pk_a", "default_number": "+74990000000",
                  "forward": ["sip:127.0.0.1:5070;transport=tls"]}],
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "k.pem", "-out",
                    "c.pem", "-days", "1", "-subj", "/CN=test"],
                   cwd=tmp, check=True, capture_output=True, timeout=60)
    return tmp / "c.pem", tmp / "k.pem"


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_tls_listener_without_a_certificate_is_a_problem_naming_sip_listen() -> None:
    got = problems({**BASE, "sip": {"listen": ["tls:127.0.0.1:5061"]}})
    assert got == ["sip.listen: a tls: listener needs [sip.tls] cert and key"]


def test_tls_listener_with_cert_and_key_is_accepted(pair: tuple[Path, Path]) -> None:
    cert, key = pair
    settings = parse_config({**BASE, "sip": {"listen": ["tls:127.0.0.1:5061"],
                                             "tls": {"cert": str(cert), "key": str(key)}}})
    assert settings.sip.listen[0].transport == "tls"
    assert settings.sip.tls.cert == str(cert)


def test_other_spellings_certificate_and_ca_file(pair: tuple[Path, Path]) -> None:
    cert, key = pair
    tls, found = parse_tls({"certificate": str(cert), "key": str(key), "ca_file": str(cert)})
    assert found == [] and tls.cert == str(cert) and tls.ca == str(cert)


def test_bad_tls_files_are_one_line_each_naming_the_key(tmp_path: Path,
                                                       pair: tuple[Path, Path]) -> None:
    cert, _ = pair
    junk = tmp_path / "junk.pem"
    junk.write_text("not a pem")
    _, found = parse_tls({"cert": str(cert), "key": str(junk), "ca": str(tmp_path / "no")})
    assert [p.split(":")[0] for p in found] == ["sip.tls.cert", "sip.tls.ca"], found
    assert parse_tls({"cert": str(cert)})[1] == ["sip.tls: cert and key go together"]
    assert parse_tls({"kee": "x"})[1] == ["sip.tls.kee: unknown key"]


def test_sips_target_over_udp_is_refused() -> None:
    data = {**BASE, "trackers": [{**BASE["trackers"][0],
                                  "forward": ["sips:pbx.example.com;transport=udp"]}]}
    assert problems(data) == ["trackers[0].forward[0]: a sips: URI goes over TLS: leave "
                              "transport= out or say transport=tls"]


def test_reload_keeps_the_listener_and_refuses_files_that_do_not_load(
        tmp_path: Path, pair: tuple[Path, Path]) -> None:
    cert, key = pair
    tls, _ = parse_tls({"cert": str(cert), "key": str(key)})
    contexts = TlsContexts(tls)
    listener, client = contexts.listener, contexts.client
    contexts.load(tls)
    assert contexts.listener is listener and contexts.client is not client
    broken, _ = parse_tls(None)
    bad = type(tls)(cert=str(cert), key=str(tmp_path / "missing.pem"))
    with pytest.raises(OSError):
        contexts.load(bad)
    assert contexts.settings == tls and broken.cert is None


def test_tls_target_reads_sips_and_transport_tls() -> None:
    assert tls_target("sips:pbx.example.com") == ("pbx.example.com", 5061)
    assert tls_target("sip:u@PBX.example.com:5071;transport=TLS") == ("pbx.example.com", 5071)
    assert tls_target("sip:[2001:db8::1]:5062;transport=tls") == ("2001:db8::1", 5062)
    assert tls_target("sip:pbx.example.com;transport=tcp") is None


def test_server_name_is_the_configured_host_that_resolves_to_the_address() -> None:
    targets = ["sip:10.0.0.9:5061;transport=tls", "sips:pbx.example.com",
               "sips:other.example.com:5070"]

    async def resolve(name: str, port: int) -> list[tuple[Any, ...]]:
        table = {"pbx.example.com": "192.0.2.7", "other.example.com": "192.0.2.7"}
        return [(0, 0, 0, "", (table[name], port))]

    async def names() -> list[str]:
        return [await server_name("192.0.2.7", 5061, targets, resolve),
                await server_name("192.0.2.7", 5070, targets, resolve),
                await server_name("10.0.0.9", 5061, targets, resolve),
                await server_name("198.51.100.1", 5061, targets, resolve)]

    assert asyncio.run(names()) == ["pbx.example.com", "other.example.com", "10.0.0.9",
                                    "198.51.100.1"]
