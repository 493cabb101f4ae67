"""The capture writer in-process: queue bounds, layout, rotation, failed writes, remote (fsspec) objects.

The end-to-end behaviour (a real server, boto3 traffic, restarts, kill -9) is in test_capture_e2e.py;
here the writer is driven directly so that exact counts can be checked with the writer stalled.
"""

from __future__ import annotations

import calendar
import gc
import json
import re
import threading
import uuid
from pathlib import Path

import fsspec
import pytest

from invocation_support import header_block
from moorage.capture import CaptureConfig, CaptureWriter, WriterSettings
from moorage.capture.records import encode, inference_time
from moorage.capture.writer import _event_ids
from moorage.serving.invocation_events import InvocationEvent

NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{3})-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\.jsonl$")


def capture_config(destination: str, percentage: int = 100) -> CaptureConfig:
    return CaptureConfig.parse({"InitialSamplingPercentage": percentage, "DestinationS3Uri": destination,
                                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]})


def event(i: int, arrived: float, variant: str = "AllTraffic") -> InvocationEvent:
    return InvocationEvent(endpoint="ep", variant=variant, instance_id="i-1", status=200, arrived=arrived,
                           model_seconds=0.001, total_seconds=0.002, request_body=f"{i},{i + 1}".encode(),
                           forwarded_headers=header_block([(b"content-type", b"text/csv"), (b"accept", b"text/csv"),
                                                           (b"x-amzn-sagemaker-inference-id", f"req-{i}".encode())]),
                           response_body=f"{i / 10}".encode(), response_content_type="text/csv")


def lines_under(root: Path) -> dict[Path, list[str]]:
    out = {}
    for path in sorted(root.rglob("*.jsonl")):
        data = path.read_bytes()
        assert data.endswith(b"\n"), f"{path} ends with a partial line"
        out[path] = data.decode().splitlines()
    return out


T0 = calendar.timegm((2024, 1, 19, 19, 59, 58)) + 0.062  # two seconds before an hour ends


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    writer = CaptureWriter(WriterSettings(queue_records=10))  # never started: nothing drains the queue
    observer = writer.observer("ep", capture_config(str(tmp_path)))
    for i in range(50):
        observer.observe(event(i, T0))  # returns at once even though nothing drains the queue
    assert writer.stats() == {"captured": 10, "dropped": 40, "written": 0, "failed": 0, "pending": 10}
    writer.flush()
    assert writer.stats() == {"captured": 10, "dropped": 40, "written": 10, "failed": 0, "pending": 0}
    assert writer.stats_by_variant() == {("ep", "AllTraffic"): {"captured": 10, "dropped": 40, "written": 10,
                                                                "failed": 0}}
    # The ten that got in are the first ten, in order.
    [records] = lines_under(tmp_path).values()
    assert [json.loads(line)["eventMetadata"]["inferenceId"] for line in records] == [f"req-{i}" for i in range(10)]
    writer.close()


def test_the_byte_bound_counts_too(tmp_path: Path) -> None:
    writer = CaptureWriter(WriterSettings(queue_records=1000, queue_bytes=2000))  # a record counts ~270 bytes
    observer = writer.observer("ep", capture_config(str(tmp_path)))
    for i in range(100):
        observer.observe(event(i, T0))
    stats = writer.stats()
    assert stats["captured"] + stats["dropped"] == 100 and 2 < stats["captured"] < 10
    writer.close()
    assert writer.stats()["written"] == stats["captured"]


