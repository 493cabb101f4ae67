"""The agent's capture spool: framing, sealing, the persisted sequence, the cap, and kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from edge_support import wait_for
from moorage.edge.records import capture_line
from moorage.edge.spool import OPEN, SEALED, Spool


def line(i: int) -> bytes:
    return capture_line("text/csv", f"{i},{i}".encode(), "text/csv", b"0.5\n", 1_700_000_000 + i,
                        event_id=f"event-{i}")


def test_records_are_sagemakers_capture_lines() -> None:
    record = json.loads(capture_line("text/csv", b"1,2", "application/json", b'{"a":1}', 1_705_692_477,
                                     inference_id="req-1", event_id="e-1"))
    assert record == {
        "captureData": {
            "endpointInput": {"observedContentType": "text/csv", "mode": "INPUT", "data": "1,2", "encoding": "CSV"},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT", "data": '{"a":1}',
                               "encoding": "JSON"}},
        "eventMetadata": {"eventId": "e-1", "inferenceId": "req-1", "inferenceTime": "2024-01-19T19:27:57Z"},
        "eventVersion": "0"}
    binary = json.loads(capture_line("application/x-npy", b"\x93NUMPY\xff", None, b"\xff", 0))
    assert binary["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert binary["captureData"]["endpointOutput"] == {"observedContentType": None, "mode": "OUTPUT",
                                                       "data": "/w==", "encoding": "BASE64"}


def test_segments_seal_by_size_and_age_with_a_sequence_that_survives_a_restart(tmp_path: Path) -> None:
    size = len(line(0))
    spool = Spool(tmp_path, "dev-1", segment_bytes=3 * size, segment_age_s=10)
    for i in range(7):
        spool.append(line(i))
    assert sorted(p.name for p in (tmp_path / SEALED).iterdir()) == ["dev-1-000000000001.jsonl",
                                                                     "dev-1-000000000002.jsonl"]
    assert spool.tick() is None  # young
    assert spool.tick(now=10**9) == "dev-1-000000000003"
    first = spool.oldest()
    assert first is not None and first.name == "dev-1-000000000001" and first.records == 3
    spool.done(first, uploaded=True)
    stats = spool.stats()
    assert (stats.backlog_records, stats.sealed_segments) == (4, 2)
    spool.close()
    again = Spool(tmp_path, "dev-1", segment_bytes=3 * size)
    again.append(line(7))
    assert again.seal() == "dev-1-000000000004"  # never a sequence given before, though 1 is gone
    assert again.stats().backlog_records == 5
    again.close()
    # every uploaded or waiting record is there once, in order
    names = sorted(p.name for p in (tmp_path / SEALED).iterdir())
    events = [json.loads(raw)["eventMetadata"]["eventId"] for name in names
              for raw in (tmp_path / SEALED / name).read_bytes().splitlines()]
    assert events == [f"event-{i}" for i in range(3, 8)]


def test_the_cap_drops_the_oldest_segments_and_counts_their_records(tmp_path: Path) -> None:
    size = len(line(0))
    spool = Spool(tmp_path, "dev", max_bytes=10 * size, segment_bytes=2 * size)
    for i in range(30):
        spool.append(line(i))
    stats = spool.stats()
    assert stats.backlog_bytes <= 10 * size
    assert stats.dropped_records + stats.backlog_records == 30
    assert stats.dropped_records >= 20
    oldest = spool.oldest()
    assert oldest is not None
    kept = [json.loads(raw)["eventMetadata"]["eventId"] for raw in oldest.path.read_bytes().splitlines()]
    assert kept[0] == f"event-{stats.dropped_records}"  # the oldest went first
    spool.done(oldest, uploaded=False)
    spool.close()
    assert Spool(tmp_path, "dev", max_bytes=10 * size).stats().dropped_records == stats.dropped_records


def test_a_torn_tail_is_cut_off_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "dev")
    for i in range(3):
        spool.append(line(i))
    spool.close()
    with open(tmp_path / OPEN, "ab") as fh:
        fh.write(line(3)[:40])  # what a power cut mid-write leaves
    again = Spool(tmp_path, "dev")
    stats = again.stats()
    assert (stats.backlog_records, stats.torn_records) == (3, 1)
    again.append(line(4))
    name = again.seal()
    assert name is not None
    again.close()
    lines = (tmp_path / SEALED / f"{name}.jsonl").read_bytes().splitlines()
    assert [json.loads(raw)["eventMetadata"]["eventId"] for raw in lines] == ["event-0", "event-1", "event-2",
                                                                               "event-4"]


WRITER = """
import sys
from moorage.edge.records import capture_line
from moorage.edge.spool import Spool
spool = Spool(sys.argv[1], "dev", segment_bytes=64 * 1024, fsync_interval_s=0.05)
i = 0
while True:
    spool.append(capture_line("text/csv", b"%d,%d" % (i, i) * 20, "text/csv", b"1", 0, event_id="e-%d" % i))
    i += 1
    if i == 2000:
        open(sys.argv[2], "w").close()
"""


def test_kill_9_while_writing_leaves_only_whole_records(tmp_path: Path) -> None:
    spool_dir, started = tmp_path / "spool", tmp_path / "started"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(spool_dir), str(started)])
    try:
        wait_for(started.exists, 60, "the writer to get going")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    spool = Spool(spool_dir, "dev", segment_bytes=64 * 1024)
    ids = []
    for path in [*sorted((spool_dir / SEALED).iterdir()), spool_dir / OPEN]:
        ids += [json.loads(raw)["eventMetadata"]["eventId"] for raw in path.read_bytes().splitlines()]
    assert len(ids) >= 2000
    assert ids == [f"e-{i}" for i in range(len(ids))]  # whole, in order, none twice, none missing
    assert spool.stats().backlog_records == len(ids)
    spool.close()
