import random

from calltrackd.tracking.allocator import Allocator, NumberState, match_pool, source_key
from calltrackd.tracking.model import Pool

KEY = ("acme", "paid")
NUMBERS = ("+74990000001", "+74990000002", "+74990000003")
TTL = 360.0


def make(numbers: tuple[str, ...] = NUMBERS, cooldown: float = 0.0) -> Allocator:
    alloc = Allocator()
    alloc.set_pool(KEY, numbers, cooldown)
    return alloc


def number_of(alloc: Allocator, session: str, now: float) -> str | None:
    hold = alloc.allocate(KEY, session, now, TTL)
    return hold.number if hold else None


# --- pool matching ------------------------------------------------------------------


def test_visitor_matches_first_pool_in_config_order() -> None:
    pools = (
        Pool("google-cpc", ("google/cpc",), ("+1",)),
        Pool("google", ("google/*",), ("+2",)),
        Pool("rest", ("*",), ("+3",)),
    )
    assert match_pool(pools, "google", "cpc") is pools[0]
    assert match_pool(pools, "Google", "CPC") is pools[0]
    assert match_pool(pools, "google", "organic") is pools[1]
    assert match_pool(pools, "yandex", "cpc") is pools[2]
    assert match_pool(pools, None, None) is pools[2]


def test_direct_visitor_matches_only_star_or_explicit_direct() -> None:
    paid = Pool("paid", ("google/cpc", "google/*"), ("+1",))
    direct = Pool("direct", ("(direct)/(none)",), ("+2",))
    assert source_key(None, None) == "(direct)/(none)"
    assert match_pool((paid,), None, None) is None
    assert match_pool((paid, direct), None, None) is direct
    assert match_pool((paid, direct), "", "cpc") is direct


def test_visitor_with_source_but_no_medium_matches_source_wildcard() -> None:
    pools = (Pool("g", ("google/*",), ("+1",)),)
    assert match_pool(pools, "google", None) is pools[0]
    assert source_key("google", None) == "google/(none)"


# --- allocation order -----------------------------------------------------------------


def test_never_used_numbers_go_out_in_config_order() -> None:
    alloc = make()
    assert [number_of(alloc, f"s{i}", 100.0) for i in range(3)] == list(NUMBERS)


def test_number_idle_longest_is_handed_out_first() -> None:
    alloc = make()
    for i in range(3):
        number_of(alloc, f"s{i}", 100.0)
    # released in the order 3, 1, 2: the next visitors get them in that order
    alloc.release("s2", 200.0)
    alloc.release("s0", 210.0)
    alloc.release("s1", 220.0)
    got = [number_of(alloc, f"n{i}", 300.0) for i in range(3)]
    assert got == [NUMBERS[2], NUMBERS[0], NUMBERS[1]]


def test_expired_reservations_rank_by_when_they_expired() -> None:
    alloc = make()
    alloc.allocate(KEY, "a", 0.0, 100.0)  # expires at 100
    alloc.allocate(KEY, "b", 0.0, 50.0)  # expires at 50
    alloc.allocate(KEY, "c", 0.0, 75.0)  # expires at 75
    got = [number_of(alloc, f"n{i}", 1000.0) for i in range(3)]
    assert got == [NUMBERS[1], NUMBERS[2], NUMBERS[0]]


def test_held_number_is_never_handed_to_another_visitor() -> None:
    alloc = make(NUMBERS[:1])
    assert number_of(alloc, "a", 0.0) == NUMBERS[0]
    assert number_of(alloc, "b", TTL - 1) is None


def test_reservation_expires_after_ttl_and_number_is_reused() -> None:
    alloc = make(NUMBERS[:1])
    number_of(alloc, "a", 0.0)
    assert alloc.holding("a", TTL - 0.001) is not None
    assert alloc.holding("a", TTL) is None
    assert number_of(alloc, "b", TTL) == NUMBERS[0]


def test_cooldown_keeps_a_released_number_out_of_circulation() -> None:
    alloc = make(NUMBERS[:1], cooldown=60.0)
    number_of(alloc, "a", 0.0)
    # expired at 360; cools until 420
    assert number_of(alloc, "b", 400.0) is None
    assert number_of(alloc, "b", 420.0) == NUMBERS[0]


def test_cooldown_starts_at_explicit_release() -> None:
    alloc = make(NUMBERS[:1], cooldown=30.0)
    number_of(alloc, "a", 0.0)
    assert alloc.release("a", 10.0)
    assert number_of(alloc, "b", 39.0) is None
    assert number_of(alloc, "b", 40.0) == NUMBERS[0]


def test_exhausted_pool_counts_shortfall() -> None:
    alloc = make(NUMBERS[:2])
    number_of(alloc, "a", 0.0)
    number_of(alloc, "b", 0.0)
    assert number_of(alloc, "c", 1.0) is None
    assert number_of(alloc, "d", 2.0) is None
    assert alloc.shortfall(KEY) == 2
    assert alloc.shortfall(KEY, since=0.0) == 2


# --- renewal --------------------------------------------------------------------------


def test_renewal_keeps_the_number_and_moves_expiry() -> None:
    alloc = make()
    first = alloc.allocate(KEY, "a", 0.0, TTL)
    renewed = alloc.renew("a", 300.0, TTL)
    assert first is not None and renewed is not None
    assert renewed.number == first.number
    assert renewed.until == 300.0 + TTL
    assert renewed.started_at == 0.0
    assert alloc.holding("a", 500.0) is not None  # past the first expiry


def test_allocating_again_for_the_same_session_renews() -> None:
    alloc = make()
    a = number_of(alloc, "a", 0.0)
    assert number_of(alloc, "a", 10.0) == a
    assert alloc.counts(KEY, 10.0).reserved == 1