def test_layout_is_by_utc_hour_of_arrival_and_files_rotate_by_size(tmp_path: Path) -> None:
    writer = CaptureWriter(WriterSettings(file_bytes=2000))
    observer = writer.observer("ep", capture_config(tmp_path.as_uri()))
    arrivals = [T0 + i * 0.1 for i in range(40)]  # 19:59:58.062 .. 20:00:01.962
    for i, arrived in enumerate(arrivals):
        observer.observe(event(i, arrived))
        if i % 10 == 9:
            writer.flush()  # four flushes: the first file grows past 2,000 bytes and rotates
    writer.close()
    files = lines_under(tmp_path)
    hours = {p.parent.relative_to(tmp_path).as_posix() for p in files}
    assert hours == {"ep/AllTraffic/2024/01/19/19", "ep/AllTraffic/2024/01/19/20"}
    seen = []
    for path, records in files.items():
        match = NAME.match(path.name)
        assert match, path.name
        first = json.loads(records[0])
        i = int(first["eventMetadata"]["inferenceId"].removeprefix("req-"))
        # The file is named after its first record's arrival: minute, second, millisecond.
        stamp = arrivals[i]
        minute, second = int(stamp % 3600 // 60), int(stamp % 60)
        assert (int(match[1]), int(match[2]), int(match[3])) == (minute, second, round(stamp % 1 * 1000) % 1000)
        for line in records:
            doc = json.loads(line)
            j = int(doc["eventMetadata"]["inferenceId"].removeprefix("req-"))
            seen.append(j)
            hour = path.parent.name
            assert doc["eventMetadata"]["inferenceTime"][11:13] == hour
            uuid.UUID(doc["eventMetadata"]["eventId"], version=4)
    assert sorted(seen) == list(range(40))
    assert len(files) > 2  # rotated by size, not only by hour
    assert writer.stats()["written"] == 40


@pytest.mark.parametrize("run", [256, 2])  # runs of 2: a flush fails, keeps and merges several runs in order
def test_failed_writes_are_retried_and_count_against_the_queue(tmp_path: Path, run: int) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "ep").write_text("a file where the endpoint's folder should be")
    writer = CaptureWriter(WriterSettings(queue_records=5, batch_records=run))
    observer = writer.observer("ep", capture_config(str(dest)))
    for i in range(3):
        observer.observe(event(i, T0))
    writer.flush()  # fails: kept for a retry
    assert writer.stats() == {"captured": 3, "dropped": 0, "written": 0, "failed": 0, "pending": 3}
    for i in range(3, 8):
        observer.observe(event(i, T0))  # 3 kept + 2 queued fill the bound of 5: the last 3 are dropped
    assert writer.stats() == {"captured": 5, "dropped": 3, "written": 0, "failed": 0, "pending": 5}
    writer.flush()  # fails again; nothing is lost by failing
    assert writer.stats()["pending"] == 5
    (dest / "ep").unlink()
    writer.flush()
    assert writer.stats() == {"captured": 5, "dropped": 3, "written": 5, "failed": 0, "pending": 0}
    [records] = lines_under(dest).values()
    assert [json.loads(r)["eventMetadata"]["inferenceId"] for r in records] == [f"req-{i}" for i in range(5)]
    writer.close()


@pytest.mark.parametrize("run", [256, 3])
def test_records_still_unwritable_at_close_are_counted_as_failed(tmp_path: Path, run: int) -> None:
    (tmp_path / "ep").write_text("in the way")
    writer = CaptureWriter(WriterSettings(batch_records=run))
    observer = writer.observer("ep", capture_config(str(tmp_path)))
    for i in range(4):
        observer.observe(event(i, T0))
    writer.close()
    assert writer.stats() == {"captured": 4, "dropped": 0, "written": 0, "failed": 4, "pending": 0}


@pytest.mark.parametrize("run", [256, 2])
def test_remote_destinations_get_whole_objects(tmp_path: Path, run: int) -> None:
    root = f"memory://capture-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    writer = CaptureWriter(WriterSettings(object_bytes=1500, batch_records=run))
    observer = writer.observer("ep", capture_config(root))
    for i in range(30):
        observer.observe(event(i, T0 - 100 + i))
        if i % 5 == 4:
            writer.flush()
    writer.close()
    paths = sorted(fs.find(root.removeprefix("memory:/")))
    assert len(paths) > 1  # rotated at object_bytes
    seen = []
    for path in paths:
        assert path.startswith(f"{root.removeprefix('memory:/')}/ep/AllTraffic/2024/01/19/19/")
        assert NAME.match(path.rsplit("/", 1)[1])
        data = fs.cat_file(path)
        assert data.endswith(b"\n")
        seen += [json.loads(line)["eventMetadata"]["inferenceId"] for line in data.decode().splitlines()]
    assert sorted(seen, key=lambda s: int(s[4:])) == [f"req-{i}" for i in range(30)]
    fs.rm(root.removeprefix("memory:/"), recursive=True)


def test_the_writer_thread_flushes_on_its_own_and_on_close(tmp_path: Path) -> None:
    writer = CaptureWriter(WriterSettings(flush_seconds=0.05))
    writer.start()
    observer = writer.observer("ep", capture_config(str(tmp_path)))
    for i in range(20):
        observer.observe(event(i, T0, variant="A" if i % 2 else "B"))
    done = threading.Event()

    def written() -> bool:
        return writer.stats()["written"] == 20

    for _ in range(200):  # bounded: 10 s
        if written():
            done.set()
            break
        done.wait(0.05)
    assert done.is_set(), writer.stats()
    for i in range(20, 30):
        observer.observe(event(i, T0))
    writer.close()  # whatever is queued is written before close returns
    assert writer.stats()["written"] == 30
    assert {p.parent.parent.parent.parent.parent.name for p in lines_under(tmp_path)} == {"A", "B", "AllTraffic"}


