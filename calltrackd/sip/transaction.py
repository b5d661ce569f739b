"""The four transaction state machines of RFC 3261 §17, with RFC 6026's Accepted state.

Theory of operation
-------------------
A transaction is a small object driven by three inputs — a message from the peer, a
message from the transaction user (TU), and the passage of time — and answering with a
list of actions: `Transmit(bytes)` (send to the transaction's peer), `PassUp(message)`
(deliver to the TU) and `TimedOut(timer)` (tell the TU the transaction failed). Timers
are named as in the RFC (A, B, D, E, F, G, H, I, J, K, plus L and M of RFC 6026); a
transaction only records their deadlines, and `deadline` is the earliest one. Whoever
drives it calls `on_timer(now)` once that time has come. Nothing here reads a clock or
touches a socket.

State tables (unreliable transport; on TCP the retransmit timers A, E, G are not set and
the wait timers D, I, J, K are zero):

  client INVITE      Calling --1xx--> Proceeding --300-699--> Completed --D--> Terminated
                     Calling/Proceeding --2xx--> Accepted --M--> Terminated
                     Calling --B--> Terminated (timeout)
  client non-INVITE  Trying --1xx--> Proceeding --final--> Completed --K--> Terminated
                     Trying/Proceeding --F--> Terminated (timeout)
  server INVITE      Proceeding --TU 300-699--> Completed --ACK--> Confirmed --I--> Terminated
                     Proceeding --TU 2xx--> Accepted --L--> Terminated
                     Completed --H--> Terminated (no ACK)
  server non-INVITE  Trying --TU 1xx--> Proceeding --TU final--> Completed --J--> Terminated

Deviation, on purpose: in Accepted the server INVITE transaction itself retransmits the 2xx
(T1 doubling to T2, §13.3.1.4) until the TU says the ACK arrived, and the client INVITE
transaction re-sends the TU's ACK on every 2xx retransmission. Both are TU duties in the
RFC; keeping them here gives every dialog the same, tested behaviour.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Final, TypeAlias

from .errors import TransactionError
from .message import Headers, Request, Response

__all__ = [
    "Action",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "PassUp",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "State",
    "TimedOut",
    "TimerConfig",
    "Transaction",
    "TransactionError",
    "Transmit",
    "make_ack_for_non2xx",
]


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 §17.1.1.1 timer values (seconds)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


# The actions are plain classes with read-only attributes (`Final`), equal when their
# fields are, shown as `Name(field=value)`: not dataclasses, whose `__init__` mypyc leaves
# to the dataclasses module (Python), where a plain class's is compiled. Every message
# sent makes one.


class _Action:
    """Equality, hash and repr by the fields in `__match_args__` (as a dataclass's)."""

    __match_args__: ClassVar[tuple[str, ...]] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__match_args__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"{type(self).__name__}({fields})"


class Transmit(_Action):
    __match_args__: ClassVar = ("data", "retransmission")

    def __init__(self, data: bytes, retransmission: bool = False) -> None:
        self.data: Final = data
        self.retransmission: Final = retransmission


class PassUp(_Action):
    __match_args__: ClassVar = ("message",)

    def __init__(self, message: Request | Response) -> None:
        self.message: Final = message


class TimedOut(_Action):
    __match_args__: ClassVar = ("timer",)

    def __init__(self, timer: str) -> None:
        # "B", "F" (client: no final response), "H" (server: no ACK), "L" (no 2xx ACK)
        self.timer: Final = timer


Action: TypeAlias = Transmit | PassUp | TimedOut


class State(enum.Enum):
    CALLING = "Calling"  # §17.1.1.2
    TRYING = "Trying"  # §17.1.2.2, §17.2.2
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"  # §17.2.1
    ACCEPTED = "Accepted"  # RFC 6026 §7.1, §7.2
    TERMINATED = "Terminated"


class Transaction:
    """Timer bookkeeping shared by the four machines."""

    __slots__ = ("_timers", "key", "reliable", "request", "scheduled", "state", "timers",
                 "user")
    kind = "transaction"

    def __init__(self, request: Request, key: str, reliable: bool, timers: TimerConfig) -> None:
        self.request = request
        self.key = key
        self.reliable = reliable
        self.timers = timers
        self.state = State.TRYING
        self._timers: dict[str, float] = {}
        self.user: object = None  # the TU's handle (e.g. the call leg); never read here
        self.scheduled: float | None = None  # the layer's bookkeeping: its timer-heap entry

    @property
    def deadline(self) -> float | None:
        return min(self._timers.values()) if self._timers else None

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def _set(self, name: str, at: float) -> None:
        self._timers[name] = at

    def _cancel(self, *names: str) -> None:
        for name in names:
            self._timers.pop(name, None)

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self._timers.clear()

    def on_timer(self, now: float) -> list[Action]:
        """Fire every timer whose deadline has passed, earliest first."""
        actions: list[Action] = []
        for name, at in sorted(self._timers.items(), key=lambda kv: kv[1]):
            if at <= now and self._timers.get(name) == at and not self.terminated:
                del self._timers[name]
                actions.extend(self._fire(name, now))
        return actions

    def _fire(self, name: str, now: float) -> list[Action]:  # pragma: no cover - abstract
        raise NotImplementedError


# --- client transactions ----------------------------------------------------------


class ClientInviteTransaction(Transaction):
    """RFC 3261 §17.1.1 with RFC 6026 §7.2."""

    __slots__ = ("_a_interval", "_ack", "_data")
    kind = "client INVITE"

    def __init__(self, request: Request, key: str, reliable: bool, timers: TimerConfig) -> None:
        super().__init__(request, key, reliable, timers)
        self.state = State.CALLING
        self._data = b""
        self._a_interval = timers.t1
        self._ack: bytes | None = None  # the TU's ACK for a 2xx, re-sent on retransmissions

    def start(self, now: float) -> list[Action]:
        self._data = self.request.to_bytes()
        if not self.reliable:
            self._set("A", now + self._a_interval)
        self._set("B", now + 64 * self.timers.t1)
        return [Transmit(self._data)]

    def set_ack(self, ack: bytes) -> list[Action]:
        """The TU's ACK for the 2xx: sent now and again for each 2xx retransmission."""
        if self.state is not State.ACCEPTED:
            raise TransactionError(self.kind, self.state, "ACK for 2xx")
        self._ack = ack
        return [Transmit(ack)]

    def on_response(self, response: Response, now: float) -> list[Action]:
        code = response.status
        state = self.state
        if state in (State.CALLING, State.PROCEEDING):
            if code < 200:
                self.state = State.PROCEEDING
                self._cancel("A", "B")
                return [PassUp(response)]
            if code < 300:
                self.state = State.ACCEPTED
                self._timers.clear()
                self._set("M", now + 64 * self.timers.t1)
                return [PassUp(response)]
            self.state = State.COMPLETED
            self._timers.clear()
            self._set("D", now + (0.0 if self.reliable else 32.0))
            return [Transmit(make_ack_for_non2xx(self.request, response).to_bytes()),
                    PassUp(response)]
        if state is State.COMPLETED and code >= 300:
            # §17.1.1.2: a retransmitted final response gets the ACK again, not the TU
            return [Transmit(make_ack_for_non2xx(self.request, response).to_bytes(), True)]
        if state is State.ACCEPTED and 200 <= code < 300:
            if self._ack is not None:
                return [Transmit(self._ack, True)]
            return [PassUp(response)]  # a forked 2xx or the TU has not ACKed yet
        return []

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "A" and self.state is State.CALLING:
            self._a_interval *= 2
            self._set("A", now + self._a_interval)
            return [Transmit(self._data, True)]
        if name == "B" and self.state is State.CALLING:
            self._terminate()
            return [TimedOut("B")]
        if name in ("D", "M"):
            self._terminate()
        return []


class ClientNonInviteTransaction(Transaction):
    """RFC 3261 §17.1.2."""

    __slots__ = ("_data", "_e_interval")
    kind = "client non-INVITE"

    def __init__(self, request: Request, key: str, reliable: bool, timers: TimerConfig) -> None:
        super().__init__(request, key, reliable, timers)
        self._data = b""
        self._e_interval = timers.t1

    def start(self, now: float) -> list[Action]:
        self._data = self.request.to_bytes()
        if not self.reliable:
            self._set("E", now + self._e_interval)
        self._set("F", now + 64 * self.timers.t1)
        return [Transmit(self._data)]

    def on_response(self, response: Response, now: float) -> list[Action]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []  # retransmissions of the final response are absorbed
        if response.status < 200:
            self.state = State.PROCEEDING
            return [PassUp(response)]
        self.state = State.COMPLETED
        self._timers.clear()
        self._set("K", now + (0.0 if self.reliable else self.timers.t4))
        return [PassUp(response)]

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "E" and self.state in (State.TRYING, State.PROCEEDING):
            # in Trying the interval doubles up to T2; in Proceeding it stays at T2
            if self.state is State.TRYING:
                self._e_interval = min(2 * self._e_interval, self.timers.t2)
            else:
                self._e_interval = self.timers.t2
            self._set("E", now + self._e_interval)
            return [Transmit(self._data, True)]
        if name == "F":
            self._terminate()
            return [TimedOut("F")]
        if name == "K":
            self._terminate()
        return []


# --- server transactions ----------------------------------------------------------


class ServerInviteTransaction(Transaction):
    """RFC 3261 §17.2.1 with RFC 6026 §7.1."""

    __slots__ = ("_g_interval", "_last", "acked", "last_status")
    kind = "server INVITE"

    def __init__(self, request: Request, key: str, reliable: bool, timers: TimerConfig) -> None:
        super().__init__(request, key, reliable, timers)
        self.state = State.PROCEEDING
        self._last: bytes | None = None
        self.last_status = 0
        self._g_interval = timers.t1
        self.acked = False

    def respond(self, response: Response, now: float) -> list[Action]:
        code = response.status
        if self.state is not State.PROCEEDING:
            if self.state is State.ACCEPTED and 200 <= code < 300:
                return []  # a 2xx is already being retransmitted
            raise TransactionError(self.kind, self.state, f"send {code}")
        if code == 100 and self.last_status > 100:
            return []  # a 100 after a 180 or 183 says less: the provisional sent stands
        self._last = response.to_bytes()
        self.last_status = code
        if code >= 200:
            self.state = State.ACCEPTED if code < 300 else State.COMPLETED
            # a reliable transport carries the final response once; H and L still
            # bound the wait for the ACK
            if not self.reliable:
                self._set("G", now + self._g_interval)
            self._set("L" if code < 300 else "H", now + 64 * self.timers.t1)
        return [Transmit(self._last)]

    def on_request(self, request: Request, now: float) -> list[Action]:
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                self._cancel("G", "H")
                self._set("I", now + (0.0 if self.reliable else self.timers.t4))
            return []
        # a retransmitted INVITE: repeat the last response, if any (§17.2.1)
        if self._last is not None and self.state in (
            State.PROCEEDING,
            State.COMPLETED,
            State.ACCEPTED,
        ):
            return [Transmit(self._last, True)]
        return []

    def ack_received(self) -> None:
        """The TU saw the ACK for our 2xx: stop retransmitting it (Timer L keeps running)."""
        self.acked = True
        self._cancel("G")

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "G" and self.state in (State.COMPLETED, State.ACCEPTED) and self._last:
            self._g_interval = min(2 * self._g_interval, self.timers.t2)
            self._set("G", now + self._g_interval)
            return [Transmit(self._last, True)]
        if name == "H" and self.state is State.COMPLETED:
            self._terminate()
            return [TimedOut("H")]
        if name == "L":
            self._terminate()
            return [] if self.acked else [TimedOut("L")]
        if name == "I":
            self._terminate()
        return []


class ServerNonInviteTransaction(Transaction):
    """RFC 3261 §17.2.2."""

    __slots__ = ("_last",)
    kind = "server non-INVITE"

    def __init__(self, request: Request, key: str, reliable: bool, timers: TimerConfig) -> None:
        super().__init__(request, key, reliable, timers)
        self._last: bytes | None = None

    def respond(self, response: Response, now: float) -> list[Action]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            raise TransactionError(self.kind, self.state, f"send {response.status}")
        self._last = response.to_bytes()
        if response.status < 200:
            self.state = State.PROCEEDING
        else:
            self.state = State.COMPLETED
            self._set("J", now + (0.0 if self.reliable else 64 * self.timers.t1))
        return [Transmit(self._last)]

    def on_request(self, request: Request, now: float) -> list[Action]:
        if self._last is not None and self.state in (State.PROCEEDING, State.COMPLETED):
            return [Transmit(self._last, True)]
        return []

    def _fire(self, name: str, now: float) -> list[Action]:
        if name == "J":
            self._terminate()
        return []


def make_ack_for_non2xx(request: Request, response: Response) -> Request:
    """ACK for a non-2xx final response (§17.1.1.3): same branch, To from the response."""
    headers = Headers()
    top_via = request.headers.values("Via")[0]
    headers.add("Via", top_via)
    for name in ("Route",):
        for value in request.headers.get_all(name):
            headers.add(name, value)
    headers.add("Max-Forwards", "70")
    headers.add("From", request.headers.get("From") or "")
    headers.add("To", response.headers.get("To") or "")
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", f"{request.cseq[0]} ACK")
    return Request("ACK", request.uri, headers)
