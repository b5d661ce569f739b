"""Compile the sans-I/O SIP core and call engine with mypyc, in place: *.so beside the sources.

    .venv/bin/python scripts/build_native.py           # build (only when a source changed)
    .venv/bin/python scripts/build_native.py --clean   # back to pure Python

The compiled modules are the same code, type-checked by mypy --strict, run as C: parsing,
serialising and the transaction layer take half the time, which is a fifth of the daemon's
CPU per call (see docs/performance.md). Without a C compiler and Python's headers the build
fails with a message and calltrackd runs as pure Python. calltrackd/sip/native.json records
the hash of every compiled source; calltrackd.sip uses the compiled modules only while the
sources still match it (calltrackd/sip/__init__.py). The call engine's pure modules
(calltrackd/b2bua: routing, legs, commands, call; calltrackd.b2bua.COMPILED) are built in
the same run, as a second group that calls into the first, with calltrackd/b2bua/native.json;
they are used only while they are fresh and the SIP core is compiled too.
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
B2BUA = ROOT / "calltrackd" / "b2bua"
sys.path.insert(0, str(ROOT))
from calltrackd.b2bua import COMPILED as B2BUA_COMPILED  # noqa: E402
from calltrackd.sip import COMPILED, STAMP, build_is_fresh, source_hashes  # noqa: E402

# (directory, modules, the shared library: <dir>/native__mypyc*.so)
GROUPS = [(SIP, COMPILED, "calltrackd.sip.native"),
          (B2BUA, B2BUA_COMPILED, "calltrackd.b2bua.native")]


def built_files() -> list[Path]:
    return [p for here, _, _ in GROUPS for p in here.iterdir() if p.suffix == ".so"] \
        + [here / STAMP for here, _, _ in GROUPS]


def fresh() -> bool:
    return all(build_is_fresh(here, names) for here, names, _ in GROUPS)


def clean() -> None:
    for path in built_files():
        path.unlink(missing_ok=True)
    shutil.rmtree(ROOT / "build" / "native", ignore_errors=True)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    clean()
    os.chdir(ROOT)
    # the stamp names the sources as they were read, not as they are when the compiler
    # is done: a file edited meanwhile must make the build stale, not look compiled
    stamps = {here: source_hashes(here, names) for here, names, _ in GROUPS}
    sources = []
    separate = []
    for here, names, group in GROUPS:
        package = str(here.relative_to(ROOT)).replace("/", ".")
        sources += [f"{here.relative_to(ROOT)}/{name}.py" for name in names]
        separate.append(([f"{package}.{name}" for name in names], group))
    extensions = mypycify(sources, opt_level="3", separate=separate)
    # the two groups' libraries (most of the C) compile side by side on two cores
    setup(name="calltrackd-native", ext_modules=extensions, script_args=[
        "-q", "build_ext", "--inplace", "--parallel", str(os.cpu_count() or 1),
        "--build-temp", "build/native/temp", "--build-lib", "build/native/lib"])
    for here, stamp in stamps.items():
        (here / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clean", action="store_true", help="remove the compiled modules")
    ap.add_argument("--force", action="store_true", help="build even when up to date")
    args = ap.parse_args()
    if args.clean:
        clean()
        return 0
    if not args.force and fresh():
        return 0
    try:
        build()
    except (Exception, SystemExit) as exc:  # setuptools exits on a compiler error
        clean()
        print(f"build_native: not compiled, calltrackd runs as pure Python: {exc}",
              file=sys.stderr)
        return 1
    names = [f"{here.name}.{name}" for here, group, _ in GROUPS for name in group]
    print(f"build_native: compiled {', '.join(names)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
