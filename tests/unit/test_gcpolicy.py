"""When the garbage collector may run: only while the node is quiet, or when the last
collection is too long ago."""

import gc

from calltrackd.gcpolicy import CollectorPolicy


def test_collects_when_quiet_or_when_overdue() -> None:
    now = [1000.0]
    p = CollectorPolicy(lambda: 0, quiet_calls=20, force_after=600.0, clock=lambda: now[0])
    assert p.due(1030.0, active=5)  # quiet: a pause costs no call
    assert not p.due(1030.0, active=500)  # busy: wait
    assert p.due(1600.0, active=500)  # ten minutes without: collect anyway


def test_collect_frees_cycles_and_start_turns_the_automatic_collector_off() -> None:
    p = CollectorPolicy(lambda: 0)
    try:
        p.start()
        assert not gc.isenabled()

        class Node:
            other: object = None

        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        p.collect()
        assert p.collections == 1
    finally:
        gc.enable()
