"""The four RFC 3261 §17 transaction machines driven by a manual clock: every send and
timer is checked at the time the RFC says, over UDP and TCP. No sockets, no sleeps."""

from __future__ import annotations

import itertools

import pytest

from calltrackd.sip.message import Headers, Request, Response, parse_message, response_for
from calltrackd.sip.transaction import (
    Action,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    PassUp,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    TimedOut,
    TimerConfig,
    TransactionError,
    Transmit,
)

T = TimerConfig(t1=0.5, t2=4.0, t4=5.0)


def request(method: str = "INVITE", branch: str = "z9hG4bKabc") -> Request:
    h = Headers()
    h.add("Via", f"SIP/2.0/UDP 127.0.0.1:5061;branch={branch}")
    h.add("From", "<sip:+79161234567@127.0.0.1>;tag=caller")
    h.add("To", "<sip:+74990000001@127.0.0.1>")
    h.add("Call-ID", "call-1@test")
    h.add("CSeq", f"1 {method}")
    h.add("Max-Forwards", "70")
    return Request(method, "sip:+74990000001@127.0.0.1", h)


def response(req: Request, status: int, tag: str | None = "callee") -> Response:
    resp = response_for(req, status)
    if tag:
        resp.headers.set("To", (req.headers.get("To") or "") + f";tag={tag}")
    return resp


def sends(actions: list[Action]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, Transmit)]


Txn = (ClientInviteTransaction | ClientNonInviteTransaction
       | ServerInviteTransaction | ServerNonInviteTransaction)


def state_of(txn: Txn) -> State:
    """The machine's state read afresh: an `assert txn.state is ...` narrows the attribute,
    and mypy would keep that narrowing across the calls that move the machine on."""
    return txn.state


def run_until(txn: Txn, end: float) -> list[tuple[float, Action]]:
    """Fire timers at their deadlines up to `end`; returns (time, action) pairs."""
    out: list[tuple[float, Action]] = []
    while txn.deadline is not None and txn.deadline <= end:
        now = txn.deadline
        out.extend((now, a) for a in txn.on_timer(now))
    return out


# --- client INVITE (§17.1.1) ---------------------------------------------------------


def test_unanswered_invite_on_udp_is_retransmitted_by_timer_a_then_times_out_by_b() -> None:
    txn = ClientInviteTransaction(request(), "k", reliable=False, timers=T)
    assert len(sends(txn.start(0.0))) == 1
    events = run_until(txn, 100.0)
    resend_times = [t for t, a in events if isinstance(a, Transmit)]
    assert resend_times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A doubles without a cap
    assert [(t, a) for t, a in events if isinstance(a, TimedOut)] == [(32.0, TimedOut("B"))]
    assert state_of(txn) is State.TERMINATED


def test_invite_on_tcp_is_not_retransmitted_but_still_times_out() -> None:
    txn = ClientInviteTransaction(request(), "k", reliable=True, timers=T)
    txn.start(0.0)
    events = run_until(txn, 100.0)
    assert [a for _, a in events] == [TimedOut("B")]


def test_provisional_stops_retransmissions_and_timer_b() -> None:
    req = request()
    txn = ClientInviteTransaction(req, "k", reliable=False, timers=T)
    txn.start(0.0)
    actions = txn.on_response(response(req, 180), 0.2)
    assert [type(a) for a in actions] == [PassUp]
    assert txn.state is State.PROCEEDING
    assert run_until(txn, 1000.0) == []  # the TU's own ring timer decides from here


def test_non2xx_final_is_acked_passed_up_once_and_retransmissions_reacked() -> None:
    req = request()
    txn = ClientInviteTransaction(req, "k", reliable=False, timers=T)
    txn.start(0.0)
    busy = response(req, 486)
    actions = txn.on_response(busy, 0.1)
    acks = sends(actions)
    assert len(acks) == 1 and [type(a) for a in actions] == [Transmit, PassUp]
    ack = parse_message(acks[0])
    assert isinstance(ack, Request) and ack.method == "ACK"
    # §17.1.1.3: same branch and Request-URI as the INVITE, To with the response's tag
    assert ack.top_via.branch == "z9hG4bKabc" and ack.uri == req.uri
    assert ack.to.tag == "callee" and ack.cseq == (1, "ACK")
    again = txn.on_response(busy, 1.0)
    assert len(sends(again)) == 1 and not any(isinstance(a, PassUp) for a in again)
    assert txn.state is State.COMPLETED
    run_until(txn, 32.0)
    assert txn.state is State.COMPLETED
    run_until(txn, 32.1)  # Timer D: 32 s after the final response on UDP
    assert state_of(txn) is State.TERMINATED


