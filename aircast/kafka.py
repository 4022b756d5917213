"""Kafka clients built from the settings.

kafka-python for admin, the occasional consumer and the rare producer (dead letters of
the collector, backfills); confluent-kafka (librdkafka, C) on the two hot paths, where
kafka-python's pure-Python record handling was the bound: the collector's consumer
(about 30,000 messages/s per core against librdkafka's 150,000) and the scrapers'
:class:`Producer` (a kafka-python ``send`` cost ~60 µs, more than the rest of a
record's ingest). Locally the broker is tansu (Kafka wire compatible, in memory); in
production a real Kafka cluster (Strimzi). Nothing here is tansu-specific.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import confluent_kafka
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from aircast import tuning
from aircast.errors import BrokerError, ProduceError
from aircast.settings import KafkaSettings

log = logging.getLogger(__name__)


class RepeatFilter(logging.Filter):
    """Lets the first of a run of identical lines through and holds back its repeats
    for ``window_s``; the next line of that text to pass says how many were held back.

    librdkafka logs a failure again at every reconnect: a broker away for a minute gave
    dozens of identical FAIL lines per client (each scraper, collector and the audit has
    its own), which buried the one line that mattered."""

    # Numbers that change between otherwise identical lines ("after 0ms in state ...").
    _VARYING = re.compile(r"\d+ms")

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[str, tuple[float, int]] = {}  # text → (first passed, held back)
        self._lock = threading.Lock()  # librdkafka may log from its own threads

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        key = self._VARYING.sub("", text)
        now = time.monotonic()
        with self._lock:
            passed, held = self._seen.get(key, (-self.window_s, 0))
            if now - passed < self.window_s:
                self._seen[key] = (passed, held + 1)
                return False
            if len(self._seen) >= 1_000:  # bounded: librdkafka's texts name brokers, ids
                self._seen.clear()
            self._seen[key] = (now, 0)
        if held:
            record.msg, record.args = f"{text} (and {held} like it held back)", ()
        return True


# Every librdkafka client logs through this (confluent-kafka's "logger" option).
LIBRDKAFKA_LOG = logging.getLogger("aircast.kafka.librdkafka")
LIBRDKAFKA_LOG.addFilter(RepeatFilter())


def connection_options(settings: KafkaSettings) -> dict[str, Any]:
    """The options every kafka-python client shares."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "security_protocol": settings.security_protocol,
        "client_id": settings.client_id,
    }
    if settings.ssl_ca_file:
        options["ssl_cafile"] = settings.ssl_ca_file
    if settings.sasl_mechanism:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


def producer(settings: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """A producer that waits for every replica (``acks=all``) and retries."""
    options = connection_options(settings)
    options.update(acks="all", retries=5, linger_ms=5, batch_size=256 * 1024)
    if settings.compression != "none":
        options["compression_type"] = settings.compression
    options.update(overrides)
    return KafkaProducer(**options)


def producer_options(settings: KafkaSettings) -> dict[str, Any]:
    """librdkafka producer options: every replica acknowledges (``acks=all``), and keys
    are placed as Java clients and kafka-python place them (murmur2), so a sensor's
    records keep their partition whichever client wrote them."""
    options = librdkafka_options(settings)
    options.update(
        {
            "acks": "all",
            "linger.ms": 5,
            # A message is given up (its delivery report says so) well inside
            # Producer.flush's wait: a flush that ends leaves nothing queued behind it
            # to turn up after the caller retried.
            "message.timeout.ms": 60_000,
            "partitioner": "murmur2_random",
            "compression.type": settings.compression,
        }
    )
    return options


class Producer:
    """A librdkafka producer with the two calls the stages use: :meth:`send` and
    :meth:`flush`. Delivery reports are collected as they arrive; ``flush`` waits for
    every message sent so far and raises :class:`ProduceError` if any was refused or
    not acknowledged, so a caller marks nothing done that the broker does not hold."""

    def __init__(self, settings: KafkaSettings, **overrides: Any) -> None:
        options = producer_options(settings)
        options.update(overrides)
        self._producer = confluent_kafka.Producer(options)
        self._failed: list[str] = []

    def _report(self, error: confluent_kafka.KafkaError | None, message: Any) -> None:
        if error is not None:
            self._failed.append(f"{message.topic()}: {error.str()}")

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value, key, on_delivery=self._report, timestamp=timestamp_ms or 0
                )
                return
            except BufferError:
                # librdkafka's local queue is full: serve delivery reports until it drains.
                self._producer.poll(0.05)

    def flush(self, timeout_s: float = 120.0) -> None:
        pending = self._producer.flush(timeout_s)
        failed, self._failed = self._failed, []
        if failed:
            raise ProduceError(f"{len(failed)} message(s) not stored; the first: {failed[0]}")
        if pending:
            raise ProduceError(f"{pending} message(s) not acknowledged within {timeout_s:.0f} s")

    def close(self) -> None:
        self.flush()


