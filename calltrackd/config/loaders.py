"""Where the configuration's text comes from: the TOML file, and the secrets it points at.

One scheme for every secret: the value itself, `{env = "VAR"}` (an environment variable),
`{file = "/path"}` (the file's text, stripped), `{credential = "name"}` (systemd
`LoadCredential=`: the file of that name in $CREDENTIALS_DIRECTORY).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .settings import ConfigError

__all__ = ["SECRET_SOURCES", "read_secret", "read_toml"]

SECRET_SOURCES = ("env", "file", "credential")


def read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML tree; ConfigError (one line naming the file) if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None


def read_secret(source: str, ref: str) -> str:
    """The secret `{source = ref}` points at; ValueError says why it cannot be had."""
    if source == "env":
        text = os.environ.get(ref)
        if not text:
            raise ValueError(f"environment variable {ref} is not set or empty")
        return text
    if source == "credential":
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError(f"credential {ref!r}: $CREDENTIALS_DIRECTORY is not set "
                             "(LoadCredential= in the systemd unit)")
        ref = str(Path(directory) / ref)
    elif source != "file":
        raise ValueError(f"unknown secret source {source!r} (env, file, credential)")
    try:
        text = Path(ref).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {ref}: {getattr(exc, 'strerror', None) or exc}"
                         ) from None
    if not text:
        raise ValueError(f"{ref} is empty")
    return text
