"""SIP over TLS (RFC 3261 §26.2, RFC 5630 §3.1.3): the listeners' certificate, the
verification of the servers we connect to, and the name each connection verifies.

`[sip.tls]` gives `cert` and `key` (PEM files; the listener's certificate, also offered
to a server that asks for a client certificate) and `ca` (PEM bundle the servers we
connect to are verified against; without it the system's CAs). `certificate` and
`ca_file` are accepted as other spellings of `cert` and `ca`.

A listener keeps the one context it was created with; that context's SNI callback, which
OpenSSL calls on every ClientHello (with or without a server name), hands the handshake
the newest server context. So a SIGHUP that loads new files changes the certificate of
the next connection and leaves the open ones alone; files that do not load are refused
and the running ones kept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["TlsContexts", "TlsSettings", "parse_tls", "server_name"]

DEFAULT_PORT = 5061
_SPELLINGS = {"cert": ("cert", "certificate"), "key": ("key",), "ca": ("ca", "ca_file")}


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert: str | None = None  # PEM certificate chain of our listeners
    key: str | None = None  # its private key (PEM)
    ca: str | None = None  # PEM CA bundle for the servers we connect to; None: system CAs


def parse_tls(raw: object, key: str = "sip.tls") -> tuple[TlsSettings, list[str]]:
    """`[sip.tls]` → settings and problems (one line each, naming the key). The files are
    loaded here too, so that check-config finds an unreadable or mismatched pair."""
    if raw is None:
        return TlsSettings(), []
    if not isinstance(raw, dict):
        return TlsSettings(), [f"{key}: expected a table, got {type(raw).__name__}"]
    problems: list[str] = []
    known = {name for names in _SPELLINGS.values() for name in names}
    problems += [f"{key}.{name}: unknown key" for name in raw if name not in known]
    values: dict[str, str | None] = {}
    for field, names in _SPELLINGS.items():
        given = [n for n in names if n in raw]
        if len(given) > 1:
            problems.append(f"{key}.{given[1]}: the same as {key}.{given[0]}; give one")
        value = raw[given[0]] if given else None
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(f"{key}.{given[0]}: expected a file path")
            value = None
        values[field] = value
    settings = TlsSettings(values["cert"], values["key"], values["ca"])
    if (settings.cert is None) != (settings.key is None):
        problems.append(f"{key}: cert and key go together")
    elif not problems:
        problems += _load_problems(settings, key)
    return settings, problems


def _load_problems(settings: TlsSettings, key: str) -> list[str]:
    problems = []
    if settings.cert is not None:
        try:
            server_context(settings)
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"{key}.cert: cannot load {settings.cert!r} with key "
                            f"{settings.key!r}: {_why(exc)}")
    if settings.ca is not None:
        try:
            ssl.create_default_context(cafile=settings.ca)
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"{key}.ca: cannot load {settings.ca!r}: {_why(exc)}")
    return problems


def _why(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc)


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    assert settings.cert is not None and settings.key is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.cert, settings.key)
    return ctx


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """Verification on (CERT_REQUIRED, host name checked): there is no switch to turn it
    off; a private CA goes into `ca`."""
    ctx = ssl.create_default_context(cafile=settings.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert is not None and settings.key is not None:
        ctx.load_cert_chain(settings.cert, settings.key)  # for servers that ask for one
    return ctx


class TlsContexts:
    """The live contexts: `listener` for create_server, `client` for connections out."""

    def __init__(self, settings: TlsSettings) -> None:
        self.listener: ssl.SSLContext | None = None
        self._server: ssl.SSLContext | None = None
        self.client = client_context(settings)
        self.settings = settings
        self.load(settings)

    def load(self, settings: TlsSettings) -> None:
        """Read the files again (they may have changed under the same names). Raises
        OSError or ssl.SSLError and keeps the running contexts if they do not load."""
        server = server_context(settings) if settings.cert is not None else None
        client = client_context(settings)
        self._server, self.client, self.settings = server, client, settings
        if server is not None and self.listener is None:
            listener = server_context(settings)
            listener.sni_callback = self._pick
            self.listener = listener

    def _pick(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        if self._server is not None:
            sslobj.context = self._server


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def tls_target(uri: str) -> tuple[str, int] | None:
    """(host, port) of a configured target reached over TLS (`sips:` or transport=tls);
    None for other targets. A rough parse of a URI config has already checked."""
    scheme, _, rest = uri.partition(":")
    params = rest.split(";")
    hostport = params[0].rsplit("@", 1)[-1]
    tls = scheme.lower() == "sips" or any(
        p.lower() == "transport=tls" for p in params[1:])
    if not tls:
        return None
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = hostport.partition(":")
    return host.lower(), int(port) if port.isdigit() else DEFAULT_PORT


Resolver = Callable[[str, int], Any]  # loop.getaddrinfo-like, awaited


async def server_name(host: str, port: int, targets: Iterable[str],
                      resolve: Resolver | None = None) -> str:
    """The name a TLS connection to host:port verifies: the configured target's host
    (RFC 5922 §7.2: the name in the URI, not the address it resolved to). A target
    configured by address is verified against that address (an IP SAN); an address no
    configured name resolves to, against itself."""
    names = []
    for uri in targets:
        hit = tls_target(uri)
        if hit is None or hit[1] != port:
            continue
        if hit[0] == host:
            return host
        if not _is_literal(hit[0]):
            names.append(hit[0])
    if names:
        lookup = resolve or asyncio.get_running_loop().getaddrinfo
        for name in dict.fromkeys(names):
            try:
                infos = await asyncio.wait_for(lookup(name, port), 5.0)
            except (OSError, TimeoutError):
                continue
            if any(str(info[4][0]) == host for info in infos):
                return name
    return host
