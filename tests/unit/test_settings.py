from dataclasses import FrozenInstanceError, fields

import pytest

from gunicorn_memguard.settings import SPECS, Settings, SettingsError, load_settings


def test_defaults():
    settings = load_settings({}, {})
    assert settings == Settings()
    assert settings.max_memory is None and settings.metric == "uss" and settings.enabled


def test_every_setting_has_a_spec():
    assert set(SPECS) == {f.name for f in fields(Settings)} - {"sources"}


def test_env_beats_config_beats_default():
    env = {"MEMGUARD_MAX_MEMORY": "512MiB"}
    config = {"memguard_max_memory": "256MiB", "memguard_jitter": "5%"}
    settings = load_settings(env, config, "myconf.py")
    assert settings.max_memory == 512 * 2**20
    assert settings.jitter == pytest.approx(0.05)
    assert settings.check_interval == 1.0
    assert settings.sources["max_memory"] == "env MEMGUARD_MAX_MEMORY"
    assert settings.sources["jitter"] == "memguard_jitter in myconf.py"
    assert "check_interval" not in settings.sources


def test_empty_env_value_counts_as_unset():
    assert load_settings({"MEMGUARD_MAX_MEMORY": ""}, {"memguard_max_memory": "1GiB"}).max_memory == 2**30


def test_settings_are_frozen():
    with pytest.raises(FrozenInstanceError):
        load_settings({}, {}).max_memory = 1  # type: ignore[misc]


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


def test_unknown_names_are_errors_with_a_suggestion():
    with pytest.raises(SettingsError) as err:
        load_settings({"MEMGUARD_MAX_MEM": "1GiB"}, {"memguard_hard_max": "2GiB"})
    text = str(err.value)
    assert "MEMGUARD_MAX_MEM " in text and "did you mean MEMGUARD_MAX_MEMORY?" in text
    assert "memguard_hard_max" in text and "memguard_hard_max_memory" in text


def test_hard_limit_below_soft_limit_is_rejected():
    with pytest.raises(SettingsError, match="hard limit must be at least the soft one"):
        load_settings({"MEMGUARD_MAX_MEMORY": "1GiB", "MEMGUARD_HARD_MAX_MEMORY": "512MiB"}, {})


def test_describe_lists_every_setting_with_its_source():
    rows = load_settings({"MEMGUARD_MAX_MEMORY": "1GiB"}, {}).describe()
    assert [r[0] for r in rows][:2] == ["MEMGUARD_ENABLED", "MEMGUARD_MAX_MEMORY"]
    assert ("MEMGUARD_MAX_MEMORY", "1.0 GiB", "env MEMGUARD_MAX_MEMORY") in rows
