"""Log line timestamps, the de-duplicating cursor, and the printed form."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from innerloop.logs.lines import PALETTE, LogCursor, LogLine, color_index, format_line, parse_timestamped

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class TestParseTimestamped:
    def test_nanoseconds_and_text(self) -> None:
        got = parse_timestamped("2026-11-29T18:51:39.819768170Z 1 0")
        assert got is not None
        assert got.text == "1 0"
        assert got.ns == int(datetime(2026, 11, 29, 18, 51, 39, tzinfo=UTC).timestamp()) * 10**9 + 819768170
        assert got.at == datetime(2026, 11, 29, 18, 51, 39, 819768, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("raw", "nanos"),
        [
            ("2026-11-29T18:51:39.8197Z x", 819700000),  # trailing zeros dropped by the kubelet
            ("2026-11-29T18:51:39.5Z x", 500000000),
            ("2026-11-29T18:51:39Z x", 0),
        ],
    )
    def test_short_fractions_are_padded_not_compared_as_text(self, raw: str, nanos: int) -> None:
        got = parse_timestamped(raw)
        assert got is not None and got.ns % 10**9 == nanos and got.text == "x"

    def test_order_follows_time_not_text(self) -> None:
        # As text, "39.5Z" > "39.10Z"; as time it is earlier than "39.6Z".
        a, b = parse_timestamped("2026-11-29T18:51:39.5Z a"), parse_timestamped("2026-11-29T18:51:39.6Z b")
        c = parse_timestamped("2026-11-29T18:51:39.10Z c")
        assert a and b and c and c.ns < a.ns < b.ns

    def test_offsets_are_normalised_to_utc(self) -> None:
        utc, offset = parse_timestamped("2026-11-29T18:00:00Z a"), parse_timestamped("2026-11-29T19:00:00+01:00 a")
        assert utc and offset and utc.ns == offset.ns and offset.at.tzinfo == UTC

    def test_empty_text_and_trailing_carriage_return(self) -> None:
        assert (got := parse_timestamped("2026-11-29T18:51:39.1Z ")) is not None and got.text == ""
        assert (got := parse_timestamped("2026-11-29T18:51:39.1Z done\r")) is not None and got.text == "done"

    @pytest.mark.parametrize("raw", ["", "hello", "progress 50%", "2026-11-29 18:51:39 not rfc3339"])
    def test_lines_without_a_timestamp(self, raw: str) -> None:
        assert parse_timestamped(raw) is None


class TestLogCursor:
    def test_everything_is_new_at_first(self) -> None:
        cursor = LogCursor()
        assert [cursor.accept(ns, t) for ns, t in [(5, "a"), (6, "b"), (9, "c")]] == [True, True, True]

    def test_a_reconnect_overlap_is_dropped(self) -> None:
        cursor = LogCursor()
        first = [(10, "a"), (20, "b"), (30, "c")]
        again = [(10, "a"), (20, "b"), (30, "c"), (40, "d"), (50, "e")]  # asked from a whole second earlier
        delivered = [t for ns, t in first if cursor.accept(ns, t)]
        delivered += [t for ns, t in again if cursor.accept(ns, t)]
        assert delivered == ["a", "b", "c", "d", "e"]

    def test_distinct_lines_at_the_same_instant_are_all_kept_once(self) -> None:
        cursor = LogCursor()
        assert [cursor.accept(7, t) for t in ("x", "y", "x", "z")] == [True, True, False, True]
        assert [cursor.accept(7, t) for t in ("x", "y", "z")] == [False, False, False]
        assert cursor.accept(8, "x")

    def test_since_seconds_covers_the_gap_with_a_margin(self) -> None:
        cursor = LogCursor()
        assert cursor.since_seconds(10**12) is None
        cursor.accept(100 * 10**9, "a")
        assert cursor.since_seconds(100 * 10**9) == 2
        assert cursor.since_seconds(int(103.2 * 10**9)) == 6  # ceil(3.2) + 2
        assert cursor.since_seconds(int(103.2 * 10**9), margin_s=0) == 4
        assert cursor.since_seconds(99 * 10**9, margin_s=0) == 1  # never 0: the API rejects it


def line(service: str = "api", text: str = "listening on :8080") -> LogLine:
    return LogLine(service=service, pod="api-1", container="api", text=text, timestamp=datetime(2026, 1, 1, tzinfo=UTC))


class TestFormatLine:
    def test_no_colour(self) -> None:
        assert format_line(line(), None, 8) == "api      | listening on :8080"

    def test_colour_wraps_the_name_only(self) -> None:
        out = format_line(line(), 2, 8)
        assert out == f"\x1b[{PALETTE[2]}mapi      |\x1b[0m listening on :8080"
        assert ANSI.sub("", out) == format_line(line(), None, 8)

    def test_names_line_up_at_the_width(self) -> None:
        outs = [format_line(line(s), None, 10) for s in ("api", "frontend", "db")]
        assert {o.index("|") for o in outs} == {11}

    def test_a_name_longer_than_the_width_is_not_cut(self) -> None:
        assert format_line(line("payments-worker"), None, 4).startswith("payments-worker | ")

    def test_any_index_maps_into_the_palette(self) -> None:
        assert format_line(line(), len(PALETTE) + 1, 3) == format_line(line(), 1, 3)

    def test_text_is_kept_as_is(self) -> None:
        assert format_line(line(text="  indented | with bar"), None, 3) == "api |   indented | with bar"


class TestColorIndex:
    def test_stable_across_calls_and_runs(self) -> None:
        # A CRC, not Python's salted hash(): this value is the same in every process.
        assert color_index("api") == color_index("api") == 2902841359 % len(PALETTE)  # zlib.crc32(b"api")

    def test_in_range_and_varied(self) -> None:
        names = [f"service-{i}" for i in range(50)]
        indexes = {color_index(n) for n in names}
        assert indexes <= set(range(len(PALETTE))) and len(indexes) >= len(PALETTE) // 2
