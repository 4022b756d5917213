"""The whole PyFlink job on a local mini-cluster against the session's real broker.

The job runs as it does in production: ``.venv-flink/bin/python -m flink.job --config``,
a subprocess, stopped with SIGTERM (or killed with SIGKILL to prove recovery). The raw
topic of these tests has one partition so the order of event times, hence which
readings are late, is deterministic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from aircast import records as R
from aircast.kafka import consumer, ensure_topics, producer
from aircast.settings import Settings
from aircast_cli.stack import control

from .conftest import REPO, any_port_stack, unique
from .helpers import read_committed_by_markers

pytestmark = [pytest.mark.slow, pytest.mark.flink]

FLINK_PYTHON = REPO / ".venv-flink" / "bin" / "python"
BASE = 1_704_067_200  # 2024-01-01 00:00:00 UTC, a window start
START_TIMEOUT_S = 180  # a JVM start on a loaded 2-core machine


@pytest.fixture(scope="module")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A stack with the broker only: all these tests use (the session's whole stack
    also starts Ray, which they do not need and which can fail to start for reasons
    that are not theirs, e.g. its dashboard port taken by another Ray on the machine)."""
    state_dir = tmp_path_factory.mktemp("flink-stack")
    base = Settings(stack=any_port_stack(state_dir, ("kafka",)))
    control.up(base)
    try:
        yield control.load_stack_settings(base, state_dir.resolve())
    finally:
        control.down(base, purge=True)


@dataclass
class Job:
    settings: Settings
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    children: list[psutil.Process] = field(default_factory=list)

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the child until it exits
        self.proc = subprocess.Popen(
            [str(FLINK_PYTHON), "-m", "flink.job", "--config", str(self.config)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()

    def track_children(self) -> None:
        assert self.proc is not None
        self.children = psutil.Process(self.proc.pid).children(recursive=True)
        assert any("java" in c.name() for c in self.children), "no JVM under the job"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.track_children()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=90)
        _, alive = psutil.wait_procs(self.children, timeout=60)
        assert not alive, f"left behind: {alive}"
        return code

    def kill_now(self) -> None:
        for p in [self.proc and psutil.Process(self.proc.pid), *self.children]:
            try:
                if p is not None:
                    p.kill()
            except psutil.NoSuchProcess:
                pass

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill_with_a_transaction_open(self, topics: list[str], timeout_s: float = 60.0) -> int:
        """SIGKILL the whole job (driver, JVM, Python workers) at a moment its JVM holds
        an open transaction on the broker: records written, no marker yet. A kill between
        a commit and the next record would leave the restart nothing to abort, and prove
        nothing. The JVM is frozen (SIGSTOP) while the topics are read, so it commits
        nothing meanwhile; the second read, 0.3 s later, lets a commit already on the wire
        land first. Returns how many records were open."""
        assert self.proc is not None
        self.track_children()
        (jvm,) = [c for c in self.children if "java" in c.name()]
        k = self.settings.kafka
        deadline = time.monotonic() + timeout_s
        while True:
            jvm.suspend()
            opened = sum(read_committed_by_markers(k, t).open for t in topics)
            if opened:
                time.sleep(0.3)
                opened = sum(read_committed_by_markers(k, t).open for t in topics)
            if opened:
                self.kill_now()
                assert self.proc.wait(timeout=90) == -signal.SIGKILL
                _, alive = psutil.wait_procs(self.children, timeout=60)
                assert not alive, f"left behind: {alive}"
                return opened
            jvm.resume()
            assert time.monotonic() < deadline, f"no transaction open in {timeout_s} s"
            time.sleep(0.1)


def job_settings(
    stack: Settings,
    tmp_path: Path,
    delivery: str,
    interval_ms: int,
    raw_partitions: int = 1,
    **flink: Any,
) -> tuple[Settings, Path]:
    name = unique("flink")
    overlay: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": stack.kafka.bootstrap_servers,
            "raw_topic": f"{name}.raw",
            "readings_topic": f"{name}.readings",
            "aggregates_topic": f"{name}.aggregates",
            "dead_letter_topic": f"{name}.dead-letter",
        },
        "flink": {
            "group_id": name,
            "delivery": delivery,
            "checkpoint_interval_ms": interval_ms,
            "checkpoint_dir": str(tmp_path / "checkpoints"),
            "watermark_out_of_orderness_s": 60,
            "allowed_lateness_s": 600,
            "restart_delay_ms": 500,
            **flink,
        },
        "stack": {"flink": {"log_dir": str(tmp_path / "log"), "tmp_dir": str(tmp_path / "tmp")}},
    }
    config = tmp_path / "flink.yaml"
    config.write_text(yaml.safe_dump(overlay))
    # Validated (model_copy would keep the overlay's strings where paths belong).
    kafka = type(stack.kafka).model_validate({**stack.kafka.model_dump(), **overlay["kafka"]})
    flink = type(stack.flink).model_validate({**stack.flink.model_dump(), **overlay["flink"]})
    local = type(stack.stack.flink).model_validate(overlay["stack"]["flink"])
    settings = stack.model_copy(
        update={
            "kafka": kafka,
            "flink": flink,
            "stack": stack.stack.model_copy(update={"flink": local}),
        }
    )
    ensure_topics(kafka.model_copy(update={"partitions": raw_partitions}), [kafka.raw_topic])
    ensure_topics(kafka, [kafka.readings_topic, kafka.aggregates_topic, kafka.dead_letter_topic])
    return settings, config


