"""Every log event the daemon writes is named `area.what` (dotted, lower case), so a log
query or an alert can select events by area (`call.*`, `sip.*`, `webhook.*`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "calltrackd"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "msg"}
DOTTED = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")


def is_log_call(func: ast.expr) -> bool:
    """`log.info(...)`, `self.log.warning(...)`, and the call engine's log commands
    (`self._log(...)`, `Log(...)`: the sans-I/O call returns its log lines)."""
    if isinstance(func, ast.Name):
        return func.id == "Log"
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr == "_log":
        return True
    target = func.value
    name = target.id if isinstance(target, ast.Name) else (
        target.attr if isinstance(target, ast.Attribute) else "")
    return func.attr in LEVELS and "log" in name.lower()


def events() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not is_log_call(node.func):
                continue
            if node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append((str(path.relative_to(PACKAGE)), node.lineno, node.args[0].value))
    return found


def test_the_scan_finds_the_daemons_events() -> None:
    names = {event for _, _, event in events()}
    assert {"call.started", "call.ended", "app.start_failed"} <= names


def test_every_log_event_is_dotted() -> None:
    bad = [f"{path}:{line}: {event!r}" for path, line, event in events()
           if not DOTTED.match(event)]
    assert not bad, "log events not named area.what:\n" + "\n".join(bad)
