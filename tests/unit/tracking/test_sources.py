"""Traffic sources from real-world landing pages and referrers, as GA4 and Metrica name
them (tracking/sources.py and its rule file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from calltrackd.tracking.sources import RULES, Rules, classify

SITE = "https://acme.example/sofas/divan-42"


def src(landing: str | None, referrer: str | None, utm_source: str | None = None,
        utm_medium: str | None = None) -> tuple[str, str, str]:
    s = classify(utm_source, utm_medium, landing, referrer)
    return s.source, s.medium, s.channel


@pytest.mark.parametrize(("landing", "referrer", "expected"), [
    # search engines: Google sends its origin only (the query is empty, q= stripped)
    (SITE, "https://www.google.com/", ("google", "organic", "organic")),
    (SITE, "https://www.google.com/url?q=&sa=t&source=web", ("google", "organic", "organic")),
    (SITE, "https://www.google.co.uk/", ("google", "organic", "organic")),
    (SITE, "https://www.google.com.br/", ("google", "organic", "organic")),
    (SITE, "https://google.de/", ("google", "organic", "organic")),
    (SITE, "https://yandex.ru/search/?text=%D0%B4%D0%B8%D0%B2%D0%B0%D0%BD&lr=213",
     ("yandex", "organic", "organic")),
    (SITE, "https://yandex.kz/", ("yandex", "organic", "organic")),
    (SITE, "https://yandex.com.tr/search/?text=kanepe", ("yandex", "organic", "organic")),
    (SITE, "https://ya.ru/", ("yandex", "organic", "organic")),
    (SITE, "https://www.bing.com/search?q=sofa&form=QBLH", ("bing", "organic", "organic")),
    (SITE, "https://go.mail.ru/search?q=divan", ("mail.ru", "organic", "organic")),
    (SITE, "https://duckduckgo.com/", ("duckduckgo", "organic", "organic")),
    (SITE, "https://search.yahoo.com/search?p=sofa", ("yahoo", "organic", "organic")),
    (SITE, "https://search.yahoo.co.jp/search?p=sofa", ("yahoo", "organic", "organic")),
    (SITE, "https://www.baidu.com/link?url=abc", ("baidu", "organic", "organic")),
    (SITE, "https://www.ecosia.org/search?q=sofa", ("ecosia", "organic", "organic")),
    (SITE, "https://nova.rambler.ru/search?query=divan", ("rambler", "organic", "organic")),
    (SITE, "https://search.naver.com/search.naver?query=sofa", ("naver", "organic", "organic")),
    (SITE, "https://search.seznam.cz/?q=pohovka", ("seznam", "organic", "organic")),
    # social networks
    (SITE, "https://vk.com/wall-12345_678", ("vk.com", "social", "social")),
    (SITE, "https://m.vk.com/wall-12345_678", ("vk.com", "social", "social")),
    (SITE, "https://away.vk.com/", ("vk.com", "social", "social")),
    (SITE, "https://ok.ru/group/123/topic/456", ("ok.ru", "social", "social")),
    (SITE, "https://l.facebook.com/", ("facebook.com", "social", "social")),
    (SITE, "https://lm.facebook.com/l.php?u=https%3A%2F%2Facme.example",
     ("facebook.com", "social", "social")),
    (SITE, "https://l.instagram.com/", ("instagram.com", "social", "social")),
    (SITE, "https://t.me/", ("t.me", "social", "social")),
    (SITE, "https://web.telegram.org/", ("t.me", "social", "social")),
    (SITE, "https://www.youtube.com/", ("youtube.com", "social", "social")),
    (SITE, "https://t.co/AbCdEf123", ("x.com", "social", "social")),
    (SITE, "https://twitter.com/", ("x.com", "social", "social")),
    (SITE, "https://www.linkedin.com/", ("linkedin.com", "social", "social")),
    (SITE, "https://dzen.ru/a/ZxYz", ("dzen.ru", "social", "social")),
    (SITE, "https://zen.yandex.ru/media/acme", ("dzen.ru", "social", "social")),  # not search
    (SITE, "https://www.pinterest.co.uk/pin/123/", ("pinterest.com", "social", "social")),
    (SITE, "https://out.reddit.com/t3_abc", ("reddit.com", "social", "social")),
    (SITE, "https://www.tiktok.com/", ("tiktok.com", "social", "social")),
    # webmail
    (SITE, "https://mail.google.com/", ("mail.google.com", "email", "email")),
    (SITE, "https://e.mail.ru/inbox/", ("e.mail.ru", "email", "email")),
    (SITE, "https://mail.yandex.ru/", ("mail.yandex.ru", "email", "email")),
    # apps (Chrome on Android sends the app's package)
    (SITE, "android-app://com.google.android.googlequicksearchbox/",
     ("google", "organic", "organic")),
    (SITE, "android-app://com.google.android.gm/", ("mail.google.com", "email", "email")),
    (SITE, "android-app://org.telegram.messenger/", ("t.me", "social", "social")),
    (SITE, "android-app://com.vkontakte.android", ("vk.com", "social", "social")),
    (SITE, "android-app://com.example.newsreader/", ("com.example.newsreader", "referral",
                                                      "referral")),
    # any other site: a referral from its host (without www.)
    (SITE, "https://forum.example.org/threads/which-sofa.1234/page-2",
     ("forum.example.org", "referral", "referral")),
    (SITE, "https://www.sofa-reviews.example/best-2026", ("sofa-reviews.example", "referral",
                                                          "referral")),
    (SITE, "https://google.example.net/", ("google.example.net", "referral", "referral")),
    # typed, bookmarked, or a referrer withheld
    (SITE, None, ("(direct)", "(none)", "direct")),
    (SITE, "", ("(direct)", "(none)", "direct")),
    (None, None, ("(direct)", "(none)", "direct")),
])  # fmt: skip
def test_referrer_names_the_source(landing: str | None, referrer: str | None,
                                   expected: tuple[str, str, str]) -> None:
    assert src(landing, referrer) == expected


@pytest.mark.parametrize(("landing", "expected"), [
    ("https://acme.example/?gclid=EAIaIQobChMI0_Lx", ("google", "cpc", "paid")),
    ("https://acme.example/?gbraid=0AAAAADs&gad_source=1", ("google", "cpc", "paid")),
    ("https://acme.example/?wbraid=CkQKCQ", ("google", "cpc", "paid")),
    ("https://acme.example/?gad_source=1", ("google", "cpc", "paid")),
    ("https://acme.example/sofas?yclid=7342516823479123967", ("yandex", "cpc", "paid")),
    ("https://acme.example/?msclkid=9c1b6a5d2e1f", ("bing", "cpc", "paid")),
    ("https://acme.example/?fbclid=IwAR2xYz", ("facebook.com", "social", "social")),
    ("https://acme.example/?ttclid=E.C.P.abc", ("tiktok.com", "cpc", "paid")),
    ("https://acme.example/?twclid=2-abc", ("x.com", "cpc", "paid")),
    ("https://acme.example/?li_fat_id=1234-5678", ("linkedin.com", "cpc", "paid")),
    ("https://acme.example/?ymclid=1690000000", ("yandex_market", "cpc", "paid")),
    ("https://acme.example/?ysclid=lq2x3y4z5", ("yandex", "organic", "organic")),
    ("https://acme.example/?mc_cid=ab12cd&mc_eid=ef34", ("mailchimp", "email", "email")),
    ("https://acme.example/?GCLID=upper", ("google", "cpc", "paid")),
])  # fmt: skip
def test_a_click_id_names_the_source_before_the_referrer(
    landing: str, expected: tuple[str, str, str]
) -> None:
    # the ad system's own referrer (or none at all) does not change the answer
    assert src(landing, "https://yandex.ru/") == expected
    assert src(landing, None) == expected


def test_yandex_ad_click_without_utm_is_paid_not_organic() -> None:
    landing = "https://acme.example/sofas?yclid=7342516823479123967"
    assert src(landing, "https://yandex.ru/") == ("yandex", "cpc", "paid")
    assert src("https://acme.example/sofas", "https://yandex.ru/") == (
        "yandex", "organic", "organic")


def test_utm_tags_come_first_and_their_medium_names_the_channel() -> None:
    gclid = "https://acme.example/?gclid=abc&utm_source=google&utm_medium=cpc"
    assert src(gclid, "https://www.google.com/", "google", "cpc") == ("google", "cpc", "paid")
    # UTM beats the click id and the referrer
    assert src("https://acme.example/?yclid=1", "https://vk.com/", "VK", "Social") == (
        "vk", "social", "social")
    for medium, channel in [("email", "email"), ("e-mail", "email"), ("newsletter", "email"),
                            ("cpc", "paid"), ("ppc", "paid"), ("paid_social", "paid"),
                            ("paidsearch", "paid"), ("cpm", "paid"), ("display", "paid"),
                            ("organic", "organic"), ("social", "social"), ("sm", "social"),
                            ("referral", "referral"), ("qr", "other"), ("print", "other")]:
        assert src(SITE, None, "spring_sale", medium)[2] == channel, medium
    assert src(SITE, None, "newsletter") == ("newsletter", "(none)", "email")
    assert src(SITE, None, "partner") == ("partner", "(none)", "other")


def test_an_email_campaign_is_the_email_channel() -> None:
    landing = ("https://acme.example/sale?utm_source=mailchimp&utm_medium=email"
               "&utm_campaign=black_friday")
    assert src(landing, "https://e.mail.ru/", "mailchimp", "email") == (
        "mailchimp", "email", "email")


def test_the_sites_own_pages_and_sign_in_pages_are_no_new_source() -> None:
    for referrer in ("https://acme.example/catalog", "https://www.acme.example/",
                     "https://shop.acme.example/cart", "https://ACME.example./x",
                     "https://accounts.google.com/o/oauth2/auth",
                     "https://passport.yandex.ru/auth", "https://www.paypal.com/checkout"):
        s = classify(None, None, SITE, referrer)
        assert (s.how, s.channel) == ("internal", "direct"), referrer
    # a page on a subdomain names its parent domain as its own too
    assert classify(None, None, "https://shop.acme.example/", "https://acme.example/").how == (
        "internal")
    # another site under the same public suffix is not the site itself
    assert src(SITE, "https://notacme.example/") == ("notacme.example", "referral", "referral")


def test_malformed_referrers_count_as_direct() -> None:
    for referrer in ("not a url", "https://[::1/", "android-app://", "https:///path"):
        assert src(SITE, referrer)[2] in ("direct", "referral"), referrer
    assert src("https://acme.example/?gclid=", None) == ("(direct)", "(none)", "direct")


def test_a_rule_file_of_ones_own_extends_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "sources.toml"
    path.write_text('''
click_ids = [{ param = "acme_click", source = "acme_ads", medium = "cpc" }]
search = [{ source = "kagi", domains = ["kagi.com"] }]
social = [{ source = "habr.com", domains = ["habr.com"] }, { source = "vk", domains = ["vk.com"] }]
[channels]
paid = ["zakaz"]
''')
    rules = Rules.load(path)
    assert classify(None, None, "https://a.example/?acme_click=1", None, rules).key == (
        "acme_ads/cpc")
    assert classify(None, None, SITE, "https://kagi.com/search?q=x", rules).channel == "organic"
    assert classify(None, None, SITE, "https://habr.com/ru/articles/1/", rules).key == (
        "habr.com/social")
    # its entries come first: they win over the packaged ones, which stay in force
    assert classify(None, None, SITE, "https://m.vk.com/", rules).key == "vk/social"
    assert classify("x", "zakaz", SITE, None, rules).channel == "paid"
    assert classify(None, None, SITE, "https://t.me/", rules).key == "t.me/social"
    bad = tmp_path / "bad.toml"
    bad.write_text('[channels]\npayed = ["cpc"]\n')
    with pytest.raises(ValueError, match=r"bad\.toml: unknown channel 'payed'"):
        Rules.load(bad)


def test_the_packaged_rules_cover_the_engines_and_networks_the_trade_names() -> None:
    for host in ("google.com", "yandex.ru", "bing.com", "go.mail.ru", "duckduckgo.com",
                 "search.yahoo.com", "baidu.com", "ecosia.org", "rambler.ru", "naver.com",
                 "seznam.cz"):
        rule = RULES.host_rule(host)[1]
        assert rule is not None and rule.medium == "organic", host
    for host in ("vk.com", "ok.ru", "facebook.com", "instagram.com", "t.me", "youtube.com",
                 "x.com", "linkedin.com", "dzen.ru", "pinterest.com", "reddit.com",
                 "tiktok.com"):
        rule = RULES.host_rule(host)[1]
        assert rule is not None and rule.medium == "social", host
