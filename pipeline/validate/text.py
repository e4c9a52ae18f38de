"""Text validation: strict UTF-8, no NUL, NFC normalisation and a length limit."""

from __future__ import annotations

import unicodedata

from pipeline.errors import Reason, SampleError


def validate_text(data: bytes, *, max_chars: int) -> str | None:
    """Return the NFC-normalised, stripped text, or None when it is empty.

    Raises:
        SampleError: ``decode_error`` (not UTF-8, NUL) or ``too_long``.
    """
    # UTF-8 needs at most 4 bytes a character: anything longer is too long unread.
    if len(data) > 4 * max_chars + 4:
        raise SampleError(Reason.TOO_LONG, f"text of {len(data)} bytes > {max_chars} chars", "text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SampleError(Reason.DECODE_ERROR, f"text is not UTF-8: {e}", "text") from None
    if "\x00" in text:
        raise SampleError(Reason.DECODE_ERROR, "text contains NUL characters", "text")
    text = unicodedata.normalize("NFC", text.lstrip("\ufeff")).strip()
    if not text:
        return None
    if len(text) > max_chars:
        raise SampleError(Reason.TOO_LONG, f"text of {len(text)} chars > {max_chars}", "text")
    return text
