"""A call that ends while its routing waits (for the attribution, or for the tracker's
routing webhook) still gets its record: the caller's CANCEL gives 487 and a CDR through
the usual hooks (started, ended), nothing is dialled, and the engine forgets the wait."""

from __future__ import annotations

from calltrackd.b2bua.routing_webhook import Answer, RoutingWebhook
from calltrackd.tracking.model import Attribution, ForwardTarget, Tracker
from tests.unit.b2bua.net import CALLER, DID, PBX_A, Forever, Net, settings
from tests.unit.b2bua.test_routing_rules_engine import config

SALES = ForwardTarget(f"sip:{PBX_A.host}:{PBX_A.port}")


def waiting_for_attribution() -> Net:
    net = Net(config("ads", 'source = ["google/cpc"]'))
    net.stack.loop.parking = True

    async def attribute(tracker: Tracker, did: str, caller: str, now: float
                        ) -> tuple[Attribution, bool | None]:
        await Forever()
        raise AssertionError("never answers")

    net.engine.attribute = attribute
    return net


class SlowClient:
    """A routing webhook that does not answer (yet)."""

    async def ask(self, hook: RoutingWebhook, body: bytes) -> Answer | str:
        await Forever()
        return "slow"


def waiting_for_the_webhook(ringing: bool = True) -> Net:
    config = settings(SALES)
    hook = RoutingWebhook("http://127.0.0.1:1/route", "s" * 24, names=(("sales", SALES),),
                          ringing=ringing)
    config.routing_webhooks["main"] = hook
    net = Net(config)
    net.stack.loop.parking = True
    net.engine.routing_client = SlowClient()  # type: ignore[assignment]
    return net


def assert_cancelled_with_a_record(net: Net) -> None:
    assert not net.pbx_a.requests and not net.pbx_b.requests  # nothing dialled
    assert net.carrier.statuses()[-1] == 487
    assert net.hooks.kinds == ["started", "ended"]
    cdr = net.hooks.cdr
    assert (cdr.tracker.id, cdr.did, cdr.caller) == ("main", DID, CALLER)
    assert (cdr.outcome, cdr.sip_code, cdr.hangup_by) == ("cancelled", 487, "caller")
    assert cdr.target is None and cdr.talk_seconds == 0.0
    assert net.engine.active_calls == 0
    assert not net.engine._routing  # the pending routing is dropped


def test_cancel_while_waiting_for_the_attribution_gives_487_and_a_record() -> None:
    net = waiting_for_attribution()
    net.carrier.invite()
    assert net.carrier.statuses() == [] and net.engine.active_calls == 1
    net.advance(0.1)  # within ATTRIBUTION_WAIT
    net.carrier.cancel()
    assert_cancelled_with_a_record(net)
    assert net.hooks.cdr.ring_seconds == 0.1  # since the INVITE
    net.advance(1.0)  # the wait's timer was cancelled: nothing is routed late
    assert not net.pbx_a.requests and not net.pbx_b.requests
    assert net.hooks.kinds == ["started", "ended"]


def test_cancel_while_the_routing_webhook_is_asked_gives_487_and_a_record() -> None:
    net = waiting_for_the_webhook()
    net.carrier.invite()
    assert net.carrier.statuses() == [100, 180]  # the caller hears ringing meanwhile
    (task,) = net.stack.loop.parked
    net.advance(0.5)
    net.carrier.cancel()
    assert_cancelled_with_a_record(net)
    _, ringing, *_, final = [r for r in net.carrier.responses if r.cseq[1] == "INVITE"]
    assert ringing.status == 180 and "tag=" in (ringing.headers.get("To") or "")
    assert ringing.headers.get("To") == final.headers.get("To")  # one early dialog
    assert task.cancelled  # the POST is given up
    net.advance(2.0)
    assert not net.pbx_a.requests


def test_a_webhook_with_ringing_off_answers_100_only_while_it_is_asked() -> None:
    net = waiting_for_the_webhook(ringing=False)
    net.carrier.invite()
    assert net.carrier.statuses() == [100]
    net.carrier.cancel()
    assert_cancelled_with_a_record(net)


def test_terminate_while_routing_gives_503_and_a_record() -> None:
    net = waiting_for_the_webhook()
    net.carrier.invite()
    net.engine.terminate_all()
    net.pump()
    assert net.carrier.statuses()[-1] == 503
    cdr = net.hooks.cdr
    assert (cdr.did, cdr.outcome, cdr.hangup_by) == (DID, "failed", "system")
    assert net.engine.active_calls == 0 and not net.engine._routing
