"""The limiter that turns a flood of refusals into one log line per key and window, and
address comparison that ignores spelling."""

from calltrackd.b2bua.guard import LogLimiter, canonical_host


def test_one_line_per_key_and_window_then_the_count_of_lines_left_out() -> None:
    lim = LogLimiter(60.0, burst=1)
    assert lim.allow("127.0.0.2", 0.0) == 0
    assert [lim.allow("127.0.0.2", t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert lim.allow("127.0.0.3", 5.0) == 0  # another source has its own window
    assert lim.pending
    assert lim.allow("127.0.0.2", 60.0) == 3  # the next window's first line tells
    assert not lim.pending


def test_a_flood_that_stops_is_reported_once_when_its_window_ends() -> None:
    lim = LogLimiter(10.0, burst=2)
    assert [lim.allow("overload", t) for t in (0.0, 0.1, 0.2, 0.3)] == [0, 0, None, None]
    assert lim.expired(5.0) == []
    assert lim.expired(10.0) == [("overload", 2)]
    assert lim.expired(20.0) == []  # told once
    assert lim.allow("overload", 21.0) == 0


def test_keys_beyond_the_bound_share_one_window() -> None:
    lim = LogLimiter(60.0, burst=1, max_keys=2)
    assert lim.allow("a", 0.0) == 0 and lim.allow("b", 0.0) == 0
    assert lim.allow("c", 1.0) == 0  # the shared overflow window's first line
    assert lim.allow("d", 1.0) is None


def test_addresses_compare_by_value_not_spelling() -> None:
    assert canonical_host("[::1]") == canonical_host("0:0:0:0:0:0:0:1") == "::1"
    assert canonical_host("::ffff:127.0.0.1") == "127.0.0.1"
    assert canonical_host("PBX.example") == "pbx.example"
