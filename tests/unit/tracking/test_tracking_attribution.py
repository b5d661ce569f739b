import dataclasses

from calltrackd.tracking.attribution import attribute, overflow_for, qualified
from calltrackd.tracking.model import (
    Attribution,
    ForwardTarget,
    Hold,
    Pool,
    StaticNumber,
    Tracker,
    VisitorSession,
)

POOL_NUMBER = "+74990000001"
STATIC = "+74990000100"
DEFAULT = "+74990000000"
CALLER = "+79161234567"
POOL_DEFAULT = "+74990000009"
HOUR = 3600.0

TRACKER = Tracker(
    id="acme",
    public_key="pk_acme",
    default_number=DEFAULT,
    forward=(ForwardTarget("sip:pbx.acme.example"),),
    attribution_grace=24 * HOUR,
    pools=(Pool("paid", ("google/cpc",), (POOL_NUMBER, "+74990000002"), POOL_DEFAULT),
           Pool("seo", ("google/organic",), ("+74990000003",))),
    static=(StaticNumber(STATIC, "billboard-tverskaya"),),
)
ALICE = VisitorSession("s_alice", "acme", utm_source="google", utm_campaign="spring")
BOB = VisitorSession("s_bob", "acme", utm_source="google", utm_campaign="autumn")
SESSIONS = {s.id: s for s in (ALICE, BOB)}


def hold(session: VisitorSession, start: float, until: float) -> Hold:
    return Hold(POOL_NUMBER, session.id, "acme", "paid", start, until)


def who(
    did: str,
    now: float,
    current: Hold | None = None,
    last: Hold | None = None,
    called_before: bool | None = False,
    caller: str = CALLER,
) -> tuple[Attribution, bool | None]:
    att, first = attribute(did, caller, now, TRACKER, current, last, SESSIONS, called_before)
    # the rules' outcome; confidence and pool have tests of their own below
    return dataclasses.replace(att, confidence=None, pool=None), first


def test_call_to_a_held_number_goes_to_its_visitor() -> None:
    att, first = who(POOL_NUMBER, 100.0, current=hold(ALICE, 0.0, 360.0))
    assert att == Attribution("dynamic", session=ALICE)
    assert first is True


def test_call_to_a_held_number_ignores_the_previous_holder() -> None:
    att, _ = who(POOL_NUMBER, 100.0, current=hold(BOB, 50.0, 410.0), last=hold(ALICE, 0.0, 40.0))
    assert att.kind == "dynamic" and att.session == BOB


def test_call_to_a_static_number_names_its_channel() -> None:
    att, _ = who(STATIC, 100.0)
    assert att == Attribution("static", channel="billboard-tverskaya")


def test_call_to_the_default_number_is_default() -> None:
    assert who(DEFAULT, 100.0)[0] == Attribution("default")


def test_call_after_the_reservation_ended_goes_to_the_last_holder_within_grace() -> None:
    att, _ = who(POOL_NUMBER, 360.0 + 23 * HOUR, last=hold(ALICE, 0.0, 360.0))
    assert att == Attribution("expired", session=ALICE)


def test_lapsed_current_hold_counts_as_the_last_holder() -> None:
    # the store had not yet processed the expiry: the hold still looks current
    att, _ = who(POOL_NUMBER, 400.0, current=hold(ALICE, 0.0, 360.0))
    assert att == Attribution("expired", session=ALICE)


def test_call_after_the_grace_window_is_unattributed() -> None:
    att, _ = who(POOL_NUMBER, 360.0 + 24 * HOUR + 1, last=hold(ALICE, 0.0, 360.0))
    assert att == Attribution("none")


def test_earlier_holder_is_not_credited_when_someone_held_the_number_since() -> None:
    # Alice held it, then Bob; a call now belongs to Bob (the latest), never to Alice
    bob, alice = hold(BOB, 1000.0, 1360.0), hold(ALICE, 0.0, 360.0)
    att, _ = who(POOL_NUMBER, 2000.0, current=bob, last=alice)
    assert att == Attribution("expired", session=BOB)


def test_earlier_holder_is_not_credited_once_the_later_holders_grace_passed() -> None:
    now = 1360.0 + 25 * HOUR
    att, _ = who(POOL_NUMBER, now, current=hold(BOB, 1000.0, 1360.0), last=hold(ALICE, 0.0, 360.0))
    assert att == Attribution("none")


def test_call_judged_at_ring_time_ignores_a_hold_that_started_later() -> None:
    # attributed late (store was down): Bob took the number after the call rang
    att, _ = who(POOL_NUMBER, 500.0, current=hold(BOB, 900.0, 1260.0), last=hold(ALICE, 0.0, 360.0))
    assert att == Attribution("expired", session=ALICE)


def test_pool_number_never_held_is_unattributed() -> None:
    assert who(POOL_NUMBER, 100.0)[0] == Attribution("none")


