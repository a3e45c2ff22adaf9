"""Issue 13 (parts 2 and 3): ``memguard report`` and ``memguard replay`` on the event log of a real run.

One real gunicorn (two sync workers of the leaky app under the hook module) is recorded once for the
module: each request keeps 1 MiB, at a pace that takes a worker to its soft limit in a few seconds,
so the run retires several workers. The commands then run as a user runs them, on that file, and
are checked against what gunicorn's own log says happened.
"""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.harness import Gunicorn, load

from .conftest import MiB

HOOKS = ["-c", "python:gunicorn_memguard.conf"]
HEADROOM = 40 * MiB  # the soft limit over an idle worker: 40 requests of 1 MiB
REQUESTS = 400  # 200 per worker: about 5 lifetimes each at 40 MiB
PACE = 16.0  # requests per second in all: 8 MiB/s per worker, a lifetime of about 5 s (25 s in all)


@dataclass(frozen=True)
class Recording:
    events: Path
    log: str  # gunicorn's error log
    limit: int  # the soft limit the run used, bytes
    baseline: int  # an idle worker's USS
    env: dict[str, str]

    @property
    def retired(self) -> int:
        return len(re.findall(r"memguard: retiring worker pid=\d+", self.log))


@pytest.fixture(scope="module")
def recording(baseline_uss, tmp_path_factory) -> Recording:
    folder = tmp_path_factory.mktemp("recorded")
    events = folder / "events.jsonl"
    limit = baseline_uss + HEADROOM
    env = {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_HARD_MAX_MEMORY": f"{limit + 100 * MiB}B",  # far above: every retirement is a soft-limit one
        "MEMGUARD_CHECK_INTERVAL": "100ms",
        "MEMGUARD_REPORT_INTERVAL": "100ms",  # 0.8 MiB of leak between samples: the resolution replay needs here
        "MEMGUARD_EVENT_LOG": str(events),
    }
    with Gunicorn([*HOOKS, "apps.leaky:app"], env, folder / "g.log") as server:
        server.wait_ready()
        result = load(server, "/leak?kib=1024", requests=REQUESTS, concurrency=2, pace=PACE)
        assert result.failed == []
    recorded = Recording(events, (folder / "g.log").read_text(), limit, baseline_uss, env)
    assert recorded.retired >= 6, f"the run should retire several workers; it retired {recorded.retired}"
    return recorded


def memguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gunicorn_memguard", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_report_counts_what_gunicorns_log_says(recording):
    done = memguard("report", str(recording.events))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    print(out)
    total = re.search(r"^total .* (\d+)$", out, re.M)  # the last column: all reasons
    assert total and int(total[1]) == recording.retired, out
    ended = re.search(r"^Worker lifetimes: (\d+) ended \(graceful (\d+)", out, re.M)
    assert ended, out
    # each retired worker exited gracefully; the workers serving at shutdown ended too
    assert int(ended[2]) == recording.retired <= int(ended[1]) <= recording.retired + 3
    slots = re.findall(r"^(\d+) +\d+ +[\d.]+ MiB +([\d.]+) MiB +([\d.]+) MiB$", out, re.M)
    # two workers, and a third slot for a replacement spawned before its worker retires (spawn-first)
    assert {"0", "1"} <= {s for s, _, _ in slots} <= {"0", "1", "2"}, out
    # a jittered limit is 90-100 % of the soft limit; a slot's peak sample is at most the ceiling, and
    # at most one report interval (0.8 MiB of leak) and one request (1 MiB) below a retiring worker's limit
    for _, peak, limit in slots:
        assert 0.9 * recording.limit / MiB <= float(limit) <= recording.limit / MiB + 0.1
        assert 0.9 * recording.limit / MiB - 2 <= float(peak) <= (recording.limit + 100 * MiB) / MiB
    assert "Unexplained deaths and OOM kills: 0 (0 OOM-killed)" in out


