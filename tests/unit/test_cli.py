"""``memguard check`` and ``memguard --version``, in-process and as the command a user runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gunicorn_memguard import __version__
from gunicorn_memguard.cli import check, main
from gunicorn_memguard.policy.percentages import per_worker
from gunicorn_memguard.probes.cgroup import read_container_memory
from gunicorn_memguard.settings import SETTINGS
from gunicorn_memguard.units import Share, format_size


def memguard(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEMGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "gunicorn_memguard", *args],
        env={**clean, **(env or {})},
        text=True,
        timeout=60,
        **kwargs,  # type: ignore[call-overload]
    )


def test_check_prints_every_setting_and_where_it_came_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    conf = tmp_path / "conf.py"
    conf.write_text("memguard_jitter = '5%'\n")
    assert check(str(conf), env={"MEMGUARD_MAX_MEMORY": "1GiB"}) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [s.env for s in SETTINGS]  # no percentage: nothing more
    assert lines[1].split() == ["MEMGUARD_MAX_MEMORY", "1.0", "GiB", "(env", "MEMGUARD_MAX_MEMORY)"]
    assert lines[4].split() == ["MEMGUARD_JITTER", "5%", "(memguard_jitter", "in", f"{conf})"]


def test_check_shows_what_a_percentage_resolves_to_here(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 4\nmemguard_max_total_memory = '50%'\n")
    assert check(str(conf), env={"MEMGUARD_MAX_MEMORY": "80%"}) == 0
    out = capsys.readouterr().out
    available = read_container_memory().available
    expected = format_size(per_worker(Share(0.8), available, 0, 4))
    assert f"with 4 workers (workers in {conf}) and before the master's own memory is set aside" in out
    assert f"limit 80% = {expected}" in out and "/ 4 workers" in out
    assert f"server-wide budget 50% = {format_size(available // 2)}" in out


def test_without_workers_in_the_config_the_count_is_gunicorns_default(capsys: pytest.CaptureFixture[str]):
    assert check(None, env={"MEMGUARD_HARD_MAX_MEMORY": "50%", "WEB_CONCURRENCY": "3"}) == 0
    assert "with 3 workers (WEB_CONCURRENCY)" in capsys.readouterr().out
    assert check(None, env={"MEMGUARD_HARD_MAX_MEMORY": "50%", "WEB_CONCURRENCY": "３"}) == 0
    assert "with 1 workers (gunicorn's default)" in capsys.readouterr().out


def test_bad_settings_exit_1_with_one_line_each_and_no_traceback():
    out = memguard(
        "check",
        env={"MEMGUARD_MAX_MEMORY": "99999999TiB", "MEMGUARD_CHECK_INTERVAL": "99999999999d"},
        capture_output=True,
    )
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("memguard: bad setting: env MEMGUARD_") for line in lines)
    assert "at most 1.0 PiB" in lines[0] and "at most 30 days" in lines[1]


def test_a_config_that_cannot_be_read_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert check(str(tmp_path / "missing.py"), env={}) == 2
    assert "memguard: cannot read config" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_output_quietly():
    """``memguard check | head -2``: the reader goes away before memguard has written."""
    read, write = os.pipe()
    os.close(read)
    try:
        out = memguard("check", stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert out.returncode == 0 and out.stderr == ""


def test_version(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"memguard (gunicorn-memguard) {__version__}"
