"""Which pool a visitor gets (`match_pool`, pure), the source keys pools are matched by,
and the check of a pool's `sources` entries.

Which number of that pool they get is the reservation engine's: `Allocator`, in
calltrackd/store/allocation.py beside its Lua twin for Redis, as the stores hold the
reservations; the states it persists (`NumberState`, `UsageBucket`) are the domain's
(tracking/model.py). All are importable from here as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from calltrackd.store.allocation import Allocator, PoolCounts, PoolKey
from calltrackd.tracking.model import NumberState, Pool, UsageBucket
from calltrackd.tracking.sources import CHANNELS, channel_of

__all__ = [
    "DIRECT",
    "Allocator",
    "NumberState",
    "PoolCounts",
    "PoolKey",
    "UsageBucket",
    "match_pool",
    "pattern_problem",
    "source_key",
]

DIRECT = "(direct)/(none)"


def source_key(utm_source: str | None, utm_medium: str | None) -> str:
    """"google/cpc"; a visit without UTM is "(direct)/(none)"; a missing medium "(none)"."""
    if not utm_source:
        return DIRECT
    return f"{utm_source.strip().lower()}/{(utm_medium or '(none)').strip().lower()}"


def pattern_problem(pattern: str) -> str | None:
    """Why a pool's `sources` entry can never match a visit (None: it can).

    Entries: "*", a channel ("paid", "organic", "social", "referral", "email", "direct",
    "other"), "source/medium", "source/*", "*/medium" or "*/*"."""
    p = pattern.strip().lower()
    if p == "*" or p in CHANNELS:
        return None
    source, slash, medium = p.partition("/")
    if not slash:
        return (f"{pattern!r} can never match: use \"{p}/*\" (any medium of that source), "
                f"\"*/{p}\" (that medium from any source), a channel "
                f"({', '.join(CHANNELS)}), \"source/medium\" or \"*\"")
    if not source or not medium or "/" in medium:
        return (f"{pattern!r} can never match: expected \"source/medium\" with either "
                "part \"*\" (\"google/*\", \"*/cpc\")")
    return None


def match_pool(
    pools: Sequence[Pool], source: str | None, medium: str | None,
    channel: str | None = None,
) -> Pool | None:
    """The first pool in config order whose sources name this visitor's traffic.

    `source`/`medium` are the visit's (classified, or its UTM tags; none is
    "(direct)/(none)"); `channel` defaults to the one they give. Entries are "*", a
    channel, "source/medium", "source/*", "*/medium" or "*/*", compared
    case-insensitively.
    """
    key = source_key(source, medium)
    src, med = key.split("/", 1)
    ch = channel or channel_of(src, med)
    for pool in pools:
        for pattern in pool.sources:
            p = pattern.strip().lower()
            if p == "*" or p == key or p == ch:
                return pool
            ps, _, pm = p.partition("/")
            if (ps == "*" or ps == src) and (pm == "*" or pm == med):
                return pool
    return None
