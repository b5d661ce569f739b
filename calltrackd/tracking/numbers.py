"""Dialled numbers as carriers deliver them, normalised to E.164 before lookup.

Carriers write the same DID many ways: `+74991234567`, `74991234567`, `84991234567`
(Russian trunk prefix), `4991234567`, `tel:+7-499-123-45-67`, `00 7 499 ...`. Lookups
compare E.164 strings, so every number from the wire goes through `normalize` first.
"""

from __future__ import annotations

import functools

import phonenumbers

_SEPARATORS = str.maketrans("", "", " \t-().[]/")
_MAX_LEN = 64  # longer input is not a phone number; keeps garbage out of the cache


def _e164(text: str, region: str | None, strict: bool) -> str | None:
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    ok = phonenumbers.is_valid_number(parsed) if strict else phonenumbers.is_possible_number(parsed)
    if not ok:
        return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def _strip_uri(raw: str) -> str:
    """`tel:+7...;phone-context=x`, `sip:+7...@host` → the number part."""
    text = raw.strip()
    lowered = text.lower()
    for scheme in ("tel:", "sip:", "sips:"):
        if lowered.startswith(scheme):
            text = text[len(scheme) :]
            break
    text = text.split("@", 1)[0]
    return text.split(";", 1)[0]


@functools.lru_cache(maxsize=65536)
def normalize(raw: str, default_country: str | None = None) -> str | None:
    """The E.164 form of a dialled number, or None when it is not a phone number.

    A number with `+` (or the `00` international prefix) is parsed as international. A
    number of digits only is tried in the carrier's national format (`default_country`,
    e.g. "RU": `84991234567`, `4991234567`, `74991234567`) first, then as a country code
    without `+`. A valid number (per libphonenumber's ranges) beats a merely possible
    one (right length), so new ranges missing from the metadata still normalise.
    """
    if len(raw) > _MAX_LEN:
        return None
    text = _strip_uri(raw).translate(_SEPARATORS)
    if text.startswith("00"):
        text = "+" + text[2:]
    if text.startswith("+"):
        if not text[1:].isdigit():
            return None
        candidates: list[tuple[str, str | None]] = [(text, None)]
    else:
        if not text.isdigit():
            return None
        candidates = []
        if default_country:
            candidates.append((text, default_country.upper()))
        candidates.append(("+" + text, None))
    for strict in (True, False):
        for candidate, region in candidates:
            found = _e164(candidate, region, strict)
            if found is not None:
                return found
    return None
