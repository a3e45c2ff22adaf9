"""``memguard top [--pid PID | --socket PATH] [--once] [--json] [--interval S]``: a live view of a
running server, read from its master's status socket (``master/status.py``). ``--json`` and
``--once`` print one snapshot and need no terminal library; the live view needs the ``top``
extra (rich)."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from typing import Any

from ..master.status import auto_directories, private_problem
from ..report import view
from ..units import parse_duration

ANSWER_WAIT = 5.0  # seconds: the master answers on its next pass, at least once a second
INTERVAL_FORM = "a duration from 100ms to 1h (e.g. 2s, 500ms)"
_SOCKET = re.compile(r"(\d+)\.sock")


class TopError(Exception):
    """A problem said to the user as one line, exit status 1."""


def servers() -> dict[int, str]:
    """master pid -> status socket, for each live master with an ``auto`` socket of this user."""
    found: dict[int, str] = {}
    for directory in auto_directories():
        if private_problem(directory) is not None:  # missing, or not this user's own: not trusted
            continue
        for name in sorted(os.listdir(directory)):
            match = _SOCKET.fullmatch(name)
            if match and _alive(int(match.group(1))):
                found.setdefault(int(match.group(1)), os.path.join(directory, name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # a master that was killed left its socket behind
    except PermissionError:
        return True
    return True


def find_socket(pid: int | None) -> str:
    """The status socket of master ``pid``, or of the one server of this user when ``pid`` is None."""
    found = servers()
    places = " and ".join(auto_directories())
    if pid is not None:
        if pid in found:
            return found[pid]
        raise TopError(
            f"no status socket of master pid {pid} in {places}: is it a gunicorn master (not a worker) under "
            f"memguard, run by this user, with MEMGUARD_STATUS_SOCKET=auto? For a socket set to a path, say --socket"
        )
    if not found:
        raise TopError(
            f"no gunicorn server under memguard of this user found (looked in {places}); start one, say --socket "
            "PATH if its MEMGUARD_STATUS_SOCKET is a path, or run as the server's user"
        )
    if len(found) > 1:
        lines = [f"{len(found)} servers found; say which with --pid:"]
        for master, path in sorted(found.items()):
            try:
                server = fetch(path, timeout=1.0)["server"]
                lines.append(f"  --pid {master}  {server['name']} on {', '.join(server['bind'])}")
            except TopError as exc:
                lines.append(f"  --pid {master}  ({exc})")
        raise TopError("\n".join(lines))
    return next(iter(found.values()))


def fetch(path: str, timeout: float = ANSWER_WAIT) -> dict[str, Any]:
    """One status document from the socket at ``path``."""
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except PermissionError:
        raise TopError(f"permission denied on {path}: only the server's user (or root) may read it") from None
    except FileNotFoundError:
        raise TopError(f"no status socket at {path}") from None
    except ConnectionRefusedError:
        raise TopError(f"nothing listens on {path}: its server has stopped") from None
    except TimeoutError:
        raise TopError(f"no answer on {path} within {timeout:g}s: is its master stalled?") from None
    except OSError as exc:
        raise TopError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(b"".join(chunks))
    except ValueError:
        raise TopError(f"{path} did not answer with a memguard status document") from None
    if isinstance(doc, dict) and "error" in doc:
        raise TopError(f"{path}: {doc['error']}")
    if not isinstance(doc, dict) or not isinstance(doc.get("server"), dict):
        raise TopError(f"{path} did not answer with a memguard status document")
    return doc


def top(args: argparse.Namespace) -> int:
    try:
        path = args.socket or find_socket(args.pid)
        if args.json or args.once or not sys.stdout.isatty():
            doc = fetch(path)
            print(json.dumps(doc, indent=2) if args.json else view.plain(doc), end="\n" if args.json else "")
            return 0
        return _live(path, args.interval)
    except TopError as exc:
        print(f"memguard top: {exc}", file=sys.stderr)
        return 1


def _live(path: str, interval: float) -> int:
    """Refresh in place until Ctrl-C; a failed read is shown under the last good one, and retried."""
    try:
        from rich.live import Live
    except ImportError:
        raise TopError(
            "the live view needs rich: pip install 'gunicorn-memguard[top]' (--once and --json work without it)"
        ) from None
    doc: dict[str, Any] | None = None
    try:
        with Live(view.live(None, None, interval), auto_refresh=False, screen=False) as screen:
            while True:
                problem = None
                try:
                    doc = fetch(path)
                except TopError as exc:
                    problem = str(exc)
                screen.update(view.live(doc, problem, interval), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def _pid(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a process id (a whole number above 0), got {text!r}")
    return int(text)


def _interval(text: str) -> float:
    try:
        seconds = parse_duration(text, INTERVAL_FORM)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; expected {INTERVAL_FORM}")
    return seconds


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "top", help="a live view of a running server's workers, from its master's status socket"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--pid", type=_pid, help="the gunicorn master's pid, when this user runs more than one server")
    where.add_argument("--socket", help="the status socket's path, when MEMGUARD_STATUS_SOCKET is set to one")
    parser.add_argument("--once", action="store_true", help="print one plain snapshot and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON object and exit (its fields: docs/top.md)")
    parser.add_argument(
        "--interval", type=_interval, default=1.0, metavar="S", help=f"time between refreshes, {INTERVAL_FORM}; 1s"
    )
    parser.set_defaults(run=top)
