"""Dialogs (RFC 3261 §12): what two user agents share from an INVITE's answer to its BYE —
who each side is, where requests to the peer go, and in what order they were sent.

Pure like the rest of `sip/`: whatever depends on the network (a request's Via, our
Contact) is passed in, and the request built is returned for the caller to send. A B2BUA
holds two per call: one as UAS toward the caller, one as UAC toward the callee.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import DialogError
from .message import Headers, Request, Response
from .uri import NameAddr, SipSyntaxError, SipURI

__all__ = ["TARGET_REFRESH", "Dialog", "DialogError", "make_cancel"]

# Requests whose Contact (and their 2xx's) replaces the remote target (§12.2, RFC 3311
# §5.1). SUBSCRIBE, NOTIFY and REFER would be others; calltrackd allows none of them.
TARGET_REFRESH = frozenset({"INVITE", "UPDATE"})


class Dialog:
    """One dialog, from our side.

    `local` and `remote` are the From and To values our requests carry (tags included);
    `route_set` is in the order our requests list it as Route headers. `local_cseq` is the
    last CSeq number we used and `remote_cseq` the highest the peer used (0: none yet).

    Built directly, it is a UAC's dialog before any answer: the initial INVITE is built
    from it, and the responses to that INVITE complete it (`receive_response`).
    """

    __slots__ = (
        "_forming",
        "_strict_uri",
        "_unanswered",
        "call_id",
        "invite_cseq",
        "local",
        "local_cseq",
        "local_tag",
        "remote",
        "remote_cseq",
        "remote_tag",
        "remote_target",
        "route_set",
    )

    def __init__(self, call_id: str, local_tag: str, local: str, remote: str,
                 remote_target: str) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag: str | None = None
        self.local = local
        self.remote = remote
        self.remote_target = remote_target
        self.route_set: Sequence[str] = ()
        self._strict_uri: str | None = None
        self.local_cseq = 0
        self.invite_cseq = 0  # our latest INVITE's: its ACK reuses it (§13.2.2.4)
        self.remote_cseq = 0
        # a UAC's dialog takes its remote tag, target and route set from the responses
        # to its INVITE until the 2xx (§12.1.2, §13.2.2.4); later ones only refresh
        self._forming = True
        self._unanswered = (remote, remote_target)

    @classmethod
    def uas(cls, request: Request, local_tag: str) -> Dialog:
        """The dialog our answer to `request` creates (§12.1.1)."""
        h = request.headers
        dialog = cls(request.call_id, local_tag, f"{h.get('To') or ''};tag={local_tag}",
                     h.get("From") or "", "")
        dialog._forming = False
        dialog.remote_tag = request.from_.tag
        dialog.remote_cseq = request.cseq[0]
        dialog.refresh_target(request)
        dialog._set_route_set(h.values("Record-Route"))
        return dialog

    @property
    def id(self) -> tuple[str, str, str | None]:
        """Call-ID, local tag, remote tag (§12)."""
        return self.call_id, self.local_tag, self.remote_tag

    def matches(self, message: Request | Response) -> bool:
        """Whether a request from the peer, or a response to one of ours, is in this dialog.
        Tags trade places between the two: the peer's requests carry ours in To."""
        if message.call_id != self.call_id:
            return False
        try:
            from_tag, to_tag = message.from_.tag, message.to.tag
        except SipSyntaxError:
            return False
        if isinstance(message, Request):
            return to_tag == self.local_tag and from_tag == self.remote_tag
        return from_tag == self.local_tag and to_tag == self.remote_tag

    def next_hop(self) -> SipURI:
        """Where a request in the dialog goes: its first route, else the remote target
        (§8.1.2, §12.2.1.1). Raises SipSyntaxError for a URI that does not parse."""
        if self.route_set:
            return NameAddr.parse(self.route_set[0]).uri
        return SipURI.parse(self.remote_target)

    # -- what the peer sends -----------------------------------------------------------

    def receive_request(self, request: Request) -> None:
        """A request from the peer (§12.2.2): refused when out of order, and a target
        refresh request's Contact becomes the remote target."""
        method = request.method
        if method == "ACK" or method == "CANCEL":
            return  # they carry the number of the INVITE they belong to
        num = request.cseq[0]
        if num < self.remote_cseq:
            raise DialogError(f"CSeq {num} {method} is below {self.remote_cseq}", 500)
        self.remote_cseq = num
        if method in TARGET_REFRESH:
            self.refresh_target(request)

    def receive_response(self, response: Response) -> None:
        """A response to a request we sent in the dialog."""
        status = response.status
        if status == 100:
            return
        method = response.cseq[1]
        if self._forming and method == "INVITE":
            if status >= 300:
                # the refusal ends any early dialog (§13.2.2.3): a retry (with credentials,
                # say) goes where the first INVITE went, without the early dialog's tag
                self.remote, self.remote_target = self._unanswered
                self.remote_tag = None
                self._set_route_set(())
                return
            headers = response.headers
            to = headers.get("To") or ""
            tag = NameAddr.parse(to).tag
            if status < 200 and (not tag or tag == self.remote_tag):
                # no To tag: no dialog (§12.1); the same tag again (183, then 180): the
                # early dialog it made stands
                return
            # a 1xx makes an early dialog; the 2xx recomputes it (§13.2.2.4), and may carry
            # another tag than the 1xx when a proxy forked: the one that answered wins
            self.remote_tag = tag
            self.remote = to or self.remote
            self.refresh_target(response)
            self._set_route_set(headers.values("Record-Route")[::-1])
            if status >= 200:
                self._forming = False
        elif 200 <= status < 300 and method in TARGET_REFRESH:
            self.refresh_target(response)  # §12.2.1.2; the route set stays

    def refresh_target(self, message: Request | Response) -> None:
        """A Contact in `message` replaces the remote target (§12.2); nothing else does."""
        contact = message.headers.values("Contact")
        if contact:
            try:
                self.remote_target = str(NameAddr.parse(contact[0]).uri)
            except SipSyntaxError:
                pass  # keep the target that worked rather than fail the dialog

    # -- what we send ------------------------------------------------------------------

    def request(self, method: str, via: str, contact: str | None = None, body: bytes = b"",
                content_type: str | None = None, cseq: int | None = None) -> Request:
        """A request in the dialog (§12.2.1.1). `via` is its Via value, with a fresh
        branch; `contact` is ours, which a target refresh request must carry.

        A new request takes the next CSeq number, an ACK its INVITE's; `cseq` overrides
        both (the ACK for an INVITE other than the latest). A CANCEL copies the request it
        cancels rather than the dialog (§9.1): see `make_cancel`.
        """
        if method == "CANCEL":
            raise ValueError("a CANCEL is built from the request it cancels: make_cancel")
        if cseq is None:
            if method == "ACK":
                cseq = self.invite_cseq
            else:
                cseq = self.local_cseq = self.local_cseq + 1
        elif cseq > self.local_cseq:
            self.local_cseq = cseq
        if method == "INVITE":
            self.invite_cseq = cseq
        h = Headers()
        h.add("Via", via)
        uri = self._strict_uri
        if uri is None:
            uri = self.remote_target
            for route in self.route_set:
                h.add("Route", route)
        else:
            # the next hop is a strict router (RFC 2543): it takes the Request-URI as the
            # route, and the remote target travels last in the Route headers
            for route in self.route_set[1:]:
                h.add("Route", route)
            h.add("Route", f"<{self.remote_target}>")
        h.add("Max-Forwards", "70")
        h.add("From", self.local)
        h.add("To", self.remote)
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        if contact is not None:
            h.add("Contact", contact)
        if content_type and body:
            h.add("Content-Type", content_type)
        return Request(method, uri, h, body)

    def _set_route_set(self, routes: Sequence[str]) -> None:
        self.route_set = routes
        self._strict_uri = None
        if routes:
            try:
                first = NameAddr.parse(routes[0]).uri
            except SipSyntaxError:
                return  # copied as it came, as a loose route
            if "lr" not in first.params:
                # §12.2.1.1: without the parameters a Request-URI may not carry (§19.1.1)
                params = {k: v for k, v in first.params.items() if k != "method"}
                self._strict_uri = str(first.with_(params=params, headers=None))


def make_cancel(request: Request) -> Request:
    """The CANCEL of `request` (§9.1): the same Request-URI, top Via, Route, From, To
    (tags as they were), Call-ID and CSeq number, so the peer matches it to that request."""
    h = Headers()
    h.add("Via", request.headers.values("Via")[0])
    for route in request.headers.get_all("Route"):
        h.add("Route", route)
    h.add("Max-Forwards", "70")
    for name in ("From", "To", "Call-ID"):
        h.add(name, request.headers.get(name) or "")
    h.add("CSeq", f"{request.cseq[0]} CANCEL")
    return Request("CANCEL", request.uri, h)
