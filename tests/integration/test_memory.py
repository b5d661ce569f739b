"""Flat memory: 1,000 calls leave no cyclic garbage behind.

The daemon is run in this process (`calltrackd.app.App` on uvloop: the real SIP stack on
loopback, the engine, the recorder, the SQLite store), with SIPp as carrier and PBX, so
that `gc.collect()` can be asked directly, with the automatic collector off, how much
garbage only it could have freed. In a separate process the same question has no clean
answer: the daemon's own collector would have freed the cycles before anyone looked
(its /metrics do show `python_gc_objects_collected_total`, which the soak benchmark
prints). Webhooks are not configured here: a receiver in this process would add its
own garbage to the count.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import structlog
import uvloop

from calltrackd.app import App
from calltrackd.config import parse_config
from calltrackd.gcpolicy import CollectorPolicy
from calltrackd.logging import configure_logging

from .conftest import Sipp, free_port
from .test_calls import DID_MAIN

CALLS = 1000
RATE = 50  # calls per second: well inside what a loaded machine sustains


class CollectorOff(CollectorPolicy):
    """The daemon's collector task, replaced: the automatic collector stays off."""

    async def run(self, stop: asyncio.Event) -> None:
        gc.disable()
        await stop.wait()


def settings(tmp: Path, sip: int, http: int, pbx: int) -> dict[str, object]:
    return {
        # T1 100 ms: transactions (64*T1) and ended calls kept for their late answers
        # are gone within 8 s of the last call, so that what is left is garbage or nothing
        "sip": {"listen": [f"udp:127.0.0.1:{sip}"], "t1": "100ms"},
        "http": {"listen": f"127.0.0.1:{http}", "admin_token": "test-admin-token"},
        "store": {"url": f"sqlite:///{tmp / 'calltrackd.db'}"},
        "log": {"level": "info"},  # a line per call start and end, as by default
        "carriers": [{"name": "loopback", "addresses": ["127.0.0.1/32"],
                      "default_country": "RU"}],
        "trackers": [{"id": "main", "public_key": "pk_main", "default_number": "+74990000000",
                      "forward": [f"sip:127.0.0.1:{pbx};transport=udp"],
                      "static": [{"number": DID_MAIN, "channel": "billboard"}]}],
    }


async def until(pred: Callable[[], bool], seconds: float) -> bool:
    """Poll `pred` every 0.1 s for at most `seconds` (the process can't signal us)."""
    for _ in range(int(seconds * 10)):
        if pred():
            return True
        await asyncio.sleep(0.1)
    return pred()


async def calls(app: App, sipp_factory: Callable[..., Sipp], name: str, n: int,
                sip: int, pbx: int, *, settle: bool = True) -> None:
    """`n` calls; with `settle`, until the ended calls and their transactions are gone too
    (64*T1 and a second after the last: what is left then is garbage or nothing)."""
    uas = sipp_factory(f"pbx_{name}", "uas_answer.xml", pbx, "-m", str(n), "-timeout", "120s")
    uac = sipp_factory(f"carrier_{name}", "uac_call.xml", free_port(), "-s", DID_MAIN,
                       "-m", str(n), "-r", str(RATE), "-d", "200", "-timeout", "120s",
                       "-timeout_error", remote=f"127.0.0.1:{sip}")
    await until(lambda: uac.proc.poll() is not None, 150)
    res = uac.wait(1)
    assert res.ok, res.output[-3000:]
    await until(lambda: uas.proc.poll() is not None, 30)
    assert uas.wait(1).ok
    # every call has ended and its record is written
    assert await until(lambda: not (app.engine.active_calls or app.recorder.pending
                                    or app.tracking.pending_records), 60)
    if settle:
        assert await until(lambda: not (app.engine.lingering_calls
                                        or app.stack.layer.transaction_count), 60)


def test_a_thousand_calls_leave_no_cyclic_garbage(
    tmp_path: Path, sipp_factory: Callable[..., Sipp]
) -> None:
    sip, http, pbx = free_port(), free_port(), free_port()
    configure_logging(parse_config(settings(tmp_path, sip, http, pbx)).log)
    found: dict[str, int] = {}

    async def main() -> None:
        app = App(parse_config(settings(tmp_path, sip, http, pbx)))
        app.gc_policy = CollectorOff(lambda: 0)
        # this test counts garbage, not capacity: a loop slowed by a busy machine (and by
        # pytest beside it) must not shed calls, which would end SIPp's scenario early
        app.engine.overloaded = lambda: False
        await app.start()
        try:
            # caches, first imports. Not settled: a warm call still lingering is freed
            # during the run, and any cycle it left is counted with the run's
            await calls(app, sipp_factory, "warm", 20, sip, pbx, settle=False)
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what it finds stays in gc.garbage, to name it
            await calls(app, sipp_factory, "run", CALLS, sip, pbx)
            found["objects"] = gc.collect()
            found.update(Counter(type(o).__name__ for o in gc.garbage).most_common(8))
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            await app.drain_and_stop()

    was_enabled = gc.isenabled()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    finally:
        if was_enabled:
            gc.enable()
        structlog.reset_defaults()
    # ~0: a handful of objects from the loop or the store's thread may be cyclic now and
    # then, never something per call
    print(f"\ncyclic garbage after {CALLS} calls: {found}")
    assert found["objects"] < CALLS // 10, found
