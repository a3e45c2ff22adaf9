"""The settings: one declaration each (README's table, the docs' settings page and the example config
agree with it), precedence, and every bad value refused with the setting, the value and the accepted
form."""

from __future__ import annotations

import ast
import copy
import pickle
import re
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from gunicorn_memguard.settings import (
    SETTINGS,
    Settings,
    SettingsError,
    config_namespace,
    load_settings,
    markdown_table,
    replace_table,
)
from gunicorn_memguard.units import Share

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20


def refused(env: dict[str, str] | None = None, config: dict[str, object] | None = None) -> str:
    with pytest.raises(SettingsError) as err:
        load_settings(env or {}, config or {}, "conf.py")
    return str(err.value)


# -- one declaration per setting ---------------------------------------------------------------
def test_defaults_are_the_declared_ones():
    settings = load_settings({}, {})
    assert settings == Settings()
    assert settings.max_memory is None and settings.metric == "uss" and settings.enabled
    assert (settings.jitter, settings.check_interval, settings.max_retirements) == (0.10, 1.0, (10, 3600.0))
    assert (settings.growth_window, settings.growth_grace, settings.growth_interval, settings.reclaim) == (
        5400,
        600,
        30,
        True,
    )


def test_every_declaration_is_complete_and_its_default_is_in_its_own_form():
    assert len({s.name for s in SETTINGS}) == len(SETTINGS) == 27
    for setting in SETTINGS:
        assert setting.form and setting.help and "\n" not in setting.help, setting.name
        if setting.default is not None:
            assert setting.parse(setting.default) == setting.parsed_default, setting.name


def test_readme_settings_table_is_generated_from_the_declarations():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert replace_table(readme) == readme, (
        "README's settings table differs from the declarations in gunicorn_memguard/settings.py; "
        "regenerate it: python -m gunicorn_memguard.settings --markdown README.md"
    )
    for setting in SETTINGS:
        assert f"| `{setting.env}` | `{setting.config}` |" in markdown_table()


