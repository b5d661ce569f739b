"""The compiled call engine is used only while it matches its sources and the SIP core it
was built against is compiled too (calltrackd/b2bua/__init__.py).

As for the SIP core (tests/unit/sip/test_native.py): a fresh interpreter on a copy of the
package whose "compiled" modules are garbage, so a passing import proves the sources ran."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import calltrackd
from calltrackd import b2bua, sip

SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
PROBE = "import calltrackd.b2bua as b, calltrackd.b2bua.call as c; print(b.NATIVE, '|', c.__file__)"


def fake_build(tmp: Path, *, fresh: bool) -> Path:
    shutil.copytree(Path(calltrackd.__file__).parent, tmp / "calltrackd",
                    ignore=shutil.ignore_patterns("*.so", "native.json", "__pycache__"))
    here = tmp / "calltrackd" / "b2bua"
    for name in b2bua.COMPILED:
        (here / f"{name}{SUFFIX}").write_bytes(b"not a shared object")
    stamp = sip.source_hashes(here, b2bua.COMPILED)
    if not fresh:
        stamp["call"] = "0" * 64
    (here / b2bua.STAMP).write_text(json.dumps(stamp))
    return tmp


def run(root: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "CALLTRACKD_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=root, capture_output=True,
                         text=True, env={**env, "PYTHONPATH": str(root)}, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(" | ")


def test_stale_compiled_call_engine_is_not_used(tmp_path: Path) -> None:
    native, path = run(fake_build(tmp_path, fresh=False))
    assert native.startswith("pure python (the compiled modules are older")
    assert path.endswith("b2bua/call.py")


def test_fresh_compiled_call_engine_waits_for_a_compiled_sip_core(tmp_path: Path) -> None:
    native, path = run(fake_build(tmp_path, fresh=True))  # the copy's SIP core is pure
    assert native == "pure python (the compiled modules it calls into are not in use)"
    assert path.endswith("b2bua/call.py")
