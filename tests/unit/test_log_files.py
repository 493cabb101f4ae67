"""Log files read as CloudWatch streams (control/log_files.py): across rotated parts written by the real
RotatingLog, tokens that survive a rotation, times kept in order, and filter patterns."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from moorage.control.log_files import (
    FilterPattern,
    LogStream,
    PatternError,
    TokenError,
    filter_page,
    read_page,
    stamp_ms,
)
from moorage.serving.logs import LogPolicy, RotatingLog


def _line(n: int) -> bytes:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000 + n))
    return f"{stamp},{n % 1000:03d} INFO server: line {n:05d}\n".encode()


def _numbers(messages: list[str]) -> list[int]:
    return [int(m.rsplit(" ", 1)[1]) for m in messages]


def _forward_all(stream: LogStream, token: str | None, limit: int = 7) -> tuple[list[str], str | None]:
    seen: list[str] = []
    for _ in range(10_000):
        page = read_page(stream, token, start_from_head=True, start_time=None, end_time=None, limit=limit)
        seen += [e.message for e in page.events]
        if page.forward == token:
            return seen, token
        token = page.forward
    raise AssertionError("the forward token never settled")


def test_a_rotated_log_reads_whole_and_a_token_survives_rotation(tmp_path: Path) -> None:
    path = tmp_path / "i-1.log"
    writer = RotatingLog(path, LogPolicy(max_bytes=2000, backups=50))
    for n in range(200):
        writer.write(_line(n))
    stream = LogStream("AllTraffic/i-1", path)
    seen, token = _forward_all(stream, None)
    assert _numbers(seen) == list(range(200))
    assert len(list(tmp_path.glob("i-1.log.*"))) > 3  # it did rotate

    for n in range(200, 400):  # the file the token points into is renamed several times over
        writer.write(_line(n))
    writer.close()
    more, _ = _forward_all(stream, token)
    assert _numbers(more) == list(range(200, 400))

    times = [e.time for e in stream.events()]
    assert times == sorted(times)
    assert times[0] == stamp_ms(_line(0))

    # backwards from the end, a page at a time, gives the same lines in reverse pages
    back: list[int] = []
    page = read_page(stream, None, start_from_head=False, start_time=None, end_time=None, limit=50)
    while page.events:
        back = _numbers([e.message for e in page.events]) + back
        page = read_page(stream, page.backward, start_from_head=False, start_time=None, end_time=None, limit=50)
    assert back == list(range(400))


def test_times_never_go_back_nor_past_the_files_last_write(tmp_path: Path) -> None:
    path = tmp_path / "i-2.log"
    path.write_bytes(_line(1) + b"print output without a stamp\n" + b"1999-01-01 00:00:00 a quoted old date\n"
                     + b"2999-01-01 00:00:00 a quoted future date\n" + _line(3))
    written = 1_700_000_100
    os.utime(path, (written, written))
    rotated = tmp_path / "i-2.log.1"
    os.replace(path, rotated)
    path.write_bytes(b"first line of the new part, unstamped\n")
    events = list(LogStream("s", path).events())
    assert [e.time for e in events[:3]] == [stamp_ms(_line(1))] * 3
    assert events[3].time <= written * 1000 + 1000  # capped at the part's mtime (plus the clock's slack)
    assert events[4].time == events[3].time  # never back
    assert events[5].time >= events[4].time  # the next part starts where the last was written


def test_partial_last_line_waits_and_bad_tokens_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "i-3.log"
    path.write_bytes(_line(1) + b"half a li")
    stream = LogStream("s", path)
    page = read_page(stream, None, start_from_head=True, start_time=None, end_time=None, limit=10)
    assert len(page.events) == 1
    with open(path, "ab") as fh:
        fh.write(b"ne\n")
    later = read_page(stream, page.forward, start_from_head=True, start_time=None, end_time=None, limit=10)
    assert [e.message for e in later.events] == ["half a line"]
    for token in ("x/1.2.3", "f/zz.1.1", "f/1.2"):
        with pytest.raises(TokenError):
            read_page(stream, token, start_from_head=True, start_time=None, end_time=None, limit=10)


def test_filter_patterns() -> None:
    assert FilterPattern.parse("ERROR timeout").matches("ERROR: upstream timeout")
    assert not FilterPattern.parse("ERROR timeout").matches("ERROR: refused")
    assert FilterPattern.parse('"model loaded"').matches("INFO model loaded in 2s")
    assert not FilterPattern.parse('"model loaded"').matches("INFO loaded model")
    assert FilterPattern.parse("?WARN ?ERROR").matches("an ERROR")
    assert not FilterPattern.parse("?WARN ?ERROR").matches("INFO")
    assert not FilterPattern.parse("ERROR -retrying").matches("ERROR retrying")
    assert not FilterPattern.parse("error").matches("ERROR")  # case-sensitive, as CloudWatch
    assert FilterPattern.parse("%lat(ency)?=[0-9]+%").matches("latency=12")
    assert FilterPattern.parse("").matches("anything")
    for bad in ('{ $.level = "ERROR" }', "[ip, user]", '"unclosed', "%(%"):
        with pytest.raises(PatternError):
            FilterPattern.parse(bad)


def test_filter_interleaves_streams_by_time_and_pages(tmp_path: Path) -> None:
    streams = []
    for name, numbers in (("a", range(0, 40, 2)), ("b", range(1, 40, 2))):
        path = tmp_path / f"{name}.log"
        path.write_bytes(b"".join(_line(n) for n in numbers))
        streams.append(LogStream(f"AllTraffic/{name}", path))
    got: list[int] = []
    token = None
    for _ in range(100):
        page, token = filter_page(streams, FilterPattern.parse("INFO"), start_time=None, end_time=None, limit=3,
                                  token=token)
        got += _numbers([e.message for _, e in page])
        if token is None:
            break
    assert got == list(range(40))
    since = stamp_ms(_line(30))
    page, _ = filter_page(streams, FilterPattern(), start_time=since, end_time=None, limit=100, token=None)
    assert _numbers([e.message for _, e in page]) == list(range(30, 40))