def test_report_plot_is_a_readable_png_and_a_self_contained_page(recording, tmp_path):
    png, html = tmp_path / "memory.png", tmp_path / "memory.html"
    assert memguard("report", str(recording.events), "--plot", str(png)).returncode == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 650)  # figsize 14 x 6.5 inches at 100 dpi
    assert len(data) > 30_000, "lines, markers and labels, not an empty frame"
    assert memguard("report", str(recording.events), "--plot", str(html)).returncode == 0
    page = html.read_text()
    image = re.search(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert image and base64.b64decode(image[1])[:8] == data[:8]
    rest = page.replace(image[1], "").lower()
    assert "http" not in rest and "<script" not in rest, "self-contained: nothing to fetch, nothing to run"


def test_replay_reproduces_the_run_and_ranks_other_limits(recording):
    lower, higher = recording.baseline + HEADROOM // 2, recording.baseline + 2 * HEADROOM
    done = memguard(
        "replay", str(recording.events),
        "--set", f"MEMGUARD_MAX_MEMORY={lower}B",
        "--candidate", f"MEMGUARD_MAX_MEMORY={higher}B",
        "--max-requests", "30",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    header = re.search(r"^ +as recorded +(.+)$", done.stdout, re.M)
    assert header, done.stdout
    counts = [int(x) for x in re.search(r"^retirements +(.+)$", done.stdout, re.M)[1].split()]
    as_recorded, more, fewer, by_requests = counts
    assert abs(as_recorded - recording.retired) <= 1, (as_recorded, recording.retired)
    # half the headroom retires about twice as often, twice the headroom about half as often
    assert more > as_recorded > fewer, counts
    # at most 400 // 30 = 13 whole batches of 30 requests across the fleet; each of the two positions
    # ends in a partial batch, and the requests a worker served after its last sample (at most one
    # per lifetime: 8 requests/s against 10 samples/s) are not seen, one batch at most
    assert REQUESTS // 30 - 3 <= by_requests <= REQUESTS // 30, counts
    peaks = re.search(r"^peak memory +(.+)$", done.stdout, re.M)[1].split("MiB")
    assert float(peaks[1]) < float(peaks[0]) < float(peaks[2]), peaks


def test_the_event_log_records_the_settings_and_limits_replay_starts_from(recording):
    from gunicorn_memguard.report.trace import read_trace

    trace = read_trace(str(recording.events))
    assert trace.config() == recording.env
    limits = trace.limits()
    assert limits is not None and (limits["soft"], limits["hard"], limits["workers"]) == (
        recording.limit,
        recording.limit + 100 * MiB,
        2,
    )


def test_replay_of_a_dry_run_says_what_enforcing_would_have_done(baseline_uss, tmp_path):
    events = tmp_path / "events.jsonl"
    limit = baseline_uss + HEADROOM
    env = {
        "MEMGUARD_MAX_MEMORY": f"{limit}B",
        "MEMGUARD_HARD_MAX_MEMORY": f"{limit + 100 * MiB}B",
        "MEMGUARD_DRY_RUN": "yes",
        "MEMGUARD_CHECK_INTERVAL": "100ms",
        "MEMGUARD_REPORT_INTERVAL": "100ms",
        "MEMGUARD_EVENT_LOG": str(events),
    }
    requests = 160  # 80 MiB kept by each of the two workers, none retired
    with Gunicorn([*HOOKS, "apps.leaky:app"], env, tmp_path / "g.log") as server:
        server.wait_ready()
        first = server.worker_pids()
        assert load(server, "/leak?kib=1024", requests=requests, concurrency=2, pace=PACE).failed == []
        assert server.worker_pids() == first
    done = memguard("replay", str(events))
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert "recorded: 0 retirements" in done.stdout
    assert "the run was a dry run: 'as recorded' is what enforcing its settings would have done" in done.stdout
    (count,) = [int(x) for x in re.search(r"^retirements +(.+)$", done.stdout, re.M)[1].split()]
    # the two positions grow 160 MiB in all, however the requests split; a lifetime grows 36-42 MiB
    # (a jittered limit 90-100 % of 40 MiB over idle, plus the second strike): 160 // 36 = 4 at most,
    # and at least 160 // 42 - 1 = 2 (each position's growth rounds down once)
    assert 2 <= count <= 4, done.stdout
    report = memguard("report", str(events)).stdout
    # each worker's dry-run soft limit reported once; 80 MiB never reaches the hard limit (140 MiB over idle)
    assert re.search(r"^hour +would soft_limit +total$", report, re.M), report
    assert re.search(r"^total +2 +2$", report, re.M), report
