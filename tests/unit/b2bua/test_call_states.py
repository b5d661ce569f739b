"""The call driven directly with events: the commands it returns, and what it refuses."""

from __future__ import annotations

import itertools

import pytest

from calltrackd.b2bua.call import Call, CallStateError, State
from calltrackd.b2bua.commands import (
    CancelIn,
    Finished,
    Notify,
    RegisterDialog,
    Respond,
    Routed,
    SendRequest,
    StartTimer,
    TimerFired,
)
from calltrackd.b2bua.legs import ALLOW
from calltrackd.b2bua.routing import Load, Route, route
from calltrackd.sip.endpoint import Address, RequestReceived, TransactionLayer
from tests.unit.b2bua.net import CARRIER, ENGINE, Net, settings


class Host:
    def __init__(self) -> None:
        self.n = itertools.count(1)

    def local_hostport(self, transport: str, toward: str) -> tuple[str, int]:
        return ENGINE.host, ENGINE.port

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self.n)}" if kind != "branch" else f"z9hG4bK-{next(self.n)}"


def new_call() -> tuple[Call, Route]:
    """A call for the carrier's INVITE, as the engine makes it, not yet routed."""
    net = Net()
    net.carrier.invite()
    assert net.carrier.client_invite is not None
    [event] = TransactionLayer().receive(net.carrier.client_invite.to_bytes(), CARRIER, 0.0)
    assert isinstance(event, RequestReceived)
    decision = route(event.request, CARRIER, settings(), Load())
    assert isinstance(decision, Route)
    return Call(Host(), event.request, event.transaction, CARRIER, 10.0, 1_700_000_000.0,
                user_agent="ua", max_duration=60.0), decision


def test_routed_call_answers_100_notifies_and_sends_the_invite_with_a_ring_timer() -> None:
    call, decision = new_call()
    out = call.handle(Routed(decision), 10.0)
    kinds = [type(c) for c in out]
    assert kinds[:3] == [RegisterDialog, Respond, Notify]
    respond = out[1]
    assert isinstance(respond, Respond) and respond.response.status == 100
    sends = [c for c in out if isinstance(c, SendRequest)]
    assert len(sends) == 1 and sends[0].dest == Address("udp", "10.0.1.1", 5060)
    assert sends[0].request.headers.get("Allow") == ALLOW
    assert StartTimer("ring", 40.0) in out
    assert call.state is State.CALLING
    assert call.info is not None and call.info.started_at.timestamp() == 1_700_000_000.0


def test_an_impossible_event_names_the_state_and_the_event() -> None:
    call, _ = new_call()
    with pytest.raises(CallStateError, match="ROUTING on TimerFired"):
        call.handle(TimerFired("ring"), 11.0)
    assert call.state is State.ROUTING


def test_a_timer_the_state_does_not_run_is_refused() -> None:
    call, decision = new_call()
    call.handle(Routed(decision), 10.0)
    with pytest.raises(CallStateError, match="CALLING on timer max_duration"):
        call.handle(TimerFired("max_duration"), 11.0)


def test_cancel_while_calling_answers_487_and_finishes() -> None:
    call, decision = new_call()
    call.handle(Routed(decision), 10.0)
    out = call.handle(CancelIn(call.a), 12.5)
    statuses = [c.response.status for c in out if isinstance(c, Respond)]
    assert statuses == [487]
    assert any(isinstance(c, Finished) for c in out)
    assert call.state is State.ENDED
    assert call.info is not None and call.info.ring_seconds == 2.5
    assert call.handle(CancelIn(call.a), 13.0) == []  # a CANCEL again changes nothing
