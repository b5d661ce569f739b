"""What goes into a call (events) and what comes out (commands): small frozen dataclasses.

The engine turns SIP layer events, timers and DNS answers into the events below and
feeds them to `Call.handle(event, now)`; the call answers with a list of commands, which
the engine executes in order (and flushes the transport once per input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ..sip.endpoint import Address, ClientTransaction, ServerTransaction
from ..sip.message import Request, Response
from ..sip.transaction import ClientInviteTransaction, Transaction
from ..sip.uri import SipURI
from ..tracking.model import HangupBy, Outcome, Tracker
from .legs import Leg
from .routing import Route

if TYPE_CHECKING:
    from ..config.settings import TrackerMedia


@dataclass(slots=True)
class CallInfo:
    """What the outside world sees of a call; the CDR is built from it."""

    id: str
    tracker: Tracker
    did: str
    caller: str
    carrier: str
    started_at: datetime
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: Outcome | None = None
    sip_code: int | None = None
    hangup_by: HangupBy | None = None
    target: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # for hooks (attribution, ...)

    @property
    def ring_seconds(self) -> float | None:
        end = self.answered_at or self.ended_at
        return None if end is None else round((end - self.started_at).total_seconds(), 3)

    @property
    def talk_seconds(self) -> float | None:
        if self.answered_at is None:
            return 0.0 if self.ended_at else None
        if self.ended_at is None:
            return None
        return round((self.ended_at - self.answered_at).total_seconds(), 3)


# --- events: into the call --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Routed:
    """The routing answer for the caller's INVITE: the call starts its hunt. `media`:
    the tracker's media settings when the engine can anchor (rtpengine configured)."""

    route: Route
    media: TrackerMedia | None = None


@dataclass(frozen=True, slots=True)
class RequestIn:
    """A request in one of the call's dialogs (BYE, re-INVITE, UPDATE, INFO, ...), from
    the leg's peer (the engine checked who sent it)."""

    leg: Leg
    transaction: ServerTransaction
    request: Request


@dataclass(frozen=True, slots=True)
class AckIn:
    """The ACK for a 2xx we sent on `leg`."""

    leg: Leg
    request: Request


@dataclass(frozen=True, slots=True)
class CancelIn:
    """The caller's CANCEL of its INVITE (the engine answered the CANCEL itself)."""

    leg: Leg


@dataclass(frozen=True, slots=True)
class ResponseIn:
    leg: Leg
    transaction: ClientTransaction
    response: Response


@dataclass(frozen=True, slots=True)
class TimeoutIn:
    """A transaction of the call's timed out (Timer B, F, H, L, ...)."""

    leg: Leg
    transaction: Transaction
    timer: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    name: str


@dataclass(frozen=True, slots=True)
class Resolved:
    """The address of the target asked for with `Resolve`."""

    address: Address


@dataclass(frozen=True, slots=True)
class ResolveFailed:
    error: str


@dataclass(frozen=True, slots=True)
class Terminate:
    """End the call from our side (the shutdown grace is over)."""

    reason: str = "shutdown"


@dataclass(frozen=True, slots=True)
class MediaDone:
    """The answer to a MediaOffer or MediaAnswer: rtpengine's SDP, or why there is none
    (rtpengine down, slow past its budget, or refusing): the call then goes on direct."""

    kind: Literal["offer", "answer"]
    sdp: bytes | None
    error: str | None = None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class MediaTimeout:
    """rtpengine saw no RTP from a side of the call for the media timeout."""

    idle: float  # seconds since the last RTP packet


CallEvent: TypeAlias = (Routed | RequestIn | AckIn | CancelIn | ResponseIn | TimeoutIn
                        | TimerFired | Resolved | ResolveFailed | Terminate | MediaDone
                        | MediaTimeout)


# --- commands: out of the call ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterDialog:
    """Requests in `leg`'s dialog are the call's from now on."""

    leg: Leg


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Start a client transaction for `request` toward `dest`; `track`: its responses and
    timeout come back to the call as ResponseIn/TimeoutIn on `leg`."""

    leg: Leg
    request: Request
    dest: Address
    track: bool = True


@dataclass(frozen=True, slots=True)
class Respond:
    transaction: ServerTransaction
    response: Response


@dataclass(frozen=True, slots=True)
class SendAck:
    """The ACK for a 2xx, sent by the INVITE's client transaction (and again for every
    retransmission of the 2xx)."""

    transaction: ClientInviteTransaction
    ack: Request


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Fire TimerFired(name) at `at` (the clock of `now`); replaces a timer of that name."""

    name: str
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class Resolve:
    """Look up the target's host; answer with Resolved or ResolveFailed."""

    uri: SipURI


@dataclass(frozen=True, slots=True)
class Notify:
    """Tell the hooks (tracking, CDRs, metrics): `seconds` is the set-up time so far."""

    kind: Literal["started", "forwarded", "answered", "ended"]
    info: CallInfo
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Log:
    event: str  # dotted: call.started, call.ended, ...
    fields: dict[str, Any]
    level: Literal["info", "warning"] = "info"


@dataclass(frozen=True, slots=True)
class Finished:
    """The call is over: forget its dialogs and timers, keep it while its transactions
    may still report."""


@dataclass(frozen=True, slots=True)
class MediaOffer:
    """Offer the caller's SDP to rtpengine (ng call-id: the call's id); answer MediaDone."""

    sdp: bytes
    from_tag: str
    record: bool = False
    to_tag: str | None = None  # a re-INVITE's or UPDATE's offer: the other side's tag
    seq: int = 0  # 0: the call's first offer; else a relayed request's, held under seq


@dataclass(frozen=True, slots=True)
class MediaAnswer:
    """The callee's SDP (a 183's or the 2xx's) to rtpengine; answer MediaDone(seq)."""

    sdp: bytes
    from_tag: str
    to_tag: str
    seq: int


@dataclass(frozen=True, slots=True)
class MediaDelete:
    """The call is over: delete it in rtpengine (and collect its recording)."""

    from_tag: str
    record: bool = False


Command: TypeAlias = (RegisterDialog | SendRequest | Respond | SendAck | StartTimer
                      | CancelTimer | Resolve | Notify | Log | Finished | MediaOffer
                      | MediaAnswer | MediaDelete)
