"""The benchmark runner on a tiny workload for a few seconds, so that it cannot rot.

Real gunicorn, real HTTP (the runner's Python client: no Debian package needed), the runner's
own table read back.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import signal
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest

from bench import overhead, run
from bench.harness import Gunicorn, poll

from .conftest import KiB, MiB

CEILING = 64  # MiB of RSS per worker


def _row(table: str, start: str) -> dict[str, str]:
    header = next(line for line in table.splitlines() if line.startswith("| workload |"))
    row = next(line for line in table.splitlines() if line.startswith(start))
    names = [c.strip() for c in header.strip("|").split("|")]
    return dict(zip(names, (c.strip() for c in row.strip("|").split("|"))))


def test_runner_measures_memguard_on_a_leaking_app(tmp_path, capsys):
    plots = importlib.util.find_spec("matplotlib") is not None  # the `bench` extra
    code = run.main(
        [
            "--workloads",
            "leak-high",
            "--classes",
            "sync",
            "--contenders",
            "memguard-drain-first",
            "--ceiling",
            str(CEILING),
            "--scale",
            "0.2",
            "--client",
            "python",
            "--out",
            str(tmp_path),
            *([] if plots else ["--no-plot"]),
        ]
    )

    assert code == 0
    table = (tmp_path / "results.md").read_text()
    assert table == capsys.readouterr().out
    row = _row(table, "| leak-high | sync | memguard-drain-first |")
    assert int(row["leaked MiB"]) > 64, row  # ~6 s at 200 req/s of ~190 KiB each
    assert int(row["recycles"]) >= 1, row
    assert row["failed"] == "0", row
    # MEMGUARD_MAX_MEMORY is a ceiling that no worker serves past, whatever its age or turn: a sync
    # worker checked after every request (RSS, so nothing unshared is unseen) goes at most one
    # request past it, the workload's largest leak (cap). Sampling from outside can miss a peak, not
    # see more than there is; the table rounds to two decimals.
    cap_kib = float(parse_qs(urlsplit(run.WORKLOADS["leak-high"].path).query)["cap"][0])
    bound = (CEILING * MiB + cap_kib * KiB) / (CEILING * MiB)
    assert float(row["peak ÷ ceiling"]) <= bound + 0.005, (bound, row)
    assert (tmp_path / "leak-high.png").exists() == plots


def test_runner_names_what_it_does_not_know(tmp_path):
    with pytest.raises(SystemExit, match="--contenders: unknown unicorn; choose from none, max-requests"):
        run.main(["--contenders", "unicorn", "--out", str(tmp_path)])


def test_the_harness_prints_the_command_it_runs(tmp_path, monkeypatch):
    """The demo prints ``Gunicorn.command()`` for users to paste: pasted in a shell, it starts the
    same server, memguard's start-up lines and all."""
    monkeypatch.setenv("MEMGUARD_DRY_RUN", "yes")  # this process's own: the harness leaves it out
    env = {"MEMGUARD_MAX_MEMORY": "1GiB", "MEMGUARD_MIN_LIFETIME": "2s"}
    args = ["-c", "python:gunicorn_memguard.conf", "apps.leaky:app"]
    with Gunicorn(args, env, tmp_path / "harness.log", workers=1) as server:
        server.wait_ready()
        command = server.command()
        words = shlex.split(command)
        assert words[:5] == ["env", "-u", "MEMGUARD_DRY_RUN", "MEMGUARD_MAX_MEMORY=1GiB", "MEMGUARD_MIN_LIFETIME=2s"]
        assert words[5:] == server.args
    started = server.log()

    def startup(log: str) -> list[str]:
        return re.findall(r"\[INFO\] (memguard: (?:guarding workers|leak-aware policy).*)", log)

    assert startup(started)
    with open(tmp_path / "pasted.log", "wb") as out:
        pasted = subprocess.Popen(["sh", "-c", f"exec {command}"], cwd=server.cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        poll(lambda: "Booting worker" in (tmp_path / "pasted.log").read_text(), 30, what="the pasted command")
    finally:
        pasted.send_signal(signal.SIGTERM)
        pasted.wait(30)
    assert startup((tmp_path / "pasted.log").read_text()) == startup(started)


def test_the_overhead_bench_sees_the_gate():
    """bench/overhead.py's in-process figures, so that it cannot rot: far from the limits a request
    skips the memory read that near them every request makes (a pread of statm, ≈2 µs)."""
    far, near = overhead.wsgi_cost(near=False, n=20_000), overhead.wsgi_cost(near=True, n=20_000)
    assert near - far > 1000, (far, near)  # ns
    far, near = overhead.uvicorn_cost(near=False, n=20_000), overhead.uvicorn_cost(near=True, n=20_000)
    assert near - far > 1000, (far, near)  # uvicorn's request-task set checks through the same gate
