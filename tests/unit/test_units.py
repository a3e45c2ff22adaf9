"""The units settings are written in: sizes, durations, rates, percentages, counts; ASCII digits only."""

import pytest

from gunicorn_memguard.units import (
    MAX_DURATION,
    MAX_SIZE,
    Share,
    Size,
    format_count_rate,
    format_size,
    parse_bool,
    parse_count_rate,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size,
    parse_size_or_container_share,
    parse_size_or_share,
    parse_whole,
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
        ("2TiB", 2 * 2**40),
        ("1024TiB", MAX_SIZE),
    ],
)
def test_sizes_with_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bare, suggestion", [("512", "512MiB"), (512, "512MiB"), (536870912, "512.0MiB")])
def test_bare_size_is_rejected_with_a_suggestion(bare, suggestion):
    with pytest.raises(ValueError) as err:
        parse_size(bare)
    assert suggestion in str(err.value) and "MiB" in str(err.value)


@pytest.mark.parametrize("bad", ["", "MiB", "1e3MiB", "５MiB", "5²MiB", "nanMiB", None, True, [1]])
def test_malformed_sizes_name_the_accepted_form(bad):
    with pytest.raises(ValueError, match=r"^expected a number with a unit: B, KB, KiB, MB, MiB, GB, GiB, TB or TiB"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("-5MiB", "a size cannot be negative"),
        ("0MiB", "a size must be above zero"),
        ("0.1B", "a size must be above zero"),
        ("1025TiB", "a size must be at most 1.0 PiB"),
        ("99999999TiB", "a size must be at most 1.0 PiB"),
        ("9" * 400 + "B", "a size must be at most 1.0 PiB"),
        ("5 parsecs", "unknown unit 'parsecs'"),
    ],
)
def test_sizes_out_of_range_say_why(bad, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_size(bad)
    assert "B, KB, KiB" in str(err.value), "the accepted form follows the reason"


def test_size_messages_name_the_form_of_the_setting_they_are_part_of():
    with pytest.raises(
        ValueError, match="a size cannot be negative; expected a number with a unit: .* or a percentage"
    ):
        parse_size_or_share("-5MiB")
    with pytest.raises(ValueError, match="of the container's memory"):
        parse_size_or_container_share("0%")
    assert parse_size_or_share("80%") == Share(0.8) and parse_size_or_share("1KiB") == 1024
    total = parse_size_or_container_share("1KiB")
    assert isinstance(total, Size) and total == 1024 and total.resolve(10) == 1024
    assert Share(0.25).resolve(1000) == 250


@pytest.mark.parametrize(
    "text, seconds", [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), ("1.5s", 1.5), ("2d", 172800)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["30", 30, "5 minutes", "s", "３０s", "-5s", "31d", "99999999999d", None])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="ms, s, m, h or d"):
        parse_duration(bad)


def test_durations_are_capped_at_30_days_and_never_negative():
    assert parse_duration("30d") == MAX_DURATION and parse_duration("-0s") == 0
    with pytest.raises(ValueError, match="a duration must be at most 30 days"):
        parse_duration("720.5h")
    with pytest.raises(ValueError, match="a duration cannot be negative"):
        parse_duration("-1ms")


def test_whole_numbers_are_ascii_digits_in_range():
    assert parse_whole("42", "n", 1, 100) == 42 and parse_whole(7, "n", 1, 100) == 7 and parse_whole(" 3 ", "n", 1, 3)
    for bad in ("４２", "²", "4.0", "", "0", "101", "-1", "9" * 30, True, 4.0, None):
        with pytest.raises(ValueError, match="^expected n$"):
            parse_whole(bad, "n", 1, 100)


def test_count_rates():
    assert parse_count_rate("10/1h") == (10, 3600.0) and parse_count_rate("off") is None
    assert format_count_rate((10, 3600.0)) == "10/1h" and format_count_rate(None) == "off"
    for bad, message in (("10/0s", "the window must be above zero"), ("10", "expected a count"), ("²/1h", "expected")):
        with pytest.raises(ValueError, match=message):
            parse_count_rate(bad)


def test_percent_bool_rate_and_format():
    assert parse_percent("10%") == pytest.approx(0.10)
    with pytest.raises(ValueError):
        parse_percent("0.1")
    with pytest.raises(ValueError, match="a percentage cannot be negative"):
        parse_percent("-10%")
    with pytest.raises(ValueError, match="expected a percentage"):
        parse_percent("１０%")
    assert parse_bool("on") is True and parse_bool("0") is False
    with pytest.raises(ValueError):
        parse_bool("maybe")
    assert parse_rate("50MiB/h") == pytest.approx(50 * 2**20 / 3600)
    with pytest.raises(ValueError, match="per time unit"):
        parse_rate("50MiB")
    assert format_size(171.3 * 2**20) == "171.3 MiB"
    assert format_size(512) == "512 B"
    assert format_size(MAX_SIZE) == "1.0 PiB"
    assert parse_bool(True) is True and parse_bool(0) is False
    with pytest.raises(ValueError, match="one of 1/0"):
        parse_bool(["yes"])
    with pytest.raises(ValueError, match="a size must be at most 1.0 PiB; expected a size per time unit"):
        parse_rate("2000TiB/s")
