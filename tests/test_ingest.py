"""Ingestion: simulator over HTTP → coordinator → scraper actors → raw topic, with the
real broker, Redis and Ray. Every valid record arrives exactly once, enriched; every
bad one is in the dead-letter topic with its reason; places come from the Redis cache
the second time; archive replay of a real day yields the right number of readings."""

from __future__ import annotations

import csv
import gc
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import confluent_kafka
import httpx
import pytest
from kafka.partitioner.default import murmur2

from aircast import records as R
from aircast.cache import redis_client
from aircast.errors import ProduceError
from aircast.ingest import Ingestor
from aircast.kafka import LIBRDKAFKA_LOG, Producer, RepeatFilter, ensure_topics, librdkafka_options
from aircast.localhost import free_port
from aircast.records import DeadLetter
from aircast.settings import Settings
from aircast.simulator import Faults, Network, SimulatorServer
from aircast.sources import ArchiveSource, HttpSource, SourceError

from .conftest import unique
from .helpers import read_topic

WINDOW_1 = 1_764_000_000  # a fixed 5-minute boundary (2025-11-24 16:00 UTC)
WINDOW_2 = WINDOW_1 + 300


def fresh(settings: Settings, **ingest: Any) -> Settings:
    """The stack's settings with fresh topics and a fresh Redis key prefix."""
    kafka = settings.kafka.model_copy(
        update={"raw_topic": unique("raw"), "dead_letter_topic": unique("dlq"), "partitions": 2}
    )
    redis = settings.redis.model_copy(update={"key_prefix": unique("t") + ":"})
    ing = settings.ingest.model_copy(update={"scrapers": 2, **ingest})
    out = settings.model_copy(update={"kafka": kafka, "redis": redis, "ingest": ing})
    ensure_topics(out.kafka, [out.kafka.raw_topic, out.kafka.dead_letter_topic])
    return out


def expected(snapshot: list[dict[str, Any]]) -> tuple[set[str], Counter[str]]:
    """Independent account: the dedupe keys that must be produced, and the letters by
    reason (one per defect: a bad record repeated in the file is lettered once)."""
    keep: set[str] = set()
    defects: set[tuple[str, str]] = set()
    for raw in snapshot:
        try:
            rec = R.parse_feed_record(raw)
        except R.InvalidRecord as exc:
            defects.add((exc.reason, json.dumps(raw, sort_keys=True)))
            continue
        if rec.dedupe_key in keep:
            defects.add((R.DUPLICATE, json.dumps(raw, sort_keys=True)))
        else:
            keep.add(rec.dedupe_key)
    return keep, Counter(reason for reason, _ in defects)


