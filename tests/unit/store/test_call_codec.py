"""The CDR codec every store shares: a record comes back equal, with the carrier it came
in by; a record written before the carrier was kept decodes with `carrier` null, and one
written by a newer build (keys this one does not know) decodes too."""

from __future__ import annotations

import json
from datetime import timedelta

from test_store_sqlite import T0, call, session

from calltrackd.store.codec import decode_call, encode_call
from calltrackd.tracking.model import Attribution


def test_a_record_round_trips_with_its_carrier() -> None:
    record = call("c_1", carrier="sbc-a", answered_at=T0 + timedelta(seconds=3),
                  ended_at=T0 + timedelta(seconds=40), ring_seconds=3.0, talk_seconds=37.0,
                  outcome="answered", sip_code=200, hangup_by="caller",
                  attribution=Attribution("dynamic", session=session()), tags=("lead",))
    text = encode_call(record)
    assert json.loads(text)["carrier"] == "sbc-a"
    back = decode_call(text)
    assert back == record
    assert back.to_json()["carrier"] == "sbc-a"
    assert decode_call(encode_call(call("c_2"))).carrier is None  # none known: null


def test_a_record_written_before_carriers_were_kept_decodes_with_carrier_null() -> None:
    data = json.loads(encode_call(call("c_old", outcome="busy", sip_code=486)))
    del data["carrier"]  # what an older build wrote
    old = decode_call(json.dumps(data))
    assert old.carrier is None and old.outcome == "busy" and old.sip_code == 486
    assert old.to_json()["carrier"] is None  # the API and webhooks show it as null
    assert json.loads(encode_call(old))["carrier"] is None  # and it is written back so


def test_keys_of_a_newer_build_are_left_out() -> None:
    data = json.loads(encode_call(call("c_new", carrier="sbc-a")))
    data["from_the_future"] = 1
    assert decode_call(json.dumps(data)) == call("c_new", carrier="sbc-a")
