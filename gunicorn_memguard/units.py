"""Parse and format the units memguard settings are written in.

Sizes must carry an explicit unit: peers that take bare numbers (Celery in KiB, PM2 in bytes)
are a known source of limits a thousand times off. Every parser raises `ValueError` with a
message that names the accepted form; `settings` adds the setting's name, value and source.
Numbers are ASCII digits only: ``str.isdecimal`` and ``int()`` also take full-width and other
Unicode digits, which no one means to type in a limit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 10**3,
    "kib": 2**10,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
    "tb": 10**12,
    "tib": 2**40,
}
SIZE_FORM = "a number with a unit: B, KB, KiB, MB, MiB, GB, GiB, TB or TiB (e.g. 512MiB)"
MAX_SIZE = 2**50  # 1 PiB: above any machine's memory, well inside the shared mapping's 64-bit fields

DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_FORM = "a number with a unit: ms, s, m, h or d (e.g. 30s, 5m, 1h)"
MAX_DURATION = 30 * 86400.0  # 30 days: longer periods are typos, and overflow timers and waits

RATE_FORM = "a size per time unit (e.g. 50MiB/h, 1MiB/m)"
PERCENT_FORM = "a percentage (e.g. 10%)"
BOOL_FORM = "one of 1/0, true/false, yes/no, on/off"

_NUMBER_UNIT = re.compile(r"\s*([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z%]*)\s*")
_WHOLE = re.compile(r"\s*([+-]?)([0-9]+)\s*")


def _split(value: object, form: str) -> tuple[str, float, str]:
    """(sign, number, lower-cased unit) of text such as ``512MiB``; refuses anything else."""
    match = _NUMBER_UNIT.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"expected {form}")
    return match.group(1), float(match.group(2)), match.group(3).lower()


def parse_whole(value: object, form: str, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high``, from an int or ASCII digits (``form`` names it)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        match = _WHOLE.fullmatch(value) if isinstance(value, str) else None
        if not match or len(match.group(2)) > 18:
            raise ValueError(f"expected {form}")
        number = int(match.group(1) + match.group(2))
    if not low <= number <= high:
        raise ValueError(f"expected {form}")
    return number


def _quantity(value: object, kind: str, units: dict[str, float] | dict[str, int], form: str, high: float) -> float:
    """The shape sizes and durations share: a non-negative number with a unit, at most ``high``.

    A bare number is refused with a suggestion (``512MiB``, ``30s``), as is one not written as
    text (an int in a config file)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected {form}")
    if not isinstance(value, str):
        if abs(value) > 2**63 or not math.isfinite(value):
            raise ValueError(f"expected {form}")
        if value < 0:
            raise ValueError(f"a {kind} cannot be negative; expected {form}")
        raise ValueError(f"a {kind} needs a unit; did you mean {_suggest(kind, value)!r}? Expected {form}")
    sign, number, unit = _split(value, form)
    if not unit:
        if not math.isfinite(number) or number > 2**63:
            raise ValueError(f"a {kind} needs a unit; expected {form}")
        raise ValueError(f"a {kind} needs a unit; did you mean {_suggest(kind, number)!r}? Expected {form}")
    if unit not in units:
        raise ValueError(f"unknown unit {unit!r}; expected {form}")
    if sign == "-" and number:
        raise ValueError(f"a {kind} cannot be negative; expected {form}")
    amount = number * units[unit]
    if amount > high:
        shown = format_size(high) if kind == "size" else f"{high / 86400:g} days"
        raise ValueError(f"a {kind} must be at most {shown}; expected {form}")
    return amount


def _suggest(kind: str, number: float) -> str:
    return suggest_size(number) if kind == "size" else f"{number:g}s"


def parse_size(value: object, form: str = SIZE_FORM) -> int:
    """Return a size in bytes from text such as ``512MiB``, above zero and at most 1 PiB;
    ``form`` names the accepted form in the messages (that of a setting built on sizes)."""
    size = int(_quantity(value, "size", SIZE_UNITS, form, MAX_SIZE))
    if size <= 0:
        raise ValueError(f"a size must be above zero; expected {form}")
    return size


def suggest_size(number: float) -> str:
    """Guess what a bare number meant: bytes if it is large, MiB otherwise."""
    if number >= 2**20:
        return format_size(int(number)).replace(" ", "")
    return f"{number:g}MiB"


def parse_duration(value: object, form: str = DURATION_FORM) -> float:
    """Return seconds from text such as ``30s``, ``5m`` or ``1h``, at most 30 days."""
    return _quantity(value, "duration", DURATION_UNITS, form, MAX_DURATION)


