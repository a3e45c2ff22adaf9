"""One frozen settings object, built once in the master from env vars, the config module, defaults.

Precedence: ``MEMGUARD_*`` environment variables, then ``memguard_*`` variables in the gunicorn
config module, then the defaults below. Every bad value — malformed, unknown name, out of range —
is reported at once, each naming the setting, the value, where it came from and the accepted form.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .units import (
    BOOL_FORM,
    COUNT_RATE_FORM,
    DURATION_FORM,
    PERCENT_FORM,
    RATE_FORM,
    SIZE_FORM,
    SIZE_OR_SHARE_FORM,
    Share,
    format_count_rate,
    format_duration,
    format_rate,
    format_size,
    format_size_or_share,
    parse_bool,
    parse_count_rate,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size,
    parse_size_or_share,
)

ENV_PREFIX = "MEMGUARD_"
CONFIG_PREFIX = "memguard_"
METRICS = ("rss", "uss", "pss")


def _parse_metric(value: object) -> str:
    text = str(value).strip().lower()
    if text not in METRICS:
        raise ValueError("expected one of rss, uss, pss")
    return text


def _parse_jitter(value: object) -> float:
    jitter = parse_percent(value)
    if not 0.0 <= jitter <= 0.5:
        raise ValueError("expected a percentage from 0% to 50%")
    return jitter


def _parse_interval(value: object) -> float:
    seconds = parse_duration(value)
    if seconds < 0.01:
        raise ValueError(f"must be at least 10ms; expected {DURATION_FORM}")
    return seconds


PORT_FORM = "a TCP port number from 1 to 65535 (e.g. 9300)"
ADDRESS_FORM = "an IP address (e.g. 127.0.0.1, 0.0.0.0 or ::1)"
PATH_FORM = "a file path (e.g. /var/log/memguard.jsonl)"


def _parse_port(value: object) -> int:
    try:
        port = int(str(value).strip())
    except ValueError:
        raise ValueError(f"expected {PORT_FORM}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"expected {PORT_FORM}")
    return port


def _parse_address(value: object) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise ValueError(f"expected {ADDRESS_FORM}") from None


def _parse_path(value: object) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError(f"expected {PATH_FORM}")
    return text


def _show_optional(value: object) -> str:
    return "unset" if value is None else str(value)


def _parse_budget(value: object) -> int:
    count = int(str(value).strip()) if str(value).strip().isdigit() else 0
    if count < 1:
        raise ValueError("expected a whole number of workers, at least 1 (e.g. 1)")
    return count


class TotalMemory(NamedTuple):
    """A server-wide budget: a size in bytes, or a share of the container's memory."""

    size: int | None = None
    share: float | None = None

    def resolve(self, container: int) -> int:
        return self.size if self.size is not None else int(container * (self.share or 0.0))

    def __str__(self) -> str:
        return format_size(self.size) if self.size is not None else f"{(self.share or 0.0) * 100:g}% of the container"


def _parse_total_memory(value: object) -> TotalMemory:
    if isinstance(value, str) and value.strip().endswith("%"):
        share = parse_percent(value)
        if not 0.0 < share <= 1.0:
            raise ValueError(
                f"a share of the container must be above 0% and at most 100%; expected {SIZE_FORM} or {PERCENT_FORM}"
            )
        return TotalMemory(share=share)
    try:
        return TotalMemory(size=parse_size(value))
    except ValueError as exc:
        raise ValueError(f"{exc}; or {PERCENT_FORM} of the container") from None


@dataclass(frozen=True)
class Spec:
    """How one setting is read and shown."""

    parse: Callable[[object], Any]
    form: str
    show: Callable[[Any], str]
    help: str


def _parse_growth(value: object) -> float:
    rate = parse_rate(value)
    if rate <= 0:
        raise ValueError(f"must be above zero; expected {RATE_FORM}")
    return rate


def _show_rate(value: float | None) -> str:
    return "unset" if value is None else format_rate(value)


