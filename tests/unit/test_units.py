import pytest

from gunicorn_memguard.units import (
    format_size,
    parse_bool,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("512MiB", 512 * 2**20),
        ("1.5GiB", int(1.5 * 2**30)),
        ("100MB", 10**8),
        ("64KiB", 65536),
        ("4096B", 4096),
        (" 2 gib ", 2 * 2**30),
        ("1kb", 1000),
    ],
)
def test_sizes_with_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bare, suggestion", [("512", "512MiB"), (512, "512MiB"), (536870912, "512.0MiB")])
def test_bare_size_is_rejected_with_a_suggestion(bare, suggestion):
    with pytest.raises(ValueError) as err:
        parse_size(bare)
    assert suggestion in str(err.value) and "MiB" in str(err.value)


@pytest.mark.parametrize("bad", ["", "MiB", "12 parsecs", "-5MiB", "0MiB", "1e3MiB", None, True, [1]])
def test_malformed_sizes_name_the_accepted_form(bad):
    with pytest.raises(ValueError, match="B, KB, KiB, MB, MiB, GB or GiB"):
        parse_size(bad)


@pytest.mark.parametrize(
    "text, seconds", [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), ("1.5s", 1.5), ("2d", 172800)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["30", 30, "5 minutes", "s"])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="ms, s, m, h or d"):
        parse_duration(bad)


def test_percent_bool_rate_and_format():
    assert parse_percent("10%") == pytest.approx(0.10)
    with pytest.raises(ValueError):
        parse_percent("0.1")
    assert parse_bool("on") is True and parse_bool("0") is False
    with pytest.raises(ValueError):
        parse_bool("maybe")
    assert parse_rate("50MiB/h") == pytest.approx(50 * 2**20 / 3600)
    with pytest.raises(ValueError, match="per time unit"):
        parse_rate("50MiB")
    assert format_size(171.3 * 2**20) == "171.3 MiB"
    assert format_size(512) == "512 B"