def test_simulator_is_deterministic_and_speaks_http() -> None:
    net = Network(50, seed=7)
    assert net.snapshot(WINDOW_1) == Network(50, seed=7).snapshot(WINDOW_1)
    assert net.snapshot(WINDOW_1) != net.snapshot(WINDOW_2)
    # The served body is the snapshot; the next, overlapping window reuses the records
    # both windows hold and builds only the new ones.
    faulty = Network(200, seed=7, faults=Faults(duplicate=0.05))
    body = faulty.snapshot_body(WINDOW_1)
    assert json.loads(body.data) == json.loads(json.dumps(faulty.snapshot(WINDOW_1)))
    later = WINDOW_1 + 60
    body2 = faulty.snapshot_body(later, body)
    assert json.loads(body2.data) == json.loads(json.dumps(faulty.snapshot(later)))
    # Each record's index points at its own JSON, in both bodies.
    for b in (body, body2):
        assert all(
            json.loads(b.piece(s, t))["id"] == s * 1_000_000 + t % 1_000_000 for s, t in b.times()
        )
    shared = body.times() & body2.times()
    assert len(shared) > len(body2.times()) / 2
    # Only the records the new window adds are built; the rest come out of the old body.
    built: list[tuple[int, int]] = []
    faulty.record = lambda s, t: built.append((s.sensor_id, t)) or Network.record(faulty, s, t)  # type: ignore[method-assign]
    assert faulty.snapshot_body(later, body).data == body2.data
    assert sorted(built) == sorted(body2.times() - body.times())
    assert all(body2.piece(*k) == body.piece(*k) for k in shared)
    assert all(t >= later - 300 for _, t in body2.times())  # what left the window is dropped
    assert Network(0).snapshot_body(WINDOW_1).data == b"[]"
    with SimulatorServer(net, clock=lambda: WINDOW_1) as server:
        source = HttpSource(server.url, name="simulator", retries=0)
        snap = source.fetch()
        assert snap is not None and snap.records == json.loads(json.dumps(net.snapshot(WINDOW_1)))
        assert source.fetch() is None  # conditional GET: unchanged window → 304
        assert httpx.get(server.url.replace("data.json", "x.json")).status_code == 404
        source.close()
    # A dead server is a clear error after the retries, not a hang or a crash.
    with (
        HttpSource(server.url, retries=1, backoff_s=0.01, timeout_s=1) as dead,
        pytest.raises(SourceError, match="failed after 2 attempts"),
    ):
        dead.fetch()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"[{]", "invalid JSON"),
        (b'{"records": []}', "dict, not a JSON array"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),  # nested beyond any parser
    ],
)
def test_a_bad_body_is_a_clear_error(body: bytes, error: str) -> None:
    with serving(body) as url:
        source = HttpSource(url, retries=0)
        with pytest.raises(SourceError, match=error):
            source.fetch()
        source.close()


def test_a_body_json_reads_is_read_as_json_reads_it() -> None:
    """The fast parser refuses NaN, infinities and integers beyond 64 bits; such a body
    is still read, the same as json reads it (the records' own checks judge them)."""
    body = (
        b'[{"id": 18446744073709551617, "sensordatavalues": [{"value": NaN}]},'
        b' {"id": 1, "sensordatavalues": [{"value": -Infinity}, {"value": "2.5"}]}]'
    )
    with serving(body) as url:
        source = HttpSource(url, retries=0)
        snapshot = source.fetch()
        source.close()
    assert snapshot is not None
    assert repr(snapshot.records) == repr(json.loads(body))


def test_a_fetched_body_is_freed_without_a_cyclic_collection() -> None:
    """Once the snapshot is let go, so is the body it was parsed from, by reference
    counting alone. The coordinator parses with the garbage collector paused
    (aircast.bulk), so anything waiting for a cyclic collection waits long: a body kept
    on an httpx response (which sits in a reference cycle) would stay until a full
    collection, one network-size body more with every snapshot."""
    pad = b"x" * 200
    body = b"[" + b",".join(b'{"id": %d, "pad": "%s"}' % (i, pad) for i in range(20_000)) + b"]"
    with serving(body) as url:
        source = HttpSource(url, retries=0)
        source.fetch()  # the connection, the client's own state: not what is measured
        gc.collect()
        was_enabled = gc.isenabled()
        gc.disable()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            snapshot = source.fetch()
            assert snapshot is not None and len(snapshot.records) == 20_000
            del snapshot
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
            if was_enabled:
                gc.enable()
        source.close()
    assert held < len(body) / 4, f"{held:,} bytes still held of a {len(body):,}-byte body"


@contextmanager
def serving(body: bytes) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering every GET with ``body``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/data.json"
    finally:
        server.shutdown()
        server.server_close()


