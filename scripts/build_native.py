"""Compile the sans-I/O SIP core with mypyc, in place: calltrackd/sip/*.so beside the sources.

    .venv/bin/python scripts/build_native.py           # build (only when a source changed)
    .venv/bin/python scripts/build_native.py --clean   # back to pure Python

The compiled modules are the same code, type-checked by mypy --strict, run as C: parsing,
serialising and the transaction layer take half the time, which is a fifth of the daemon's
CPU per call (see docs/performance.md). Without a C compiler and Python's headers the build
fails with a message and calltrackd runs as pure Python. calltrackd/sip/native.json records
the hash of every compiled source; calltrackd.sip uses the compiled modules only while the
sources still match it (calltrackd/sip/__init__.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIP = ROOT / "calltrackd" / "sip"
sys.path.insert(0, str(ROOT))
from calltrackd.sip import COMPILED, STAMP, build_is_fresh, source_hashes  # noqa: E402

SOURCES = [f"calltrackd/sip/{name}.py" for name in COMPILED]
GROUP = "calltrackd.sip.native"  # the shared library: calltrackd/sip/native__mypyc*.so


def built_files() -> list[Path]:
    return [p for p in SIP.iterdir() if p.suffix == ".so"] + [SIP / STAMP]


def clean() -> None:
    for path in built_files():
        path.unlink(missing_ok=True)
    shutil.rmtree(ROOT / "build" / "native", ignore_errors=True)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    clean()
    os.chdir(ROOT)
    modules = [s[:-3].replace("/", ".") for s in SOURCES]
    extensions = mypycify(SOURCES, opt_level="3", separate=[(modules, GROUP)])
    setup(name="calltrackd-native", ext_modules=extensions, script_args=[
        "-q", "build_ext", "--inplace", "--build-temp", "build/native/temp",
        "--build-lib", "build/native/lib"])
    (SIP / STAMP).write_text(json.dumps(source_hashes(SIP), indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clean", action="store_true", help="remove the compiled modules")
    ap.add_argument("--force", action="store_true", help="build even when up to date")
    args = ap.parse_args()
    if args.clean:
        clean()
        return 0
    if not args.force and build_is_fresh(SIP):
        return 0
    try:
        build()
    except (Exception, SystemExit) as exc:  # setuptools exits on a compiler error
        clean()
        print(f"build_native: not compiled, calltrackd runs as pure Python: {exc}",
              file=sys.stderr)
        return 1
    print(f"build_native: compiled {', '.join(COMPILED)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
