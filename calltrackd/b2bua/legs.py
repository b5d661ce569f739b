"""The two legs of a call and the SIP messages the call sends on them.

Pure: a leg is a dialog (RFC 3261 §12) plus where its peer is; the builders here make
requests and responses from a leg and a `CallHost` (our own host:port toward a peer, and
the ids). Nothing is sent from here: the call returns the messages as commands.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from typing import Literal, Protocol

from ..sip.dialog import TARGET_REFRESH, Dialog
from ..sip.endpoint import Address
from ..sip.message import Request, Response, Via, response_for
from ..sip.transaction import ClientInviteTransaction
from ..sip.uri import SipSyntaxError, SipURI
from ..tracking.model import ForwardTarget
from .guard import canonical_host

# the methods we serve: written into OPTIONS answers, 405/501 and the INVITEs we send
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
# the caller's INVITE headers a retry with credentials does not copy (the leg writes them)
_NOT_COPIED = frozenset({"Via", "CSeq", "Content-Type", "Contact", "Route", "From", "To",
                         "Call-ID", "Max-Forwards", "Content-Length"})


class CallHost(Protocol):
    """What a call needs from whoever runs it, besides the commands it returns."""

    def local_hostport(self, transport: str, toward: str) -> tuple[str, int]:
        """The host:port to write into Via/Contact for messages sent toward `toward`."""
        ...

    def new_id(self, kind: str) -> str:
        """A fresh id: "call" (c_...), "call-id", "tag" or "branch" (RFC 3261 §8.1.1.7)."""
        ...


class Leg:
    """One side of the call: its dialog and how we reach the peer.

    A leg names its call by id: the call holds its legs, and the transactions of a leg
    (which outlive the call by up to 32 s) hold the leg, so a reference back would make
    every call a reference cycle that only the garbage collector could free. The engine
    finds the call by that id, live or ended but still lingering for its transactions.
    """

    __slots__ = ("call_id", "dest", "dialog", "origin", "side", "sips", "transport")

    def __init__(self, call_id: str, side: Literal["a", "b"], dialog: Dialog,
                 transport: str, origin: str) -> None:
        self.call_id = call_id
        self.side = side
        self.dialog = dialog
        self.transport = transport
        self.origin = canonical_host(origin)  # the INVITE's source, or the target we called
        self.dest: Address | None = None
        # our Contact is a SIPS URI on a TLS leg whose dialog asks for one: the top route
        # or, without routes, the peer's Contact (A: §12.1.1) or our Request-URI (B:
        # §8.1.1.8); the caller's Request-URI is looked at by `response`
        first = dialog.route_set[0] if dialog.route_set else dialog.remote_target
        self.sips = transport == "tls" and is_sips(first)

    def admits(self, source: Address) -> bool:
        """Whether a request in this dialog may come from `source`: the leg's transport,
        and the host the dialog began with, the one we send to, or the dialog's next hop
        (its first Record-Route, else the peer's Contact). Ports are not compared: TCP
        peers connect from ephemeral ports, and many SBCs send from another port than
        the one they listen on."""
        if source.transport != self.transport:
            return False
        host = canonical_host(source.host)
        if host == self.origin or (self.dest is not None
                                   and host == canonical_host(self.dest.host)):
            return True
        try:
            hop = self.dialog.next_hop()
        except SipSyntaxError:
            return False
        return host == canonical_host(hop.host_bare)

    def contact(self, host: CallHost) -> str:
        toward = self.dest.host if self.dest else "127.0.0.1"
        h, port = host.local_hostport(self.transport, toward)
        if self.sips:
            return f"<sips:calltrackd@{h}:{port}>"
        return f"<sip:calltrackd@{h}:{port};transport={self.transport}>"

    def request(self, host: CallHost, method: str, body: bytes = b"",
                content_type: str | None = None, cseq: int | None = None) -> Request:
        """An in-dialog request toward the peer, with our Via (and Contact, when the
        request refreshes the target) for the way it goes out."""
        assert self.dest is not None
        h, port = host.local_hostport(self.transport, self.dest.host)
        via = Via.own(self.transport, h, port, host.new_id("branch"))
        contact = self.contact(host) if method in TARGET_REFRESH else None
        return self.dialog.request(method, via, contact, body, content_type, cseq)

    def follow_target(self) -> None:
        """After a response that may move the peer: send in-dialog requests where the
        dialog's next hop is, when that is an address we can use as it is."""
        self.dest = peer_address(self) or self.dest


class Phase(enum.Enum):
    """Where one INVITE to one target is."""

    SENT = "sent"  # nothing back yet: a CANCEL must wait for a provisional (§9.1)
    PROCEEDING = "proceeding"  # a 1xx came back
    ANSWERED = "answered"  # its 2xx made the call


class Attempt:
    """One try at one forward target."""

    __slots__ = ("auth_tried", "invite", "leg", "phase", "target", "txn")

    def __init__(self, target: ForwardTarget, leg: Leg, invite: Request) -> None:
        self.target = target
        self.leg = leg
        self.invite = invite
        self.phase = Phase.SENT
        self.auth_tried = False
        self.txn: ClientInviteTransaction | None = None  # known from its first response


def response(host: CallHost, leg: Leg, request: Request, status: int,
             reason: str | None = None, body: bytes = b"", content_type: str | None = None,
             headers: tuple[tuple[str, str], ...] = (), dialog_forming: bool = False) -> Response:
    """Our response on `leg` to the peer's `request`. `dialog_forming`: the caller's
    INVITE, whose answers carry our To tag and the route set back (§12.1.1)."""
    resp = response_for(request, status, reason)
    if dialog_forming:
        resp.headers.set("To", leg.dialog.local)
        if leg.transport == "tls" and is_sips(request.uri):
            leg.sips = True  # a sips: Request-URI: our Contact is SIPS in this dialog
    if 100 < status < 300 and request.method in ("INVITE", "UPDATE"):
        resp.headers.add("Contact", leg.contact(host))
        if dialog_forming:
            for rr in request.headers.get_all("Record-Route"):
                resp.headers.add("Record-Route", rr)
    for name, value in headers:
        resp.headers.add(name, value)
    if body:
        resp.headers.add("Content-Type", content_type or "application/sdp")
        resp.body = body
    return resp


def outgoing_invite(host: CallHost, leg: Leg, caller_invite: Request, call_id: str,
                    user_agent: str, extra: tuple[tuple[str, str], ...] = ()) -> Request:
    """The INVITE to a target: the caller's body, one hop fewer, our Allow, and the
    route's `extra` headers (attribution, identity, diversion)."""
    mf = caller_invite.headers.get("Max-Forwards")
    req = leg.request(host, "INVITE", caller_invite.body,
                      caller_invite.headers.get("Content-Type"))
    req.headers.set("Max-Forwards", str(int(mf) - 1 if mf else 69))
    req.headers.add("Allow", ALLOW)
    req.headers.add("X-Calltrackd-Call", call_id)
    req.headers.add("User-Agent", user_agent)
    for name, value in extra:
        req.headers.add(name, value)
    return req


def b_dialog(host: CallHost, caller_invite: Request, target: SipURI, did: str,
             addr: Address, from_user: str | None = None, label: str | None = None,
             anonymous: bool = False, name: str | None = None) -> tuple[Dialog, SipURI]:
    """The dialog of the leg to `target` (its Request-URI with the DID as user when the
    target names none) and that Request-URI. From carries `from_user` (the asserted
    caller) or the caller's From user, and `name` (the routing webhook's) or the caller's
    display name after `label`; an
    `anonymous` caller is "Anonymous" <sip:anonymous@anonymous.invalid> (RFC 3323)."""
    h, _ = host.local_hostport(addr.transport, addr.host)
    ruri = target
    if not target.user or target.headers is not None:  # the DID as user, no headers
        ruri = SipURI(scheme=target.scheme, user=target.user or did, password=target.password,
                      host=target.host, port=target.port, params=target.params,
                      opaque=target.opaque)
    tag = host.new_id("tag")
    if anonymous:
        from_value = f'"Anonymous" <sip:anonymous@anonymous.invalid>;tag={tag}'
    else:
        from_ = caller_invite.from_
        caller_user = from_user or from_.uri.user or "anonymous"
        disp = f'"{name}" ' if name else display_with(from_.display, label)
        from_value = f"{disp}<sip:{caller_user}@{h}>;tag={tag}"
    port = f":{ruri.port}" if ruri.port else ""
    dialog = Dialog(host.new_id("call-id"), tag, from_value,
                    f"<sip:{did}@{ruri.host}{port}>", str(ruri))
    return dialog, ruri


def display_with(display: str | None, label: str | None) -> str:
    """A display name (as written, quoted or not) with `label` before it, and a space."""
    if not label:
        return f"{display} " if display else ""
    inner = (display or "").strip()
    if inner.startswith('"') and inner.endswith('"') and len(inner) >= 2:
        inner = inner[1:-1]
    return f'"{label} {inner}" ' if inner else f'"{label}" '



def retry_invite(host: CallHost, leg: Leg, old: Request) -> Request:
    """The INVITE `old` again, in the same dialog with the next CSeq, for its credentials
    (Authorization or Proxy-Authorization, RFC 3261 §22.2)."""
    req = leg.request(host, "INVITE", old.body, old.headers.get("Content-Type"))
    for name, value in old.headers:
        if name not in _NOT_COPIED:
            req.headers.add(name, value)
    req.headers.set("Max-Forwards", old.headers.get("Max-Forwards") or "70")
    return req


def is_sips(uri: str) -> bool:
    """Whether a URI, or the URI of a name-addr (`<sips:...>;lr`), has the sips scheme."""
    start = uri.find("<") + 1
    return uri[start:start + 5].lower() == "sips:"


def peer_address(leg: Leg) -> Address | None:
    """Where in-dialog requests to the peer go (first route, else remote target) when
    that is an IP literal on the leg's transport; None when it would take DNS or
    another transport, and the leg keeps the address it has."""
    try:
        addr = literal_address(leg.dialog.next_hop())
    except SipSyntaxError:
        return None
    if addr is None or addr.transport != leg.transport:
        return None
    return addr


@functools.lru_cache(maxsize=4096)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def default_port(uri: SipURI) -> int:
    return uri.port or (5061 if uri.transport == "tls" else 5060)


def literal_address(uri: SipURI) -> Address | None:
    """The address of a URI whose host is an IP literal; None when it needs DNS."""
    host = uri.host_bare
    if not _is_ip_literal(host):
        return None
    return Address(uri.transport, host, default_port(uri))
