"""The compiled SIP core is used only while it matches its sources (calltrackd/sip/__init__.py).

Each case runs a fresh interpreter on a copy of the package whose "compiled" modules are
garbage: importing one would fail, so a passing import proves the sources were loaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import calltrackd
from calltrackd.sip import COMPILED, STAMP, source_hashes

SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def package_with_fake_build(tmp: Path, *, fresh: bool) -> Path:
    shutil.copytree(Path(calltrackd.__file__).parent, tmp / "calltrackd",
                    ignore=shutil.ignore_patterns("*.so", STAMP, "__pycache__"))
    sip = tmp / "calltrackd" / "sip"
    for name in COMPILED:
        (sip / f"{name}{SUFFIX}").write_bytes(b"not a shared object")
    stamp = source_hashes(sip)
    if not fresh:
        stamp["message"] = "0" * 64  # message.py was edited after the build
    (sip / STAMP).write_text(json.dumps(stamp))
    return tmp


def run(root: Path, code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "CALLTRACKD_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={**base, "PYTHONPATH": str(root), **env}, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


PROBE = ("import calltrackd.sip as s, calltrackd.sip.endpoint as e, calltrackd.sip.message as m;"
         "print(s.NATIVE, '|', e.__file__, '|', m.parse_message.__module__)")


def test_compiled_modules_older_than_their_sources_are_not_used(tmp_path: Path) -> None:
    root = package_with_fake_build(tmp_path, fresh=False)
    native, endpoint, _ = run(root, PROBE).split(" | ")
    assert native.startswith("pure python (the compiled modules are older")
    assert endpoint == str(root / "calltrackd" / "sip" / "endpoint.py")


def test_pure_python_on_request_even_with_a_fresh_build(tmp_path: Path) -> None:
    root = package_with_fake_build(tmp_path, fresh=True)
    native, endpoint, _ = run(root, PROBE, CALLTRACKD_PURE_PYTHON="1").split(" | ")
    assert native == "pure python (CALLTRACKD_PURE_PYTHON)"
    assert endpoint.endswith("endpoint.py")


def test_a_fresh_build_is_chosen(tmp_path: Path) -> None:
    root = package_with_fake_build(tmp_path, fresh=True)
    assert run(root, "import calltrackd.sip as s; print(s.NATIVE)") == "compiled"
