"""The daemon's HTTP answers and Prometheus text: counters and histogram quantiles."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .common import ADMIN_TOKEN


def http_json(url: str, *, token: str | None = ADMIN_TOKEN, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus exposition -> {name: value summed over label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def parse_histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of a Prometheus histogram (summed over labels)."""
    out: dict[float, float] = {}
    prefix = name + "_bucket{"
    for line in text.splitlines():
        if line.startswith(prefix):
            m = re.search(r'le="([^"]+)"\}\s+(\S+)$', line)
            if m:
                le = float(m.group(1))
                out[le] = out.get(le, 0.0) + float(m.group(2))
    return out


def histogram_quantile(before: dict[float, float], after: dict[float, float],
                       q: float) -> float | None:
    """Upper bound of the bucket holding quantile q of the observations between two scrapes."""
    deltas = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    if not deltas or deltas[-1][1] <= 0:
        return None
    total = deltas[-1][1]
    for le, cum in deltas:
        if cum >= q * total:
            return le
    return None