def test_every_valid_record_arrives_once_enriched(ray_session: Settings) -> None:
    from actors.ingest import Coordinator

    settings = fresh(ray_session)
    net = Network(400, seed=11, faults=Faults(duplicate=0.05, zero_coordinates=0.02))
    snap1 = net.snapshot(WINDOW_1)
    keep1, rejected1 = expected(snap1)
    assert rejected1[R.DUPLICATE] > 0 and rejected1[R.ZERO_COORDINATES] > 0
    window = [WINDOW_1]
    with (
        SimulatorServer(net, clock=lambda: window[0]) as server,
        HttpSource(server.url, name="simulator") as source,
    ):
        coordinator = Coordinator(settings)
        first = source.fetch()
        assert first is not None
        counts1 = coordinator.ingest(first)
        assert counts1.records == len(snap1)
        # The records were moved to the scrapers' shards: the coordinator does not hold
        # the file while the scrapers work and until the next one.
        assert first.records == []
        assert counts1.produced == len(keep1)
        assert counts1.rejected == rejected1
        # A defect the file repeats (a bad record duplicated) is lettered once.
        assert counts1.rejected_again == len(snap1) - len(keep1) - sum(rejected1.values())
        assert counts1.accounted == counts1.records
        assert counts1.cache_misses > 0

        # The same window again (a repeat of the live API): nothing new is produced, the
        # records already taken are counted as re-sighted, not dead-lettered; what was
        # wrong with the file (bad envelopes, in-file repeats) was lettered the first
        # time and is counted as rejected again, not lettered twice.
        with HttpSource(server.url, name="simulator") as repeat:
            again = repeat.fetch()
        assert again is not None
        counts_again = coordinator.ingest(again)
        assert counts_again.produced == 0
        assert counts_again.resighted == len(keep1)
        assert counts_again.rejected == Counter()
        assert counts_again.rejected_again == len(snap1) - len(keep1)
        assert counts_again.accounted == counts_again.records == len(snap1)

        # The next window: new readings, every place from the Redis cache.
        window[0] = WINDOW_2
        second = source.fetch()
        assert second is not None
        counts2 = coordinator.ingest(second)
        keep2, _ = expected(net.snapshot(WINDOW_2))
        assert counts2.resighted == len(keep1 & keep2)  # the windows overlap
        keep2 -= keep1
        assert counts2.produced == len(keep2) > 0
        assert counts2.cache_misses == 0 and counts2.cache_hits > 0

        # A minute on (the live API's next file overlaps this one by 4 minutes): the
        # shared records re-sighted, the shared defects counted, not lettered again.
        window[0] = WINDOW_2 + 60
        third = source.fetch()
        assert third is not None
        counts3 = coordinator.ingest(third)
        snap3 = net.snapshot(WINDOW_2 + 60)
        keep3, rejected3 = expected(snap3)
        assert counts3.resighted == len(keep2 & keep3) > 0
        assert counts3.produced == len(keep3 - keep2 - keep1)
        assert 0 < sum(counts3.rejected.values()) < sum(rejected3.values())  # some new
        assert sum(counts3.rejected.values()) + counts3.rejected_again == len(snap3) - len(keep3)
        assert counts3.accounted == counts3.records == len(snap3)

    every = keep1 | keep2 | keep3
    raw = read_topic(settings.kafka, settings.kafka.raw_topic, expect=len(every))
    produced = [json.loads(v) for _, v in raw]
    keys = [R.parse_feed_record(p).dedupe_key for p in produced]
    assert len(keys) == len(set(keys)) == len(every)  # exactly once
    assert set(keys) == every
    assert all(
        k == str(p["sensor"]["id"]).encode() for (k, _), p in zip(raw, produced, strict=True)
    )
    places = [p["place"] for p in produced]
    assert all(pl["city"] and pl["country"] and len(pl["country_code"]) == 2 for pl in places)

    letters = [
        DeadLetter.from_json(v)
        for _, v in read_topic(
            settings.kafka,
            settings.kafka.dead_letter_topic,
            expect=sum(counts1.rejected.values())
            + sum(counts_again.rejected.values())
            + sum(counts2.rejected.values())
            + sum(counts3.rejected.values()),
        )
    ]
    by_reason = Counter(letter.reason for letter in letters)
    total = counts1.rejected + counts_again.rejected + counts2.rejected + counts3.rejected
    assert by_reason == total
    assert all(letter.stage == "ingest" and letter.payload for letter in letters)
    # One letter per defect, however many files carried it.
    assert len({(lt.reason, lt.payload) for lt in letters}) == len(letters)


