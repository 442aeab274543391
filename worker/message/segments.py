"""How many SMS segments a text costs, the unit carriers rate-limit and bill.

A text that fits the GSM 03.38 alphabet travels as 7-bit septets: 160 in a
single SMS, 153 per segment once split (the user-data header takes the rest).
One character outside that alphabet turns the whole text into UCS-2: 70 UTF-16
code units in a single SMS, 67 per segment once split. Characters of the GSM
extension table (``^{}\\[~]|€`` and form feed) are an escape plus a septet, so
they count 2.

Segments are packed the way handsets and Twilio do it: an escape pair or a
UTF-16 surrogate pair is never cut between two segments, so a split text can
take one segment more than plain division would say.
"""

from __future__ import annotations

import re
from typing import Final, Literal

__all__ = ["count_segments", "encoding"]

Encoding = Literal["GSM-7", "UCS-2"]

#: The GSM 03.38 default alphabet (without 0x1B, the escape to the extension
#: table, which is not a character of its own).
_GSM_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
#: The GSM 03.38 extension table: each costs an escape septet plus its own.
_GSM_EXTENSION: Final = frozenset("\f^{}\\[~]|€")

_GSM_SINGLE_SEPTETS: Final = 160  #: septets in an unsplit GSM-7 SMS
_GSM_SEGMENT_SEPTETS: Final = 153  #: septets per segment of a split GSM-7 SMS
_UCS2_SINGLE_UNITS: Final = 70  #: UTF-16 code units in an unsplit UCS-2 SMS
_UCS2_SEGMENT_UNITS: Final = 67  #: UTF-16 code units per segment of a split UCS-2 SMS


#: Texts of the basic alphabet only (most are): one septet a character, no pair to keep together.
_BASIC_ONLY: Final = re.compile("[" + re.escape("".join(sorted(_GSM_BASIC))) + "]*")


def encoding(text: str) -> Encoding:
    """Return the encoding an SMS with this text travels in.

    ``"GSM-7"`` when every character is in the GSM 03.38 default alphabet or
    its extension table, else ``"UCS-2"``.
    """
    if _BASIC_ONLY.fullmatch(text):
        return "GSM-7"
    for char in text:
        if char not in _GSM_BASIC and char not in _GSM_EXTENSION:
            return "UCS-2"
    return "GSM-7"


def count_segments(text: str) -> int:
    """Return how many SMS segments the text is sent as (at least 1).

    An empty text still costs one (empty) SMS.
    """
    if _BASIC_ONLY.fullmatch(text):
        n = len(text)
        return 1 if n <= _GSM_SINGLE_SEPTETS else -(-n // _GSM_SEGMENT_SEPTETS)
    if encoding(text) == "GSM-7":
        sizes = [2 if char in _GSM_EXTENSION else 1 for char in text]
        return _pack(sizes, _GSM_SINGLE_SEPTETS, _GSM_SEGMENT_SEPTETS)
    # Astral characters (most emoji) are a surrogate pair: 2 code units.
    sizes = [2 if ord(char) > 0xFFFF else 1 for char in text]
    return _pack(sizes, _UCS2_SINGLE_UNITS, _UCS2_SEGMENT_UNITS)


def _pack(sizes: list[int], single: int, per_segment: int) -> int:
    """Count segments for characters of the given sizes, never splitting one."""
    if sum(sizes) <= single:
        return 1
    segments, used = 1, 0
    for size in sizes:
        if used + size > per_segment:
            segments += 1
            used = 0
        used += size
    return segments
