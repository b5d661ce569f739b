# Shared by scripts/test and scripts/run-demo: system packages and the project's venv.
# Sourced, not executed. Idempotent: installs only what is missing.

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CALLTRACKD_VENV:-$ROOT/.venv}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

# apt_need PKG:BINARY ... — installs the Debian packages whose binary is missing
apt_need() {
  local missing=()
  for spec in "$@"; do
    local pkg="${spec%%:*}" bin="${spec#*:}"
    if [ "${bin#/}" != "$bin" ]; then [ -e "$bin" ] || missing+=("$pkg")
    else command -v "$bin" >/dev/null 2>&1 || missing+=("$pkg"); fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing system packages: ${missing[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

python_for_venv() {
  local py
  for py in python3.11 python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
      echo "$py"; return 0; fi
  done
  apt_need python3:python3
  echo python3
}

ensure_venv() {
  local py; py="$(python_for_venv)"
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      echo "installing system packages: python3-venv" >&2
      as_root apt-get update -qq
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
      "$py" -m venv "$VENV"
    fi
  fi
  local stamp="$VENV/.installed-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)-${1//,/-}"
  if [ ! -e "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e "$ROOT[$1]"
    touch "$stamp"
  fi
}

# build_native — compiles the SIP core with mypyc (scripts/build_native.py) when a source
# changed: a C compiler and Python's headers are installed where missing; if the build
# still fails, calltrackd runs as pure Python (the same code, slower) and says so.
build_native() {
  apt_need gcc:gcc
  if ! "$VENV/bin/python" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    echo "installing system packages: python3-dev" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
      python3-dev >/dev/null || true
  fi
  "$VENV/bin/python" "$ROOT/scripts/build_native.py" || true
}
