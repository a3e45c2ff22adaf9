"""memguard's settings, each declared once, and the one frozen settings object built from them.

Each setting is one `Setting` attribute of `Settings` — its parser, its default (written as a
user would write it), the accepted form and a one-line help — as gunicorn declares its own in
``gunicorn/config.py``. The README's settings table (``python -m gunicorn_memguard.settings
--markdown``), the docs site's settings page (``--docs``) and ``memguard check`` are built from these
declarations.

Precedence: ``MEMGUARD_*`` environment variables, then ``memguard_*`` variables in the gunicorn
config module, then the defaults. Every bad value — malformed, unknown name, out of range — is
reported at once, each naming the setting, the value, where it came from and the accepted form.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import ipaddress
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import FrozenInstanceError
from typing import Any, Generic, TypeVar, overload

from .units import (
    BOOL_FORM,
    COUNT_RATE_FORM,
    DURATION_FORM,
    MAX_COUNT,
    RATE_FORM,
    SIZE_OR_CONTAINER_SHARE_FORM,
    SIZE_OR_SHARE_FORM,
    Share,
    Size,
    format_bool,
    format_count_rate,
    format_duration,
    format_percent,
    format_rate,
    format_size_or_share,
    parse_bool,
    parse_count_rate,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size_or_container_share,
    parse_size_or_share,
    parse_whole,
)

ENV_PREFIX = "MEMGUARD_"
CONFIG_PREFIX = "memguard_"
METRICS = ("rss", "uss", "pss")

METRIC_FORM = "one of rss, uss, pss"
JITTER_FORM = "a percentage from 0% to 50% (e.g. 10%)"
INTERVAL_FORM = "a duration from 10ms to 30 days (e.g. 1s, 30s)"
GROWTH_FORM = f"{RATE_FORM}, above zero"
PORT_FORM = "a TCP port number from 1 to 65535 (e.g. 9300)"
ADDRESS_FORM = "an IP address (e.g. 127.0.0.1, 0.0.0.0 or ::1)"
PATH_FORM = "a file path, as a string (e.g. /var/log/memguard.jsonl)"
STATUS_SOCKET_FORM = "auto, off, or an absolute path for a unix socket (e.g. /run/myapp/memguard.sock)"
WORKERS_FORM = f"a whole number of workers from 1 to {MAX_COUNT} (e.g. 1)"
TRACE_FORM = "`off`, or a percentage of the worker's limit above 0% and below 100% (e.g. 80%)"
MAX_TRACE_FRAMES = 100
FRAMES_FORM = f"a whole number of frames from 1 to {MAX_TRACE_FRAMES} (e.g. 5)"

T = TypeVar("T")


def _parse_metric(value: object) -> str:
    text = value.strip().lower() if isinstance(value, str) else ""
    if text not in METRICS:
        raise ValueError(f"expected {METRIC_FORM}")
    return text


def _parse_jitter(value: object) -> float:
    try:
        jitter = parse_percent(value)
    except ValueError:
        raise ValueError(f"expected {JITTER_FORM}") from None
    if not 0.0 <= jitter <= 0.5:
        raise ValueError(f"expected {JITTER_FORM}")
    return jitter


def _parse_interval(value: object) -> float:
    seconds = parse_duration(value, INTERVAL_FORM)
    if seconds < 0.01:
        raise ValueError(f"must be at least 10ms; expected {INTERVAL_FORM}")
    return seconds


def _parse_growth(value: object) -> float:
    rate = parse_rate(value)
    if rate <= 0:
        raise ValueError(f"must be above zero; expected {GROWTH_FORM}")
    return rate


def _parse_port(value: object) -> int:
    return parse_whole(value, PORT_FORM, 1, 65535)


def _parse_workers(value: object) -> int:
    return parse_whole(value, WORKERS_FORM, 1, MAX_COUNT)


def _parse_trace(value: object) -> float | None:
    if isinstance(value, str) and value.strip().lower() in ("off", "no"):
        return None
    try:
        share = parse_percent(value)
    except ValueError:
        raise ValueError(f"expected {TRACE_FORM}") from None
    if not 0.0 < share < 1.0:
        raise ValueError(f"expected {TRACE_FORM}")
    return share


def _show_trace(share: float | None) -> str:
    return "off" if share is None else format_percent(share)


def _parse_frames(value: object) -> int:
    return parse_whole(value, FRAMES_FORM, 1, MAX_TRACE_FRAMES)


def _parse_address(value: object) -> str:
    text = value.strip() if isinstance(value, str) else ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"expected {ADDRESS_FORM}") from None


def _parse_path(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError(f"expected {PATH_FORM}")
    text = value.strip()
    if text == "-":
        raise ValueError(
            f"'-' would be a file named '-', not standard output (for that, say /dev/stdout); expected {PATH_FORM}"
        )
    return text


def _parse_status_socket(value: object) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if text.lower() in ("auto", "off"):
        return text.lower()
    if not text.startswith("/") or "\0" in text or text.endswith("/"):
        raise ValueError(f"expected {STATUS_SOCKET_FORM}")
    if len(text.encode()) > 107:  # sun_path holds 108 bytes with its terminating NUL
        raise ValueError(f"is longer than a unix socket path can be (107 bytes); expected {STATUS_SOCKET_FORM}")
    return text


def _show_total(value: Size | Share) -> str:
    return f"{value} of the container" if isinstance(value, Share) else format_size_or_share(value)


class Setting(Generic[T]):
    """One setting: how it is parsed and shown, its default, its accepted form and help.

    Read from a `Settings` object it is the value; read from the class, the declaration. The
    default is text in the accepted form (None: unset), parsed when the class is made, so a
    default that its own parser refuses fails at import."""

    def __init__(
        self,
        parse: Callable[[object], T],
        default: str | None,
        form: str,
        help: str,
        show: Callable[[Any], str] = str,
        unset: str = "unset",
    ) -> None:
        self.parse = parse
        self.default = default
        self.form = form
        self.help = help
        self.show = show
        self.unset = unset  # how the README says what no value means
        self.name = ""
        self.parsed_default: T | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.parsed_default = None if self.default is None else self.parse(self.default)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def config(self) -> str:
        return CONFIG_PREFIX + self.name

    def shown(self, value: T | None) -> str:
        return "unset" if value is None else self.show(value)

    @overload
    def __get__(self, obj: None, owner: type) -> Setting[T]: ...

    @overload
    def __get__(self, obj: Settings, owner: type) -> T: ...

    def __get__(self, obj: Settings | None, owner: type) -> Setting[T] | T:
        if obj is None:
            return self
        value: T = obj._values[self.name]
        return value

    def __set__(self, obj: Settings, value: T) -> None:
        raise FrozenInstanceError(f"cannot assign to setting {self.name!r}")


class Settings:
    """The effective settings: one attribute per declared setting, frozen.

    ``Settings(max_memory=2**30)`` takes parsed values (tests, benchmarks); `load_settings`
    parses them from the environment and the config module and records where each came from."""

    enabled = Setting(parse_bool, "yes", BOOL_FORM, "`no` turns memguard off without removing it", format_bool)
    max_memory: Setting[int | Share | None] = Setting(
        parse_size_or_share,
        None,
        SIZE_OR_SHARE_FORM,
        "soft limit per worker: retire gracefully above it; a size, or a percentage of the memory available per "
        "worker (`80%`, see [Container-relative limits](containers.md#container-relative-limits))",
        format_size_or_share,
        unset="unset (measure only)",
    )
    hard_max_memory: Setting[int | Share | None] = Setting(
        parse_size_or_share,
        None,
        SIZE_OR_SHARE_FORM,
        "hard limit, the ceiling when set: past it a worker stops accepting at once — no minimum lifetime, no "
        "strikes, no waiting for a turn; a size or a percentage",
        format_size_or_share,
    )
    metric = Setting(_parse_metric, "uss", METRIC_FORM, "`rss`, `uss` or `pss`: what the limits apply to")
    jitter = Setting(
        _parse_jitter,
        "10%",
        JITTER_FORM,
        "each worker draws its own limit once, uniformly in `[max × (1 − jitter), max]`",
        format_percent,
    )
    check_interval = Setting(
        _parse_interval,
        "1s",
        INTERVAL_FORM,
        "timer sampling period (on top of a check after every request)",
        format_duration,
    )
    min_lifetime = Setting(
        parse_duration,
        "0s",
        DURATION_FORM,
        "a younger worker is not retired for the soft limit; the ceiling applies at any age",
        format_duration,
    )
    # observability
    dry_run = Setting(
        parse_bool,
        "no",
        BOOL_FORM,
        '`yes`: measure, judge, log and count "would retire", retire nothing',
        format_bool,
    )
    event_log: Setting[str | None] = Setting(
        _parse_path, None, PATH_FORM, "append one JSON object per event to this file"
    )
    report_interval = Setting(
        _parse_interval,
        "10s",
        INTERVAL_FORM,
        "how often each worker reads its metric exactly (one USS/PSS read, 0.4–17 ms, in the sampler thread) for "
        "the metrics, and writes a sample summary to the event log and statsd",
        format_duration,
    )
    prometheus_port: Setting[int | None] = Setting(
        _parse_port,
        None,
        PORT_FORM,
        "serve Prometheus metrics from the master on this port (needs the `prometheus` extra)",
        unset="unset (off)",
    )
    prometheus_address = Setting(_parse_address, "127.0.0.1", ADDRESS_FORM, "the address that endpoint listens on")
    status_socket = Setting(
        _parse_status_socket,
        "auto",
        STATUS_SOCKET_FORM,
        "the master's status socket for `memguard top` (owner-only); `auto`: in a private per-user directory "
        "([where](top.md#the-status-socket))",
    )
    # leak-aware policy: growth rate, reclaim before retiring, crash-loop breaker
    max_growth: Setting[float | None] = Setting(
        _parse_growth,
        None,
        GROWTH_FORM,
        "retire a worker whose memory floor grows persistently faster than this, e.g. `50MiB/h` "
        "([Growth rate](limits.md#growth-rate))",
        format_rate,
        unset="unset (off)",
    )
    growth_window = Setting(
        _parse_interval, "90m", INTERVAL_FORM, "how far back the growth rate is judged", format_duration
    )
    growth_grace = Setting(
        parse_duration,
        "10m",
        DURATION_FORM,
        "warm-up after a worker starts that the growth rate ignores",
        format_duration,
    )
    growth_interval = Setting(
        _parse_interval,
        "30s",
        INTERVAL_FORM,
        "one exact reading and one evaluation this often; at most 1/30 of the window",
        format_duration,
    )
    reclaim = Setting(
        parse_bool,
        "yes",
        BOOL_FORM,
        "before a soft-limit retirement, try `gc.collect()` + `malloc_trim(0)` and retire only if still over "
        "([Reclaim](limits.md#reclaim-before-retiring))",
        format_bool,
    )
    reclaim_interval = Setting(
        parse_duration,
        "1m",
        DURATION_FORM,
        "at most one reclaim per worker this often; over the limit again sooner, it retires",
        format_duration,
    )
    max_retirements: Setting[tuple[int, float] | None] = Setting(
        parse_count_rate,
        "10/1h",
        COUNT_RATE_FORM,
        "per worker; more retirements than this log one warning per window with the rate (recycling goes "
        "on: see [crash-loop breaker](limits.md#crash-loop-breaker)); `off` silences it",
        format_count_rate,
    )
    fast_exit = Setting(
        parse_bool,
        "yes",
        BOOL_FORM,
        "a worker exiting with status 0 runs its atexit callbacks, then skips the interpreter's teardown, "
        "which turns pages shared with the master private ([Worth knowing](how-it-works.md#worth-knowing))",
        format_bool,
    )
    # leak forensics
    trace_allocations: Setting[float | None] = Setting(
        _parse_trace,
        "off",
        TRACE_FORM,
        "past this share of its limit (its soft limit, else its ceiling) a worker traces its allocations with "
        "`tracemalloc`, and logs the top sites when it retires ([Leak forensics](forensics.md))",
        _show_trace,
    )
    trace_workers = Setting(
        _parse_workers,
        "1",
        WORKERS_FORM,
        "at most this many workers trace their allocations at once (tracing slows a worker several-fold)",
    )
    trace_frames = Setting(
        _parse_frames,
        "5",
        FRAMES_FORM,
        "frames of each allocation's traceback kept: enough to reach the app's line below its libraries; each "
        "frame adds to tracing's cost ([the cost](forensics.md#what-it-costs))",
    )
    # coordination in the master
    max_concurrent_retirements = Setting(
        _parse_workers,
        "1",
        WORKERS_FORM,
        "at most this many workers retired/replaced at once; the furthest over its limit goes first",
    )
    spawn_first = Setting(
        parse_bool,
        "yes",
        BOOL_FORM,
        "bring a soft-limit retiree's replacement up (app loaded) before it stops accepting",
        format_bool,
    )
    max_total_memory: Setting[Size | Share | None] = Setting(
        parse_size_or_container_share,
        None,
        SIZE_OR_CONTAINER_SHARE_FORM,
        "server-wide budget for the workers' PSS and the master's, a size or `%` of the container: each worker "
        "gets a share it enforces after every request; over the budget the largest is retired "
        "([the budget](containers.md#the-server-wide-budget))",
        _show_total,
    )

    __slots__ = ("_values", "sources")
    _values: dict[str, Any]
    sources: Mapping[str, str]  # where each value came from ("env MEMGUARD_X", "memguard_x in conf.py")

    def __init__(self, *, sources: Mapping[str, str] | None = None, **values: Any) -> None:
        unknown = sorted(set(values) - {s.name for s in SETTINGS})
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(unknown)}")
        object.__setattr__(self, "_values", {s.name: values.get(s.name, s.parsed_default) for s in SETTINGS})
        object.__setattr__(self, "sources", dict(sources or {}))

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to {name!r}: settings are frozen")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.values()))

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle build a new object, never assign
        return _rebuild, (self._values, dict(self.sources))

    def __repr__(self) -> str:
        changed = (f"{s.name}={self._values[s.name]!r}" for s in SETTINGS if self._values[s.name] != s.parsed_default)
        return f"Settings({', '.join(changed)})"

    def describe(self) -> list[tuple[str, str, str]]:
        """(env name, shown value, source) for each setting, in declaration order."""
        return [(s.env, s.shown(self._values[s.name]), self.sources.get(s.name, "default")) for s in SETTINGS]


SETTINGS: tuple[Setting[Any], ...] = tuple(v for v in vars(Settings).values() if isinstance(v, Setting))


def _rebuild(values: dict[str, Any], sources: dict[str, str]) -> Settings:
    return Settings(**values, sources=sources)


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


def _given(
    env: Mapping[str, str], config: Mapping[str, object], config_name: str
) -> list[tuple[Setting[Any], object, str]]:
    """Each setting that was given, its raw value and where it came from: the environment wins."""
    given: list[tuple[Setting[Any], object, str]] = []
    for setting in SETTINGS:
        if env.get(setting.env, "").strip():
            given.append((setting, env[setting.env], f"env {setting.env}"))
        elif config.get(setting.config) is not None:
            given.append((setting, config[setting.config], f"{setting.config} in {config_name}"))
    return given


def given_text(env: Mapping[str, str], config: Mapping[str, object]) -> dict[str, str]:
    """The settings given, by env name, as written: the event log's ``config`` event records them so
    that ``memguard replay`` parses the very same values again."""
    return {setting.env: str(raw).strip() for setting, raw, _ in _given(env, config, "config")}


def load_settings(env: Mapping[str, str], config: Mapping[str, object], config_name: str = "config") -> Settings:
    """Build the settings or raise `SettingsError` listing every bad value."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    env_names = [s.env for s in SETTINGS]
    for key in sorted(k for k in env if k.startswith(ENV_PREFIX)):
        if key not in env_names:
            problems.append(f"unknown setting {key} (environment){_unknown(key, env_names)}")
    config_names = [s.config for s in SETTINGS]
    for key in sorted(k for k in config if k.startswith(CONFIG_PREFIX)):
        if key not in config_names:
            problems.append(f"unknown setting {key} (in {config_name}){_unknown(key, config_names)}")

    for setting, raw, origin in _given(env, config, config_name):
        try:
            values[setting.name] = setting.parse(raw)
            sources[setting.name] = origin
        except ValueError as exc:
            problems.append(f"{origin}={raw!r} is invalid: {exc}")
        except (TypeError, OverflowError):  # a config value no parser foresaw: still one line, no traceback
            problems.append(f"{origin}={raw!r} is invalid: expected {setting.form}")

    settings = Settings(**values, sources=sources)
    soft, hard = settings.max_memory, settings.hard_max_memory
    if soft and hard and isinstance(soft, Share) is isinstance(hard, Share) and _below(hard, soft):
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


