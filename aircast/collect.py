"""Collection: readings and aggregates from Kafka into InfluxDB, in batches.

Shapes: the readings topic carries :class:`~aircast.records.Reading` JSON (→ one point
in the raw database per value, at the reading's own time); the aggregates topic carries
:class:`~aircast.records.Aggregate` JSON (→ one point in the aggregates database at the
window's start).

Delivery: :class:`InfluxSink` follows add / write(batch) / flush. The collector commits
Kafka offsets only after every sink flushed (InfluxDB acknowledged the batches) and
the dead letters were acknowledged, so a crash replays the uncommitted tail
(at-least-once). A replayed point has the same measurement, tags and time, so InfluxDB
overwrites it: nothing is written twice (effectively exactly-once end to end).

Writes are synchronous on purpose: a writer thread overlapping them with decoding is
slower per write, not faster (the GIL starves the thread's HTTP round trips);
parallelism comes from several collector actors instead.

Bad input, each kept with its reason in the dead-letter topic:

* a message that is not a reading/aggregate → ``undecodable``;
* a point older than its database's retention (InfluxDB would drop it) →
  ``beyond_retention``;
* a point InfluxDB refuses on its own (HTTP 400) → ``storage_rejected`` (found by
  splitting the failed batch in halves; the rest of the batch is written).

InfluxDB down or overloaded: writes are retried with backoff, consumption pauses
(partitions paused, nothing more is buffered: memory is bounded by
``collect.max_buffered``), nothing is dropped, and it resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import confluent_kafka
from confluent_kafka import OFFSET_STORED, TopicPartition
from kafka import KafkaProducer

from aircast import tuning
from aircast.deadletters import DeadLetters
from aircast.errors import BackpressureError, InvalidRecord, StorageError
from aircast.influx import InfluxV1, duration_seconds
from aircast.kafka import end_offsets, fast_consumer
from aircast.kafka import producer as make_producer
from aircast.records import (
    BEYOND_RETENTION,
    STORAGE_REJECTED,
    UNDECODABLE,
    Aggregate,
    Reading,
)
from aircast.retry import Backoff, retrying
from aircast.settings import Settings

log = logging.getLogger(__name__)


class Origin(Protocol):
    """Where a point came from: the Kafka message itself (confluent-kafka's Message),
    kept beside its line instead of copying its fields into a new object per point;
    read only when the point becomes a dead letter."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


def source_of(topic: str | None, partition: int | None, offset: int | None) -> str:
    """Where a dead letter's message was: ``topic/partition/offset`` (for the audit)."""
    return f"{topic}/{partition}/{offset}"


def _text_key(key: bytes | None) -> str | None:
    return key.decode(errors="replace") if key else None


class InfluxSink:
    """Batches line protocol for one database: add / write(batch) / flush."""

    def __init__(
        self,
        influx: InfluxV1,
        database: str,
        batch_size: int,
        on_rejected: Callable[[Origin, str], None],
    ) -> None:
        self.influx = influx
        self.database = database
        self.batch_size = batch_size
        self.on_rejected = on_rejected
        # Two parallel lists, not a list of pairs: no object built per point.
        self.lines: list[str] = []
        self.origins: list[Origin] = []

    def __len__(self) -> int:
        return len(self.lines)

    def add(self, line: str, origin: Origin) -> None:
        self.lines.append(line)
        self.origins.append(origin)

    def write(self, lines: list[str], origins: list[Origin]) -> int:
        """One HTTP write; a 400 is narrowed down to the points InfluxDB refuses.
        Returns how many points InfluxDB took."""
        try:
            self.influx.write(lines, self.database, precision="s")
        except BackpressureError:
            raise
        except StorageError as exc:
            if exc.status != 400:
                raise
            if "partial write" in str(exc) and "beyond retention" in str(exc):
                # Pre-filtered by the collector; a clock edge can still hit it.
                log.warning(
                    "influx dropped points beyond retention db=%s detail=%s", self.database, exc
                )
                return 0
            if len(lines) == 1:
                self.on_rejected(origins[0], str(exc))
                return 0
            mid = len(lines) // 2
            return self.write(lines[:mid], origins[:mid]) + self.write(lines[mid:], origins[mid:])
        return len(lines)

    def flush(self) -> int:
        """Write everything buffered, in batches (what was written leaves the buffer, so
        a failed flush retried later writes only the rest); returns the number of points
        InfluxDB took."""
        written = 0
        while self.lines:
            n = self.batch_size
            written += self.write(self.lines[:n], self.origins[:n])
            del self.lines[:n]
            del self.origins[:n]
        return written


@dataclass
class CollectStats:
    messages: int = 0
    points: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    flushes: int = 0
    max_buffered: int = 0
    storage_failures: int = 0
    # Offsets a fetch skipped and a second read found (see Collector.poll_once).
    refetched: int = 0
    lag: dict[str, int] = field(default_factory=dict)
    last_write_at: float = 0.0  # wall clock of the last good flush (benchmarks)


class Collector:
    """One collector's loop over its assigned partitions (no Ray in here)."""

    def __init__(
        self,
        settings: Settings,
        partitions: list[tuple[str, int]],
        *,
        consumer: confluent_kafka.Consumer | None = None,
        producer: KafkaProducer | None = None,
    ) -> None:
        self.settings = settings
        cfg = settings.collect
        self.consumer = consumer or fast_consumer(settings.kafka, cfg.group_id)
        self.tps = [TopicPartition(t, p) for t, p in partitions]
        # End and committed offsets (lag, a one-shot run's floors) are asked through a
        # client of their own that never fetches: on the consuming client each query
        # waits behind a fetch's long poll on the broker connection (up to
        # fetch.wait.max.ms, 500 ms, per partition), and the loop stands still meanwhile.
        self.offsets = fast_consumer(settings.kafka, cfg.group_id)
        # Each partition starts at the group's committed offset (earliest if none).
        self.consumer.assign([TopicPartition(t, p, OFFSET_STORED) for t, p in partitions])
        # Next offset to read per partition, as taken by this collector: what is
        # committed after a good flush.
        self.positions: dict[tuple[str, int], int] = {}
        # Per partition, the gap last read again: (first missing offset, offset got).
        self._reread: dict[tuple[str, int], tuple[int, int]] = {}
        self.producer = producer or make_producer(settings.kafka)
        self.dead = DeadLetters(self.producer, settings.kafka.dead_letter_topic, "collect")
        self.influx = InfluxV1(settings.influx)
        # Created here when InfluxDB answers, else before the first flush (inside its
        # retry loop): a collector must start while InfluxDB is down.
        self._databases_ready = False
        try:
            self.influx.ensure_databases()
            self._databases_ready = True
        except StorageError as exc:
            log.warning("influx not ready at start; databases created on first flush error=%s", exc)
        s = settings.influx
        self.sinks = {
            settings.kafka.readings_topic: InfluxSink(
                self.influx, s.raw_database, cfg.batch_size, self._rejected
            ),
            settings.kafka.aggregates_topic: InfluxSink(
                self.influx, s.aggregates_database, cfg.batch_size, self._rejected
            ),
        }
        self.retention = {
            settings.kafka.readings_topic: duration_seconds(s.raw_retention),
            settings.kafka.aggregates_topic: duration_seconds(s.aggregates_retention),
        }
        self.readings_topic = settings.kafka.readings_topic
        self.stats = CollectStats()
        self.stopping = False
        self._last_flush = time.monotonic()
        self._uncommitted = 0  # messages taken since the last commit
        self._caught_up = False  # the last poll found nothing new

    def close(self) -> None:
        self.consumer.close()  # auto-commit is off: closing commits nothing
        self.offsets.close()
        self.producer.close()
        self.influx.close()

    # -- per message ---------------------------------------------------------------

    def _rejected(self, origin: Origin, reason_detail: str) -> None:
        source = source_of(origin.topic(), origin.partition(), origin.offset())
        self.dead.add(
            STORAGE_REJECTED,
            reason_detail,
            origin.value() or b"",
            key=_text_key(origin.key()),
            source=source,
        )
        self._count_rejected(STORAGE_REJECTED)

    def take(self, message: Origin, topic: str, now: float) -> None:
        """One message (not an error event) of ``topic`` to its sink, or to the dead
        letters; ``now`` is the wall clock for the retention check."""
        value = message.value()
        if value is None:  # a tombstone: nothing to decode, kept as a dead letter
            self._dead(UNDECODABLE, "null value", b"", message)
            return
        try:
            if topic == self.readings_topic:
                line, when = Reading.line_of_json(value)
            else:
                aggregate = Aggregate.from_json(value)
                line, when = aggregate.line(), aggregate.window_start
        except InvalidRecord as exc:
            self._dead(exc.reason, exc.detail, value, message)
            return
        keep = self.retention[topic]
        if keep is not None and when < now - keep:
            detail = f"time {when} older than {keep}s retention"
            self._dead(BEYOND_RETENTION, detail, value, message)
            return
        self.sinks[topic].add(line, message)

    def _dead(self, reason: str, detail: str, value: bytes, origin: Origin) -> None:
        self._count_rejected(reason)
        source = source_of(origin.topic(), origin.partition(), origin.offset())
        self.dead.add(reason, detail, value, key=_text_key(origin.key()), source=source)

    def _count_rejected(self, reason: str) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1

    # -- the loop ------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return sum(len(s) for s in self.sinks.values())

    def poll_once(self) -> int:
        # librdkafka's batch consume waits for the whole count or the timeout, so take
        # what is already fetched without waiting, and wait only when nothing is.
        messages = self.consumer.consume(num_messages=self._room(), timeout=0)
        if not messages:
            messages = self.consumer.consume(num_messages=1, timeout=0.2)
        n = 0
        positions = self.positions
        now = time.time()  # one clock read per poll for the retention check
        take = self.take
        reread: set[tuple[str, int]] = set()
        for m in messages:
            error = m.error()
            if error is not None:
                # Transient broker/partition conditions; librdkafka retries by itself.
                log.warning("kafka consume error: %s", error)
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            # Set on every message without an error (typed Optional for error events).
            assert topic is not None and partition is not None and offset is not None
            key = (topic, partition)
            if key in reread:
                continue  # read again from the gap: these come again after it
            expected = positions.get(key)
            if expected is not None and offset > expected and self._gap(key, expected, offset):
                reread.add(key)
                continue
            if key in self._reread and offset == self._reread[key][0]:
                self._recovered(key)
            take(m, topic, now)
            positions[key] = offset + 1
            n += 1
        self.stats.messages += n
        self._uncommitted += n
        self._caught_up = n == 0
        self.stats.max_buffered = max(self.stats.max_buffered, self.buffered)
        return n

    def _gap(self, key: tuple[str, int], expected: int, offset: int) -> bool:
        """A message past the next offset: read the partition again from that offset
        (True), once per gap. A gap is normal where a transactional producer wrote (its
        commit markers, and aborted records under read_committed, take offsets); but a
        broker (the local one, tansu) can answer a fetch past a whole batch that is
        there, and committing past it would lose those records without a word. Read
        again, a skipped batch comes; real gaps come back the same, and are then taken
        as they are."""
        topic, partition = key
        if key in self._reread and self._reread[key][0] == expected:
            log.debug("gap kept topic=%s partition=%d offsets=%d..%d", *key, expected, offset - 1)
            return False
        self._reread[key] = (expected, offset)
        self.consumer.seek(TopicPartition(topic, partition, expected))
        log.debug(
            "gap topic=%s partition=%d expected=%d got=%d: reading again from %d",
            topic,
            partition,
            expected,
            offset,
            expected,
        )
        return True

    def _recovered(self, key: tuple[str, int]) -> None:
        first, got = self._reread.pop(key)
        self.stats.refetched += got - first
        log.warning(
            "fetch skipped topic=%s partition=%d offsets=%d..%d; read again, they came",
            *key,
            first,
            got - 1,
        )

    def _room(self) -> int:
        return max(1, self.settings.collect.max_buffered - self.buffered)

    def due(self) -> bool:
        cfg = self.settings.collect
        if self.buffered >= cfg.batch_size or self.buffered >= cfg.max_buffered:
            return True
        if self._uncommitted == 0:
            return False
        # Caught up with the topics: nothing to wait for (linger batches a busy stream).
        linger = cfg.linger_ms / 1000
        return self._caught_up or time.monotonic() - self._last_flush >= linger

    def flush(self) -> None:
        """Flush every sink and the dead letters, then commit the consumed offsets.

        On a storage failure consumption pauses and the flush is retried under
        :mod:`aircast.retry` (exponential backoff with jitter; after back-pressure, the
        server's ``retry_after``) until it succeeds or the collector is stopped (then
        the error is raised, nothing is committed, and the tail is replayed by whoever
        takes these partitions next).
        """
        paused = False

        def failed(_exc: BaseException | None) -> None:
            nonlocal paused
            self.stats.storage_failures += 1
            if not paused:
                self.consumer.pause(self.tps)
                paused = True

        backoff_s = self.settings.influx.backoff_s
        policy = retrying(
            backoff=Backoff(backoff_s, max(backoff_s, tuning.COLLECT_MAX_BACKOFF_S)),
            retry_on=lambda exc: isinstance(exc, StorageError),
            stop_when=lambda: self.stopping,
            on_failure=failed,
            log=log,
            event=lambda: f"influx write failed buffered={self.buffered}",
        )
        policy(self._flush_sinks)
        self.producer.flush()  # dead letters acknowledged before offsets move
        if self.positions:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in self.positions.items()],
                asynchronous=False,
            )
        if paused:
            self.consumer.resume(self.tps)
            log.info("influx writes resumed")
        self.stats.flushes += 1
        self.stats.last_write_at = time.time()
        self._uncommitted = 0
        self._last_flush = time.monotonic()

    def _flush_sinks(self) -> None:
        if not self._databases_ready:
            self.influx.ensure_databases()
            self._databases_ready = True
        for sink in self.sinks.values():
            done = sink.flush()
            if done:
                self.stats.points[sink.database] = self.stats.points.get(sink.database, 0) + done

    def _floors(self) -> dict[tuple[str, int], int]:
        """End offset at the start of each partition with something left to read."""
        committed = {
            (c.topic, c.partition): c.offset for c in self.offsets.committed(self.tps, timeout=10)
        }
        ends = end_offsets(self.settings.kafka, [(tp.topic, tp.partition) for tp in self.tps])
        return {key: end for key, end in ends.items() if end > max(committed.get(key, -1), 0)}

    def _still_below(self, floors: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        if not floors:
            return floors
        # Consumer positions, not taken offsets: they also pass transaction markers.
        now_at = self.consumer.position([TopicPartition(t, p) for t, p in floors])
        at = {(tp.topic, tp.partition): tp.offset for tp in now_at}
        return {k: end for k, end in floors.items() if at.get(k, -1) < end}

    def update_lag(self) -> dict[str, int]:
        unknown = [tp for tp in self.tps if (tp.topic, tp.partition) not in self.positions]
        start = {
            (c.topic, c.partition): max(c.offset, 0)
            for c in (self.offsets.committed(unknown, timeout=10) if unknown else [])
        }
        lag: dict[str, int] = {}
        for tp in self.tps:
            key = (tp.topic, tp.partition)
            at = self.positions.get(key, start.get(key, 0))
            _, end = self.offsets.get_watermark_offsets(tp, timeout=10, cached=False)
            behind = max(0, end - at)  # tansu's end offset can trail commits: clamp at 0
            lag[tp.topic] = lag.get(tp.topic, 0) + behind
        self.stats.lag = lag
        return lag

    def run(
        self,
        *,
        until_idle_s: float | None = None,
        report: Callable[[], None] | None = None,
        report_every_s: float = 5.0,
    ) -> CollectStats:
        """Loop until stopped (or, with ``until_idle_s``, until polls brought nothing
        for that long and everything is flushed: used by tests and one-shot runs).
        ``report`` is called every ``report_every_s`` and at the end (metrics).

        A one-shot run first reads every partition up to its end offset at the start
        (:func:`aircast.kafka.end_offsets`), whatever ``until_idle_s``: a first fetch
        slower than that (a busy or fresh broker) must not end it before everything
        there was read. It stops waiting for those ends after ``tuning.KAFKA_STALL_S``
        without a message, with a warning."""
        floors = self._floors() if until_idle_s is not None else {}
        idle_since = time.monotonic()
        last_report = time.monotonic()
        while not self.stopping:
            if self.poll_once():
                idle_since = time.monotonic()
            if self.due():
                self.flush()
                idle_since = time.monotonic()  # time spent flushing is not idleness
            if report is not None and time.monotonic() - last_report >= report_every_s:
                report()
                last_report = time.monotonic()
            if until_idle_s is not None:
                floors = self._still_below(floors)
                limit = tuning.KAFKA_STALL_S if floors else until_idle_s
                if time.monotonic() - idle_since >= limit:
                    if floors:
                        log.warning("stopped short of the end offsets at start: %s", floors)
                    break
        if self._uncommitted:
            self.flush()
        if report is not None:
            report()
        return self.stats
