"""``memguard report --plot``: memory per worker over time, with the limit, the ceiling and each
retirement marked. matplotlib comes with the ``plot`` extra and is imported only here. The legend
names the lines and the reasons, never the workers (a colour per slot), so it stays small for 16
workers over a day; ``.html`` is the same PNG inlined, one file to send."""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from datetime import datetime, timezone
from html import escape
from typing import Any

from .trace import Trace

MiB = 2**20
MARKERS = {"soft_limit": "o", "growth_rate": "^", "ceiling": "X", "hard_limit": "X", "total_memory": "s", "spare": "d"}
FORMATS = (".png", ".html")


class PlotError(ValueError):
    """The plot cannot be made; the message says why and what to do."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'gunicorn-memguard[plot]'") from None
    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    return plt


def _time(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def render(trace: Trace, path: str, title: str) -> None:
    if not path.lower().endswith(FORMATS):
        raise PlotError(f"--plot {path!r}: expected a file name ending in .png or .html")
    png = _png(trace, title)
    if path.lower().endswith(".html"):
        encoded = base64.b64encode(png).decode()
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title></head>"
            f"<body><img alt='{escape(title)}' src='data:image/png;base64,{encoded}'></body></html>\n"
        )
        data = page.encode()
    else:
        data = png
    try:
        with open(path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise PlotError(f"--plot {path!r}: cannot write it: {exc.strerror or exc}") from None


def _png(trace: Trace, title: str) -> bytes:
    plt = _pyplot()
    import matplotlib.dates as mdates

    fig, ax = plt.subplots(figsize=(14, 6.5), dpi=100)
    colours = plt.get_cmap("tab20")
    slots = trace.slots()
    for life in trace.lifetimes:
        slot = slots.get(life.pid)
        ax.plot(
            [_time(p.time) for p in life.points], [p.value / MiB for p in life.points],
            color=colours((slot or 0) % 20), linewidth=0.9, alpha=0.85,
        )  # fmt: skip
    ax.plot([], [], color="grey", linewidth=0.9, label="a worker's memory (colour: its slot)")
    _limits(ax, trace)
    retired: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for event in trace.of("retire"):
        retired[str(event.get("reason"))].append((_time(event["ts"]), int(event["value"]) / MiB))
    for reason, marks in sorted(retired.items()):
        ax.scatter(
            [t for t, _ in marks], [v for _, v in marks], marker=MARKERS.get(reason, "o"), s=36, zorder=3,
            facecolors="none" if reason == "soft_limit" else "black", edgecolors="black",
            label=f"retired: {reason} ({len(marks)})",
        )  # fmt: skip
    died = [e for e in trace.of("exit") if e.get("outcome") in ("oom_killed", "sigkill", "signal", "died")]
    if died:
        ax.scatter(
            [_time(e["ts"]) for e in died], [int(e.get("value") or 0) / MiB for e in died], marker="x", s=60,
            color="red", zorder=4, label=f"died or OOM-killed ({len(died)})",
        )  # fmt: skip
    ax.set_title(title)
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel(f"{trace.metric.upper()} per worker (MiB)")
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(alpha=0.3)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.05)
    # below the axes, in columns: it never covers the lines, whatever the number of workers
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=9, frameon=False)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def _limits(ax: Any, trace: Trace) -> None:
    """The soft limit before jitter and the ceiling, as the master resolved them (steps if it did again)."""
    resolved = trace.of("limits")
    if not resolved:
        return
    times = [_time(e["ts"]) for e in resolved] + [_time(trace.end)]
    hard = any(e.get("hard") for e in resolved)
    lines = [("soft", "--", "dimgray", "limit (MEMGUARD_MAX_MEMORY, before jitter)")]
    if hard:
        lines.append(("hard", "-", "red", "ceiling (MEMGUARD_HARD_MAX_MEMORY)"))
    else:
        lines = [("soft", "-", "red", "limit and ceiling (MEMGUARD_MAX_MEMORY)")]
    for key, style, colour, label in lines:
        mib = [(e.get(key) or 0) / MiB for e in resolved]
        if any(mib):
            ax.step(times, [*mib, mib[-1]], where="post", linestyle=style, color=colour, linewidth=1.4, label=label)
