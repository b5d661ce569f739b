"""When the garbage collector may run: the young generations automatically, the oldest
only while the node is quiet or when the last full collection is too long ago."""

import gc

from calltrackd.gcpolicy import NEVER, CollectorPolicy


def test_full_collection_when_quiet_or_when_overdue() -> None:
    now = [1000.0]
    p = CollectorPolicy(lambda: 0, quiet_calls=20, interval=30.0, full_after=3600.0,
                        clock=lambda: now[0])
    assert p.due(1030.0, active=5)  # quiet: a pause costs no call
    assert not p.due(1010.0, active=5)  # quiet, but collected just now
    assert not p.due(1030.0, active=500)  # busy: wait
    assert p.due(4600.0, active=500)  # an hour without: collect anyway


def test_start_keeps_young_collections_automatic_and_the_oldest_generation_ours() -> None:
    before = gc.get_threshold()
    p = CollectorPolicy(lambda: 0, young=500, middle=5)
    try:
        p.start()
        assert gc.isenabled()
        assert gc.get_threshold() == (500, 5, NEVER)

        class Node:
            other: object = None

        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        p.collect()
        assert p.collections == 1
        assert p.pauses[2] >= 1 and p.max_pause > 0  # every pause is measured
    finally:
        p.stop()
    assert gc.get_threshold() == before