class Topic:
    """Everything a topic holds (committed records only), read from the beginning."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer: KafkaConsumer = consumer(settings.kafka, isolation_level="read_committed")
        parts = self.consumer.partitions_for_topic(topic) or set()
        self.consumer.assign([TopicPartition(topic, p) for p in parts])
        self.consumer.seek_to_beginning()
        self.messages: list[tuple[str | None, str]] = []

    def poll(self) -> list[tuple[str | None, str]]:
        for records in self.consumer.poll(timeout_ms=200).values():
            self.messages.extend(
                (r.key.decode() if r.key is not None else None, r.value.decode()) for r in records
            )
        return self.messages


def wait_for(
    topics: dict[str, Topic], done: Callable[[dict[str, list[Any]]], bool], job: Job, timeout: float
) -> dict[str, list[Any]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = {name: t.poll() for name, t in topics.items()}
        if done(seen):
            return seen
        assert job.proc is not None and job.proc.poll() is None, job.text()[-3000:]
        assert time.monotonic() < deadline, (
            f"timed out: { ({k: len(v) for k, v in seen.items()}) }\n{job.text()[-3000:]}"
        )


def settle(topics: dict[str, Topic], seconds: float) -> dict[str, list[Any]]:
    """Keep reading a while: exactness needs nothing extra arriving late."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for t in topics.values():
            t.poll()
    return {name: t.messages for name, t in topics.items()}


def feed_record(sensor: int, ts: int, values: dict[str, str], indoor: int = 0) -> dict[str, Any]:
    return {
        "id": sensor * 1_000_000 + ts % 1_000_000,
        "timestamp": R.format_timestamp(ts),
        "location": {
            "id": sensor + 5000,
            "latitude": "48.7400",
            "longitude": "9.3160",
            "country": "DE",
            "indoor": indoor,
        },
        "sensor": {"id": sensor, "sensor_type": {"name": "SDS011"}},
        "sensordatavalues": [{"value_type": k, "value": v} for k, v in values.items()],
        "place": {"city": "Esslingen", "region": "BW", "country": "Germany", "country_code": "DE"},
    }


def produce(
    settings: Settings, messages: list[dict[str, Any] | str], partition: int | None = None
) -> None:
    """As the ingest produces: the message timestamp is the record's measurement time
    (the job's watermarks come from it); a message without one keeps the time of the
    one before it (the ingest never produces those; here they test the job's letters)."""
    prod = producer(settings.kafka)
    at_ms: int | None = None
    for m in messages:
        value = m if isinstance(m, str) else json.dumps(m)
        key = str(m["sensor"]["id"]) if isinstance(m, dict) else "unknown"
        if isinstance(m, dict) and "timestamp" in m:
            at_ms = R.parse_timestamp(m["timestamp"]) * 1000
        prod.send(
            settings.kafka.raw_topic,
            key=key.encode(),
            value=value.encode(),
            timestamp_ms=at_ms,
            partition=partition,
        )
    prod.flush()
    prod.close()


