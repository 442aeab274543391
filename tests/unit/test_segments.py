"""count_segments / encoding: GSM-7 and UCS-2 arithmetic at the boundaries."""

from __future__ import annotations

import pytest

from oaksend.worker.message.segments import count_segments, encoding

EMOJI = "\U0001f600"  # astral: a surrogate pair, 2 UTF-16 code units


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "GSM-7"),
        ("Hello, world! 0123456789", "GSM-7"),
        ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà", "GSM-7"),
        ("^{}\\[~]|€\f", "GSM-7"),
        ("ç", "UCS-2"),  # only capital Ç is in the GSM table
        ("naïve", "UCS-2"),
        ("Привет", "UCS-2"),
        ("こんにちは", "UCS-2"),
        (f"hi {EMOJI}", "UCS-2"),
        ("\x1b", "UCS-2"),  # the bare escape is not a character of its own
        ("\t", "UCS-2"),
        ("`", "UCS-2"),
    ],
)
def test_encoding(text: str, expected: str) -> None:
    assert encoding(text) == expected


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 1),
        ("a", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("a" * 1530, 10),
        ("a" * 1600, 11),
        # Extension characters cost two septets.
        ("€" * 80, 1),
        ("€" * 81, 2),
        ("a" * 159 + "€", 2),
        ("a" * 158 + "€", 1),
        # An escape pair is never split: 152 septets + "€" needs a new segment.
        ("a" * 152 + "€" + "a" * 10, 2),
        ("a" * 152 + "€" + "a" * 152, 3),
        # UCS-2.
        ("é" + "ж" * 69, 1),
        ("ж" * 70, 1),
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        (EMOJI * 35, 1),
        (EMOJI * 36, 2),
        ("ж" * 69 + EMOJI, 2),
        # A surrogate pair is never split: 66 units + an emoji needs a new segment.
        ("ж" * 66 + EMOJI + "ж" * 3, 2),
        ("ж" * 66 + EMOJI + "ж" * 66, 3),
        # One non-GSM character turns 160 GSM characters into UCS-2.
        ("a" * 159 + "ж", 3),
    ],
)
def test_count_segments(text: str, segments: int) -> None:
    assert count_segments(text) == segments