def test_the_table_is_rewritten_between_its_markers(tmp_path):
    from gunicorn_memguard.settings import TABLE_END, TABLE_START, main

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{TABLE_START}| stale |\n{TABLE_END}after\n", encoding="utf-8")
    assert main(["--markdown", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "stale" not in text and text.endswith(f"{TABLE_END}after\n") and "`MEMGUARD_MAX_MEMORY`" in text
    with pytest.raises(ValueError, match="markers"):
        replace_table("no table here")


def test_docs_settings_page_is_generated_from_the_declarations():
    from gunicorn_memguard.settings import DOCS_PAGE, docs_page

    page = ROOT / DOCS_PAGE
    assert page.read_text(encoding="utf-8") == docs_page(), (
        f"{DOCS_PAGE} differs from the declarations in gunicorn_memguard/settings.py; it is never edited "
        f"by hand: regenerate it: python -m gunicorn_memguard.settings --docs {DOCS_PAGE}"
    )
    for setting in SETTINGS:
        assert f"\n## {setting.env}\n" in docs_page() and setting.form in docs_page(), setting.name


def test_help_links_point_into_the_docs_from_wherever_they_are_written(tmp_path):
    from gunicorn_memguard.settings import docs_page, main

    assert "](docs/containers.md#container-relative-limits)" in markdown_table()
    assert "](../containers.md#container-relative-limits)" in docs_page()
    assert "](#" not in markdown_table().replace("](#memguard_", "")
    page = tmp_path / "settings.md"
    assert main(["--docs", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == docs_page()
    assert main(["--docs", str(page), "extra"]) == 2


EXAMPLE = ROOT / "conf_examples" / "memguard.conf.py"


def test_example_config_uses_declared_settings_in_their_accepted_form():
    """Every ``memguard_*`` line of the example, commented out or not, is accepted."""
    lines = re.findall(r"^#?\s*(memguard_\w+) = (.+?)(?:  #.*)?$", EXAMPLE.read_text(), re.MULTILINE)
    assert len(lines) >= 10
    config = {name: ast.literal_eval(value) for name, value in lines}
    settings = load_settings({}, config, "memguard.conf.py")
    assert settings.sources["max_memory"] == "memguard_max_memory in memguard.conf.py"


# -- precedence and sources -------------------------------------------------------------------
def test_env_beats_config_beats_default():
    env = {"MEMGUARD_MAX_MEMORY": "512MiB"}
    config = {"memguard_max_memory": "256MiB", "memguard_jitter": "5%"}
    settings = load_settings(env, config, "myconf.py")
    assert settings.max_memory == 512 * MiB
    assert settings.jitter == pytest.approx(0.05)
    assert settings.check_interval == 1.0
    assert settings.sources["max_memory"] == "env MEMGUARD_MAX_MEMORY"
    assert settings.sources["jitter"] == "memguard_jitter in myconf.py"
    assert "check_interval" not in settings.sources


def test_empty_env_value_counts_as_unset():
    assert load_settings({"MEMGUARD_MAX_MEMORY": ""}, {"memguard_max_memory": "1GiB"}).max_memory == 2**30


def test_settings_are_frozen_and_take_only_declared_names():
    settings = load_settings({}, {})
    with pytest.raises(FrozenInstanceError):
        settings.max_memory = 1  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        settings.other = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="max_mem"):
        Settings(max_mem=1)


def test_settings_copy_and_pickle_whole():
    settings = load_settings({"MEMGUARD_MAX_MEMORY": "80%"}, {})
    for again in (copy.deepcopy(settings), pickle.loads(pickle.dumps(settings))):
        assert again == settings and again.sources == settings.sources and again.max_memory == Share(0.8)


def test_describe_lists_every_setting_with_its_source():
    rows = load_settings({"MEMGUARD_MAX_MEMORY": "1GiB"}, {"memguard_max_total_memory": "75%"}).describe()
    assert [r[0] for r in rows] == [s.env for s in SETTINGS]
    assert [r[0] for r in rows][:2] == ["MEMGUARD_ENABLED", "MEMGUARD_MAX_MEMORY"]
    assert ("MEMGUARD_MAX_MEMORY", "1.0 GiB", "env MEMGUARD_MAX_MEMORY") in rows
    assert ("MEMGUARD_MAX_TOTAL_MEMORY", "75% of the container", "memguard_max_total_memory in config") in rows
    assert ("MEMGUARD_EVENT_LOG", "unset", "default") in rows


def test_config_values_of_their_natural_python_types():
    settings = load_settings(
        {}, {"memguard_dry_run": True, "memguard_prometheus_port": 9300, "memguard_max_concurrent_retirements": 2}
    )
    assert settings.dry_run is True and settings.prometheus_port == 9300 and settings.max_concurrent_retirements == 2


# -- the config module, found once for the master and for `memguard check` -------------------
def test_config_namespace_runs_a_file_only_when_asked(tmp_path, monkeypatch):
    conf = tmp_path / "conf.py"
    conf.write_text("memguard_max_memory = '1GiB'\n")
    namespace, name = config_namespace(str(conf), run=True)
    assert namespace["memguard_max_memory"] == "1GiB" and name == str(conf)

    # the master reads what gunicorn ran (sys.modules['__config__']) and never runs the file again
    conf.write_text("raise SystemExit('ran twice')\n")
    monkeypatch.setitem(sys.modules, "__config__", type(sys)("__config__"))
    sys.modules["__config__"].memguard_jitter = "5%"  # type: ignore[attr-defined]
    namespace, _ = config_namespace(str(conf), run=False)
    assert namespace["memguard_jitter"] == "5%"
    monkeypatch.delitem(sys.modules, "__config__")
    assert config_namespace(str(conf), run=False)[0] == {}
    assert config_namespace(None, run=True) == ({}, "config")


def test_config_namespace_of_a_python_module():
    namespace, name = config_namespace("python:gunicorn_memguard.conf", run=True)
    assert callable(namespace["post_worker_init"]) and name == "python:gunicorn_memguard.conf"
    assert config_namespace("python:not_imported_anywhere", run=False)[0] == {}


# -- bad values -------------------------------------------------------------------------------
def test_every_bad_value_is_reported_with_name_value_and_form():
    env = {"MEMGUARD_MAX_MEMORY": "512", "MEMGUARD_METRIC": "vss", "MEMGUARD_CHECK_INTERVAL": "1"}
    with pytest.raises(SettingsError) as err:
        load_settings(env, {"memguard_jitter": "70%"}, "conf.py")
    problems = err.value.problems
    assert len(problems) == 4
    text = "\n".join(problems)
    assert "env MEMGUARD_MAX_MEMORY='512'" in text and "did you mean '512MiB'" in text
    assert "env MEMGUARD_METRIC='vss'" in text and "rss, uss, pss" in text
    assert "MEMGUARD_CHECK_INTERVAL='1'" in text and "'1s'" in text
    assert "memguard_jitter in conf.py='70%'" in text and "0% to 50%" in text


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        # sizes: too large for any machine (and the shared mapping's 64-bit fields), negative
        ("MEMGUARD_MAX_MEMORY", "99999999TiB", "a size must be at most 1.0 PiB"),
        ("MEMGUARD_HARD_MAX_MEMORY", "2048TiB", "a size must be at most 1.0 PiB"),
        ("MEMGUARD_MAX_TOTAL_MEMORY", "99999999TiB", "a size must be at most 1.0 PiB"),
        ("MEMGUARD_MAX_MEMORY", "-5MiB", "a size cannot be negative"),
        ("MEMGUARD_MAX_MEMORY", "0MiB", "a size must be above zero"),
        ("MEMGUARD_MAX_MEMORY", "150%", "at most 100%"),
        ("MEMGUARD_MAX_MEMORY", "-5%", "expected a number with a unit"),
        ("MEMGUARD_MAX_GROWTH", "99999999TiB/s", "a size must be at most 1.0 PiB"),
        ("MEMGUARD_MAX_GROWTH", "0MiB/h", "a size must be above zero"),
        ("MEMGUARD_MAX_GROWTH", "50MiB", "expected a size per time unit"),
        # durations: capped at 30 days (a timer of 10^11 days overflows), negative
        ("MEMGUARD_CHECK_INTERVAL", "99999999999d", "a duration must be at most 30 days"),
        ("MEMGUARD_MIN_LIFETIME", "31d", "a duration must be at most 30 days"),
        ("MEMGUARD_REPORT_INTERVAL", "-1s", "a duration cannot be negative"),
        ("MEMGUARD_GROWTH_GRACE", "1e9s", "expected a number with a unit"),
        # counts and rates: ASCII digits only, in range, a window above zero
        ("MEMGUARD_MAX_RETIREMENTS", "10/0s", "the window must be above zero"),
        ("MEMGUARD_MAX_RETIREMENTS", "²/1h", "a count from 1 to 10000 per duration"),
        ("MEMGUARD_MAX_RETIREMENTS", "１０/1h", "a count from 1 to 10000 per duration"),
        ("MEMGUARD_MAX_RETIREMENTS", "100001/1h", "a count from 1 to 10000 per duration"),
        ("MEMGUARD_MAX_RETIREMENTS", "ten/1h", "a count from 1 to 10000 per duration"),
        ("MEMGUARD_MAX_RETIREMENTS", "10/99999d", "a duration must be at most 30 days"),
        ("MEMGUARD_MAX_CONCURRENT_RETIREMENTS", "²", "a whole number of workers from 1 to 10000"),
        ("MEMGUARD_MAX_CONCURRENT_RETIREMENTS", "９", "a whole number of workers from 1 to 10000"),
        ("MEMGUARD_MAX_CONCURRENT_RETIREMENTS", "0", "from 1 to 10000"),
        ("MEMGUARD_MAX_CONCURRENT_RETIREMENTS", "9" * 40, "from 1 to 10000"),
        ("MEMGUARD_PROMETHEUS_PORT", "９３００", "a TCP port number from 1 to 65535"),
        ("MEMGUARD_PROMETHEUS_PORT", "²", "a TCP port number from 1 to 65535"),
        ("MEMGUARD_PROMETHEUS_ADDRESS", "１２７.0.0.1", "an IP address"),
        # the event log: '-' is not standard output
        ("MEMGUARD_EVENT_LOG", "-", "not standard output (for that, say /dev/stdout)"),
        ("MEMGUARD_JITTER", "５%", "a percentage from 0% to 50%"),
    ],
)
def test_bad_input_is_refused_with_the_variable_the_value_and_the_form(name, value, message):
    text = refused({name: value})
    assert f"env {name}={value!r} is invalid: " in text and message in text
    assert "invalid literal" not in text and "Traceback" not in text


@pytest.mark.parametrize(
    ("name", "value", "form"),
    [
        ("memguard_event_log", 123, "a file path, as a string"),
        ("memguard_event_log", ["x"], "a file path, as a string"),
        ("memguard_event_log", "a\0b", "a file path, as a string"),
        ("memguard_metric", ["uss"], "one of rss, uss, pss"),
        ("memguard_prometheus_address", 2130706433, "an IP address"),
        ("memguard_prometheus_port", 9300.0, "a TCP port number"),
        ("memguard_prometheus_port", True, "a TCP port number"),
        ("memguard_max_concurrent_retirements", [1], "a whole number of workers"),
        ("memguard_max_retirements", 10, "a count from 1 to 10000 per duration"),
        ("memguard_max_memory", 512, "did you mean '512MiB'"),
        ("memguard_check_interval", 5, "did you mean '5s'"),
        ("memguard_dry_run", ["yes"], "one of 1/0"),
        ("memguard_jitter", 0.1, "a percentage from 0% to 50%"),
        # numbers no one means: no suggestion to make, and no OverflowError making one
        ("memguard_max_memory", float("inf"), "expected a number with a unit"),
        ("memguard_max_memory", 10**400, "expected a number with a unit"),
        ("memguard_max_memory", "9" * 400, "a size needs a unit; expected"),
        ("memguard_max_memory", -5, "a size cannot be negative"),
        ("memguard_check_interval", float("nan"), "a duration from 10ms to 30 days"),
        ("memguard_min_lifetime", "9" * 400, "a duration needs a unit; expected"),
        ("memguard_prometheus_port", 10**400, "a TCP port number"),
        ("memguard_jitter", "9" * 400 + "%", "a percentage from 0% to 50%"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused(name, value, form):
    text = refused(config={name: value})
    assert f"{name} in conf.py={value!r} is invalid: " in text and form in text


def test_unknown_names_are_errors_with_a_suggestion():
    text = refused({"MEMGUARD_MAX_MEM": "1GiB"}, {"memguard_hard_max": "2GiB"})
    assert "MEMGUARD_MAX_MEM " in text and "did you mean MEMGUARD_MAX_MEMORY?" in text
    assert "memguard_hard_max" in text and "memguard_hard_max_memory" in text


def test_hard_limit_below_soft_limit_is_rejected():
    assert "hard limit must be at least the soft one" in refused(
        {"MEMGUARD_MAX_MEMORY": "1GiB", "MEMGUARD_HARD_MAX_MEMORY": "512MiB"}
    )
    assert "HARD_MAX_MEMORY (80%) is below MEMGUARD_MAX_MEMORY (90%)" in refused(
        {"MEMGUARD_MAX_MEMORY": "90%", "MEMGUARD_HARD_MAX_MEMORY": "80%"}
    )


# -- the leak-aware policy's, the coordination's and the observability settings ---------------
def test_policy_settings():
    s = load_settings(
        {"MEMGUARD_MAX_MEMORY": "80%", "MEMGUARD_MAX_GROWTH": "50MiB/h", "MEMGUARD_MAX_RETIREMENTS": "off"},
        {"memguard_hard_max_memory": "90%"},
    )
    assert s.max_memory == Share(0.8) and s.hard_max_memory == Share(0.9)
    assert s.max_growth == pytest.approx(50 * MiB / 3600) and s.max_retirements is None
    assert load_settings({"MEMGUARD_MAX_RETIREMENTS": "3/10m"}, {}).max_retirements == (3, 600.0)
    text = refused({"MEMGUARD_MAX_GROWTH": "1MiB/m", "MEMGUARD_GROWTH_WINDOW": "10m", "MEMGUARD_GROWTH_INTERVAL": "1m"})
    assert "at most 20s" in text


def test_coordination_settings():
    settings = load_settings(
        {"MEMGUARD_MAX_CONCURRENT_RETIREMENTS": "3", "MEMGUARD_SPAWN_FIRST": "off"},
        {"memguard_max_total_memory": "75%"},
    )
    assert settings.max_concurrent_retirements == 3 and settings.spawn_first is False
    assert settings.max_total_memory == Share(0.75)
    assert settings.max_total_memory.resolve(4 * 2**30) == 3 * 2**30
    total = load_settings({"MEMGUARD_MAX_TOTAL_MEMORY": "2GiB"}, {}).max_total_memory
    assert total == 2 * 2**30 and total is not None and total.resolve(1) == 2 * 2**30
    defaults = load_settings({}, {})
    assert (defaults.max_concurrent_retirements, defaults.spawn_first, defaults.max_total_memory) == (1, True, None)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MEMGUARD_MAX_CONCURRENT_RETIREMENTS", "two", "whole number"),
        ("MEMGUARD_MAX_TOTAL_MEMORY", "2048", "did you mean '2048MiB'"),
        ("MEMGUARD_MAX_TOTAL_MEMORY", "120%", "at most 100%"),
        ("MEMGUARD_SPAWN_FIRST", "maybe", "yes/no"),
        ("MEMGUARD_PROMETHEUS_PORT", "http", "a TCP port number from 1 to 65535"),
        ("MEMGUARD_PROMETHEUS_PORT", "70000", "a TCP port number from 1 to 65535"),
        ("MEMGUARD_PROMETHEUS_ADDRESS", "localhost", "an IP address"),
        ("MEMGUARD_REPORT_INTERVAL", "10", "did you mean '10s'"),
        ("MEMGUARD_DRY_RUN", "maybe", "one of 1/0"),
    ],
)
def test_bad_coordination_and_observability_settings(name, value, message):
    text = refused({name: value})
    assert f"{name}={value!r} is invalid" in text and message in text


def test_observability_settings():
    settings = load_settings(
        {"MEMGUARD_DRY_RUN": "yes", "MEMGUARD_PROMETHEUS_PORT": "9300"},
        {"memguard_event_log": "events.jsonl", "memguard_prometheus_address": "::1"},
    )
    assert settings.dry_run and settings.prometheus_port == 9300 and settings.prometheus_address == "::1"
    assert settings.event_log == "events.jsonl" and settings.report_interval == 10.0
    defaults = Settings()
    assert not defaults.dry_run and defaults.prometheus_port is None and defaults.prometheus_address == "127.0.0.1"