def test_lapsed_session_gets_its_own_number_back_if_nobody_took_it() -> None:
    alloc = make(NUMBERS[:2], cooldown=600.0)
    number_of(alloc, "a", 0.0)
    # lapsed at 360, cooling until 960: nobody else may get it, but its own visitor may
    hold = alloc.renew("a", 500.0, TTL)
    assert hold is not None and hold.number == NUMBERS[0]


def test_lapsed_session_whose_number_was_taken_gets_nothing_on_renew() -> None:
    alloc = make(NUMBERS[:1])
    number_of(alloc, "a", 0.0)
    number_of(alloc, "b", 400.0)
    assert alloc.renew("a", 410.0, TTL) is None
    assert number_of(alloc, "a", 420.0) is None  # pool exhausted, b holds it


def test_superseded_heap_entries_do_not_expire_a_renewed_reservation() -> None:
    alloc = make(NUMBERS[:1])
    number_of(alloc, "a", 0.0)
    for t in range(10, 1000, 10):
        alloc.renew("a", float(t), TTL)
    assert number_of(alloc, "b", 1000.0) is None
    assert alloc.holding("a", 1000.0) is not None


# --- holders for attribution ----------------------------------------------------------


def test_holders_report_current_and_last_holder() -> None:
    alloc = make(NUMBERS[:1])
    number_of(alloc, "a", 0.0)  # expires 360
    number_of(alloc, "b", 400.0)
    current, last = alloc.holders(NUMBERS[0], 500.0)
    assert current is not None and current.session_id == "b" and current.until == 400.0 + TTL
    assert last is not None and last.session_id == "a"
    assert (last.started_at, last.until) == (0.0, TTL)


def test_lapsed_holder_becomes_last_holder_at_its_expiry() -> None:
    alloc = make(NUMBERS[:1])
    number_of(alloc, "a", 0.0)
    current, last = alloc.holders(NUMBERS[0], 1000.0)
    assert current is None
    assert last is not None and last.session_id == "a" and last.until == TTL


def test_holders_of_an_unknown_number_are_none() -> None:
    assert make().holders("+70000000000", 0.0) == (None, None)


# --- figures --------------------------------------------------------------------------


def test_counts_split_free_reserved_cooling() -> None:
    alloc = make(cooldown=100.0)
    number_of(alloc, "a", 0.0)
    number_of(alloc, "b", 0.0)
    alloc.release("b", 10.0)
    c = alloc.counts(KEY, 50.0)
    assert (c.size, c.free, c.reserved, c.cooling) == (3, 1, 1, 1)
    c = alloc.counts(KEY, 1000.0)
    assert (c.free, c.reserved, c.cooling) == (3, 0, 0)


def test_peak_counts_concurrent_reservations_not_total() -> None:
    alloc = make()
    number_of(alloc, "a", 0.0)
    number_of(alloc, "b", 0.0)
    alloc.release("a", 1.0)
    alloc.release("b", 1.0)
    number_of(alloc, "c", 2.0)
    assert alloc.peak(KEY, 3.0) == 2
    assert alloc.peak(KEY, 7200.0, since=7200.0) == 0  # a later hour saw none


# --- configuration and restore --------------------------------------------------------


def test_removed_number_leaves_the_pool_with_its_reservation() -> None:
    alloc = make()
    number_of(alloc, "a", 0.0)
    gone = alloc.set_pool(KEY, NUMBERS[1:], 0.0)
    assert gone == [NUMBERS[0]]
    assert alloc.holding("a", 1.0) is None
    assert alloc.counts(KEY, 1.0).size == 2


def test_restored_state_keeps_reservations_and_idle_order() -> None:
    alloc = make()
    for i in range(3):
        number_of(alloc, f"s{i}", 0.0)
    alloc.release("s1", 5.0)
    alloc.release("s0", 6.0)
    states = [s for n in NUMBERS if (s := alloc.state(n)) is not None]
    again = make()
    assert again.restore(states) == []
    assert again.holding("s2", 10.0) is not None
    assert [number_of(again, f"n{i}", 10.0) for i in range(3)] == [NUMBERS[1], NUMBERS[0], None]


def test_restore_ignores_numbers_of_another_tracker() -> None:
    alloc = make()
    foreign = NumberState(NUMBERS[0], "other", "paid", holder="x", expires_at=1e9)
    assert alloc.restore([foreign]) == [foreign]
    assert alloc.holding("x", 0.0) is None


# --- the invariant, under random operations ------------------------------------------


def test_no_number_is_ever_held_by_two_sessions_under_random_load() -> None:
    rng = random.Random(7)
    numbers = tuple(f"+7499000{i:04d}" for i in range(20))
    alloc = make(numbers, cooldown=5.0)
    now = 0.0
    for _ in range(5000):
        now += rng.random() * 3
        session = f"s{rng.randrange(60)}"
        op = rng.random()
        if op < 0.6:
            alloc.allocate(KEY, session, now, rng.choice((30.0, 60.0, 120.0)))
        elif op < 0.9:
            alloc.renew(session, now, 60.0)
        else:
            alloc.release(session, now)
        holders: dict[str, str] = {}
        for s in (f"s{i}" for i in range(60)):
            hold = alloc.holding(s, now)
            if hold is not None:
                assert hold.number not in holders, (hold.number, s, holders[hold.number])
                holders[hold.number] = s
        for n in numbers:
            current, _ = alloc.holders(n, now)
            assert (current.session_id if current else None) == holders.get(n)
        counts = alloc.counts(KEY, now)
        assert counts.reserved == len(holders)
        assert counts.free + counts.reserved + counts.cooling == len(numbers)
