import pytest

from calltrackd.tracking.numbers import normalize


@pytest.mark.parametrize(
    ("raw", "country"),
    [
        ("+74991234567", None),
        ("74991234567", None),
        ("74991234567", "RU"),
        ("84991234567", "RU"),
        ("84991234567", "ru"),
        ("4991234567", "RU"),
        ("+7 (499) 123-45-67", None),
        ("8 (499) 123-45-67", "RU"),
        ("tel:+74991234567", None),
        ("tel:+7-499-123-45-67;phone-context=example.com", None),
        ("sip:+74991234567@carrier.example", None),
        ("00 7 499 123 45 67", None),
        ("0074991234567", "RU"),
        ("810 7 499 123 45 67", "RU"),
        ("  +74991234567 ", None),
    ],
)
def test_carrier_spellings_of_one_moscow_did_normalise_to_e164(
    raw: str, country: str | None
) -> None:
    assert normalize(raw, country) == "+74991234567"


@pytest.mark.parametrize(
    "raw",
    ["", "abc", "+", "123", "+7abc4991234567", "tel:", "anonymous", "1" * 80, "++74991234567"],
)
def test_garbage_is_not_a_number(raw: str) -> None:
    assert normalize(raw, "RU") is None


def test_foreign_number_without_plus_still_found_with_a_national_default() -> None:
    assert normalize("380441234567", "RU") == "+380441234567"


def test_number_of_the_carriers_country_preferred_over_a_foreign_reading() -> None:
    # "84991234567" is also a valid Vietnamese number; a Russian carrier means Moscow
    assert normalize("84991234567", "RU") == "+74991234567"
    assert normalize("84991234567", None) == "+84991234567"

