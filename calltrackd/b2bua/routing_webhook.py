"""Routing by the client's webhook: at INVITE, POST the call and its attribution (signed
as the other webhooks are, X-Calltrackd-Signature) and wait at most `timeout` for an
answer that may choose the targets by name, reject the call, or set the caller's name.

    routing_webhook = { url = "https://crm.example/route", secret = "...", timeout = "1.5s" }

The answer (200, JSON object; every key optional):

    {"targets": ["support", "sales"],  # names of the tracker's own forward targets, in order
     "reject": 486,                    # 400..699: the caller gets this, nothing is dialled
     "caller_name": "VIP Ivanov"}      # the display name the PBX sees

No open relay: a target is named, never given as a URI, and only the tracker's own named
targets can be chosen; an answer naming another is malformed. A slow, failing (not 200)
or malformed answer is ignored: the call goes by the routing rules.

`parse_routing_webhook` and `parse_answer` are pure; `RoutingWebhookClient` does the I/O.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..tracking.model import Attribution, ForwardTarget, Tracker
from ..webhooks.signing import SIGNATURE_HEADER, sign
from .pbx_headers import MAX_LABEL, sanitise

__all__ = ["DEFAULT_TIMEOUT", "Answer", "RoutingWebhook", "RoutingWebhookClient",
           "parse_answer", "parse_routing_webhook", "payload"]

DEFAULT_TIMEOUT = 1.5
MAX_TIMEOUT = 10.0  # a caller waits meanwhile (hearing ringing unless `ringing = false`)
MAX_ANSWER = 64 * 1024
EVENT = "call.routing"
Duration = Callable[[object, str], float]
SecretFn = Callable[[dict[str, Any], str, str], "str | None"]


@dataclass(frozen=True, slots=True)
class RoutingWebhook:
    url: str
    secret: str
    timeout: float = DEFAULT_TIMEOUT
    names: tuple[tuple[str, ForwardTarget], ...] = ()  # the tracker's named targets
    ringing: bool = True  # 180 Ringing to the caller while the webhook is asked

    def target(self, name: str) -> ForwardTarget | None:
        return next((t for n, t in self.names if n == name), None)


@dataclass(frozen=True, slots=True)
class Answer:
    targets: tuple[ForwardTarget, ...] | None = None  # None: the rules' targets
    reject: int | None = None
    caller_name: str | None = None


def parse_routing_webhook(raw: dict[str, Any], prefix: str, tracker: Tracker,
                          duration: Duration, secret: SecretFn
                          ) -> tuple[RoutingWebhook | None, list[str]]:
    """A tracker's `routing_webhook` (at key `prefix`) and the problems, one line each
    naming the key. `secret` reads a secret as the other webhooks' do (value, env, file)."""
    if "routing_webhook" not in raw:
        return None, []
    key = f"{prefix}.routing_webhook"
    d = raw["routing_webhook"]
    if not isinstance(d, dict):
        return None, [f"{key}: expected a table {{url = ..., secret = ..., timeout = ...}}"]
    problems = [f"{key}.{k}: unknown key (url, secret, secret_file, timeout, ringing)"
                for k in d if k not in ("url", "secret", "secret_file", "timeout", "ringing")]
    ringing = d.get("ringing", True)
    if not isinstance(ringing, bool):
        problems.append(f"{key}.ringing: expected true or false, got {ringing!r}")
    url = d.get("url")
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
        problems.append(f"{key}.url: expected an http:// or https:// URL, got {url!r}")
    value = secret(d, key, "secret")
    if not value and "secret" not in d and "secret_file" not in d:
        problems.append(f"{key}.secret: required: the key the requests are signed with")
    timeout = DEFAULT_TIMEOUT
    if "timeout" in d:
        try:
            timeout = duration(d["timeout"], f"{key}.timeout")
        except ValueError as exc:
            problems.append(str(exc))
        else:
            if not 0 < timeout <= MAX_TIMEOUT:
                problems.append(f"{key}.timeout: expected more than 0 and at most "
                                f"{MAX_TIMEOUT:g}s (the caller waits meanwhile)")
                timeout = DEFAULT_TIMEOUT
    if problems or not isinstance(url, str) or not value:
        return None, problems
    return RoutingWebhook(url, value, timeout, _names(raw, tracker), ringing is True), []


