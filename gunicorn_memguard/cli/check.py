"""``memguard check [-c CONFIG]``: print the effective settings and where each came from, and what
a percentage limit resolves to on this machine; exit non-zero if any setting is bad. Reads the
same sources, in the same order, as gunicorn under memguard."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from ..policy.percentages import resolve
from ..probes.cgroup import read_container_memory
from ..settings import Settings, SettingsError, config_namespace, load_settings
from ..units import Share, format_size


def _worker_count(namespace: Mapping[str, object], name: str, env: Mapping[str, str]) -> tuple[int, str]:
    """The worker count gunicorn would start with: the config's ``workers``, else
    ``WEB_CONCURRENCY`` (gunicorn's default), else 1 — and where it came from."""
    for raw, origin in ((namespace.get("workers"), f"workers in {name}"), (env.get("WEB_CONCURRENCY"), None)):
        if raw is None:
            continue
        text = str(raw).strip()
        if isinstance(raw, int) or (text.isascii() and text.isdigit()):
            return max(int(text), 1), origin or "WEB_CONCURRENCY"
    return 1, "gunicorn's default"


def resolved_lines(settings: Settings, namespace: Mapping[str, object], name: str, env: Mapping[str, str]) -> list[str]:
    """What percentage limits come to on this machine, as the master would resolve them before
    the first fork — except that the master also sets aside its own memory (after preload_app)."""
    lines = []
    soft, hard, total = settings.max_memory, settings.hard_max_memory, settings.max_total_memory
    if isinstance(soft, Share) or isinstance(hard, Share) or isinstance(total, Share):
        container = read_container_memory()
        workers, origin = _worker_count(namespace, name, env)
        if isinstance(soft, Share) or isinstance(hard, Share):
            how = resolve(soft, hard, container, 0, workers).how.removeprefix("memguard: ")
            lines.append(
                f"on this machine, with {workers} workers ({origin}) and before the master's own memory is set aside: "
                f"{how}"
            )
        if isinstance(total, Share):
            lines.append(
                f"on this machine: server-wide budget {total} = {format_size(total.resolve(container.available))} "
                f"of {container.describe()}"
            )
    return lines


def check(location: str | None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        namespace, name = config_namespace(location, run=True)
        settings = load_settings(env, namespace, name)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"memguard: bad setting: {problem}", file=sys.stderr)
        return 1
    except (OSError, ImportError, SyntaxError) as exc:
        print(f"memguard: cannot read config {location!r}: {exc}", file=sys.stderr)
        return 2
    rows = settings.describe()
    width = max(len(env_name) for env_name, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    for env_name, value, source in rows:
        print(f"{env_name:<{width}}  {value:<{value_width}}  ({source})")
    for line in resolved_lines(settings, namespace, name, env):
        print(line)
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("check", help="print the effective settings; non-zero exit on a bad one")
    parser.add_argument("-c", "--config", help="the gunicorn config: a file path or python:module")
    parser.set_defaults(run=lambda args: check(args.config))
