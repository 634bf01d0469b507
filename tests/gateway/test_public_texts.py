"""The public page's two languages (gateway/public/texts.py) say the same things: the same keys, the
same fields to fill in, the same markup in the explanation."""

from __future__ import annotations

import re
import string

from meetkit_gateway.public import texts


def fields(s: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(s) if f}


def test_english_and_dutch_have_the_same_keys_and_fields():
    assert set(texts.EN) == set(texts.NL)
    for key in texts.EN:
        assert fields(texts.EN[key]) == fields(texts.NL[key]), key
    tags = lambda s: re.findall(r"</?\w+", s)  # noqa: E731
    assert tags(texts.EN["about"]) == tags(texts.NL["about"])
    assert set(texts.PAGES) == set(texts.LANGUAGES) == set(texts.DAYS) == set(texts.MONTHS) == set(texts.DECIMAL)


def test_the_explanation_names_the_rules_and_the_guidelines():
    for t in (texts.EN, texts.NL):
        about = t["about"]
        for fact in ("75 %", "07–19", "19–23", "00–07", "23–24", "12, 4", "Lden 53 dB", "Lnight 45 dB", "15 µg/m³",
                     "45 µg/m³", "85 %", "±1 dB"):
            assert fact in about, (t["lang"], fact)
