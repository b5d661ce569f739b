"""VisitorSession.seen is dataclasses.replace(last_seen=...) by hand: it must keep every field."""

import dataclasses
from typing import Any

from calltrackd.tracking.model import VisitorSession


def test_seen_keeps_every_field_but_last_seen() -> None:
    values: dict[str, Any] = {f.name: f"v_{f.name}" for f in dataclasses.fields(VisitorSession)}
    values.update(custom={"k": "v"}, first_seen=1.0, last_seen=2.0)
    session = VisitorSession(**values)
    assert session.seen(9.0) == dataclasses.replace(session, last_seen=9.0)
