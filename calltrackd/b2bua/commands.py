"""What goes into a call (events) and what comes out (commands): small immutable values.

The engine turns SIP layer events, timers and DNS answers into the events below and
feeds them to `Call.handle(event, now)`; the call answers with a list of commands, which
the engine executes in order (and flushes the transport once per input).

Events and commands are plain classes with read-only attributes (`Final`: mypy refuses
an assignment, and compiled they refuse it at run time too), equal when their fields
are, shown as `Name(field=value, ...)`. Not dataclasses: a call makes some 25 of them,
and mypyc leaves a dataclass's `__init__` to the dataclasses module (Python, assigning
through `object.__setattr__` when frozen), where a plain class's is compiled, about
many times cheaper. `CallInfo`, one per call and read by the hooks, stays a dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeAlias

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


class _Value:
    """Equality and repr by the fields in `__match_args__` (as a dataclass's)."""

    __match_args__: ClassVar[tuple[str, ...]] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, name) == getattr(other, name) for name in self.__match_args__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"{type(self).__name__}({fields})"


# --- events: into the call --------------------------------------------------------------


class Routed(_Value):
    """The routing answer for the caller's INVITE: the call starts its hunt. `media`:
    the tracker's media settings when the engine can anchor (rtpengine configured)."""

    __match_args__: ClassVar = ("route", "media")

    def __init__(self, route: Route, media: TrackerMedia | None = None) -> None:
        self.route: Final = route
        self.media: Final = media


class RequestIn(_Value):
    """A request in one of the call's dialogs (BYE, re-INVITE, UPDATE, INFO, ...), from
    the leg's peer (the engine checked who sent it)."""

    __match_args__: ClassVar = ("leg", "transaction", "request")

    def __init__(self, leg: Leg, transaction: ServerTransaction, request: Request) -> None:
        self.leg: Final = leg
        self.transaction: Final = transaction
        self.request: Final = request


class AckIn(_Value):
    """The ACK for a 2xx we sent on `leg`."""

    __match_args__: ClassVar = ("leg", "request")

    def __init__(self, leg: Leg, request: Request) -> None:
        self.leg: Final = leg
        self.request: Final = request


class CancelIn(_Value):
    """The caller's CANCEL of its INVITE (the engine answered the CANCEL itself)."""

    __match_args__: ClassVar = ("leg",)

    def __init__(self, leg: Leg) -> None:
        self.leg: Final = leg


class ResponseIn(_Value):
    __match_args__: ClassVar = ("leg", "transaction", "response")

    def __init__(self, leg: Leg, transaction: ClientTransaction, response: Response) -> None:
        self.leg: Final = leg
        self.transaction: Final = transaction
        self.response: Final = response


class TimeoutIn(_Value):
    """A transaction of the call's timed out (Timer B, F, H, L, ...)."""

    __match_args__: ClassVar = ("leg", "transaction", "timer")

    def __init__(self, leg: Leg, transaction: Transaction, timer: str) -> None:
        self.leg: Final = leg
        self.transaction: Final = transaction
        self.timer: Final = timer


class TimerFired(_Value):
    __match_args__: ClassVar = ("name",)

    def __init__(self, name: str) -> None:
        self.name: Final = name


class Resolved(_Value):
    """The address of the target asked for with `Resolve`."""

    __match_args__: ClassVar = ("address",)

    def __init__(self, address: Address) -> None:
        self.address: Final = address


class ResolveFailed(_Value):
    __match_args__: ClassVar = ("error",)

    def __init__(self, error: str) -> None:
        self.error: Final = error


class Terminate(_Value):
    """End the call from our side (the shutdown grace is over)."""

    __match_args__: ClassVar = ("reason",)

    def __init__(self, reason: str = "shutdown") -> None:
        self.reason: Final = reason


class MediaDone(_Value):
    """The answer to a MediaOffer or MediaAnswer: rtpengine's SDP, or why there is none
    (rtpengine down, slow past its budget, or refusing): the call then goes on direct."""

    __match_args__: ClassVar = ("kind", "sdp", "error", "seq")

    def __init__(self, kind: Literal["offer", "answer"], sdp: bytes | None,
                 error: str | None = None, seq: int = 0) -> None:
        self.kind: Final = kind
        self.sdp: Final = sdp
        self.error: Final = error
        self.seq: Final = seq


class MediaTimeout(_Value):
    """rtpengine saw no RTP from a side of the call for the media timeout."""

    __match_args__: ClassVar = ("idle",)

    def __init__(self, idle: float) -> None:
        self.idle: Final = idle  # seconds since the last RTP packet


CallEvent: TypeAlias = (Routed | RequestIn | AckIn | CancelIn | ResponseIn | TimeoutIn
                        | TimerFired | Resolved | ResolveFailed | Terminate | MediaDone
                        | MediaTimeout)