def expected_outcomes(messages: list[dict[str, Any] | str]) -> list[R.Reading | R.Rejection]:
    return [o for m in messages for o in R.split_record(m if isinstance(m, dict) else None)]


@pytest.fixture()
def topics_of() -> Iterator[Callable[[Settings], dict[str, Topic]]]:
    opened: list[Topic] = []

    def make(settings: Settings) -> dict[str, Topic]:
        k = settings.kafka
        made = {
            "readings": Topic(settings, k.readings_topic),
            "aggregates": Topic(settings, k.aggregates_topic),
            "dead": Topic(settings, k.dead_letter_topic),
        }
        opened.extend(made.values())
        return made

    yield make
    for t in opened:
        t.consumer.close()


def test_job_splits_dedupes_aggregates_and_dead_letters(
    stack_settings: Settings, tmp_path: Path, topics_of: Callable[[Settings], dict[str, Topic]]
) -> None:
    settings, config = job_settings(stack_settings, tmp_path, "at-least-once", 2000)
    dup = feed_record(101, BASE + 10, {"P1": "10", "P2": "5"})
    no_values = feed_record(104, BASE + 50, {})
    del no_values["sensordatavalues"]
    phase_a: list[dict[str, Any] | str] = [
        dup,
        feed_record(
            102, BASE + 20, {"temperature": "21.5", "humidity": "100", "pressure": "98000"}
        ),
        feed_record(101, BASE + 160, {"P1": "12", "P2": "7"}),
        dict(dup),  # the same reading again: duplicate, counted once
        feed_record(102, BASE + 170, {"temperature": "99", "humidity": "abc", "pressure": "98100"}),
        feed_record(103, BASE + 30, {"P1": "3", "P2": "2"}, indoor=1),
        "{not json",
        no_values,
        feed_record(105, BASE + 40, {"radon": "1", "P1": "4"}),
        feed_record(101, BASE + 700, {"P1": "20", "P2": "9"}),  # second window
        # The watermark trails the latest event time by the out-of-orderness and the
        # allowed lateness (60 + 600 s): this moves it to BASE+1140, window 0 fires
        # (final), window 1 still waits for late readings.
        feed_record(101, BASE + 1800, {"P1": "30"}),
    ]
    phase_b: list[dict[str, Any] | str] = [
        feed_record(102, BASE + 100, {"temperature": "22"}),  # window 0: too late
        feed_record(101, BASE + 800, {"P1": "22"}),  # window 1: late but allowed
        feed_record(101, BASE + 2000, {"P1": "40"}),  # watermark BASE+1340: window 1 fires
    ]
    topics = topics_of(settings)
    job = Job(settings, config, tmp_path / "job.log")
    produce(settings, phase_a)
    job.start()
    try:
        seen = wait_for(
            topics,
            lambda s: len(s["aggregates"]) >= 6 and len(s["readings"]) >= 12,
            job,
            START_TIMEOUT_S,
        )
        job.track_children()
        # The local JVM got the job's options (heap, temporary folder, collector).
        (java,) = [c.cmdline() for c in job.children if "java" in c.name()]
        local = settings.stack.flink
        assert {
            f"-Xmx{local.heap_mb}m",
            f"-Djava.io.tmpdir={local.tmp_dir}",
            *local.jvm_options,
        } <= set(java), java
        # Only now: the watermark has passed window 0, so this reading is late for it.
        produce(settings, phase_b)
        wait_for(
            topics,
            lambda s: len(s["aggregates"]) >= 8 and len(s["dead"]) >= 10,
            job,
            60,
        )
        seen = settle(topics, 4)
    finally:
        code = job.stop() if job.proc and job.proc.poll() is None else None
    assert code == 0, job.text()[-3000:]

    # Readings: every valid value once, under its own key; the duplicate is not there.
    outcomes = expected_outcomes(phase_a + phase_b)
    want = Counter(o.key for o in outcomes if isinstance(o, R.Reading))
    want["101:P1"] -= 1
    want["101:P2"] -= 1  # the duplicate's two values
    got = [(k, R.Reading.from_json(v)) for k, v in seen["readings"]]
    assert all(k == r.key for k, r in got)
    assert Counter(k for k, _ in got) == +want
    assert len(got) == 15
    assert len({(r.key, r.timestamp) for _, r in got}) == 15

    # Dead letters: each with its reason; values conserved (late ones account for 0).
    letters = [R.DeadLetter.from_json(v) for _, v in seen["dead"]]
    assert Counter(d.reason for d in letters) == {
        R.DUPLICATE: 2,
        R.OUT_OF_RANGE: 1,
        R.NOT_NUMERIC: 1,
        R.INDOOR: 2,
        R.MALFORMED: 1,
        R.MISSING_FIELD: 1,
        R.UNKNOWN_TYPE: 1,
        R.LATE: 1,
    }
    assert all(d.stage == "flink" for d in letters)
    (late,) = [d for d in letters if d.reason == R.LATE]
    assert (late.key, late.values, R.Reading.from_json(late.payload).value) == (
        "102:temperature",
        0,
        22.0,
    )
    assert late.detail == (
        "102:temperature at 2024-01-01 00:01:40 arrived after its 10-minute window closed "
        "(allowed lateness 600 s); not in the aggregate"
    )
    dups = [d for d in letters if d.reason == R.DUPLICATE]
    assert sorted(d.detail for d in dups) == [
        "101:P1 at 2024-01-01 00:00:10 already taken in",
        "101:P2 at 2024-01-01 00:00:10 already taken in",
    ]
    assert all(
        d.values == 1 and R.Reading.from_json(d.payload).key == d.key and d.at > BASE for d in dups
    )
    (malformed,) = [d for d in letters if d.reason == R.MALFORMED]
    assert malformed.payload == "{not json"
    values_in = sum(R.value_count(m) if isinstance(m, dict) else 1 for m in phase_a + phase_b)
    assert values_in == len(got) + sum(d.values for d in letters) == 24

    # Aggregates: windows 0 and 1 fired once each, final: window 1 of 101:P1 with its
    # late (allowed) reading; the duplicate was never counted; the too-late reading is
    # not in; the window of BASE+1800 has not fired.
    aggs = [R.Aggregate.from_json(v) for _, v in seen["aggregates"]]
    by_window = [(a.key, a.window_start - BASE, a.count, a.mean, a.min, a.max) for a in aggs]
    assert sorted(by_window) == [
        ("101:P1", 0, 2, 11.0, 10.0, 12.0),
        ("101:P1", 600, 2, 21.0, 20.0, 22.0),
        ("101:P2", 0, 2, 6.0, 5.0, 7.0),
        ("101:P2", 600, 1, 9.0, 9.0, 9.0),
        ("102:humidity", 0, 1, 100.0, 100.0, 100.0),
        ("102:pressure", 0, 2, 98050.0, 98000.0, 98100.0),
        ("102:temperature", 0, 1, 21.5, 21.5, 21.5),
        ("105:P1", 0, 1, 4.0, 4.0, 4.0),
    ]
    assert all(
        a.key == k and a.city == "Esslingen"
        for (k, _), a in zip(seen["aggregates"], aggs, strict=True)
    )
    assert "flink job starting" in job.text() and "flink job cancelled" in job.text()


