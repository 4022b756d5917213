"""The Kafka clients against the real local broker: every codec ``kafka.compression``
allows is written by both producers (librdkafka, kafka-python) and read back, byte for
byte, by both consumers. (The Flink job's Java client writes the default codec in the
Flink tests.)"""

from __future__ import annotations

import time
from typing import get_args

import pytest
from kafka import TopicPartition

from aircast import kafka
from aircast.settings import KafkaSettings, Settings

CODECS = get_args(KafkaSettings.model_fields["compression"].annotation)
PER_PRODUCER = 2_000


def _values(codec: str, writer: str) -> list[bytes]:
    # JSON of the shape the stages send, so a codec has something to compress.
    return [
        b'{"sensor_id": %d, "measure": "pm10", "value": %d.5, "codec": "%s", "by": "%s"}'
        % (i, i % 97, codec.encode(), writer.encode())
        for i in range(PER_PRODUCER)
    ]


def _kafka_python_read(settings: KafkaSettings, topic: str, expected: int) -> list[bytes]:
    consumer = kafka.consumer(settings, group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(r.value for r in records)
        return got
    finally:
        consumer.close()


def test_zstd_is_the_default() -> None:
    assert KafkaSettings().compression == "zstd"
    assert set(CODECS) == {"none", "gzip", "lz4", "zstd"}


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_is_written_and_read_by_every_client(
    stack_settings: Settings, topic: str, codec: str
) -> None:
    settings = stack_settings.kafka.model_copy(update={"compression": codec})
    kafka.ensure_topics(settings, [topic])
    start_ms = int(time.time() * 1000) - 1_000

    fast = kafka.Producer(settings)
    for value in _values(codec, "librdkafka"):
        fast.send(topic, value, key=value[:20])
    fast.flush()
    slow = kafka.producer(settings)
    for value in _values(codec, "kafka-python"):
        slow.send(topic, value, key=value[:20])
    slow.flush()
    slow.close()

    expected = sorted(_values(codec, "librdkafka") + _values(codec, "kafka-python"))
    scanned = sorted(m.value() for m in kafka.scan(settings, topic, start_ms))
    assert scanned == expected
    assert sorted(_kafka_python_read(settings, topic, len(expected))) == expected


def test_end_offsets_count_every_record_of_the_last_batch(
    stack_settings: Settings, topic: str
) -> None:
    """A one-shot read stops at the end offsets at its start, so they must be exact:
    with the last batch holding several records, the broker's ListOffsets answer falls
    short of the end (tansu answers that batch's base offset + 1), and
    :func:`kafka.end_offsets` still gives the offset after its last record; an empty
    partition ends at 0."""
    import confluent_kafka

    settings = stack_settings.kafka
    kafka.ensure_topics(settings, [topic])
    producer = kafka.producer(settings, linger_ms=200)
    for i in range(4):  # one batch of four records...
        producer.send(topic, key=b"k", value=b"first %d" % i, partition=0)
    producer.flush()
    for i in range(6):  # ...then one of six
        producer.send(topic, key=b"k", value=b"second %d" % i, partition=0)
    producer.flush()
    producer.close()

    probe = kafka.fast_consumer(settings, "probe")
    try:
        listed = probe.get_watermark_offsets(
            confluent_kafka.TopicPartition(topic, 0), timeout=10, cached=False
        )[1]
    finally:
        probe.close()
    ends = kafka.end_offsets(settings, [(topic, 0), (topic, 1)])
    assert ends == {(topic, 0): 10, (topic, 1): 0}
    # What made a one-shot collector stop short: the broker's own answer is less.
    assert listed < 10, listed