def _names(raw: dict[str, Any], tracker: Tracker) -> tuple[tuple[str, ForwardTarget], ...]:
    """The tracker's targets by the `name` of their table form ({uri, name})."""
    items = raw.get("forward")
    if not isinstance(items, list) or len(items) != len(tracker.forward):
        return ()
    return tuple((item["name"], target) for item, target in zip(items, tracker.forward,
                                                                strict=True)
                 if isinstance(item, dict) and isinstance(item.get("name"), str))


def parse_answer(body: bytes, hook: RoutingWebhook) -> Answer | str:
    """The answer, or why it is malformed (then the rules route the call)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return "not JSON"
    if not isinstance(doc, dict):
        return "not a JSON object"
    unknown = sorted(set(doc) - {"targets", "reject", "caller_name"})
    if unknown:
        return f"unknown keys {unknown}"
    targets: tuple[ForwardTarget, ...] | None = None
    if doc.get("targets") is not None:
        names = doc["targets"]
        if not isinstance(names, list) or not names or not all(
                isinstance(n, str) for n in names):
            return "targets: expected a non-empty list of target names"
        chosen = []
        for name in names:
            target = hook.target(name)
            if target is None:  # never a URI, never another tracker's: no open relay
                return f"targets: {name[:64]!r} is not one of this tracker's named targets"
            if target not in chosen:
                chosen.append(target)
        targets = tuple(chosen)
    reject = doc.get("reject")
    if reject is not None and (isinstance(reject, bool) or not isinstance(reject, int)
                               or not 400 <= reject <= 699):
        return "reject: expected a SIP status 400..699"
    name = doc.get("caller_name")
    if name is not None and not isinstance(name, str):
        return "caller_name: expected a string"
    if name is not None:
        name = sanitise(name.replace('"', "").replace("\\", ""), MAX_LABEL) or None
    return Answer(targets, reject, name)


def payload(call_id: str, tracker: Tracker, did: str, caller: str, carrier: str,
            at: float, attribution: Attribution | None, first_time: bool | None,
            hook: RoutingWebhook, rule: str | None,
            targets: tuple[ForwardTarget, ...]) -> bytes:
    """The request's JSON body: the call, its attribution and what the rules chose."""
    by_target = {id(t): n for n, t in hook.names}
    doc = {
        "event": EVENT,
        "call_id": call_id,
        "tracker": tracker.id,
        "did": did,
        "caller": caller,
        "carrier": carrier,
        "at": round(at, 3),
        "attribution": attribution.to_json() if attribution is not None else None,
        "first_time_caller": first_time,
        "targets": [n for n, _ in hook.names],  # what an answer may choose from
        "rules": {"rule": rule, "targets": [by_target.get(id(t)) for t in targets]},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class RoutingWebhookClient:
    """POSTs routing requests over one keep-alive session; never raises."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._clock = clock

    async def ask(self, hook: RoutingWebhook, body: bytes) -> Answer | str:
        """The answer, or why there is none (timeout, status, malformed)."""
        headers = {"Content-Type": "application/json", "X-Calltrackd-Event": EVENT,
                   SIGNATURE_HEADER: sign(hook.secret, body, int(self._clock()))}
        try:
            async with asyncio.timeout(hook.timeout):
                async with self._get_session().post(hook.url, data=body,
                                                    headers=headers) as resp:
                    if resp.status != 200:
                        return f"status {resp.status}"
                    data = await resp.content.read(MAX_ANSWER + 1)
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return type(exc).__name__
        if len(data) > MAX_ANSWER:
            return "answer too long"
        return parse_answer(data, hook)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=15.0))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
