"""``memguard check [-c CONFIG]``: print the effective settings and where each came from; exit
non-zero if any is bad. Reads the same sources, in the same order, as gunicorn under memguard."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence

from .settings import SettingsError, load_settings


def _config_namespace(location: str | None) -> tuple[Mapping[str, object], str]:
    if not location:
        return {}, "config"
    if location.startswith("python:"):
        return vars(importlib.import_module(location[len("python:") :])), location
    spec = importlib.util.spec_from_file_location("__config__", location)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(location)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module), location


def check(location: str | None) -> int:
    try:
        namespace, name = _config_namespace(location)
        settings = load_settings(os.environ, namespace, name)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"memguard: bad setting: {problem}", file=sys.stderr)
        return 1
    except (OSError, ImportError, SyntaxError) as exc:
        print(f"memguard: cannot read config {location!r}: {exc}", file=sys.stderr)
        return 2
    rows = settings.describe()
    width = max(len(env) for env, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    for env, value, source in rows:
        print(f"{env:<{width}}  {value:<{value_width}}  ({source})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memguard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="print the effective settings; non-zero exit on a bad one")
    check_parser.add_argument("-c", "--config", help="the gunicorn config: a file path or python:module")
    args = parser.parse_args(argv)
    return check(args.config)


if __name__ == "__main__":
    sys.exit(main())
