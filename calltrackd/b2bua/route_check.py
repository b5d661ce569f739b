"""`calltrackd route-check`: which routing rule a call would meet, and why.

Reads the configuration only (no store; a round_robin hunt's turn is the store's, so the
start it rotates from is named, not asked): visitor facts the attribution would supply come
from the options (`--channel`, `--source`, ...); left out, they are unknown, and rules
that ask about them do not match, as when tracking cannot answer at call time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import zoneinfo

from ..config import Settings
from ..tracking.numbers import normalize
from .routing import rotation_key
from .rules import Facts, select

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", required=True, help="TOML configuration")
    parser.add_argument("--did", required=True, help="the dialled number (E.164)")
    parser.add_argument("--caller", help="the caller's number (E.164); left out: anonymous")
    parser.add_argument("--at", metavar="TIME",
                        help="ISO 8601 time, e.g. 2026-12-01T19:30 (the tracker's local "
                             "time) or 2026-12-01T16:30Z; left out: now")
    parser.add_argument("--channel", help="the visitor's channel (paid, organic, ...)")
    parser.add_argument("--source", metavar="SOURCE[/MEDIUM]", help="e.g. google/cpc")
    parser.add_argument("--campaign", help="utm_campaign")
    parser.add_argument("--landing-page", metavar="URL")
    parser.add_argument("--first-time", choices=("yes", "no"), help="first-time caller?")


def run(settings: Settings, args: argparse.Namespace) -> int:
    did = normalize(args.did) or args.did
    tracker = settings.tracker_by_did(did)
    if tracker is None:
        print(f"--did: {args.did} is no tracker's number (the call would get 404)")
        return 2
    rules = settings.routes[tracker.id]
    try:
        at = dt.datetime.fromisoformat(args.at) if args.at else dt.datetime.now(dt.UTC)
    except ValueError:
        print(f"--at: expected an ISO 8601 time such as 2026-12-01T19:30, got {args.at!r}")
        return 2
    if at.tzinfo is None:
        at = at.replace(tzinfo=zoneinfo.ZoneInfo(tracker.timezone))
    source, _, medium = (args.source or "").partition("/")
    facts = Facts(
        did=did, caller=(normalize(args.caller) or args.caller) if args.caller else None,
        channel=args.channel, source=source or None, medium=medium or None,
        campaign=args.campaign, landing_page=args.landing_page,
        first_time=None if args.first_time is None else args.first_time == "yes")
    decision = select(rules, facts, at)
    winner = f"rule {decision.rule!r}" if decision.rule else "no rule: the fallback"
    print(f"tracker {tracker.id}: {winner}")
    for line in decision.why:
        print(f"  {line}")
    if decision.hunt == "round_robin" and len(decision.targets) > 1:
        print("  round_robin: the start rotates, one target further at each call (above: "
              "the first call's)")
        print("  the calls are counted in the store, shared by the nodes, as rotation "
              f"{rotation_key(tracker.id, decision.targets)}")
    elif decision.hunt == "round_robin":
        print("  round_robin with one target: nothing to rotate")
    return 0
