"""Hunt `simultaneous` (the route's `hunt`): every target rung at once.

`ForkingCall` is the part of the call that forks: in ROUTING, a route with two or more
targets, all IP literals, and media not anchored gets an INVITE to every target at once
(`Call.fork`), each on its own B leg, under the one ring timeout. The first 1xx is
relayed, the first 2xx wins (the others are abandoned: CANCEL, or ACK and BYE when their
2xx crosses), a 6xx ends them all, and the last failure, the last Timer B or the ring
timeout ends the call. Otherwise the call hunts in order (call.py). Sans-I/O like call.py.
"""

from __future__ import annotations

from ..sip.endpoint import ClientTransaction
from ..sip.message import Request, Response
from ..sip.transaction import ClientInviteTransaction
from ..sip.uri import SipSyntaxError, SipURI
from ..tracking.model import HangupBy
from .call_core import RING, State
from .call_media import MediaCall
from .commands import CancelTimer, Notify, StartTimer
from .legs import Attempt, Phase, literal_address


class ForkingCall(MediaCall):
    """The call's hunt `simultaneous` (see the module's docstring)."""

    __slots__ = ()

    def _fork_all(self, now: float) -> bool:
        """Ring every target at once (the route's hunt `simultaneous`), each on its own
        B leg, for the one ring timeout; False (hunt in order) unless there are two or
        more targets, all with IP literal hosts, and the media is not anchored."""
        r, info = self.route, self.info
        if r is None or info is None or r.hunt != "simultaneous" or self.anchor \
                or len(self.targets) < 2 or self.state is not State.ROUTING:
            return False
        found = []
        for target in self.targets:
            try:
                uri = SipURI.parse(target.uri)
            except SipSyntaxError:
                return False
            addr = literal_address(uri)
            if addr is None:
                return False
            found.append((target, uri, addr))
        self.targets = []
        self.fork = [self._invite(*one) for one in found]
        info.target = found[0][0].uri  # until one answers
        self._goto(State.CALLING)
        self._log("call.forked", targets=[t.uri for t, _, _ in found])
        self._out.append(StartTimer(RING, now + self.ring_timeout))
        self._out.append(Notify("forwarded", info, now - self._t0))
        return True

    def _abandon_all(self) -> None:
        """Give up on the current attempt, or on every target of a fork."""
        if self.attempt is not None:
            self._abandon(self.attempt)
        fork, self.fork = self.fork, []
        for attempt in fork:
            self._abandon(attempt)

    def _on_fork_response(self, txn: ClientTransaction, resp: Response, now: float) -> bool:
        """A response to one of the fork's INVITEs (False: to none of them)."""
        req = txn.request
        for forked in self.fork:
            if req is forked.invite:
                assert isinstance(txn, ClientInviteTransaction)
                self._forked_response(forked, txn, resp, now)
                return True
        return False

    def _forked_response(self, attempt: Attempt, txn: ClientInviteTransaction,
                         resp: Response, now: float) -> None:
        code = resp.status
        leg = attempt.leg
        if code < 200:
            attempt.phase = Phase.PROCEEDING
            if code == 100:
                return
            leg.dialog.receive_response(resp)
            if self.state is State.CALLING:  # the first to ring is relayed, no other
                self._goto(State.EARLY)
                self._relay_to_a(resp)
            return
        self.fork.remove(attempt)
        if code < 300:  # the first 2xx wins; the others are cancelled
            self._out.append(CancelTimer(RING))
            self._abandon_all()
            self.b = leg
            self.attempt = attempt
            assert self.info is not None
            self.info.target = attempt.target.uri
            self._on_answer(attempt, txn, resp, now)
            return
        leg.dialog.receive_response(resp)
        self._fork_failed(attempt, code, resp.reason, "callee", now)

    def _fork_failed(self, attempt: Attempt, code: int, reason: str, by: HangupBy,
                     now: float) -> None:
        """A forked target failed: a 6xx ends them all; the last one the call."""
        self.last_code, self.last_reason, self.last_by = code, reason, by
        self._log("call.target_failed", target=attempt.target.uri, code=code)
        if code >= 600:
            self._abandon_all()
        if not self.fork:
            self._out.append(CancelTimer(RING))
            self._fail(now)

    def _on_fork_timeout(self, req: Request, now: float) -> bool:
        """Timer B of one of the fork's INVITEs (False: of none of them)."""
        for forked in self.fork:
            if req is forked.invite:
                self.fork.remove(forked)
                self._log("call.target_timeout", target=forked.target.uri)
                self._fork_failed(forked, 408, "Request Timeout", "system", now)
                return True
        return False

    def _fork_ring_timeout(self, now: float) -> None:
        """No target of the fork answered within the ring timeout: the call ends."""
        self._log("call.ring_timeout", targets=[a.target.uri for a in self.fork])
        self._abandon_all()
        self.last_code, self.last_reason = 480, "Temporarily Unavailable"
        self.last_by = "system"
        self._fail(now)
