"""The ``memguard`` command: one module per subcommand, each with ``add_parser(commands)`` that
declares its arguments and sets ``run(args) -> exit status``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from . import check as check_command
from . import replay as replay_command
from . import report as report_command
from . import top as top_command
from .check import check

COMMANDS = (check_command, report_command, replay_command, top_command)

__all__ = ["check", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memguard", description="gunicorn-memguard's operator commands")
    parser.add_argument("--version", action="version", version=f"%(prog)s (gunicorn-memguard) {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        status = int(args.run(args))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`memguard check | head -2`). Point stdout at /dev/null so the
        # interpreter's final flush does not fail again with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
