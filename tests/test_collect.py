"""Collection: Kafka → collector actors → InfluxDB against the real broker, InfluxDB and
Ray. A collector actor killed with SIGKILL mid-stream, and separately influxd killed
and restarted mid-stream: afterwards InfluxDB holds exactly the valid readings produced
(none missing, none doubled), bad messages are dead letters with their reason, and the
collectors' buffers stayed within their bound."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from aircast import records as R
from aircast.errors import StorageError
from aircast.influx import InfluxV1
from aircast.kafka import ensure_topics, producer
from aircast.records import Aggregate, DeadLetter, Reading
from aircast.settings import KafkaSettings, Settings
from aircast_cli.stack import control

from .conftest import unique
from .helpers import read_topic

MEASURES = ("P1", "P2", "temperature", "humidity")


def fresh(settings: Settings) -> Settings:
    kafka = settings.kafka.model_copy(
        update={
            "readings_topic": unique("readings"),
            "aggregates_topic": unique("aggs"),
            "dead_letter_topic": unique("dlq"),
            "partitions": 4,
        }
    )
    influx = settings.influx.model_copy(
        update={
            "raw_database": unique("raw"),
            "aggregates_database": unique("agg"),
            # No client-level retries: every failed write reaches the collector's own
            # pause-and-retry loop, which the influxd drill must exercise.
            "predictions_database": unique("pred"),
            "retries": 0,
            "backoff_s": 0.2,
            "timeout_s": 3.0,
        }
    )
    collect = settings.collect.model_copy(
        update={
            "actors": 2,
            "batch_size": 500,
            "linger_ms": 200,
            "max_buffered": 2000,
            "group_id": unique("collector"),
        }
    )
    out = settings.model_copy(update={"kafka": kafka, "influx": influx, "collect": collect})
    ensure_topics(
        out.kafka, [kafka.readings_topic, kafka.aggregates_topic, kafka.dead_letter_topic]
    )
    return out


def make_readings(n_sensors: int, steps: int, seed: int) -> list[Reading]:
    rng = random.Random(seed)
    start = int(time.time()) - 6 * 3600
    out = []
    for sensor in range(n_sensors):
        for step in range(steps):
            for m in MEASURES[(sensor % 2) * 2 : (sensor % 2) * 2 + 2]:
                out.append(
                    Reading(
                        sensor_id=1000 + sensor,
                        sensor_type="SDS011" if sensor % 2 == 0 else "DHT22",
                        location_id=5000 + sensor,
                        latitude=57.1,
                        longitude=-2.1,
                        country_code="GB",
                        country="United Kingdom",
                        city="Aberdeen",
                        measure=m,
                        value=round(rng.uniform(1, 90), 2),
                        timestamp=start + 145 * step,
                        record_id=None,
                    )
                )
    return out


def produce_stream(
    settings: Settings,
    readings: list[Reading],
    aggregates: list[Aggregate],
    bad: list[bytes],
    chunks: int = 20,
    pause_s: float = 0.15,
) -> None:
    p = producer(settings.kafka)
    k = settings.kafka
    size = max(1, len(readings) // chunks)
    for i in range(0, len(readings), size):
        for r in readings[i : i + size]:
            p.send(k.readings_topic, key=r.key.encode(), value=r.to_json())
        p.flush()
        time.sleep(pause_s)
    for a in aggregates:
        p.send(k.aggregates_topic, key=a.key.encode(), value=a.to_json())
    for b in bad:
        p.send(k.readings_topic, key=b"bad", value=b)
    p.flush()
    p.close()


def points_by_measure(settings: Settings, database: str, field: str) -> Counter[str]:
    with InfluxV1(settings.influx) as influx:
        counts: Counter[str] = Counter()
        for m in MEASURES:
            rows = influx.rows(f'SELECT count("{field}") FROM "{m}"', database)
            counts[m] = int(rows[0]["count"]) if rows else 0
        return counts


def distinct_points(settings: Settings, database: str) -> set[tuple[str, str, int]]:
    with InfluxV1(settings.influx) as influx:
        out = set()
        for m in MEASURES:
            for row in influx.rows(f'SELECT "value", "sensor_id" FROM "{m}"', database, epoch="s"):
                out.add((m, row["sensor_id"], int(row["time"])))
        return out


def start_collectors(
    settings: Settings, until_idle_s: float
) -> tuple[Any, threading.Thread, list[Any]]:
    from actors.collect import Supervisor

    supervisor = Supervisor(settings)
    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(supervisor.run(until_idle_s=until_idle_s)), daemon=True
    )
    thread.start()
    return supervisor, thread, results


def wait_for_points(settings: Settings, at_least: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got = points_by_measure(settings, settings.influx.raw_database, "value")
        except StorageError:  # the collectors have not created the database yet
            got = Counter()
        if sum(got.values()) >= at_least:
            return
        time.sleep(0.2)
    pytest.fail(f"fewer than {at_least} points arrived in {timeout_s}s")


@pytest.mark.slow
def test_kill_a_collector_actor_mid_stream(ray_session: Settings) -> None:
    import ray

    settings = fresh(ray_session)
    readings = make_readings(60, 80, seed=1)  # 9,600 readings
    # One aggregate per (sensor, measure, window): each is its own point.
    aggregates = list(
        {
            (r.key, R.window_start(r.timestamp)): Aggregate.of([r], R.window_start(r.timestamp))
            for r in readings[:300]
        }.values()
    )
    old = replace(readings[0], timestamp=1_555_424_572)  # 2019: beyond 30-day retention
    bad = [b"{not json", b'{"sensor_id": 1}', old.to_json()]
    supervisor, thread, results = start_collectors(settings, until_idle_s=8)
    producer_thread = threading.Thread(
        target=produce_stream, args=(settings, readings, aggregates, bad), daemon=True
    )
    producer_thread.start()
    wait_for_points(settings, 1500)
    victim = ray.get(supervisor.actors[0].pid.remote())
    os.kill(victim, signal.SIGKILL)
    producer_thread.join(timeout=120)
    thread.join(timeout=180)
    assert not thread.is_alive(), "collectors did not finish"
    assert supervisor.restarts >= 1

    expected = Counter(r.measure for r in readings)
    assert points_by_measure(settings, settings.influx.raw_database, "value") == expected
    assert distinct_points(settings, settings.influx.raw_database) == {
        (r.measure, str(r.sensor_id), r.timestamp) for r in readings
    }
    expected_aggs = Counter(a.measure for a in aggregates)
    assert points_by_measure(settings, settings.influx.aggregates_database, "mean") == expected_aggs
    for stats in results[0]:
        assert stats["max_buffered"] <= settings.collect.max_buffered

    letters = [
        DeadLetter.from_json(v)
        for _, v in read_topic(settings.kafka, settings.kafka.dead_letter_topic, expect=3)
    ]
    by_source = {lt.source: lt.reason for lt in letters}  # at-least-once: dedupe by source
    assert sorted(by_source.values()) == sorted([R.UNDECODABLE, R.UNDECODABLE, R.BEYOND_RETENTION])
    assert all(lt.stage == "collect" for lt in letters)


@pytest.mark.slow
def test_influxd_restarted_mid_stream(ray_session: Settings) -> None:
    settings = fresh(ray_session)
    readings = make_readings(40, 60, seed=2)  # 4,800 readings
    first, rest = readings[:1200], readings[1200:]
    _supervisor, thread, results = start_collectors(settings, until_idle_s=10)
    produce_stream(settings, first, [], [], chunks=10, pause_s=0.05)
    wait_for_points(settings, 500)
    influxd = control.status(ray_session)["influxdb"]["pid"]
    os.kill(influxd, signal.SIGSTOP)  # hung: writes time out
    # The rest of the stream comes while influxd is hung, then gone and restarted: the
    # order is built in, however fast or slow the machine.
    producer_thread = threading.Thread(
        target=produce_stream,
        args=(settings, rest, [], []),
        kwargs={"chunks": 30, "pause_s": 0.2},
        daemon=True,
    )
    producer_thread.start()
    time.sleep(4)
    os.kill(influxd, signal.SIGKILL)  # then gone: the stack supervisor restarts it
    os.kill(influxd, signal.SIGCONT)
    producer_thread.join(timeout=120)
    thread.join(timeout=240)
    assert not thread.is_alive(), "collectors did not finish"
    assert control.status(ray_session)["influxdb"]["healthy"]
    stats = results[0]
    assert sum(s["storage_failures"] for s in stats) >= 1
    assert points_by_measure(settings, settings.influx.raw_database, "value") == Counter(
        r.measure for r in readings
    )
    assert len(distinct_points(settings, settings.influx.raw_database)) == len(readings)
    assert all(s["max_buffered"] <= settings.collect.max_buffered for s in stats)


def test_a_point_influx_refuses_is_dead_lettered_alone(stack_settings: Settings) -> None:
    from aircast.collect import Collector

    settings = fresh(stack_settings)
    readings = make_readings(4, 5, seed=3)
    humid_times = [r.timestamp for r in readings if r.measure == "humidity"]
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        # "value" already an integer in humidity: InfluxDB refuses float humidity points.
        # Field types are per shard (a day here), so the integer goes at the readings'
        # own first and last times: at now - 60 s it missed them from 00:00 to 06:00 UTC.
        influx.write(
            [f"humidity,sensor_id=1 value=1i {t}" for t in (min(humid_times), max(humid_times))],
            settings.influx.raw_database,
            precision="s",
        )
    produce_stream(settings, readings, [], [], chunks=1, pause_s=0)
    parts = [(settings.kafka.readings_topic, p) for p in range(4)] + [
        (settings.kafka.aggregates_topic, p) for p in range(4)
    ]
    collector = Collector(settings, parts)
    stats = collector.run(until_idle_s=3)
    collector.close()
    humidity = sum(1 for r in readings if r.measure == "humidity")
    assert stats.rejected == {R.STORAGE_REJECTED: humidity}
    assert stats.points[settings.influx.raw_database] == len(readings) - humidity
    letters = read_topic(settings.kafka, settings.kafka.dead_letter_topic, expect=humidity)
    assert len(letters) == humidity
    assert all("field type conflict" in DeadLetter.from_json(v).detail for _, v in letters)


def test_a_one_shot_run_reads_to_the_end_however_short_its_idle_cutoff(
    stack_settings: Settings,
) -> None:
    """With no idle time allowed, a one-shot run still reads every partition up to its
    end offset at the start: a slow first fetch must not end it with nothing read."""
    from aircast.collect import Collector

    settings = fresh(stack_settings)
    readings = make_readings(3, 4, seed=9)
    produce_stream(settings, readings, [], [], chunks=1, pause_s=0)
    collector = Collector(settings, [(settings.kafka.readings_topic, p) for p in range(4)])
    stats = collector.run(until_idle_s=0)
    collector.close()
    assert stats.messages == len(readings)
    assert stats.points[settings.influx.raw_database] == len(readings)


def test_a_new_collector_resumes_after_the_last_commit(stack_settings: Settings) -> None:
    """Offsets committed after a good flush are where the next collector of the group
    starts: it writes only what came after; a null message and a non-reading are dead
    letters with their reason and their topic/partition/offset."""
    from aircast.collect import Collector

    settings = fresh(stack_settings)
    first, second = make_readings(3, 4, seed=5), make_readings(2, 3, seed=6)
    second = [replace(r, sensor_id=r.sensor_id + 1000) for r in second]
    parts = [(settings.kafka.readings_topic, p) for p in range(4)]
    produce_stream(settings, first, [], [], chunks=1, pause_s=0)
    collector = Collector(settings, parts)
    stats = collector.run(until_idle_s=2)
    collector.close()
    assert stats.points[settings.influx.raw_database] == len(first)

    produce_stream(settings, second, [], [], chunks=1, pause_s=0)
    p = producer(settings.kafka)
    p.send(settings.kafka.readings_topic, key=b"77", value=None, partition=1)
    p.send(settings.kafka.readings_topic, key=b"78", value=b"{not json", partition=2)
    p.flush()
    p.close()
    collector = Collector(settings, parts)
    stats = collector.run(until_idle_s=2)
    collector.close()
    assert stats.messages == len(second) + 2
    assert stats.points[settings.influx.raw_database] == len(second)
    assert stats.rejected == {R.UNDECODABLE: 2}
    letters = [
        DeadLetter.from_json(v)
        for _, v in read_topic(settings.kafka, settings.kafka.dead_letter_topic, expect=2)
    ]
    assert sorted(letter.key or "" for letter in letters) == ["77", "78"]
    assert {letter.reason for letter in letters} == {R.UNDECODABLE}
    topic = settings.kafka.readings_topic
    assert {letter.source.rsplit("/", 2)[0] for letter in letters if letter.source} == {topic}
    assert len(distinct_points(settings, settings.influx.raw_database)) == len(first) + len(second)


def send_one_per_batch(
    kafka: KafkaSettings, topic: str, messages: list[tuple[bytes, bytes]]
) -> None:
    """Each message in a batch of its own: tansu answers "latest" with the last batch's
    base offset + 1, so a batch of several records would show as one in a lag (real
    Kafka: the true end)."""
    p = producer(kafka)
    for key, value in messages:
        p.send(topic, key=key, value=value)
        p.flush()
    p.close()


def test_pipeline_status_shows_lag_until_the_collector_commits(stack_settings: Settings) -> None:
    """What `make run` prints: messages per topic, the collectors' lag (what they have
    not committed) and the Flink job's (raw records past its group's offsets), and the
    points written in the last hour."""
    from aircast.collect import Collector
    from aircast.pipeline import status

    settings = fresh(stack_settings)
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"raw_topic": unique("raw")}),
            "flink": settings.flink.model_copy(update={"group_id": unique("flink")}),
        }
    )
    k = settings.kafka
    ensure_topics(k, [k.raw_topic])
    now = int(time.time())
    readings = [
        replace(r, timestamp=now - 600 + i) for i, r in enumerate(make_readings(3, 4, seed=11))
    ]
    send_one_per_batch(k, k.readings_topic, [(r.key.encode(), r.to_json()) for r in readings])
    send_one_per_batch(k, k.raw_topic, [(str(i).encode(), b"{}") for i in range(5)])

    def settled(want: Callable[[Any], bool]) -> Any:
        deadline = time.monotonic() + 15
        while not want(now_ := status(settings)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return now_

    before = settled(lambda s: s.topics["readings"] == len(readings) and s.topics["raw"] == 5)
    assert (before.topics["readings"], before.topics["raw"]) == (len(readings), 5)
    assert (before.collector_lag, before.flink_lag) == (len(readings), 5)
    # No database yet (the collectors create them): unknown, not zero.
    assert (before.raw_points_1h, before.aggregate_points_1h) == (None, None)
    parts = [(k.readings_topic, n) for n in range(4)] + [(k.aggregates_topic, n) for n in range(4)]
    collector = Collector(settings, parts)
    collector.run(until_idle_s=1)
    collector.close()
    after = settled(lambda s: s.collector_lag == 0)
    assert (after.collector_lag, after.flink_lag) == (0, 5)
    assert (after.raw_points_1h, after.aggregate_points_1h) == (len(readings), 0)
    assert f"flink_lag=5 collector_lag=0 influx_points_1h={len(readings)}" in after.line()
    # Not asked (aircast run's lines between counts): not shown, rather than "None".
    quick = status(settings, influx=False)
    assert (quick.collector_lag, quick.influx_counted) == (0, False)
    assert quick.line().endswith("flink_lag=5 collector_lag=0")


def test_the_lag_report_is_exact_and_does_not_stall_a_caught_up_collector(
    stack_settings: Settings,
) -> None:
    """The lag a collector reports (every few seconds, from inside its loop) counts what
    it has not taken, per topic, and answers at once also when its partitions are idle:
    asked on the consuming connection, each partition's query waited behind a fetch's
    long poll (3.8 s for these 8 partitions), stalling the loop that often."""
    from aircast.collect import Collector

    settings = fresh(stack_settings)
    k = settings.kafka
    first, second = make_readings(3, 2, seed=12), make_readings(2, 2, seed=13)

    def produce_one_per_batch(readings: list[Reading]) -> None:
        send_one_per_batch(k, k.readings_topic, [(r.key.encode(), r.to_json()) for r in readings])

    produce_one_per_batch(first)
    parts = [(k.readings_topic, n) for n in range(4)] + [(k.aggregates_topic, n) for n in range(4)]
    collector = Collector(settings, parts)
    try:
        assert collector.update_lag() == {k.readings_topic: len(first), k.aggregates_topic: 0}
        collector.run(until_idle_s=1)
        # Caught up: every fetch now long-polls an idle partition.
        for _ in range(3):
            collector.poll_once()
            t0 = time.monotonic()
            lag = collector.update_lag()
            assert time.monotonic() - t0 < 1.0
            assert lag == {k.readings_topic: 0, k.aggregates_topic: 0}
        produce_one_per_batch(second)
        assert collector.update_lag() == {k.readings_topic: len(second), k.aggregates_topic: 0}
        collector.run(until_idle_s=1)
        assert collector.update_lag() == {k.readings_topic: 0, k.aggregates_topic: 0}
        assert collector.stats.points[settings.influx.raw_database] == len(first) + len(second)
    finally:
        collector.close()


class _SkippingFetches:
    """The collector's own consumer on the real broker, except that its first ``times``
    deliveries of 15 offsets of one partition go missing (the 6th to the 20th it
    delivers of the first partition it delivers from), as when the local broker answered
    a fetch past a batch that was there."""

    def __init__(self, consumer: Any, times: int) -> None:
        self._consumer = consumer
        self._times = times
        self.partition: int | None = None
        self.skip = range(0)
        self._left: dict[int, int] = {}
        self.dropped = 0

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        out = []
        for m in self._consumer.consume(num_messages=num_messages, timeout=timeout):
            if m.error() is None:
                if self.partition is None:
                    self.partition = m.partition()
                    self.skip = range(m.offset() + 5, m.offset() + 20)
                    self._left = {offset: self._times for offset in self.skip}
                if m.partition() == self.partition and self._left.get(m.offset(), 0):
                    self._left[m.offset()] -= 1
                    self.dropped += 1
                    continue
            out.append(m)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


@pytest.mark.parametrize("times", [1, 1_000])
def test_offsets_a_fetch_skipped_are_read_again(stack_settings: Settings, times: int) -> None:
    """A fetch that skips offsets of a partition (once): the collector reads the
    partition again from the first missing one and writes every reading. A gap that
    stays (transaction markers, aborted records: here skipped every time) is read
    again once and then taken as it is: the collector neither loops nor stalls."""
    from aircast.collect import Collector
    from aircast.kafka import fast_consumer

    settings = fresh(stack_settings)
    topic = settings.kafka.readings_topic
    readings = make_readings(40, 10, seed=12)  # 80 keys: ~200 readings a partition
    produce_stream(settings, readings, [], [], chunks=1, pause_s=0)
    consumer = _SkippingFetches(fast_consumer(settings.kafka, settings.collect.group_id), times)
    parts = [(topic, p) for p in range(4)]
    collector = Collector(settings, parts, consumer=consumer)  # type: ignore[arg-type]
    stats = collector.run(until_idle_s=2)
    collector.close()
    written = stats.points[settings.influx.raw_database]
    if times == 1:
        assert consumer.dropped == 15  # skipped once, then read again
        assert (written, stats.refetched) == (len(readings), 15)
    else:
        assert consumer.dropped == 30  # skipped, read again, skipped again: kept
        assert (written, stats.refetched) == (len(readings) - 15, 0)