@pytest.mark.parametrize("percentage", [0, 30])
def test_sampling_share(tmp_path: Path, percentage: int) -> None:
    writer = CaptureWriter(WriterSettings(queue_records=100_000))
    observer = writer.observer("ep", capture_config(str(tmp_path), percentage))
    n = 20_000
    for i in range(n):
        observer.observe(event(i, T0))
    captured = writer.stats()["captured"]
    p = percentage / 100
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(captured - n * p) <= 4 * sigma, (captured, n * p, sigma)
    writer.close()


def test_event_ids_are_distinct_version_4_uuids() -> None:
    ids = _event_ids(5000)
    assert len(set(ids)) == 5000
    for event_id in ids[:200]:
        parsed = uuid.UUID(event_id.decode("ascii"))
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == event_id.decode()


def test_a_dropped_observer_is_forgotten_after_its_records_are_written(tmp_path: Path) -> None:
    """UpdateEndpoint replaces a route's observer: the writer still writes what the old one queued
    (with the old config), then lets go of it."""
    writer = CaptureWriter()
    old = writer.observer("ep", capture_config(str(tmp_path / "old")))
    new = writer.observer("ep", capture_config(str(tmp_path / "new")))
    for i in range(3):
        old.observe(event(i, T0))
    del old
    gc.collect()
    new.observe(event(3, T0))
    writer.flush()
    assert [len(lines) for lines in lines_under(tmp_path / "old").values()] == [3]
    assert [len(lines) for lines in lines_under(tmp_path / "new").values()] == [1]
    assert len(writer._sources) == 1  # only the live observer's
    new.observe(event(4, T0))
    writer.close()
    assert writer.stats()["written"] == 5


def test_a_mixed_flush_puts_every_record_in_its_own_file(tmp_path: Path) -> None:
    """One flush holding two variants, two UTC hours, a binary body and per-request headers: each
    record lands in its variant's file of its hour, encoded exactly as the one-record encoder does."""
    writer = CaptureWriter()
    observer = writer.observer("ep", capture_config(str(tmp_path)))
    sent = []
    for i in range(40):
        ev = event(i, T0 + i * 0.1, variant="A" if i % 3 else "B")  # crosses 20:00 at i = 20
        if i % 7 == 0:
            ev.request_body = b"\xff\x00" + bytes([i])  # not UTF-8: base64
        sent.append(ev)
        observer.observe(ev)
    writer.flush()
    files = lines_under(tmp_path)
    assert {p.parent.relative_to(tmp_path).as_posix() for p in files} == {
        f"ep/{v}/2024/01/19/{h}" for v in "AB" for h in (19, 20)}
    by_id = {}
    for path, lines in files.items():
        for line in lines:
            doc = json.loads(line)
            i = int(doc["eventMetadata"]["inferenceId"].removeprefix("req-"))
            assert path.parent.parent.parent.parent.parent.name == sent[i].variant
            assert doc["eventMetadata"]["inferenceTime"][11:13] == path.parent.name
            by_id[i] = line
    assert sorted(by_id) == list(range(40))
    for i, line in by_id.items():
        event_id = json.loads(line)["eventMetadata"]["eventId"]
        assert line + "\n" == encode(sent[i], capture_config(str(tmp_path)), event_id,
                                     inference_time(sent[i].arrived)).decode()
    writer.close()


def test_a_flush_of_one_kind_of_request_is_encoded_as_one_run(tmp_path: Path) -> None:
    """The usual flush (one variant, one hour, one content type) takes the template run; its lines
    are the same bytes the one-record encoder makes."""
    writer = CaptureWriter()
    observer = writer.observer("ep", CaptureConfig.parse({
        "InitialSamplingPercentage": 100, "DestinationS3Uri": str(tmp_path),
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}))
    sent = [InvocationEvent("ep", "AllTraffic", "i-1", 200, T0 - 5 + i * 0.001, 0.001, 0.002,
                            f'{{"x": [{i}, "é\\n"]}}'.encode(), header_block([(b"content-type", b"application/json")]),
                            f"{i / 10}".encode(), "text/csv") for i in range(500)]
    for ev in sent:
        observer.observe(ev)
    writer.flush()
    [lines] = lines_under(tmp_path).values()
    assert len(lines) == 500
    for ev, line in zip(sent, lines, strict=True):
        doc = json.loads(line)
        assert doc["captureData"]["endpointInput"]["encoding"] == "JSON"
        assert line + "\n" == encode(ev, observer.config, doc["eventMetadata"]["eventId"],
                                     inference_time(ev.arrived)).decode()
    writer.close()
