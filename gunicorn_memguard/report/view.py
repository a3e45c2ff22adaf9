"""The status document as ``memguard top`` shows it: plain text for ``--once`` (no terminal
library needed), and the same rows as a rich renderable for the live view (the ``top`` extra,
imported only there)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..units import format_rate, format_size

COLUMNS = ("SLOT", "PID", "STATE", "AGE", "REQS", "{metric}", "RSS", "LIMIT", "CEILING", "GROWTH", "REASON")
_STYLES = {"serving": "green", "waiting": "yellow", "draining": "red", "starting": "dim"}


def age(seconds: float | None) -> str:
    """``12s``, ``3m05s``, ``2h07m``, ``3d04h``: two units at most, like ps and top."""
    if seconds is None:
        return "-"
    whole = max(int(seconds), 0)
    for unit, size, smaller, rest in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size}{unit}{(whole % size) // rest:02d}{smaller}"
    return f"{whole}s"


def size(value: int | None) -> str:
    return "-" if value is None else format_size(value)


def growth(rate: float | None) -> str:
    return "-" if rate is None else format_rate(rate)


def counts(counted: Mapping[str, int]) -> str:
    shown = [f"{key} {value}" for key, value in sorted(counted.items()) if value]
    return ", ".join(shown) or "none"


def header(doc: Mapping[str, Any]) -> list[str]:
    server, limits, container, totals = doc["server"], doc["limits"], doc["container"], doc["totals"]
    metric = server["metric"].upper()
    lines = [
        f"gunicorn {server['name']} on {', '.join(server['bind'])}: master pid {server['pid']}, "
        f"{server['workers']} workers wanted; gunicorn {server['gunicorn']}, memguard {server['memguard']}"
        + ("; DRY RUN: nothing is retired" if server["dry_run"] else ""),
        f"limits ({metric}): soft {size(limits['soft'])}, hard {size(limits['hard'])}, "
        f"server-wide budget {size(limits['total_budget'])}",
        f"container: limit {'none' if container['limit'] is None else size(container['limit'])}, "
        f"working set {size(container['working_set'])}",
        f"totals: {totals['workers']} workers, {metric} {size(totals['memory'])}, RSS {size(totals['rss'])}, "
        f"{totals['requests']} requests; retired: {counts(totals['retirements'])}; "
        f"exits: {counts(totals['exits'])}; reclaimed {size(totals['reclaimed'])}"
        + ("; crash-loop breaker OPEN" if totals["breaker_open"] else ""),
    ]
    return lines


def columns(doc: Mapping[str, Any]) -> list[str]:
    return [name.format(metric=doc["server"]["metric"].upper()) for name in COLUMNS]


def cells(row: Mapping[str, Any]) -> list[str]:
    """One worker's row; a starting worker has only its slot, pid and state."""
    if row["state"] == "starting":
        return [str(row["slot"]), str(row["pid"]), "starting", *["-"] * (len(COLUMNS) - 3)]
    return [
        str(row["slot"]),
        str(row["pid"]),
        row["state"],
        age(row["age"]),
        str(row["requests"]),
        size(row["memory"]),
        size(row["rss"]),
        size(row["limit"]),
        size(row["ceiling"]),
        growth(row["growth"]),
        (row["reason"] or "-") if row["state"] != "serving" else "-",  # why it waits or drains
    ]


def exit_lines(doc: Mapping[str, Any]) -> list[str]:
    metric = doc["server"]["metric"].upper()
    lines = []
    for gone in doc["exits"]:
        at = time.strftime("%H:%M:%S", time.localtime(gone["time"]))
        lines.append(
            f"{at}  pid {gone['pid']}  {gone['outcome']}  reason {gone['reason'] or '-'}  age {age(gone['age'])}  "
            f"{gone['requests']} requests  {metric} {size(gone['memory'])}  RSS {size(gone['rss'])}"
        )
    return lines or ["none yet"]


def plain(doc: Mapping[str, Any]) -> str:
    """The ``--once`` snapshot: the header, an aligned table, the last exits."""
    table = [columns(doc), *(cells(row) for row in doc["workers"])]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    rows = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table]
    return "\n".join([*header(doc), "", *rows, "", "last exits (newest first):", *exit_lines(doc)]) + "\n"


def live(doc: Mapping[str, Any] | None, problem: str | None, interval: float) -> Any:
    """The live view's frame: the last document read, and why the latest read failed if it did."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    if doc is not None:
        parts.append(Text("\n".join(header(doc))))
        table = Table(*columns(doc), box=box.SIMPLE_HEAD, pad_edge=False)
        for row in doc["workers"]:
            table.add_row(*cells(row), style=_STYLES.get(row["state"]))
        parts.append(table)
        parts.append(Text("last exits (newest first):", style="bold"))
        parts.append(Text("\n".join(exit_lines(doc))))
    if problem is not None:
        parts.append(Text(f"memguard top: {problem}", style="bold red"))
    parts.append(Text(f"refreshing every {interval:g}s; Ctrl-C to quit", style="dim"))
    return Group(*parts)
