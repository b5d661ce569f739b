"""The queue-delay probe: its age on the way back is the time datagrams wait in the queue."""

from calltrackd.transport.probe import QueueDelayProbe


def test_the_probe_measures_its_time_in_the_queue() -> None:
    sent: list[bytes] = []
    probe = QueueDelayProbe(sent.append)
    assert probe.tick(10.0) == 0.0 and len(sent) == 1
    assert abs(probe.tick(10.05) - 0.05) < 1e-9 and len(sent) == 1  # still out: its age counts
    assert probe.received(sent[0], 10.3)
    assert abs(probe.delay - 0.3) < 1e-9
    probe.tick(10.31)
    assert len(sent) == 2  # the next one goes out once the last came back


def test_a_lost_probe_counts_as_its_age_and_is_replaced() -> None:
    sent: list[bytes] = []
    probe = QueueDelayProbe(sent.append, lost_after=2.0)
    probe.tick(0.0)
    assert probe.tick(2.5) == 2.5
    assert probe.lost == 1
    probe.tick(2.6)
    assert len(sent) == 2
    assert probe.received(sent[0], 2.7)  # the lost one turns up late: ours, but stale
    assert probe.delay == 2.5


def test_datagrams_from_elsewhere_are_not_probes() -> None:
    ours: list[bytes] = []
    theirs: list[bytes] = []
    probe = QueueDelayProbe(ours.append)
    other = QueueDelayProbe(theirs.append)
    probe.tick(0.0)
    other.tick(0.0)
    assert not probe.received(theirs[0], 1.0)  # same shape, another token
    assert not probe.received(b"OPTIONS sip:x SIP/2.0\r\n\r\n", 1.0)
    assert probe.delay == 0.0