def consumer(settings: KafkaSettings, *topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer with manual commits: callers commit only after a good flush."""
    options = connection_options(settings)
    options.update(
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    options.update(overrides)
    return KafkaConsumer(*topics, **options)


def librdkafka_options(settings: KafkaSettings) -> dict[str, Any]:
    """The same connection settings in librdkafka's vocabulary (confluent-kafka)."""
    options: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol.lower(),
        "client.id": settings.client_id,
        "logger": LIBRDKAFKA_LOG,
    }
    if settings.ssl_ca_file:
        options["ssl.ca.location"] = settings.ssl_ca_file
    if settings.sasl_mechanism:
        options["sasl.mechanism"] = settings.sasl_mechanism
        options["sasl.username"] = settings.sasl_username or ""
        if settings.sasl_password is not None:
            options["sasl.password"] = settings.sasl_password.get_secret_value()
    return options


def fast_consumer(
    settings: KafkaSettings, group_id: str, **overrides: Any
) -> confluent_kafka.Consumer:
    """A librdkafka consumer with manual commits (callers commit after a good flush);
    partitions are assigned by the caller, so the group only stores offsets."""
    options = librdkafka_options(settings)
    options.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 8 * 1024 * 1024,
            # librdkafka prefetches up to this much per partition; bounded, so a paused
            # collector holds at most this in memory besides its own buffer.
            "queued.max.messages.kbytes": 16 * 1024,
        }
    )
    options.update(overrides)
    return confluent_kafka.Consumer(options)


def end_offsets(
    settings: KafkaSettings,
    partitions: Iterable[tuple[str, int]],
    *,
    timeout_s: float = 10.0,
) -> dict[tuple[str, int], int]:
    """Each partition's end offset now: the offset the next message will take.

    Read from a fetch, not from ListOffsets alone: a broker may answer ListOffsets
    "latest" with its last batch's base offset + 1 (tansu does), short of the records
    after the first in that batch, while a fetch's high watermark is exact. So each
    partition with anything in it is fetched from that answer - 1 (one batch) until
    its end-of-partition event, whose high watermark is the end. A partition that gives
    none within ``timeout_s`` keeps the ListOffsets answer, with a warning."""
    probe = fast_consumer(
        settings,
        f"{settings.client_id}-ends-{uuid.uuid4().hex[:8]}",
        **{"enable.partition.eof": True},
    )
    try:
        ends: dict[tuple[str, int], int] = {}
        starts: list[confluent_kafka.TopicPartition] = []
        for topic, partition in partitions:
            tp = confluent_kafka.TopicPartition(topic, partition)
            low, end = probe.get_watermark_offsets(tp, timeout=10, cached=False)
            ends[(topic, partition)] = end
            if end > low:
                starts.append(confluent_kafka.TopicPartition(topic, partition, end - 1))
        pending = {(tp.topic, tp.partition) for tp in starts}
        if not pending:
            return ends
        probe.assign(starts)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for m in probe.consume(num_messages=1000, timeout=0.2):
                at_topic, at_partition, offset = m.topic(), m.partition(), m.offset()
                if at_topic is None or at_partition is None or offset is None:
                    continue
                key = (at_topic, at_partition)
                error = m.error()
                if error is None:
                    ends[key] = max(ends[key], offset + 1)
                elif error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    tp = confluent_kafka.TopicPartition(at_topic, at_partition)
                    _, high = probe.get_watermark_offsets(tp, cached=True)
                    ends[key] = max(ends[key], high, offset)
                    pending.discard(key)
        if pending:
            log.warning("end offsets not confirmed by a fetch: %s", sorted(pending))
        return ends
    finally:
        probe.close()