def config_namespace(location: str | None, *, run: bool) -> tuple[Mapping[str, object], str]:
    """The variables of a gunicorn config (``python:module`` or a file path), and its name.

    gunicorn imports ``python:`` modules normally and keeps a config file it ran in
    ``sys.modules['__config__']``; ``memguard_*`` variables are ignored by gunicorn, so memguard
    reads them there. In the master (``run=False``) the config is never run a second time: what
    gunicorn did not load has no variables. ``memguard check`` (``run=True``) runs it as gunicorn
    would, and lets the OSError, ImportError or SyntaxError of a config that cannot be run out.
    """
    name = location or "config"
    if location and location.startswith("python:"):
        module_name = location[len("python:") :]
        module = importlib.import_module(module_name) if run else sys.modules.get(module_name)
    elif not run:
        module = sys.modules.get("__config__")
    elif not location:
        return {}, name
    else:
        spec = importlib.util.spec_from_file_location("__config__", location)
        if spec is None or spec.loader is None:
            raise FileNotFoundError(location)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return ({} if module is None else vars(module)), name


# The help texts link to pages of the docs site by paths relative to its folder, docs/: the README
# (at the top of the repository) reaches them through docs/, the settings page (docs/reference/)
# through ../.
_RELATIVE_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#|/)")
README_LINKS = "docs/"
DOCS_PAGE = "docs/reference/settings.md"
DOCS_PAGE_LINKS = "../"


