"""The B2BUA: routing (a pure function), the call (a sans-I/O state machine), the engine
(the I/O around them).

Like the SIP core, the pure modules may be compiled with mypyc (scripts/build_native.py)
and are used compiled only while their sources match the build and the SIP core they were
built against is compiled too; `NATIVE` says which (calltrackd/sip/__init__.py).
"""

from __future__ import annotations

from pathlib import Path

from .. import sip

# compiled, in dependency order (each imports only those before it)
COMPILED = ("guard", "routing", "legs", "commands", "call_core", "call_media", "call_fork", "call")
STAMP = sip.STAMP

NATIVE: str = sip.select(__name__, Path(__file__).parent, COMPILED, needs=sip.NATIVE)