def test_a_reading_is_a_duplicate_only_within_the_retention_of_its_last_sighting(
    stack_settings: Settings, tmp_path: Path, topics_of: Callable[[Settings], dict[str, Topic]]
) -> None:
    """FirstSeen keeps a series' times for ``flink.dedupe_ttl_s`` (6 s here): A is seen,
    B 3 s later; at 7.5 s A has expired (and the series' timer, due at 6 s, has dropped
    it) while B has not, so A again is a reading again and B again a duplicate."""
    ttl = 6
    settings, config = job_settings(
        stack_settings, tmp_path, "at-least-once", 2000, dedupe_ttl_s=ttl
    )
    a = feed_record(201, BASE + 10, {"P1": "10"})
    b = feed_record(201, BASE + 160, {"P1": "12"})
    topics = topics_of(settings)
    job = Job(settings, config, tmp_path / "job.log")
    job.start()
    try:
        produce(settings, [a])
        wait_for(topics, lambda s: len(s["readings"]) >= 1, job, START_TIMEOUT_S)
        a_seen = time.monotonic()  # A reached the job before this
        time.sleep(3)
        produce(settings, [b])
        wait_for(topics, lambda s: len(s["readings"]) >= 2, job, 30)
        time.sleep(max(0.0, a_seen + ttl + 1.5 - time.monotonic()))
        produce(settings, [dict(a), dict(b)])
        wait_for(topics, lambda s: len(s["readings"]) >= 3 and len(s["dead"]) >= 1, job, 30)
        seen = settle(topics, 3)
    finally:
        code = job.stop() if job.proc and job.proc.poll() is None else None
    assert code == 0, job.text()[-3000:]
    readings = [R.Reading.from_json(v).timestamp - BASE for _, v in seen["readings"]]
    assert readings == [10, 160, 10]
    (dup,) = [R.DeadLetter.from_json(v) for _, v in seen["dead"]]
    assert (dup.reason, dup.detail) == (
        R.DUPLICATE,
        "201:P1 at 2024-01-01 00:02:40 already taken in",
    )