def test_timer_d_is_zero_on_tcp() -> None:
    req = request()
    txn = ClientInviteTransaction(req, "k", reliable=True, timers=T)
    txn.start(0.0)
    txn.on_response(response(req, 503), 1.0)
    run_until(txn, 1.0)
    assert state_of(txn) is State.TERMINATED


def test_2xx_moves_to_accepted_and_retransmitted_2xx_gets_the_tus_ack() -> None:
    req = request()
    txn = ClientInviteTransaction(req, "k", reliable=False, timers=T)
    txn.start(0.0)
    ok = response(req, 200)
    assert [type(a) for a in txn.on_response(ok, 0.3)] == [PassUp]
    assert txn.state is State.ACCEPTED
    assert sends(txn.set_ack(b"ACK bytes")) == [b"ACK bytes"]
    assert sends(txn.on_response(ok, 0.8)) == [b"ACK bytes"]  # 2xx retransmission
    run_until(txn, 0.3 + 32.0)  # Timer M = 64*T1 (RFC 6026)
    assert state_of(txn) is State.TERMINATED


def test_ack_for_2xx_outside_accepted_is_a_tu_error() -> None:
    txn = ClientInviteTransaction(request(), "k", reliable=False, timers=T)
    txn.start(0.0)
    with pytest.raises(TransactionError, match=r"client INVITE.*Calling"):
        txn.set_ack(b"ACK")


# --- client non-INVITE (§17.1.2) -----------------------------------------------------


def test_non_invite_retransmits_doubling_to_t2_and_times_out_by_f() -> None:
    txn = ClientNonInviteTransaction(request("BYE"), "k", reliable=False, timers=T)
    txn.start(0.0)
    events = run_until(txn, 100.0)
    times = [t for t, a in events if isinstance(a, Transmit)]
    # E: 0.5, 1, 2, 4, 4, 4 ... (capped at T2) until F at 64*T1 = 32 s
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert all(b - a == 4.0 for a, b in itertools.pairwise(times[3:]))
    assert events[-1] == (32.0, TimedOut("F"))


def test_non_invite_in_proceeding_retransmits_every_t2() -> None:
    req = request("BYE")
    txn = ClientNonInviteTransaction(req, "k", reliable=False, timers=T)
    txn.start(0.0)
    txn.on_response(response(req, 100, None), 0.1)
    events = run_until(txn, 10.0)
    times = [t for t, a in events if isinstance(a, Transmit)]
    assert times[0] == 0.5 and all(b - a == 4.0 for a, b in itertools.pairwise(times[1:]))


def test_non_invite_final_waits_timer_k_absorbing_retransmissions() -> None:
    req = request("BYE")
    txn = ClientNonInviteTransaction(req, "k", reliable=False, timers=T)
    txn.start(0.0)
    ok = response(req, 200)
    assert [type(a) for a in txn.on_response(ok, 0.2)] == [PassUp]
    assert txn.on_response(ok, 0.7) == []
    run_until(txn, 5.1)
    assert txn.state is State.COMPLETED
    run_until(txn, 5.2)  # K = T4 after the final response on UDP
    assert state_of(txn) is State.TERMINATED


# --- server INVITE (§17.2.1) ---------------------------------------------------------


def test_retransmitted_invite_gets_the_last_provisional_again() -> None:
    req = request()
    txn = ServerInviteTransaction(req, "k", reliable=False, timers=T)
    assert txn.on_request(req, 0.1) == []  # nothing sent yet: nothing to repeat
    ringing = response(req, 180)
    assert sends(txn.respond(ringing, 0.2)) == [ringing.to_bytes()]
    assert sends(txn.on_request(req, 0.6)) == [ringing.to_bytes()]


def test_a_100_after_a_180_is_not_sent_and_the_180_stays_the_one_repeated() -> None:
    """A B2BUA may ring the caller itself (180 while the routing webhook is asked) and
    then pass the call on, whose next step answers 100: that 100 says less than the 180
    already sent, so it is not sent, and a retransmitted INVITE still gets the 180."""
    req = request()
    txn = ServerInviteTransaction(req, "k", reliable=False, timers=T)
    trying, ringing = response(req, 100, tag=None), response(req, 180)
    assert sends(txn.respond(trying, 0.0)) == [trying.to_bytes()]
    assert sends(txn.respond(ringing, 0.1)) == [ringing.to_bytes()]
    assert txn.respond(trying, 0.2) == []
    assert sends(txn.on_request(req, 0.6)) == [ringing.to_bytes()]
    assert txn.last_status == 180