BAD: list[tuple[Any, str]] = [
    ("not a record", R.MALFORMED),
    ({"timestamp": "2019-04-16 14:22:52"}, R.MISSING_FIELD),
    (
        {
            "id": 1,
            "timestamp": "16/04/2019",
            "location": {"id": 1, "latitude": "1", "longitude": "1"},
            "sensor": {"id": 1, "sensor_type": {"name": "SDS011"}},
            "sensordatavalues": [{"value": "1", "value_type": "P1"}],
        },
        R.BAD_TIMESTAMP,
    ),
    (
        {
            "id": 2,
            "timestamp": "2019-04-16 14:22:52",
            "location": {"id": 1, "latitude": "0", "longitude": "0"},
            "sensor": {"id": 2, "sensor_type": {"name": "SDS011"}},
            "sensordatavalues": [{"value": "1", "value_type": "P1"}],
        },
        R.ZERO_COORDINATES,
    ),
    (
        {
            "id": 3,
            "timestamp": "2019-04-16 14:22:52",
            "location": {"id": 1, "latitude": "x", "longitude": "1"},
            "sensor": {"id": 3, "sensor_type": {"name": "SDS011"}},
            "sensordatavalues": [{"value": "1", "value_type": "P1"}],
        },
        R.BAD_COORDINATES,
    ),
]


# Default chunks (the shard is one chunk), and chunks of 2: the repeat of good[0] is in
# a later chunk than good[0] and still a duplicate; every produced record is sent once.
@pytest.mark.parametrize("chunk", [2_000, 2])
def test_bad_records_are_dead_lettered_with_reason(stack_settings: Settings, chunk: int) -> None:
    settings = fresh(stack_settings, chunk_records=chunk)
    ingestor = Ingestor(settings)
    good = json.loads(Path(settings.data.feed_sample).read_text())[:5]
    snapshot = [raw for raw, _ in BAD] + good + good[:1]
    counts = ingestor.process(snapshot, "test")
    raw = read_topic(settings.kafka, settings.kafka.raw_topic, expect=5)
    assert sorted(json.loads(v)["id"] for _, v in raw) == sorted(r["id"] for r in good)
    # The same file again (the live API's file spans 5 minutes, fetched every minute):
    # its defects were lettered already; they are counted, not lettered twice.
    again = ingestor.process(snapshot, "test")
    ingestor.close()
    assert counts.produced == 5
    assert counts.rejected == Counter([reason for _, reason in BAD] + [R.DUPLICATE])
    assert (again.produced, again.resighted, again.rejected) == (0, 5, Counter())
    assert again.rejected_again == len(BAD) + 1
    assert again.accounted == again.records == len(snapshot)
    letters = [
        DeadLetter.from_json(v)
        for _, v in read_topic(
            settings.kafka, settings.kafka.dead_letter_topic, expect=len(BAD) + 1
        )
    ]
    assert sorted(lt.reason for lt in letters) == sorted(counts.rejected.elements())
    malformed = next(lt for lt in letters if lt.reason == R.MALFORMED)
    assert malformed.payload == '"not a record"' and malformed.source == "test"
    dup = next(lt for lt in letters if lt.reason == R.DUPLICATE)
    assert dup.values == 2 and dup.key == str(good[0]["sensor"]["id"])


def test_a_record_seen_again_is_counted_unless_its_values_changed(
    stack_settings: Settings,
) -> None:
    settings = fresh(stack_settings)
    good = json.loads(Path(settings.data.feed_sample).read_text())[:3]
    changed = json.loads(json.dumps(good[1]))
    changed["sensordatavalues"][0]["value"] = "999.5"  # same sensor and time, other value
    ingestor = Ingestor(settings)
    first = ingestor.process(good, "test")
    again = ingestor.process([good[0], changed, good[2]], "test")
    third = ingestor.process([good[0], changed, good[2]], "test")  # lettered once
    ingestor.close()
    assert (first.produced, first.resighted, sum(first.rejected.values())) == (3, 0, 0)
    assert (again.produced, again.resighted, dict(again.rejected)) == (0, 2, {R.DUPLICATE: 1})
    assert (third.resighted, dict(third.rejected), third.rejected_again) == (2, {}, 1)
    raw = read_topic(settings.kafka, settings.kafka.raw_topic, expect=3)
    produced = {json.loads(v)["sensor"]["id"]: json.loads(v)["sensordatavalues"] for _, v in raw}
    assert produced == {g["sensor"]["id"]: g["sensordatavalues"] for g in good}  # first stands
    (letter,) = [
        DeadLetter.from_json(v)
        for _, v in read_topic(settings.kafka, settings.kafka.dead_letter_topic, expect=1)
    ]
    assert letter.reason == R.DUPLICATE and "other values" in letter.detail
    assert json.loads(letter.payload)["sensordatavalues"][0]["value"] == "999.5"
    assert letter.key == str(good[1]["sensor"]["id"])


