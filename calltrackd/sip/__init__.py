"""The sans-I/O SIP core.

Its hot modules may be compiled with mypyc (scripts/build_native.py), as .so files beside
their sources. Python would import such a file even after its source changed, so the
compiled modules are used only while every source still has the hash recorded at build
time; otherwise the sources are loaded instead (in dependency order, before anything
imports the compiled ones) and `NATIVE` says why. CALLTRACKD_PURE_PYTHON=1 in the
environment asks for the sources all the same (to rule the compiled code out of a bug hunt).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# compiled, in dependency order (each imports only those before it)
COMPILED = ("errors", "uri", "headers", "model", "parse", "framing", "message", "transaction",
            "dialog", "endpoint")
STAMP = "native.json"

NATIVE: str  # "compiled", "pure python", or "pure python (...)": for logs and benchmarks


def source_hashes(here: Path, names: Sequence[str] = COMPILED) -> dict[str, str]:
    """What the build records in STAMP: the sha256 of every compiled module's source."""
    return {name: hashlib.sha256((here / f"{name}.py").read_bytes()).hexdigest()
            for name in names}


def build_is_fresh(here: Path, names: Sequence[str] = COMPILED) -> bool:
    """Every compiled module is there and was built from the sources as they are now."""
    so = {p.name.split(".", 1)[0] for p in here.glob("*.so")}
    if not set(names) <= so:
        return False
    try:
        return bool(json.loads((here / STAMP).read_text()) == source_hashes(here, names))
    except (OSError, ValueError):
        return False


def select(package: str, here: Path, names: Sequence[str], needs: str = "compiled") -> str:
    """Whether `package` (in `here`) runs its compiled `names` or their sources, which
    are then loaded in place of the compiled ones. `needs`: the NATIVE of the package
    the compiled modules were built against (they use its compiled classes)."""
    if not any(here.glob("*.so")):
        return "pure python"
    fresh = build_is_fresh(here, names)
    asked = os.environ.get("CALLTRACKD_PURE_PYTHON", "") not in ("", "0")
    if fresh and not asked and needs == "compiled":
        return "compiled"
    for name in names:
        spec = importlib.util.spec_from_file_location(f"{package}.{name}", here / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    if asked:
        return "pure python (CALLTRACKD_PURE_PYTHON)"
    if fresh:
        return "pure python (the compiled modules it calls into are not in use)"
    return "pure python (the compiled modules are older than their sources: " \
        "run scripts/build_native.py)"


NATIVE = select(__name__, Path(__file__).parent, COMPILED)