def scan(
    settings: KafkaSettings,
    topic: str,
    since_ms: int,
    *,
    until_ms: int | None = None,
    quiet_s: float = 1.5,
) -> Iterator[confluent_kafka.Message]:
    """Every message of ``topic`` stamped in [since_ms, until_ms], read without a group
    commit (audits and tools). Ends when nothing new came for ``quiet_s`` once every
    partition was read up to its end offset at the start (:func:`end_offsets`): a first
    fetch slower than ``quiet_s`` (a busy or fresh broker) must not end the scan early.
    Gives up waiting for an end after ``tuning.KAFKA_STALL_S`` without a message."""
    consumer = fast_consumer(settings, f"{settings.client_id}-scan-{uuid.uuid4().hex[:8]}")
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                return
            wanted = [
                confluent_kafka.TopicPartition(topic, p, since_ms) for p in metadata.partitions
            ]
            starts = consumer.offsets_for_times(wanted, timeout=10)
        except confluent_kafka.KafkaException as exc:
            # A tool (the audit) must say the broker is away, not that the topic is empty.
            raise BrokerError(
                f"Kafka at {settings.bootstrap_servers} could not be read "
                f"(topic {topic}): {exc.args[0].str() if exc.args else exc}"
            ) from exc
        # -1: no message at or after since_ms in that partition.
        starts = [tp for tp in starts if tp.offset >= 0]
        if not starts:
            return
        ends = end_offsets(settings, [(topic, tp.partition) for tp in starts])
        floors: dict[int, int] = {tp.partition: ends[(topic, tp.partition)] for tp in starts}
        behind = {tp.partition for tp in starts if floors[tp.partition] > tp.offset}
        consumer.assign(starts)
        last_new = time.monotonic()
        while True:
            messages = consumer.consume(num_messages=5000, timeout=0.3)
            if behind:
                # Positions, not message offsets: they also pass transaction markers.
                now_at = consumer.position(
                    [confluent_kafka.TopicPartition(topic, p) for p in behind]
                )
                behind -= {tp.partition for tp in now_at if tp.offset >= floors[tp.partition]}
            if not messages:
                waited = time.monotonic() - last_new
                if waited >= (tuning.KAFKA_STALL_S if behind else quiet_s):
                    return
                continue
            last_new = time.monotonic()
            for m in messages:
                if m.error() is not None:
                    continue
                _, stamp = m.timestamp()
                if stamp < since_ms or (until_ms is not None and stamp > until_ms):
                    continue
                yield m
    finally:
        consumer.close()


def admin(settings: KafkaSettings) -> KafkaAdminClient:
    return KafkaAdminClient(**connection_options(settings))


def all_topics(settings: KafkaSettings) -> tuple[str, ...]:
    return (
        settings.raw_topic,
        settings.readings_topic,
        settings.aggregates_topic,
        settings.dead_letter_topic,
    )


def ensure_topics(settings: KafkaSettings, topics: Iterable[str] | None = None) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    wanted = list(topics) if topics is not None else list(all_topics(settings))
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        try:
            client.create_topics(
                [NewTopic(t, settings.partitions, settings.replication_factor) for t in missing]
            )
        except TopicAlreadyExistsError:
            pass  # another process won the race; the topic is there, which is all we need
        for t in missing:
            log.info("kafka topic ready topic=%s partitions=%d", t, settings.partitions)
    finally:
        client.close()
