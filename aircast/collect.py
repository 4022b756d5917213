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

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from aircast.deadletters import DeadLetters
from aircast.errors import BackpressureError, InvalidRecord, StorageError
from aircast.influx import InfluxV1, duration_seconds
from aircast.kafka import consumer as make_consumer
from aircast.kafka import producer as make_producer
from aircast.records import BEYOND_RETENTION, STORAGE_REJECTED, Aggregate, Reading
from aircast.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A point waiting for its batch, with where it came from (for dead letters)."""

    line: str
    payload: bytes
    key: str | None
    source: str


class InfluxSink:
    """Batches line protocol for one database: add / write(batch) / flush."""

    def __init__(
        self,
        influx: InfluxV1,
        database: str,
        batch_size: int,
        on_rejected: Callable[[Pending, str], None],
    ) -> None:
        self.influx = influx
        self.database = database
        self.batch_size = batch_size
        self.on_rejected = on_rejected
        self.buffer: list[Pending] = []

    def add(self, pending: Pending) -> None:
        self.buffer.append(pending)

    def write(self, batch: list[Pending]) -> int:
        """One HTTP write; a 400 is narrowed down to the points InfluxDB refuses.
        Returns how many points InfluxDB took."""
        try:
            self.influx.write([p.line for p in batch], self.database, precision="s")
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
            if len(batch) == 1:
                self.on_rejected(batch[0], str(exc))
                return 0
            mid = len(batch) // 2
            return self.write(batch[:mid]) + self.write(batch[mid:])
        return len(batch)

    def flush(self) -> int:
        """Write everything buffered (the buffer is kept if a write fails); returns the
        number of points InfluxDB took."""
        written = 0
        while self.buffer:
            batch = self.buffer[: self.batch_size]
            written += self.write(batch)
            del self.buffer[: len(batch)]
        return written


@dataclass
class CollectStats:
    messages: int = 0
    points: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    flushes: int = 0
    max_buffered: int = 0
    storage_failures: int = 0
    lag: dict[str, int] = field(default_factory=dict)


class Collector:
    """One collector's loop over its assigned partitions (no Ray in here)."""

    def __init__(
        self,
        settings: Settings,
        partitions: list[tuple[str, int]],
        *,
        consumer: KafkaConsumer | None = None,
        producer: KafkaProducer | None = None,
    ) -> None:
        self.settings = settings
        cfg = settings.collect
        self.consumer = consumer or make_consumer(
            settings.kafka,
            group_id=cfg.group_id,
            max_poll_records=min(cfg.batch_size, cfg.max_buffered),
        )
        self.tps = [TopicPartition(t, p) for t, p in partitions]
        self.consumer.assign(self.tps)
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
        self.stats = CollectStats()
        self.stopping = False
        self._last_flush = time.monotonic()
        self._uncommitted = 0  # messages taken since the last commit

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.producer.close()
        self.influx.close()

    # -- per message ---------------------------------------------------------------

    def _rejected(self, pending: Pending, reason_detail: str) -> None:
        self.dead.add(
            STORAGE_REJECTED, reason_detail, pending.payload, key=pending.key, source=pending.source
        )
        self.stats.rejected[STORAGE_REJECTED] = self.stats.rejected.get(STORAGE_REJECTED, 0) + 1

    def take(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes
    ) -> None:
        source = f"{topic}/{partition}/{offset}"
        text_key = key.decode(errors="replace") if key else None
        try:
            point: Reading | Aggregate = (
                Reading.from_json(value)
                if topic == self.settings.kafka.readings_topic
                else Aggregate.from_json(value)
            )
        except InvalidRecord as exc:
            self._count_rejected(exc.reason)
            self.dead.add(exc.reason, exc.detail, value, key=text_key, source=source)
            return
        when = point.timestamp if isinstance(point, Reading) else point.window_start
        keep = self.retention[topic]
        if keep is not None and when < time.time() - keep:
            self._count_rejected(BEYOND_RETENTION)
            self.dead.add(
                BEYOND_RETENTION,
                f"time {when} older than {keep}s retention",
                value,
                key=text_key,
                source=source,
            )
            return
        self.sinks[topic].add(Pending(point.line(), value, text_key, source))

    def _count_rejected(self, reason: str) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1

    # -- the loop ------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return sum(len(s.buffer) for s in self.sinks.values())

    def poll_once(self) -> int:
        batch = self.consumer.poll(timeout_ms=200, max_records=self._room())
        n = 0
        for tp, messages in batch.items():
            for m in messages:
                self.take(tp.topic, tp.partition, m.offset, m.key, m.value)
                n += 1
        self.stats.messages += n
        self._uncommitted += n
        self.stats.max_buffered = max(self.stats.max_buffered, self.buffered)
        return n

    def _room(self) -> int:
        return max(1, self.settings.collect.max_buffered - self.buffered)

    def due(self) -> bool:
        cfg = self.settings.collect
        if self.buffered >= cfg.batch_size or self.buffered >= cfg.max_buffered:
            return True
        linger = cfg.linger_ms / 1000
        return self._uncommitted > 0 and time.monotonic() - self._last_flush >= linger

    def flush(self) -> None:
        """Flush every sink and the dead letters, then commit the consumed offsets.

        On a storage failure consumption pauses and the flush is retried with backoff
        until it succeeds or the collector is stopped (then nothing is committed and
        the tail is replayed by whoever takes these partitions next).
        """
        delay = self.settings.influx.backoff_s
        paused = False
        while True:
            try:
                if not self._databases_ready:
                    self.influx.ensure_databases()
                    self._databases_ready = True
                for sink in self.sinks.values():
                    done = sink.flush()
                    if done:
                        self.stats.points[sink.database] = (
                            self.stats.points.get(sink.database, 0) + done
                        )
                break
            except StorageError as exc:
                self.stats.storage_failures += 1
                if not paused:
                    self.consumer.pause(*self.tps)
                    paused = True
                wait = exc.retry_after if isinstance(exc, BackpressureError) else delay
                log.warning(
                    "influx write failed buffered=%d retry_in=%.1fs error=%s",
                    self.buffered,
                    wait,
                    exc,
                )
                if self.stopping:
                    raise
                time.sleep(wait)
                delay = min(delay * 2, 30.0)
        self.producer.flush()  # dead letters acknowledged before offsets move
        offsets = {tp: OffsetAndMetadata(self.consumer.position(tp), "", -1) for tp in self.tps}
        self.consumer.commit(offsets)
        if paused:
            self.consumer.resume(*self.tps)
            log.info("influx writes resumed")
        self.stats.flushes += 1
        self._uncommitted = 0
        self._last_flush = time.monotonic()

    def update_lag(self) -> dict[str, int]:
        ends = self.consumer.end_offsets(self.tps)
        lag: dict[str, int] = {}
        for tp in self.tps:
            behind = max(0, ends[tp] - self.consumer.position(tp))
            lag[tp.topic] = lag.get(tp.topic, 0) + behind
        self.stats.lag = lag
        return lag

    def run(self, *, until_idle_s: float | None = None) -> CollectStats:
        """Loop until stopped (or, with ``until_idle_s``, until nothing came for that
        long and everything is flushed: used by tests and one-shot runs)."""
        idle_since = time.monotonic()
        while not self.stopping:
            if self.poll_once():
                idle_since = time.monotonic()
            if self.due():
                self.flush()
            if until_idle_s is not None and time.monotonic() - idle_since >= until_idle_s:
                break
        if self._uncommitted:
            self.flush()
        return self.stats