# --- commands: out of the call ----------------------------------------------------------


class RegisterDialog(_Value):
    """Requests in `leg`'s dialog are the call's from now on."""

    __match_args__: ClassVar = ("leg",)

    def __init__(self, leg: Leg) -> None:
        self.leg: Final = leg


class SendRequest(_Value):
    """Start a client transaction for `request` toward `dest`; `track`: its responses and
    timeout come back to the call as ResponseIn/TimeoutIn on `leg`."""

    __match_args__: ClassVar = ("leg", "request", "dest", "track")

    def __init__(self, leg: Leg, request: Request, dest: Address, track: bool = True) -> None:
        self.leg: Final = leg
        self.request: Final = request
        self.dest: Final = dest
        self.track: Final = track


class Respond(_Value):
    __match_args__: ClassVar = ("transaction", "response")

    def __init__(self, transaction: ServerTransaction, response: Response) -> None:
        self.transaction: Final = transaction
        self.response: Final = response


class SendAck(_Value):
    """The ACK for a 2xx, sent by the INVITE's client transaction (and again for every
    retransmission of the 2xx)."""

    __match_args__: ClassVar = ("transaction", "ack")

    def __init__(self, transaction: ClientInviteTransaction, ack: Request) -> None:
        self.transaction: Final = transaction
        self.ack: Final = ack


class StartTimer(_Value):
    """Fire TimerFired(name) at `at` (the clock of `now`); replaces a timer of that name."""

    __match_args__: ClassVar = ("name", "at")

    def __init__(self, name: str, at: float) -> None:
        self.name: Final = name
        self.at: Final = at


class CancelTimer(_Value):
    __match_args__: ClassVar = ("name",)

    def __init__(self, name: str) -> None:
        self.name: Final = name


class Resolve(_Value):
    """Look up the target's host; answer with Resolved or ResolveFailed."""

    __match_args__: ClassVar = ("uri",)

    def __init__(self, uri: SipURI) -> None:
        self.uri: Final = uri


class Notify(_Value):
    """Tell the hooks (tracking, CDRs, metrics): `seconds` is the set-up time so far."""

    __match_args__: ClassVar = ("kind", "info", "seconds")

    def __init__(self, kind: Literal["started", "forwarded", "answered", "ended"], info: CallInfo,
                 seconds: float = 0.0) -> None:
        self.kind: Final = kind
        self.info: Final = info
        self.seconds: Final = seconds


class Log(_Value):
    __match_args__: ClassVar = ("event", "fields", "level")

    def __init__(self, event: str, fields: dict[str, Any],
                 level: Literal["info", "warning"] = "info") -> None:
        self.event: Final = event  # dotted: call.started, call.ended, ...
        self.fields: Final = fields
        self.level: Final = level


class Finished(_Value):
    """The call is over: forget its dialogs and timers, keep it while its transactions
    may still report."""

    __match_args__: ClassVar = ()


class MediaOffer(_Value):
    """Offer the caller's SDP to rtpengine (ng call-id: the call's id); answer MediaDone."""

    __match_args__: ClassVar = ("sdp", "from_tag", "record", "to_tag", "seq", "late")

    def __init__(self, sdp: bytes, from_tag: str, record: bool = False, to_tag: str | None = None,
                 seq: int = 0, late: bool = False) -> None:
        self.sdp: Final = sdp
        self.from_tag: Final = from_tag
        self.record: Final = record
        self.to_tag: Final = to_tag  # a re-INVITE's or UPDATE's offer: the other side's tag
        self.seq: Final = seq  # 0: the call's first offer; else a relayed request's, held under seq
        self.late: Final = late  # late offer: the target's SDP (in its 1xx/2xx) toward the caller


class MediaAnswer(_Value):
    """The callee's SDP (a 183's or the 2xx's) to rtpengine; answer MediaDone(seq)."""

    __match_args__: ClassVar = ("sdp", "from_tag", "to_tag", "seq")

    def __init__(self, sdp: bytes, from_tag: str, to_tag: str, seq: int) -> None:
        self.sdp: Final = sdp
        self.from_tag: Final = from_tag
        self.to_tag: Final = to_tag
        self.seq: Final = seq


class MediaDelete(_Value):
    """The call is over: delete it in rtpengine (and collect its recording)."""

    __match_args__: ClassVar = ("from_tag", "record")

    def __init__(self, from_tag: str, record: bool = False) -> None:
        self.from_tag: Final = from_tag
        self.record: Final = record


Command: TypeAlias = (RegisterDialog | SendRequest | Respond | SendAck | StartTimer
                      | CancelTimer | Resolve | Notify | Log | Finished | MediaOffer
                      | MediaAnswer | MediaDelete)