def parse_rate(value: object) -> float:
    """Return bytes per second from text such as ``50MiB/h``."""
    if not isinstance(value, str) or value.count("/") != 1:
        raise ValueError(f"expected {RATE_FORM}")
    size_text, per = value.split("/")
    per = per.strip().lower()
    if per not in DURATION_UNITS:
        raise ValueError(f"unknown time unit {per!r}; expected {RATE_FORM}")
    return parse_size(size_text, RATE_FORM) / DURATION_UNITS[per]


def format_rate(bytes_per_second: float) -> str:
    return f"{format_size(bytes_per_second * 3600)}/h"


def parse_percent(value: object) -> float:
    """Return a fraction from text such as ``10%``."""
    sign, number, unit = _split(value, PERCENT_FORM)
    if unit != "%":
        raise ValueError(f"expected {PERCENT_FORM}")
    if sign == "-" and number:
        raise ValueError(f"a percentage cannot be negative; expected {PERCENT_FORM}")
    return number / 100.0


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else ""
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected {BOOL_FORM}")


def format_bool(value: bool) -> str:
    return "yes" if value else "no"


def format_size(size: float) -> str:
    """Format bytes in binary units with one decimal, e.g. ``171.3 MiB``."""
    for unit, factor in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{int(size)} B"


def span(seconds: float) -> str:
    """A measured length of time, to one decimal in the largest unit that fits: ``1.2h``, ``3.5m``, ``0.4s``."""
    for unit, factor in (("h", 3600.0), ("m", 60.0)):
        if seconds >= factor:
            return f"{seconds / factor:.1f}{unit}"
    return f"{seconds:.1f}s"


def format_duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    for unit, factor in (("h", 3600.0), ("m", 60.0)):
        if seconds >= factor and seconds % factor == 0:
            return f"{seconds / factor:g}{unit}"
    return f"{seconds:g}s"


def format_percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


# -- container-relative limits and counted rates ----------------------------------------------
SIZE_OR_SHARE_FORM = f"{SIZE_FORM}, or a percentage of the memory available per worker (e.g. 80%)"
SIZE_OR_CONTAINER_SHARE_FORM = f"{SIZE_FORM}, or a percentage of the container's memory (e.g. 80%)"
COUNT_RATE_FORM = "a count from 1 to 10000 per duration (e.g. 10/1h), or off"
MAX_COUNT = 10_000


@dataclass(frozen=True)
class Share:
    """A limit given as a fraction (above 0, at most 1): of the memory available to each worker
    for the per-worker limits, which the master turns into bytes once it knows the container's
    limit and the worker count; of the container's memory for the server-wide budget."""

    fraction: float

    def resolve(self, total: int) -> int:
        """This share of ``total`` bytes."""
        return int(total * self.fraction)

    def __str__(self) -> str:
        return format_percent(self.fraction)


class Size(int):
    """A size in bytes that, like a `Share`, resolves against a total: itself."""

    def resolve(self, total: int) -> int:
        return int(self)


def parse_size_or_share(value: object, form: str = SIZE_OR_SHARE_FORM) -> int | Share:
    """``512MiB`` → bytes; ``80%`` → `Share` (above 0 %, at most 100 %)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            fraction = parse_percent(value)
        except ValueError:
            raise ValueError(f"expected {form}") from None
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"a percentage must be above 0% and at most 100%; expected {form}")
        return Share(fraction)
    return parse_size(value, form)


def parse_size_or_container_share(value: object) -> Size | Share:
    """The server-wide budget: a size, or a share of the container's memory."""
    parsed = parse_size_or_share(value, SIZE_OR_CONTAINER_SHARE_FORM)
    return parsed if isinstance(parsed, Share) else Size(parsed)


def format_size_or_share(value: int | Share | None) -> str:
    if value is None:
        return "unset"
    return str(value) if isinstance(value, Share) else format_size(value)


def parse_count_rate(value: object) -> tuple[int, float] | None:
    """``10/1h`` → (10, 3600.0); ``off`` → None. The window must be above zero."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if text in ("off", "no", "0"):
        return None
    count, slash, per = text.partition("/")
    if not slash:
        raise ValueError(f"expected {COUNT_RATE_FORM}")
    number = parse_whole(count, COUNT_RATE_FORM, 1, MAX_COUNT)
    window = parse_duration(per, COUNT_RATE_FORM)
    if window <= 0:
        raise ValueError(f"the window must be above zero; expected {COUNT_RATE_FORM}")
    return number, window


def format_count_rate(value: tuple[int, float] | None) -> str:
    return "off" if value is None else f"{value[0]}/{format_duration(value[1])}"
