"""Synthetic event logs: workers leaking at a steady rate under a soft limit, written in the event
log's schema (v1) as the workers and the master write it, with times the test chooses."""

from __future__ import annotations

import json
import random
from pathlib import Path

MiB = 2**20
START = 1_800_000_000.0  # a fixed Unix time, on the hour


def leaking_fleet(
    path: Path,
    *,
    workers: int = 16,
    hours: float = 24.0,
    interval: float = 10.0,
    baseline: int = 100 * MiB,
    leak_per_hour: int = 40 * MiB,
    limit: int = 150 * MiB,
    jitter: float = 0.1,
    boot: float = 2.0,
    seed: int = 1,
) -> int:
    """Write the log; return how many retirements it records. Each worker grows ``leak_per_hour``
    from ``baseline`` (plus up to 1 MiB of per-sample noise) and retires on its second sample over
    its jittered limit, as the soft limit does; its replacement samples ``boot`` seconds later."""
    rng = random.Random(seed)
    lines = [
        {"event": "config", "ts": START, "pid": 1, "settings": {
            "MEMGUARD_MAX_MEMORY": f"{limit}B", "MEMGUARD_JITTER": f"{jitter * 100:g}%",
            "MEMGUARD_REPORT_INTERVAL": f"{interval:g}s", "MEMGUARD_EVENT_LOG": str(path)}, "version": "0.1.0"},
        {"event": "limits", "ts": START, "pid": 1, "soft": limit, "hard": None, "workers": workers,
         "available": 64 * 2**30, "master": 50 * MiB},
    ]  # fmt: skip
    end = START + hours * 3600
    pid = 1000
    retirements = 0
    for slot in range(workers):
        born = START + rng.uniform(0, interval)
        while born < end:
            pid += 1
            own = int(limit * (1 - rng.uniform(0, jitter)))
            t, over, requests = born, 0, 0
            while t < end:
                value = baseline + int(leak_per_hour * (t - born) / 3600) + rng.randrange(MiB)
                requests += rng.randrange(5, 15)
                lines.append({"event": "sample", "ts": round(t, 3), "pid": pid, "worker": slot,
                              "age": round(t - born, 3), "requests": requests, "metric": "uss", "value": value,
                              "rss": value + 20 * MiB, "limit": own, "growth": None})  # fmt: skip
                over = over + 1 if value > own else 0
                if over == 2:
                    retirements += 1
                    common = {"pid": pid, "worker": slot, "age": round(t - born, 3), "requests": requests}
                    lines.append({"event": "retire", "ts": round(t, 3), **common, "metric": "uss", "value": value,
                                  "limit": own, "reason": "soft_limit", "detail": "synthetic"})  # fmt: skip
                    lines.append({"event": "exit", "ts": round(t + 1, 3), **common, "outcome": "graceful",
                                  "reason": "soft_limit", "drain": 1.0, "value": value, "rss": value,
                                  "signal": None, "code": 0, "oom_kills": None})  # fmt: skip
                    break
                t += interval
            born = t + boot
    lines.sort(key=lambda e: e["ts"])
    with open(path, "w") as fh:
        for line in lines:
            fh.write(json.dumps({"v": 1, **line}, separators=(",", ":")) + "\n")
    return retirements
