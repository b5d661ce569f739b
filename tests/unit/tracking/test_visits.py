"""Visits as the trade counts them, through the tracking service over the embedded store:
new source → new visit, internal navigation and direct returns keep it, custom data
follows the page, returning visitors get their number back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from calltrackd.store.sqlite import SqliteStore
from calltrackd.tracking.model import ForwardTarget, Pool, SessionInput, Tracker
from calltrackd.tracking.service import TrackingService
from calltrackd.tracking.visits import visitor_keys

SEO = ("+74991000001", "+74991000002")
WEB = ("+74992000001", "+74992000002", "+74992000003")
TRACKER = Tracker(
    id="acme", public_key="pk_acme", default_number="+74990000000",
    forward=(ForwardTarget("sip:pbx.acme.example"),), reservation_ttl=360.0,
    returning_window=30 * 86400.0,
    pools=(Pool("seo", ("organic",), SEO), Pool("web", ("*",), WEB)),
)
T0 = 1_800_000_000.0
SITE = "https://acme.example"
ORGANIC = SessionInput(visitor_id="v1", landing_page=f"{SITE}/sofas",
                       referrer="https://www.google.com/")
AD = SessionInput(visitor_id="v1", landing_page=f"{SITE}/sofas?yclid=734251", referrer=None)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[TrackingService]:
    store = SqliteStore.from_url(f"sqlite://{tmp_path}/t.db")
    await store.open()
    svc = TrackingService(store, [TRACKER], clock=lambda: T0)
    yield svc
    await store.close()


async def session_of(service: TrackingService, session_id: str) -> tuple[str, str, str]:
    s = await service.store.get_session(session_id)
    assert s is not None
    return s.source or "", s.medium or "", s.channel or ""


async def test_an_organic_visit_is_served_by_the_organic_pool(service: TrackingService) -> None:
    a = await service.create_session(TRACKER, ORGANIC, None, T0)
    assert a.kind == "dynamic" and a.number == SEO[0]
    assert await session_of(service, a.session_id) == ("google", "organic", "organic")
    b = await service.create_session(TRACKER, replace(AD, visitor_id="v2"), None, T0)
    assert b.number == WEB[0]
    assert await session_of(service, b.session_id) == ("yandex", "cpc", "paid")


async def test_internal_navigation_and_reloads_keep_the_visit(service: TrackingService) -> None:
    a = await service.create_session(TRACKER, ORGANIC, None, T0)
    page2 = replace(ORGANIC, landing_page=f"{SITE}/contacts", referrer=f"{SITE}/sofas")
    b = await service.create_session(TRACKER, page2, a.session_id, T0 + 10)
    c = await service.create_session(TRACKER, ORGANIC, a.session_id, T0 + 20)  # reload
    d = await service.create_session(TRACKER, replace(ORGANIC, referrer=None,
                                     landing_page=f"{SITE}/"), a.session_id, T0 + 30)
    assert {x.session_id for x in (a, b, c, d)} == {a.session_id}
    assert {x.number for x in (a, b, c, d)} == {SEO[0]}
    assert await session_of(service, a.session_id) == ("google", "organic", "organic")


async def test_a_new_click_starts_a_new_visit_that_keeps_the_number_in_its_pool(
    service: TrackingService,
) -> None:
    ad = await service.create_session(TRACKER, AD, None, T0)
    assert ad.number == WEB[0]
    # back on Yandex, the visitor clicks another ad of the same campaign: a new click
    again = await service.create_session(TRACKER, replace(AD, landing_page=f"{SITE}/?yclid=99"),
                                         ad.session_id, T0 + 60)
    assert again.session_id != ad.session_id and again.number == WEB[0]
    # then arrives from a VK post: another source, another visit (same pool "*")
    vk = await service.create_session(
        TRACKER, replace(AD, landing_page=f"{SITE}/", referrer="https://vk.com/wall-1_2"),
        again.session_id, T0 + 120)
    assert vk.session_id != again.session_id and vk.number == WEB[0]
    assert await session_of(service, vk.session_id) == ("vk.com", "social", "social")
    # from Google's results: the organic pool; the web number goes back to the pool
    seo = await service.create_session(TRACKER, replace(ORGANIC, landing_page=f"{SITE}/x"),
                                       vk.session_id, T0 + 180)
    assert seo.number == SEO[0]
    assert (await service.store.pool_stats(T0 + 181))[1].reserved == 0


async def test_a_new_tab_or_a_direct_return_within_the_visit_keeps_it(
    service: TrackingService,
) -> None:
    a = await service.create_session(TRACKER, ORGANIC, None, T0)
    typed = SessionInput(visitor_id="v1", landing_page=f"{SITE}/", custom={"product_id": "7"})
    b = await service.create_session(TRACKER, typed, None, T0 + 100)
    assert (b.session_id, b.number) == (a.session_id, a.number)
    s = await service.store.get_session(a.session_id)
    assert s is not None and s.custom == {"product_id": "7"} and s.source == "google"


async def test_the_latest_custom_data_reaches_the_calls_attribution(
    service: TrackingService,
) -> None:
    a = await service.create_session(TRACKER, replace(ORGANIC, custom={"product_id": "1"}),
                                     None, T0)
    await service.create_session(TRACKER, replace(ORGANIC, custom={"product_id": "2"}),
                                 a.session_id, T0 + 5)
    assert await service.ping(a.session_id, {"product_id": "3", "color": "red"}) is not None
    await service.ping(a.session_id)  # a ping without custom keeps it
    attribution, _ = await service.attribute(TRACKER, a.number, "+79161234567", T0 + 30)
    assert attribution.kind == "dynamic" and attribution.session is not None
    assert attribution.session.custom == {"product_id": "3", "color": "red"}
    assert attribution.to_json()["channel"] == "organic"
    assert (attribution.to_json()["source"], attribution.to_json()["medium"]) == (
        "google", "organic")


async def test_a_returning_visitor_gets_their_number_back_when_it_is_free(
    service: TrackingService,
) -> None:
    first = await service.create_session(TRACKER, AD, None, T0)
    assert first.number == WEB[0]
    day2 = T0 + 86400
    # a stranger comes: the number idle longest is one never used, not the visitor's
    stranger = await service.create_session(TRACKER, SessionInput(visitor_id="v9"), None, day2)
    assert stranger.number == WEB[1]
    back = await service.create_session(TRACKER, replace(AD, landing_page=f"{SITE}/?yclid=5"),
                                        None, day2 + 10)
    assert back.session_id != first.session_id and back.number == WEB[0]


async def test_a_returning_visitor_whose_number_is_taken_gets_another(
    service: TrackingService,
) -> None:
    first = await service.create_session(TRACKER, AD, None, T0)
    day2 = T0 + 86400
    others = [await service.create_session(TRACKER, SessionInput(visitor_id=f"o{i}"), None,
                                           day2) for i in range(3)]
    assert first.number in {o.number for o in others}  # the pool went round
    back = await service.create_session(TRACKER, AD, None, day2 + 10)
    assert back.kind == "default"  # every number is held; theirs by someone else


async def test_a_direct_return_after_the_visit_keeps_the_last_non_direct_source(
    service: TrackingService,
) -> None:
    tagged = SessionInput(client_id="GA1.2.111.222", utm_source="newsletter",
                          utm_medium="email", utm_campaign="march",
                          landing_page=f"{SITE}/?utm_source=newsletter")
    first = await service.create_session(TRACKER, tagged, None, T0)
    # next day, the same person (the _ga cookie of another subdomain level) types the URL
    typed = SessionInput(client_id="GA1.3.111.222", landing_page=f"{SITE}/")
    back = await service.create_session(TRACKER, typed, None, T0 + 86400)
    s = await service.store.get_session(back.session_id)
    assert back.session_id != first.session_id and back.number == first.number
    assert s is not None and (s.source, s.medium, s.channel, s.utm_campaign) == (
        "newsletter", "email", "email", "march")
    # past the returning window: a visitor like any other, direct
    later = await service.create_session(TRACKER, typed, None, T0 + 40 * 86400)
    assert await session_of(service, later.session_id) == ("(direct)", "(none)", "direct")


async def test_utm_tags_are_read_from_the_landing_page_when_the_body_has_none(
    service: TrackingService,
) -> None:
    body = SessionInput(landing_page=f"{SITE}/?utm_source=Yandex&utm_medium=cpc"
                                     "&utm_campaign=sofas&utm_term=%D0%B4%D0%B8%D0%B2%D0%B0%D0%BD")
    a = await service.create_session(TRACKER, body, None, T0)
    s = await service.store.get_session(a.session_id)
    assert s is not None and (s.utm_source, s.utm_campaign, s.utm_term) == (
        "Yandex", "sofas", "диван")
    assert (s.source, s.medium, s.channel) == ("yandex", "cpc", "paid")


def test_visitor_keys_name_the_same_person_across_cookie_domains() -> None:
    assert visitor_keys("GA1.2.111.222", "1690000000123", "v_abc") == [
        "v:v_abc", "ga:111.222", "ym:1690000000123"]
    assert visitor_keys("GA1.3.111.222", None, None) == ["ga:111.222"]
    assert visitor_keys(None, None, None) == []


async def test_a_trackers_own_rule_file_names_its_partners_and_payment_pages(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "acme-sources.toml"
    rules.write_text('social = [{ source = "sofa-club", domains = ["sofa-club.example"] }]\n'
                     'ignore = ["pay.acme-bank.example"]\n')
    tracker = replace(TRACKER, source_rules=str(rules))
    store = SqliteStore.from_url(f"sqlite://{tmp_path}/own.db")
    await store.open()
    try:
        service = TrackingService(store, [tracker], clock=lambda: T0)
        a = await service.create_session(
            tracker, SessionInput(visitor_id="v1", landing_page=f"{SITE}/",
                                  referrer="https://www.sofa-club.example/t/1"), None, T0)
        assert await session_of(service, a.session_id) == ("sofa-club", "social", "social")
        # back from the bank's payment page: the same visit
        b = await service.create_session(
            tracker, SessionInput(visitor_id="v1", landing_page=f"{SITE}/thanks",
                                  referrer="https://pay.acme-bank.example/3ds"), a.session_id,
            T0 + 60)
        assert b.session_id == a.session_id
        # the packaged rules still apply
        c = await service.create_session(
            tracker, replace(ORGANIC, visitor_id="v2"), None, T0)
        assert await session_of(service, c.session_id) == ("google", "organic", "organic")
    finally:
        await store.close()