SPECS: dict[str, Spec] = {
    "enabled": Spec(parse_bool, BOOL_FORM, lambda v: "yes" if v else "no", "turn memguard off without removing it"),
    "max_memory": Spec(
        parse_size_or_share,
        SIZE_OR_SHARE_FORM,
        format_size_or_share,
        "soft limit per worker: retire gracefully above it",
    ),
    "hard_max_memory": Spec(
        parse_size_or_share,
        SIZE_OR_SHARE_FORM,
        format_size_or_share,
        "hard limit per worker: retire at once, no waiting",
    ),
    "metric": Spec(_parse_metric, "one of rss, uss, pss", str, "which memory figure the limits apply to"),
    "jitter": Spec(
        _parse_jitter, PERCENT_FORM, lambda v: f"{v * 100:g}%", "spread each worker's limit below max_memory"
    ),
    "check_interval": Spec(_parse_interval, DURATION_FORM, format_duration, "timer sampling period"),
    "min_lifetime": Spec(
        parse_duration,
        DURATION_FORM,
        format_duration,
        "no soft-limit retirement younger than this (the ceiling applies at any age)",
    ),
    # observability
    "dry_run": Spec(parse_bool, BOOL_FORM, lambda v: "yes" if v else "no", "decide and report, but retire nothing"),
    "event_log": Spec(_parse_path, PATH_FORM, _show_optional, "append one JSON object per event to this file"),
    "report_interval": Spec(_parse_interval, DURATION_FORM, format_duration, "how often to report a sample summary"),
    "prometheus_port": Spec(_parse_port, PORT_FORM, _show_optional, "serve Prometheus metrics from the master"),
    "prometheus_address": Spec(_parse_address, ADDRESS_FORM, str, "address the Prometheus endpoint listens on"),
    # leak-aware policy: growth rate, reclaim before retiring, crash-loop breaker
    "max_growth": Spec(_parse_growth, RATE_FORM, _show_rate, "retire a worker whose memory floor grows faster"),
    "growth_window": Spec(_parse_interval, DURATION_FORM, format_duration, "how far back the growth rate is judged"),
    "growth_grace": Spec(parse_duration, DURATION_FORM, format_duration, "warm-up after boot the growth rate ignores"),
    "growth_interval": Spec(_parse_interval, DURATION_FORM, format_duration, "growth sampling and evaluation period"),
    "reclaim": Spec(
        parse_bool, BOOL_FORM, lambda v: "yes" if v else "no", "gc + malloc_trim before a soft-limit retirement"
    ),
    "reclaim_interval": Spec(
        parse_duration, DURATION_FORM, format_duration, "at most one reclaim per worker this often"
    ),
    "max_retirements": Spec(
        parse_count_rate, COUNT_RATE_FORM, format_count_rate, "per worker; above it soft-limit recycling pauses"
    ),
    # -- coordination in the master (one block)
    "max_concurrent_retirements": Spec(
        _parse_budget, "a whole number, at least 1", str, "workers retired/replaced at once"
    ),
    "spawn_first": Spec(
        parse_bool, BOOL_FORM, lambda v: "yes" if v else "no", "start a replacement before a soft retirement"
    ),
    "max_total_memory": Spec(
        _parse_total_memory,
        f"{SIZE_FORM}, or {PERCENT_FORM} of the container",
        lambda v: "unset" if v is None else str(v),
        "server-wide PSS budget over all workers",
    ),
}


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    max_memory: int | Share | None = None  # a Share becomes bytes in the master (see budget.py)
    hard_max_memory: int | Share | None = None
    metric: str = "uss"
    jitter: float = 0.10
    check_interval: float = 1.0
    min_lifetime: float = 0.0
    # observability
    dry_run: bool = False
    event_log: str | None = None
    report_interval: float = 10.0
    prometheus_port: int | None = None
    prometheus_address: str = "127.0.0.1"
    # leak-aware policy
    max_growth: float | None = None  # bytes per second
    growth_window: float = 5400.0
    growth_grace: float = 600.0
    growth_interval: float = 30.0
    reclaim: bool = True
    reclaim_interval: float = 60.0
    max_retirements: tuple[int, float] | None = (10, 3600.0)
    max_concurrent_retirements: int = 1
    spawn_first: bool = True
    max_total_memory: TotalMemory | None = None
    # Where each value came from ("default", "env MEMGUARD_X", "config memguard_x"), for `check`.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def describe(self) -> list[tuple[str, str, str]]:
        """(env name, shown value, source) for each setting, in declaration order."""
        return [
            (ENV_PREFIX + name.upper(), SPECS[name].show(getattr(self, name)), self.sources.get(name, "default"))
            for name in SPECS
        ]


class SettingsError(ValueError):
    """All the bad settings found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _below(a: int | Share, b: int | Share) -> bool:
    if isinstance(a, Share) and isinstance(b, Share):
        return a.fraction < b.fraction
    return a < b  # type: ignore[operator]


def load_settings(env: Mapping[str, str], config: Mapping[str, object], config_name: str = "config") -> Settings:
    """Build the settings or raise `SettingsError` listing every bad value."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    env_names = [ENV_PREFIX + n.upper() for n in SPECS]
    for key in sorted(k for k in env if k.startswith(ENV_PREFIX)):
        if key not in env_names:
            problems.append(f"unknown setting {key} (environment){_unknown(key, env_names)}")
    config_names = [CONFIG_PREFIX + n for n in SPECS]
    for key in sorted(k for k in config if k.startswith(CONFIG_PREFIX)):
        if key not in config_names:
            problems.append(f"unknown setting {key} (in {config_name}){_unknown(key, config_names)}")

    for name, spec in SPECS.items():
        env_key, config_key = ENV_PREFIX + name.upper(), CONFIG_PREFIX + name
        if env.get(env_key, "").strip():
            raw, origin = env[env_key], f"env {env_key}"
        elif config.get(config_key) is not None:
            raw, origin = config[config_key], f"{config_key} in {config_name}"
        else:
            continue
        try:
            values[name] = spec.parse(raw)
            sources[name] = origin
        except ValueError as exc:
            problems.append(f"{origin}={raw!r} is invalid: {exc}")

    settings = Settings(**values, sources=sources)
    soft, hard = settings.max_memory, settings.hard_max_memory
    if soft and hard and type(soft) is type(hard) and _below(hard, soft):
        problems.append(
            f"MEMGUARD_HARD_MAX_MEMORY ({format_size_or_share(hard)}) is below "
            f"MEMGUARD_MAX_MEMORY ({format_size_or_share(soft)}): the hard limit must be at least the soft one"
        )
    bucket = settings.growth_window / 30
    if settings.max_growth is not None and settings.growth_interval > bucket:
        problems.append(
            f"MEMGUARD_GROWTH_INTERVAL ({format_duration(settings.growth_interval)}) is above 1/30 of "
            f"MEMGUARD_GROWTH_WINDOW ({format_duration(settings.growth_window)}): the growth monitor needs a "
            f"sample in every 1/30 of its window; set it to at most {format_duration(bucket)}"
        )
    if problems:
        raise SettingsError(problems)
    return settings
