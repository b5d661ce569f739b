"""Visits as the trade counts them (pure): when an arrival starts a new visit, what a
visit's source is, and which ids name the same visitor.

- An arrival from a new campaign or click (another source/medium, UTM campaign, term or
  content, or a new click id) starts a new visit with that source: the last non-direct
  source wins, as in GA.
- Internal navigation, a page the visitor passes through (sign-in, payment), a reload
  and a direct return keep the visit and its source.
- A visitor who comes back directly after their visit ended, within the tracker's
  `returning_window`, starts a new visit that keeps the source of their last one (GA's
  "last non-direct click").
"""

from __future__ import annotations

import re
from dataclasses import replace

from calltrackd.tracking.model import SessionInput, VisitorSession
from calltrackd.tracking.sources import RULES, Rules, Source, classify, query_of, utm_of

_GA_COOKIE = re.compile(r"GA\d+\.\d+\.(\d+\.\d+)")
_UTM = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


def with_landing_utm(fields: SessionInput) -> SessionInput:
    """The UTM tags of the landing page's address, when the body named none of them
    (an API client may send the address alone)."""
    if any(getattr(fields, name) for name in _UTM) or not fields.landing_page:
        return fields
    tags = utm_of(fields.landing_page)
    return replace(fields, **tags) if tags else fields  # type: ignore[arg-type]


def classify_input(fields: SessionInput, rules: Rules = RULES) -> Source:
    return classify(fields.utm_source, fields.utm_medium, fields.landing_page, fields.referrer,
                    rules)


def session_source(session: VisitorSession, rules: Rules = RULES) -> tuple[str, str, str]:
    """(source, medium, channel) of a session; classified again for sessions stored
    before classification existed."""
    if session.source is not None and session.medium is not None and session.channel:
        return session.source, session.medium, session.channel
    s = classify(session.utm_source, session.utm_medium, session.landing_page,
                 session.referrer, rules)
    return s.source, s.medium, s.channel


def click_id(url: str | None, rules: Rules = RULES) -> str | None:
    """The click id ("gclid=...") of a landing page's address, UTM tags or not."""
    click = rules.click(query_of(url))
    return click[2] if click else None


def is_new_source(arrival: Source) -> bool:
    """The arrival names a source of its own (not direct, not the site's own pages)."""
    return arrival.how not in ("direct", "internal")


def starts_new_visit(session: VisitorSession, fields: SessionInput, arrival: Source,
                     rules: Rules = RULES) -> bool:
    """Does this arrival end the visit of `session` and start a new one?"""
    if not is_new_source(arrival):
        return False
    if fields.landing_page == session.landing_page and fields.referrer == session.referrer:
        return False  # the same arrival again: a reload, or the snippet on the next page
    source, medium, _ = session_source(session, rules)
    before = (source, medium, session.utm_campaign, session.utm_term, session.utm_content,
              click_id(session.landing_page, rules))
    now = (arrival.source, arrival.medium, fields.utm_campaign, fields.utm_term,
           fields.utm_content, click_id(fields.landing_page, rules))
    return before != now


def inherits(arrival: Source, last: VisitorSession | None, rules: Rules = RULES) -> bool:
    """A direct arrival of a known visitor keeps their last visit's non-direct source."""
    return (last is not None and not is_new_source(arrival)
            and session_source(last, rules)[2] != "direct")


def visitor_keys(client_id: str | None, ym_uid: str | None,
                 visitor_id: str | None) -> list[str]:
    """The keys a returning visitor is known by: the snippet's own visitor id, the GA
    client id (the `_ga` cookie without its "GA1.2." prefix, which differs between
    cookie domains) and Metrica's ym_uid."""
    keys = []
    if visitor_id:
        keys.append("v:" + visitor_id)
    if client_id:
        m = _GA_COOKIE.fullmatch(client_id.strip())
        keys.append("ga:" + (m.group(1) if m else client_id.strip()))
    if ym_uid:
        keys.append("ym:" + ym_uid.strip())
    return keys


def keys_of(session: VisitorSession) -> list[str]:
    return visitor_keys(session.client_id, session.ym_uid, session.visitor_id)