def test_number_outside_the_tracker_is_unattributed() -> None:
    assert who("+74995555555", 100.0)[0] == Attribution("none")


def test_held_number_whose_session_is_gone_keeps_kind_and_says_why() -> None:
    ghost = Hold(POOL_NUMBER, "s_ghost", "acme", "paid", 0.0, 360.0)
    att, _ = who(POOL_NUMBER, 100.0, current=ghost)
    assert att.kind == "dynamic" and att.session is None
    assert att.error is not None and "s_ghost" in att.error


def test_repeat_caller_is_not_first_time() -> None:
    assert who(STATIC, 1.0, called_before=True)[1] is False
    assert who(STATIC, 1.0, called_before=False)[1] is True


def test_first_time_unknown_without_history_or_caller_id() -> None:
    assert who(STATIC, 1.0, called_before=None)[1] is None
    assert who(STATIC, 1.0, called_before=False, caller="anonymous")[1] is None


def test_call_is_qualified_from_the_target_talk_time() -> None:
    assert qualified(30.0, 30.0)
    assert qualified(63.0, 30.0)
    assert not qualified(29.9, 30.0)
    assert not qualified(None, 30.0)


# --- a pool's own default number, confidence and pool --------------------------------


def test_call_to_a_pools_default_number_is_default_with_the_pools_channel() -> None:
    att, _ = attribute(POOL_DEFAULT, CALLER, 100.0, TRACKER, None, None, SESSIONS, False)
    assert att == Attribution("default", channel="paid", confidence=0.0, pool="paid")


def test_a_visitor_the_pool_cannot_serve_is_shown_the_pools_own_default_number() -> None:
    paid = VisitorSession("s_paid", "acme", utm_source="google", utm_medium="cpc")
    assert overflow_for(TRACKER, paid) == POOL_DEFAULT
    seo = VisitorSession("s_seo", "acme", utm_source="google", utm_medium="organic")
    assert overflow_for(TRACKER, seo) == DEFAULT  # that pool has none: the tracker's
    assert overflow_for(TRACKER, None) == DEFAULT


def test_static_calls_are_certain_and_unattributed_ones_have_no_confidence() -> None:
    st, _ = attribute(STATIC, CALLER, 1.0, TRACKER, None, None, SESSIONS, False)
    none, _ = attribute(POOL_NUMBER, CALLER, 1.0, TRACKER, None, None, SESSIONS, False)
    default, _ = attribute(DEFAULT, CALLER, 1.0, TRACKER, None, None, SESSIONS, False)
    assert (st.confidence, none.confidence, default.confidence) == (1.0, 0.0, 0.0)
    assert none.pool == "paid" and default.pool is None


def test_a_number_held_by_one_visitor_only_is_attributed_with_full_confidence() -> None:
    att, _ = attribute(POOL_NUMBER, CALLER, 100.0, TRACKER, hold(ALICE, 0.0, 360.0), None,
                       SESSIONS, False)
    assert att.kind == "dynamic" and att.confidence == 1.0 and att.pool == "paid"


def test_a_number_that_changed_hands_minutes_ago_is_less_certain() -> None:
    # Alice left at 0 (hold lapsed at 360); Bob took the number at 360 and left at once
    # (one request: his hold lapses at 720). At 600 either may be calling back.
    alice, bob = hold(ALICE, -600.0, 360.0), hold(BOB, 360.0, 720.0)
    att, _ = attribute(POOL_NUMBER, CALLER, 600.0, TRACKER, bob, alice, SESSIONS, False,
                       history=[bob, alice])
    assert att.session == BOB
    assert att.confidence is not None and 0.3 < att.confidence < 0.9
    # while Bob is still on the site (he renewed a moment ago) the call is his
    busy = hold(BOB, 360.0, 950.0)
    att, _ = attribute(POOL_NUMBER, CALLER, 600.0, TRACKER, busy, alice, SESSIONS, False,
                       history=[busy, alice])
    assert att.confidence is not None and att.confidence > 0.9


def test_an_expired_attribution_long_after_the_hold_ended_gets_a_low_confidence() -> None:
    ago = [Hold(POOL_NUMBER, f"s_{i}", "acme", "paid", i * 2 * HOUR, i * 2 * HOUR + 600)
           for i in range(20)]
    last = ago[-1]
    soon, _ = attribute(POOL_NUMBER, CALLER, last.until + 120, TRACKER, None, last,
                        SESSIONS, False, history=ago)
    late, _ = attribute(POOL_NUMBER, CALLER, last.until + 20 * HOUR, TRACKER, None, last,
                        SESSIONS, False, history=ago)
    assert soon.kind == late.kind == "expired"
    assert soon.confidence is not None and soon.confidence > 0.9
    assert late.confidence is not None and late.confidence < 0.2