def test_nothing_is_marked_seen_unless_the_broker_acknowledged_it(
    stack_settings: Settings,
) -> None:
    """The delivery guarantee's order: produced and acknowledged, then marked seen. With
    no broker to acknowledge, the shard fails with a clear error, no record is marked,
    and the retry (the coordinator's, here by hand) produces every record."""
    settings = fresh(stack_settings)
    good = json.loads(Path(settings.data.feed_sample).read_text())[:4]
    malformed = BAD[0][0]
    nowhere = settings.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    unacknowledged = Ingestor(settings, producer=Producer(nowhere, **{"message.timeout.ms": 1500}))
    with pytest.raises(ProduceError, match="not stored"):
        unacknowledged.process([*good, malformed], "test")
    unacknowledged.redis.close()
    client = redis_client(settings.redis)
    assert client.keys(f"{settings.redis.key_prefix}seen:*") == []
    assert client.keys(f"{settings.redis.key_prefix}lettered:*") == []
    client.close()
    ingestor = Ingestor(settings)
    counts = ingestor.process([*good, malformed], "test")
    ingestor.close()
    assert (counts.produced, counts.resighted, counts.rejected) == (4, 0, {R.MALFORMED: 1})
    assert len(read_topic(settings.kafka, settings.kafka.raw_topic, expect=4)) == 4
    assert len(read_topic(settings.kafka, settings.kafka.dead_letter_topic, expect=1)) == 1


def test_a_sensor_keeps_the_partition_java_and_kafka_python_give_it(
    stack_settings: Settings,
) -> None:
    """The scrapers' librdkafka producer places keys with Java's murmur2, as the
    kafka-python producer before it did: upgrading moves no sensor to another partition
    (its records stay in order, and so do the per-partition watermarks)."""
    settings = fresh(stack_settings)
    topic = unique("placed")
    ensure_topics(settings.kafka.model_copy(update={"partitions": 8}), [topic])
    keys = [str(sensor).encode() for sensor in range(1, 3000, 7)]
    producer = Producer(settings.kafka)
    for k in keys:
        producer.send(topic, b"x", k)
    producer.flush()
    placed: dict[bytes, int] = {}
    consumer = confluent_kafka.Consumer(
        {**librdkafka_options(settings.kafka), "group.id": unique("g"), "enable.auto.commit": False}
    )
    consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in range(8)])
    deadline = time.monotonic() + 30
    while len(placed) < len(keys) and time.monotonic() < deadline:
        for m in consumer.consume(500, 0.5):
            key, partition = m.key(), m.partition()
            if m.error() is None and key is not None and partition is not None:
                placed[key] = partition
    consumer.close()
    # kafka-python's DefaultPartitioner, which is Java's: murmur2, sign bit off, modulo.
    assert placed == {k: (murmur2(k) & 0x7FFFFFFF) % 8 for k in keys}
    assert len(set(placed.values())) == 8


def test_a_broker_away_is_logged_once_not_at_every_reconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """librdkafka repeats its connection failure at every reconnect; each distinct line
    passes once, and the flush still says what happened to the message."""
    away = Settings().kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    producer = Producer(away)
    producer.send("nowhere", b"x")
    with (
        caplog.at_level(logging.DEBUG, LIBRDKAFKA_LOG.name),
        pytest.raises(ProduceError, match="not acknowledged"),
    ):
        producer.flush(6)
    lines = [r.getMessage() for r in caplog.records if r.name == LIBRDKAFKA_LOG.name]
    assert any("Connection refused" in line for line in lines), lines
    assert len(lines) == len(set(lines)) and len(lines) <= 3, lines


