"""One SIP error hierarchy (calltrackd/sip/errors.py): every error carries the status to
answer with, and says whose fault it is, ours (`LocalProtocolError`) or the peer's
(`RemoteProtocolError`). The old names are these classes, importable where they were."""

from __future__ import annotations

import pytest

from calltrackd.sip import dialog, errors, message, transaction, uri
from calltrackd.sip.errors import (
    DialogError,
    LocalProtocolError,
    RemoteProtocolError,
    SipError,
    SipSyntaxError,
    TransactionError,
)
from calltrackd.sip.message import ParseError, parse_message
from calltrackd.sip.transaction import ServerInviteTransaction
from calltrackd.sip.uri import SipURI
from tests.unit.sip.test_transactions import T, request, response


def test_the_old_names_are_the_hierarchys_classes_where_they_were() -> None:
    assert message.ParseError is ParseError
    assert uri.SipSyntaxError is SipSyntaxError
    assert dialog.DialogError is DialogError
    assert transaction.TransactionError is TransactionError
    for cls in [ParseError, *(getattr(errors, name) for name in errors.__all__)]:
        assert issubclass(cls, SipError)


@pytest.mark.parametrize(("cls", "side"), [
    (ParseError, RemoteProtocolError), (SipSyntaxError, RemoteProtocolError),
    (DialogError, RemoteProtocolError), (TransactionError, LocalProtocolError)])
def test_each_error_is_the_peers_fault_or_ours_never_both(cls: type[SipError],
                                                           side: type[SipError]) -> None:
    other = LocalProtocolError if side is RemoteProtocolError else RemoteProtocolError
    assert issubclass(cls, side)
    assert not issubclass(cls, other)


def test_a_message_that_does_not_parse_is_the_peers_fault_with_its_status() -> None:
    with pytest.raises(RemoteProtocolError) as bad:
        parse_message(b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n")
    assert isinstance(bad.value, ParseError)
    assert (bad.value.status, bad.value.reason) == (400, "missing From")
    with pytest.raises(ParseError) as big:
        parse_message(b"x" * 70_000)
    assert big.value.status == 513
    with pytest.raises(ParseError) as version:
        parse_message(b"INVITE sip:a@b SIP/3.0\r\n\r\n")
    assert version.value.status == 505


def test_a_uri_off_the_grammar_answers_400_and_is_still_a_value_error() -> None:
    with pytest.raises(SipSyntaxError) as bad:
        SipURI.parse("sip:bob@host:65536")
    assert bad.value.status == 400 and isinstance(bad.value, ValueError)
    assert isinstance(bad.value, RemoteProtocolError)


def test_a_second_final_response_is_our_fault_answered_500() -> None:
    req = request()
    txn = ServerInviteTransaction(req, "k", reliable=False, timers=T)
    txn.respond(response(req, 486), 0.0)
    with pytest.raises(LocalProtocolError) as ours:
        txn.respond(response(req, 200), 0.1)
    assert isinstance(ours.value, TransactionError)
    assert ours.value.status == 500
    assert ours.value.kind == "server INVITE" and ours.value.event == "send 200"


def test_a_reason_quoting_the_peer_is_cut_to_200_characters() -> None:
    err = SipSyntaxError("bad host " + "x" * 70_000)
    assert len(err.reason) == 200 and str(err) == err.reason
    assert RemoteProtocolError("why").status == 400
    assert LocalProtocolError("why").status == 500