def test_a_backlog_on_several_partitions_makes_no_reading_late(
    stack_settings: Settings, tmp_path: Path, topics_of: Callable[[Settings], dict[str, Topic]]
) -> None:
    """Six hours of two sensors waiting on two raw partitions when the job starts (a
    restart after downtime): the job reads them a fetch at a time, one partition's
    records after the other's. The watermark is each partition's own, the least going
    on, so nothing is late and every window counts all four of its readings. (With one
    watermark after the split, in arrival order, the first partition's six hours made
    the second's readings late.)"""
    settings, config = job_settings(stack_settings, tmp_path, "at-least-once", 2000, 2)
    hours, step = 6, 150
    for partition, sensor in enumerate((201, 202)):
        records: list[dict[str, Any] | str] = [
            feed_record(sensor, BASE + t, {"P1": f"{10 + t % 7}", "P2": "5"})
            for t in range(0, hours * 3600, step)
        ]
        # An hour later: moves this partition's watermark past the last window.
        records.append(feed_record(sensor, BASE + (hours + 1) * 3600, {"P1": "1"}))
        produce(settings, records, partition=partition)
    windows = hours * 3600 // R.AGGREGATE_WINDOW_S
    readings = 2 * (hours * 3600 // step * 2 + 1)
    topics = topics_of(settings)
    job = Job(settings, config, tmp_path / "job.log")
    job.start()
    try:
        wait_for(
            topics,
            lambda s: len(s["aggregates"]) >= 2 * 2 * windows and len(s["readings"]) >= readings,
            job,
            START_TIMEOUT_S,
        )
        seen = settle(topics, 4)
    finally:
        code = job.stop() if job.proc and job.proc.poll() is None else None
    assert code == 0, job.text()[-3000:]
    assert len(seen["readings"]) == readings
    letters = [R.DeadLetter.from_json(v) for _, v in seen["dead"]]
    assert Counter(d.reason for d in letters) == {}, letters[:3]
    aggs = [R.Aggregate.from_json(v) for _, v in seen["aggregates"]]
    assert len(aggs) == 2 * 2 * windows
    assert Counter(a.count for a in aggs) == {R.AGGREGATE_WINDOW_S // step: len(aggs)}
    assert {(a.sensor_id, a.measure) for a in aggs} == {
        (s, m) for s in (201, 202) for m in ("P1", "P2")
    }


def test_killed_job_resumes_from_checkpoint_without_loss_or_repeats(
    stack_settings: Settings, tmp_path: Path, topics_of: Callable[[Settings], dict[str, Topic]]
) -> None:
    settings, config = job_settings(stack_settings, tmp_path, "exactly-once", 1000)
    sensors = 20
    messages = _all_messages(sensors, 1200)
    topics = topics_of(settings)
    job = Job(settings, config, tmp_path / "job.log")
    stop_feeding = threading.Event()

    def feed(rest: list[dict[str, Any] | str]) -> None:
        # A live stream: the kill happens while records keep coming.
        for start in range(0, len(rest), 40):
            if stop_feeding.is_set():
                return
            produce(settings, rest[start : start + 40])
            time.sleep(0.25)

    produce(settings, messages[:200])
    job.start()
    try:
        wait_for(topics, lambda s: len(s["readings"]) > 0, job, START_TIMEOUT_S)
        job.track_children()
        feeder = threading.Thread(target=feed, args=(messages[200:],), daemon=True)
        feeder.start()
        time.sleep(2.0)  # mid-stream
        assert feeder.is_alive()
        k = settings.kafka
        assert job.kill_with_a_transaction_open(
            [k.readings_topic, k.dead_letter_topic, k.aggregates_topic]
        )
        assert "checkpoint completed" in job.text()
        # What the killed run left behind (its mini-cluster's folders) is in the job's
        # own temporary folder, not /tmp ...
        tmp = settings.stack.flink.tmp_dir
        left = list(tmp.glob("minicluster_*"))
        assert len(left) == 1, left
        job.start()
        feeder.join(timeout=120)
        outcomes = expected_outcomes(messages)
        want_readings = Counter(
            (o.key, o.timestamp, o.value) for o in outcomes if isinstance(o, R.Reading)
        )
        want_letters = Counter((o.reason, o.values) for o in outcomes if isinstance(o, R.Rejection))
        max_ts = BASE + (len(messages) // sensors - 1) * 60
        f = settings.flink
        want_aggs = _expected_aggregates(
            outcomes, max_ts - f.watermark_out_of_orderness_s - f.allowed_lateness_s
        )
        wait_for(
            topics,
            lambda s: (
                len(s["readings"]) >= sum(want_readings.values())
                and len(s["aggregates"]) >= len(want_aggs)
            ),
            job,
            START_TIMEOUT_S,
        )
        seen = settle(topics, 5)
        # ... and the next start removed it: the running JVM's own are there (with the
        # table planner's 43 MB jar, which a JVM killed outright leaves), nothing else.
        now = list(tmp.glob("minicluster_*"))
        assert len(now) == 1 and now != left, (left, now)
        assert len(list(tmp.glob("flink-table-planner_*.jar"))) == 1
    finally:
        stop_feeding.set()
        # kill -9 on the driver alone: its JVM exits with it (flink/job.py: the JVM
        # watches the driver's pipe), and Job.stop asserts no process of the job is
        # left. Everything was committed during the settle above.
        code = job.stop(signal.SIGKILL) if job.proc and job.proc.poll() is None else None
    assert code == -signal.SIGKILL, job.text()[-3000:]
    resumed = job.text().split("flink job starting")[-1]
    assert "resume_from=" in resumed and "/chk-" in resumed.split("resume_from=")[1][:300]

    # The committed view decided from the log's own transaction markers, not from the
    # broker's aborted-transaction list (which tansu leaves empty, so its read_committed
    # readers also get aborted records): a repeat here is one the job committed twice.
    logs = {
        name: read_committed_by_markers(k, topic)
        for name, topic in (
            ("readings", k.readings_topic),
            ("dead", k.dead_letter_topic),
            ("aggregates", k.aggregates_topic),
        )
    }
    got = Counter(
        (r.key, r.timestamp, r.value)
        for r in (R.Reading.from_json(v) for _, v in _decoded(logs["readings"].committed))
    )
    letters = Counter(
        (d.reason, d.values)
        for d in (R.DeadLetter.from_json(v) for _, v in _decoded(logs["dead"].committed))
    )
    aggs = Counter(
        (a.key, a.window_start, a.count, round(a.mean, 9))
        for a in (R.Aggregate.from_json(v) for _, v in _decoded(logs["aggregates"].committed))
    )
    # Nothing lost, nothing repeated, no aggregate counting a value twice.
    assert got == want_readings, (sum((got - want_readings).values()), got - want_readings)
    assert letters == want_letters, letters - want_letters
    assert aggs == want_aggs, aggs - want_aggs
    # The kill hit open transactions: the restarted job aborted (fenced) the killed
    # run's, and what a plain read_committed consumer saw beyond the committed view is
    # no more than those aborted records.
    assert sum(log.transactions["abort"] for log in logs.values()) >= 1, logs
    for name, log in logs.items():
        extra = len(seen[name]) - len(log.committed)
        assert 0 <= extra <= log.aborted + log.open, (name, extra, log.aborted, log.open)


def _decoded(rows: list[tuple[bytes | None, bytes]]) -> list[tuple[str | None, str]]:
    return [(key.decode() if key is not None else None, value.decode()) for key, value in rows]


def _all_messages(sensors: int, count: int) -> list[dict[str, Any] | str]:
    """``count`` records of ``sensors`` sensors a minute apart; every 97th P1 is NaN."""
    out: list[dict[str, Any] | str] = []
    for i in range(count):
        ts = BASE + (i // sensors) * 60
        p1 = "nan" if i % 97 == 0 else str(i % 50)
        out.append(feed_record(200 + i % sensors, ts, {"P1": p1, "P2": str(i % 30)}))
    return out


def _expected_aggregates(
    outcomes: list[R.Reading | R.Rejection], watermark_s: int
) -> Counter[tuple[str, int, int, float]]:
    """Windows the final watermark has closed, computed with the domain's Aggregate."""
    groups: dict[tuple[str, int], list[R.Reading]] = {}
    for o in outcomes:
        if isinstance(o, R.Reading):
            groups.setdefault((o.key, R.window_start(o.timestamp)), []).append(o)
    return Counter(
        (key, start, a.count, round(a.mean, 9))
        for (key, start), rs in groups.items()
        if start + R.AGGREGATE_WINDOW_S <= watermark_s
        for a in [R.Aggregate.of(rs, start)]
    )


def test_flink_python_is_there() -> None:
    # Not a skip: without the Flink virtualenv the tests above cannot pass either.
    assert FLINK_PYTHON.is_file(), "run `make setup` to build .venv-flink"
    assert os.access(FLINK_PYTHON, os.X_OK)


def test_the_deduped_readings_are_read_once_for_the_readings_and_late_letters(
    tmp_path: Path,
) -> None:
    """The readings and the late letters both read the deduped readings (FirstSeen's
    output): the plan converts them once and reuses the scan for both. No SQL operator
    keeps state: the dedupe and the windows are the JVM functions before the SQL, and
    the aggregates' statement only writes what Windows made."""
    config = tmp_path / "flink.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "stack": {
                    "flink": {"log_dir": str(tmp_path / "log"), "tmp_dir": str(tmp_path / "tmp")}
                }
            }
        )
    )
    done = subprocess.run(
        [str(FLINK_PYTHON), "-m", "flink.job", "--explain", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plan = done.stdout.split("== Optimized Execution Plan ==")[1]
    sinks = [line.split("]")[0] for line in plan.splitlines() if line.startswith("Sink(")]
    assert sinks == [
        f"Sink(table=[default_catalog.default_database.{table}"
        for table in ("readings_sink", "aggregates_sink", "dead_letter_sink")
    ], sinks
    for stateful in ("OverAggregate(", "Deduplicate(", "WindowAggregate(", "GroupAggregate("):
        assert stateful not in plan, plan
    scans = [line for line in plan.splitlines() if line.startswith("TableSourceScan(")]
    assert len(scans) == 1 and "reuse_id=[1]" in scans[0], plan
    assert plan.count("Reused(reference_id=[1])") == 2, plan