def test_non2xx_final_retransmitted_by_g_until_ack_then_confirmed_and_i() -> None:
    req = request()
    txn = ServerInviteTransaction(req, "k", reliable=False, timers=T)
    txn.respond(response(req, 486), 0.0)
    events = run_until(txn, 5.0)
    times = [t for t, a in events if isinstance(a, Transmit)]
    assert times == [0.5, 1.5, 3.5]  # G doubles (capped at T2)
    ack = request("ACK")
    txn.on_request(ack, 5.0)
    assert txn.state is State.CONFIRMED
    assert run_until(txn, 9.9) == [] and txn.state is State.CONFIRMED
    run_until(txn, 10.0)  # Timer I = T4
    assert state_of(txn) is State.TERMINATED


def test_no_ack_for_non2xx_times_out_by_h() -> None:
    req = request()
    txn = ServerInviteTransaction(req, "k", reliable=False, timers=T)
    txn.respond(response(req, 404), 0.0)
    events = run_until(txn, 100.0)
    assert events[-1] == (32.0, TimedOut("H"))
    times = [t for t, a in events if isinstance(a, Transmit)]
    assert times[:4] == [0.5, 1.5, 3.5, 7.5] and times[-1] < 32.0


def test_2xx_retransmitted_until_ack_then_l_terminates_quietly() -> None:
    req = request()
    txn = ServerInviteTransaction(req, "k", reliable=False, timers=T)
    txn.respond(response(req, 200), 0.0)
    assert txn.state is State.ACCEPTED
    first = run_until(txn, 2.0)
    assert [t for t, a in first if isinstance(a, Transmit)] == [0.5, 1.5]
    txn.ack_received()
    assert [a for _, a in run_until(txn, 100.0)] == []  # L ends it: no timeout reported
    assert state_of(txn) is State.TERMINATED


def test_2xx_never_acked_reports_timer_l() -> None:
    req = request()
    txn = ServerInviteTransaction(req, "k", reliable=True, timers=T)
    txn.respond(response(req, 200), 0.0)
    assert [a for _, a in run_until(txn, 100.0)] == [TimedOut("L")]


def test_retransmitted_invite_in_accepted_gets_the_2xx_again() -> None:
    req = request()
    txn = ServerInviteTransaction(req, "k", reliable=False, timers=T)
    ok = response(req, 200)
    txn.respond(ok, 0.0)
    assert sends(txn.on_request(req, 0.2)) == [ok.to_bytes()]


def test_second_final_response_is_a_tu_error() -> None:
    req = request()
    txn = ServerInviteTransaction(req, "k", reliable=False, timers=T)
    txn.respond(response(req, 486), 0.0)
    with pytest.raises(TransactionError, match=r"server INVITE.*send 200.*Completed"):
        txn.respond(response(req, 200), 0.1)


def test_reliable_server_invite_does_not_retransmit_and_i_is_zero() -> None:
    req = request()
    txn = ServerInviteTransaction(req, "k", reliable=True, timers=T)
    txn.respond(response(req, 480), 0.0)
    txn.on_request(request("ACK"), 0.1)
    run_until(txn, 0.1)
    assert state_of(txn) is State.TERMINATED


# --- server non-INVITE (§17.2.2) -----------------------------------------------------


def test_non_invite_server_repeats_final_and_lingers_timer_j() -> None:
    req = request("BYE")
    txn = ServerNonInviteTransaction(req, "k", reliable=False, timers=T)
    assert txn.on_request(req, 0.0) == []  # Trying: absorbed
    ok = response(req, 200)
    txn.respond(ok, 0.1)
    assert txn.state is State.COMPLETED
    assert sends(txn.on_request(req, 1.0)) == [ok.to_bytes()]
    run_until(txn, 32.0)
    assert txn.state is State.COMPLETED
    run_until(txn, 32.1)  # J = 64*T1 after the final response
    assert state_of(txn) is State.TERMINATED
    with pytest.raises(TransactionError):
        txn.respond(ok, 33.0)


def test_non_invite_server_on_tcp_ends_at_once() -> None:
    req = request("OPTIONS")
    txn = ServerNonInviteTransaction(req, "k", reliable=True, timers=T)
    txn.respond(response(req, 200), 0.0)
    run_until(txn, 0.0)
    assert state_of(txn) is State.TERMINATED
