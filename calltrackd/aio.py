"""asyncio helpers for the per-call hot path.

On Python 3.11 every `asyncio.get_running_loop()` (and so `asyncio.create_task`,
`asyncio.timeout`, `asyncio.sleep`...) makes a getpid() system call to check for a fork;
at 1,000 calls a second that was 5% of the event loop's time. Hot code therefore keeps
the loop it runs on and uses these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def bounded(loop: asyncio.AbstractEventLoop, aw: Awaitable[T], delay: float) -> T:
    """`await aw`, raising TimeoutError after `delay` seconds (asyncio.timeout's semantics:
    the current task is cancelled at the deadline, and a cancel from elsewhere stays a
    cancel), without asking for the running loop."""
    task = asyncio.current_task(loop)
    if task is None:
        raise RuntimeError("bounded() must run inside a task")
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    handle = loop.call_later(delay, expire)
    try:
        return await aw
    except asyncio.CancelledError:
        if expired and task.uncancel() == 0:
            raise TimeoutError from None
        raise
    finally:
        handle.cancel()
