"""argparse `type=` helpers for numeric flags: finite, in range, and a message naming the rule.

`float("nan")`, `float("inf")` and `int("1_0")` all parse; a scrape interval of 0 or nan spun the CPU or
never scraped, so every numeric flag goes through one of these instead of bare `int`/`float`.
"""

from __future__ import annotations

import argparse
import math
import re

MAX_SECONDS = 1_000_000.0  # ~11.6 days; far larger overflows socket and timer APIs (C timeval)
_INT_RE = re.compile(r"[+-]?[0-9]+")


def _int(text: str) -> int:
    if not _INT_RE.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}")
    return int(text)


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: the OS picks a free one)."""
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (a count or a size)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def any_int(text: str) -> int:
    """Any integer written in plain decimal digits (no `_`, no non-ASCII digits)."""
    return _int(text)


def positive_seconds(text: str) -> float:
    """A finite number of seconds, > 0 and at most MAX_SECONDS."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be a positive, finite number of seconds (at most {MAX_SECONDS:.0f}), got {text}"
        )
    return value


def non_negative_seconds(text: str) -> float:
    """Like positive_seconds, but 0 is allowed (0: off)."""
    if text.strip() and _is_zero(text):
        return 0.0
    return positive_seconds(text)


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0.0
    except ValueError:
        return False