def _links(text: str, prefix: str) -> str:
    return _RELATIVE_LINK.sub(f"]({prefix}", text)


def _default(s: Setting[Any]) -> str:
    return s.unset if s.default is None else f"`{s.default}`"


def _anchor(s: Setting[Any]) -> str:
    return s.env.lower()  # the heading's id, as MkDocs and GitHub both make it


def markdown_table(links: str = README_LINKS) -> str:
    """The README's settings table, from the declarations; ``links``: the path to docs/ from the page."""
    rows = ["| env var | config variable | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        rows.append(f"| `{s.env}` | `{s.config}` | {_default(s)} | {_links(s.help, links)} |")
    return "\n".join(rows) + "\n"


TABLE_START = "<!-- settings table: generated by `python -m gunicorn_memguard.settings --markdown README.md` -->\n"
TABLE_END = "<!-- end of the settings table -->\n"


def replace_table(text: str) -> str:
    """``text`` (the README) with the generated table between its markers."""
    head, start, rest = text.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError("the README has no settings table markers")
    return head + start + markdown_table() + end + tail


def docs_page() -> str:
    """The docs site's settings reference (``DOCS_PAGE``), whole, from the declarations."""
    lines = [
        f"<!-- generated by `python -m gunicorn_memguard.settings --docs {DOCS_PAGE}` from the declarations in",
        "     gunicorn_memguard/settings.py: do not edit by hand, edit the declarations and regenerate -->",
        "",
        "# Settings reference",
        "",
        "Every setting of memguard, generated from its one declaration in `gunicorn_memguard/settings.py`",
        "(the same declarations build the README's table and `memguard check`). Each is an environment",
        "variable and a `memguard_*` variable of the gunicorn config module; the environment wins over the",
        "config module, which wins over the default. How values are written (sizes, durations, percentages)",
        "and how bad ones are reported: [Configuration](../configuration.md).",
        "",
        "| env var | config variable | default |",
        "|---|---|---|",
    ]
    lines += [f"| [`{s.env}`](#{_anchor(s)}) | `{s.config}` | {_default(s)} |" for s in SETTINGS]
    for s in SETTINGS:
        lines += [
            "",
            f"## {s.env}",
            "",
            _links(s.help[:1].upper() + s.help[1:], DOCS_PAGE_LINKS) + ".",
            "",
            f"- config variable: `{s.config}`",
            f"- default: {_default(s)}",
            f"- accepted: {s.form}",
        ]
    return "\n".join(lines) + "\n"


USAGE = "usage: python -m gunicorn_memguard.settings --markdown [README.md] | --docs [" + DOCS_PAGE + "]"


def main(argv: list[str]) -> int:
    """``--markdown``: print the table; ``--markdown README.md``: rewrite the table in that file.
    ``--docs``: print the docs site's settings page; ``--docs PATH``: write it to PATH."""
    if not argv or argv[0] not in ("--markdown", "--docs") or len(argv) > 2:
        print(USAGE, file=sys.stderr)
        return 2
    if len(argv) == 1:
        sys.stdout.write(markdown_table() if argv[0] == "--markdown" else docs_page())
        return 0
    if argv[0] == "--docs":
        with open(argv[1], "w", encoding="utf-8") as fh:
            fh.write(docs_page())
        return 0
    with open(argv[1], encoding="utf-8") as fh:
        text = fh.read()
    with open(argv[1], "w", encoding="utf-8") as fh:
        fh.write(replace_table(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
