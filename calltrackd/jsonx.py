"""Compact JSON for the hot paths (a call's record is encoded at each of its steps, every
session request answers JSON): orjson when it can, the standard library when it cannot.

Same text as `json.dumps(obj, separators=(",", ":"), default=str)` up to formatting that
parses back to equal values (orjson writes UTF-8 rather than \\u escapes, 1e16 rather than
1e+16), at about a tenth of the cost.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# dates and dataclasses go through default=str as with the standard library, not orjson's
# own formats; non-string keys are written as strings, as json.dumps does
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME \
    | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def dumps(obj: Any) -> str:
    """Compact JSON text; a value JSON cannot carry is written as its str()."""
    try:
        return orjson.dumps(obj, default=str, option=_OPTIONS).decode()
    except TypeError:
        # orjson.JSONEncodeError is a TypeError: integers beyond 64 bits, lone surrogates
        # (a browser can send one) are taken by the standard library
        return json.dumps(obj, separators=(",", ":"), default=str)
