"""Parse and format the units memguard settings are written in.

Sizes must carry an explicit unit: peers that take bare numbers (Celery in KiB, PM2 in bytes)
are a known source of limits a thousand times off. Every parser raises `ValueError` with a
message that names the accepted form; `settings` adds the setting's name and source.
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
SIZE_FORM = "a number with a unit: B, KB, KiB, MB, MiB, GB or GiB (e.g. 512MiB)"

DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_FORM = "a number with a unit: ms, s, m, h or d (e.g. 30s, 5m, 1h)"

RATE_FORM = "a size per time unit (e.g. 50MiB/h, 1MiB/m)"
PERCENT_FORM = "a percentage (e.g. 10%)"
BOOL_FORM = "one of 1/0, true/false, yes/no, on/off"

_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z%]*)\s*$")


def _split(text: str, form: str) -> tuple[float, str]:
    match = _NUMBER_UNIT.match(text)
    if not match:
        raise ValueError(f"expected {form}")
    return float(match.group(1)), match.group(2).lower()


def parse_size(value: object) -> int:
    """Return a size in bytes from text such as ``512MiB``; a bare number is rejected."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected {SIZE_FORM}")
    if isinstance(value, (int, float)):
        raise ValueError(f"a size needs a unit; did you mean {suggest_size(value)!r}? Expected {SIZE_FORM}")
    number, unit = _split(value, SIZE_FORM)
    if not unit:
        raise ValueError(f"a size needs a unit; did you mean {suggest_size(number)!r}? Expected {SIZE_FORM}")
    if unit not in SIZE_UNITS:
        raise ValueError(f"unknown unit {unit!r}; expected {SIZE_FORM}")
    size = int(number * SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"a size must be above zero; expected {SIZE_FORM}")
    return size


def suggest_size(number: float) -> str:
    """Guess what a bare number meant: bytes if it is large, MiB otherwise."""
    if number >= 2**20:
        return format_size(int(number)).replace(" ", "")
    return f"{number:g}MiB"


def parse_duration(value: object) -> float:
    """Return seconds from text such as ``30s``, ``5m`` or ``1h``; a bare number is rejected."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected {DURATION_FORM}")
    if isinstance(value, (int, float)):
        raise ValueError(f"a duration needs a unit; did you mean '{value:g}s'? Expected {DURATION_FORM}")
    number, unit = _split(value, DURATION_FORM)
    if not unit:
        raise ValueError(f"a duration needs a unit; did you mean '{number:g}s'? Expected {DURATION_FORM}")
    if unit not in DURATION_UNITS:
        raise ValueError(f"unknown unit {unit!r}; expected {DURATION_FORM}")
    return number * DURATION_UNITS[unit]


def parse_rate(value: object) -> float:
    """Return bytes per second from text such as ``50MiB/h``."""
    if not isinstance(value, str) or value.count("/") != 1:
        raise ValueError(f"expected {RATE_FORM}")
    size_text, per = value.split("/")
    per = per.strip().lower()
    if per not in DURATION_UNITS:
        raise ValueError(f"unknown time unit {per!r}; expected {RATE_FORM}")
    try:
        size = parse_size(size_text)
    except ValueError:
        raise ValueError(f"expected {RATE_FORM}") from None
    return size / DURATION_UNITS[per]


def format_rate(bytes_per_second: float) -> str:
    return f"{format_size(bytes_per_second * 3600)}/h"


def parse_percent(value: object) -> float:
    """Return a fraction from text such as ``10%``."""
    if not isinstance(value, str):
        raise ValueError(f"expected {PERCENT_FORM}")
    number, unit = _split(value, PERCENT_FORM)
    if unit != "%":
        raise ValueError(f"expected {PERCENT_FORM}")
    return number / 100.0


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected {BOOL_FORM}")


def format_size(size: float) -> str:
    """Format bytes in binary units with one decimal, e.g. ``171.3 MiB``."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{int(size)} B"


def format_duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    for unit, factor in (("h", 3600.0), ("m", 60.0)):
        if seconds >= factor and seconds % factor == 0:
            return f"{seconds / factor:g}{unit}"
    return f"{seconds:g}s"


# -- container-relative limits and counted rates ----------------------------------------------
SIZE_OR_SHARE_FORM = f"{SIZE_FORM}, or a percentage of the memory available per worker (e.g. 80%)"
COUNT_RATE_FORM = "a count per duration (e.g. 10/1h), or off"


@dataclass(frozen=True)
class Share:
    """A limit given as a fraction of the memory available to each worker; the master turns it
    into bytes once it knows the container's limit and the worker count."""

    fraction: float

    def __str__(self) -> str:
        return f"{self.fraction * 100:g}%"


def parse_size_or_share(value: object) -> int | Share:
    """``512MiB`` → bytes; ``80%`` → `Share` (0–100 %, exclusive of 0)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        fraction = parse_percent(value)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"a percentage must be above 0% and at most 100%; expected {SIZE_OR_SHARE_FORM}")
        return Share(fraction)
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ValueError(f"{exc}; or a percentage such as 80%") from None


def format_size_or_share(value: int | Share | None) -> str:
    if value is None:
        return "unset"
    return str(value) if isinstance(value, Share) else format_size(value)


def parse_count_rate(value: object) -> tuple[int, float] | None:
    """``10/1h`` → (10, 3600.0); ``off`` → None."""
    text = str(value).strip().lower()
    if text in ("off", "no", "0"):
        return None
    count, _, per = text.partition("/")
    if not count.strip().isdigit() or int(count) < 1 or not per:
        raise ValueError(f"expected {COUNT_RATE_FORM}")
    try:
        return int(count), parse_duration(per.strip())
    except ValueError:
        raise ValueError(f"expected {COUNT_RATE_FORM}") from None


def format_count_rate(value: tuple[int, float] | None) -> str:
    return "off" if value is None else f"{value[0]}/{format_duration(value[1])}"