def test_repeats_held_back_are_counted_in_the_next_line() -> None:
    repeats = RepeatFilter(window_s=0.3)

    def line(text: str) -> logging.LogRecord:
        return logging.LogRecord("x", logging.ERROR, __file__, 1, text, (), None)

    first = line("FAIL connect after 0ms")
    assert repeats.filter(first) and first.getMessage() == "FAIL connect after 0ms"
    assert not any(repeats.filter(line(f"FAIL connect after {n}ms")) for n in range(4))
    assert repeats.filter(line("another line"))  # other text is not held back
    time.sleep(0.35)
    again = line("FAIL connect after 7ms")
    assert repeats.filter(again)
    assert again.getMessage() == "FAIL connect after 7ms (and 4 like it held back)"


def archive_rows(day_dir: Path) -> int:
    rows = 0
    for path in day_dir.glob("*.csv"):
        with path.open(newline="") as fh:
            rows += sum(1 for _ in csv.reader(fh, delimiter=";")) - 1
    return rows


def test_archive_replay_of_a_real_day(stack_settings: Settings) -> None:
    archive = stack_settings.data.archive_dir
    day = date(2019, 3, 1)
    source = ArchiveSource(str(archive), day, day, shift_to_now=True)
    snapshots = list(source.windows())
    records = [r for s in snapshots for r in s.records]
    assert len(records) == archive_rows(archive / "2019-03-01")
    assert len(snapshots) <= 288  # one per 5-minute window of the day
    stamps = [
        R.parse_timestamp(r["timestamp"])
        for r in records
        if isinstance(r, dict) and "timestamp" in r
    ]
    span = max(stamps) - min(stamps)
    assert 23 * 3600 < span < 86400
    assert time.time() - 86400 - 300 <= min(stamps) and max(stamps) <= time.time()
    outcomes = [o for r in records for o in R.split_record(r)]
    readings = [o for o in outcomes if isinstance(o, R.Reading)]
    assert len(readings) > 0.9 * len(outcomes)


def _redis_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError("redis-server did not start")


def test_a_snapshot_is_retaken_while_redis_is_down(
    ray_session: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down for longer than its clients retry: the shards fail, the coordinator
    retakes the whole snapshot with backoff, and once redis-server is back every valid
    record is produced exactly once (none lost, none twice)."""
    from actors.ingest import Coordinator

    port = free_port()
    redis = _redis_server(port)
    base = fresh(ray_session)
    settings = base.model_copy(
        update={"redis": base.redis.model_copy(update={"url": f"redis://127.0.0.1:{port}/0"})}
    )
    net = Network(200, seed=13)
    snap = net.snapshot(WINDOW_1)
    keep, _ = expected(snap)
    coordinator = Coordinator(settings)
    redis.kill()
    redis.wait()
    with SimulatorServer(net, clock=lambda: WINDOW_1) as server:
        with HttpSource(server.url, name="simulator") as once:
            snapshot = once.fetch()
        assert snapshot is not None
        result: list[Any] = []

        def take() -> None:
            result.append(coordinator.ingest_retrying(snapshot))

        worker = threading.Thread(target=take, daemon=True)
        with caplog.at_level(logging.WARNING, logger="actors.ingest"):
            worker.start()
            time.sleep(20)  # beyond the Redis clients' own ~15 s of retries
            redis = _redis_server(port)
            try:
                worker.join(timeout=90)
            finally:
                redis.kill()
                redis.wait()
    assert not worker.is_alive()
    counts = result[0]
    assert counts is not None and counts.produced == len(keep)
    assert "snapshot failed" in caplog.text
    produced = read_topic(settings.kafka, settings.kafka.raw_topic, expect=len(keep))
    assert len(produced) == len(keep)
