"""Small test helpers shared by the test modules (real broker, no fakes)."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

from aircast.kafka import connection_options
from aircast.settings import KafkaSettings


def read_topic(
    settings: KafkaSettings,
    topic: str,
    *,
    expect: int | None = None,
    timeout_s: float = 30.0,
    quiet_s: float = 2.0,
    committed_only: bool = False,
) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) of ``topic`` from the beginning, without a consumer group.

    Stops when ``expect`` messages arrived (then waits ``quiet_s`` more to catch any
    extra: a test must see duplicates), or when nothing new came for ``quiet_s`` after
    at least one poll, or at ``timeout_s``.
    """
    consumer = KafkaConsumer(
        **connection_options(settings),
        enable_auto_commit=False,
        isolation_level="read_committed" if committed_only else "read_uncommitted",
    )
    try:
        deadline = time.monotonic() + timeout_s
        partitions: set[int] | None = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                time.sleep(0.2)
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[tuple[bytes | None, bytes]] = []
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            got = [(r.key, r.value) for records in batch.values() for r in records]
            if got:
                out.extend(got)
                last_new = time.monotonic()
            elif (expect is None or len(out) >= expect) and (
                time.monotonic() - last_new >= quiet_s
            ):
                break
        return out
    finally:
        consumer.close()
