"""The SIP core imports nothing of the daemon around it (only the standard library and
its own modules), and the project has one id generator, the core's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import calltrackd
from calltrackd import ids
from calltrackd.sip import ids as core_ids
from calltrackd.tracking.service import _SESSION_ID, new_session_id

SIP = Path(calltrackd.__file__).parent / "sip"


def imports_outside_the_core(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 1:
            out.append(f"{path.name}: from {'.' * node.level}{node.module or ''}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (
                node.module or "").startswith("calltrackd") and not (
                node.module or "").startswith("calltrackd.sip"):
            out.append(f"{path.name}: from {node.module}")
        elif isinstance(node, ast.Import):
            out += [f"{path.name}: import {a.name}" for a in node.names
                    if a.name.startswith("calltrackd") and not a.name.startswith("calltrackd.sip")]
    return out


def test_the_sip_core_imports_only_itself_and_the_standard_library() -> None:
    sources = sorted(SIP.glob("*.py"))
    assert len(sources) >= 10
    assert [line for p in sources for line in imports_outside_the_core(p)] == []


def test_one_id_generator_for_the_project() -> None:
    assert ids.token_urlsafe is core_ids.token_urlsafe
    assert ids.token_hex is core_ids.token_hex
    assert ids.reset is core_ids.reset
    made = {ids.session_id() for _ in range(1000)} | {new_session_id() for _ in range(1000)}
    assert len(made) == 2000
    assert all(_SESSION_ID.fullmatch(s) for s in made)
    assert re.fullmatch(r"[0-9a-f]{16}", ids.token_hex(8))
