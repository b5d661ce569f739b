"""bounded(): asyncio.timeout's behaviour without asking for the running loop."""

import asyncio

import pytest

from calltrackd.aio import bounded


async def test_bounded_returns_in_time_and_times_out_late() -> None:
    loop = asyncio.get_running_loop()

    async def answer(after: float) -> str:
        await asyncio.sleep(after)
        return "ok"

    assert await bounded(loop, answer(0), 0.5) == "ok"
    with pytest.raises(TimeoutError):
        await bounded(loop, answer(1.0), 0.05)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    loop = asyncio.get_running_loop()

    async def waits() -> None:
        await bounded(loop, asyncio.sleep(10), 5.0)

    task = loop.create_task(waits())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
