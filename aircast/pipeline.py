"""Where each stage of the running pipeline stands: topic sizes, the collectors' lag,
dead letters and recent points in InfluxDB. Read-only; `aircast run` prints it.

The Kafka side is cheap (end offsets, committed offsets). The InfluxDB counts are not:
InfluxDB 1.6 opens a cursor on every series a query names, whatever its time range, so
at 10x the network (~920,000 series) a count of even the last minute costs influxd tens
of CPU-seconds. They are asked for rarely (``aircast run --count-every``); the
collectors' lag, which counts only what InfluxDB acknowledged (offsets are committed
after a good write), is the every-line signal."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from aircast.errors import StorageError
from aircast.influx import InfluxV1
from aircast.kafka import admin, connection_options
from aircast.measures import MEASURES
from aircast.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineStatus:
    topics: dict[str, int]  # messages per topic (sum of end offsets)
    collector_lag: int | None  # messages the collectors have not committed yet
    flink_lag: int | None  # raw records past the Flink job's last checkpointed offsets
    raw_points_1h: int | None  # readings written to InfluxDB in the last hour (by time)
    aggregate_points_1h: int | None
    # Whether InfluxDB was asked (the counts above: None is then "unknown", e.g. no
    # database yet); a line without them does not show them.
    influx_counted: bool = True

    def line(self) -> str:
        t = self.topics
        text = (
            f"raw={t.get('raw', 0)} readings={t.get('readings', 0)} "
            f"aggregates={t.get('aggregates', 0)} dead_letters={t.get('dead_letter', 0)} "
            f"flink_lag={self.flink_lag} collector_lag={self.collector_lag}"
        )
        if self.influx_counted:
            text += (
                f" influx_points_1h={self.raw_points_1h}"
                f" aggregate_points_1h={self.aggregate_points_1h}"
            )
        return text


def _end_offsets(consumer: KafkaConsumer, topic: str) -> dict[TopicPartition, int]:
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    return dict(consumer.end_offsets(tps)) if tps else {}


def status(settings: Settings, *, influx: bool = True) -> PipelineStatus:
    """Where each stage stands; ``influx=False`` skips the two counts of the last hour's
    points (see the module's docstring for what they cost: not for a loop)."""
    k = settings.kafka
    names = {
        "raw": k.raw_topic,
        "readings": k.readings_topic,
        "aggregates": k.aggregates_topic,
        "dead_letter": k.dead_letter_topic,
    }
    consumer = KafkaConsumer(**connection_options(k), enable_auto_commit=False)
    ends: dict[str, dict[TopicPartition, int]] = {}
    try:
        for label, topic in names.items():
            ends[label] = _end_offsets(consumer, topic)
    finally:
        consumer.close()
    topics = {label: sum(e.values()) for label, e in ends.items()}
    # The job commits its offsets at each checkpoint (flink.checkpoint_interval_ms).
    lag, flink_lag = _lags(
        settings,
        [
            (settings.collect.group_id, [ends["readings"], ends["aggregates"]]),
            (settings.flink.group_id, [ends["raw"]]),
        ],
    )
    if not influx:
        return PipelineStatus(topics, lag, flink_lag, None, None, influx_counted=False)
    raw = _recent(settings, settings.influx.raw_database, "value")
    agg = _recent(settings, settings.influx.aggregates_database, "mean")
    return PipelineStatus(topics, lag, flink_lag, raw, agg)


def _lags(
    settings: Settings, groups: list[tuple[str, list[dict[TopicPartition, int]]]]
) -> list[int | None]:
    """Per (consumer group, its topics' end offsets), the messages past the group's
    committed offsets (None: unknown), through one admin client."""
    lags: list[int | None] = [None] * len(groups)
    try:
        client = admin(settings.kafka)
    except KafkaError as exc:
        log.debug("lag unavailable error=%s", exc)
        return lags
    try:
        for i, (group, ends) in enumerate(groups):
            try:
                committed: dict[Any, Any] = client.list_group_offsets(group).get(group, {})
            except KafkaError as exc:
                log.debug("lag unavailable group=%s error=%s", group, exc)
                continue
            lag = 0
            for topic_ends in ends:
                for tp, end in topic_ends.items():
                    done = committed.get(tp)
                    # max(): tansu's end offsets can trail the committed ones by a batch.
                    at = done.offset if done is not None and done.offset >= 0 else 0
                    lag += max(0, end - at)
            lags[i] = lag
    finally:
        client.close()
    return lags


def _recent(settings: Settings, database: str, field: str) -> int | None:
    names = ",".join(f'"{m.name}"' for m in MEASURES)
    try:
        with InfluxV1(settings.influx.model_copy(update={"retries": 0})) as influx:
            rows = influx.rows(
                f'SELECT count("{field}") FROM {names} WHERE time > now() - 1h', database
            )
    except StorageError as exc:
        log.debug("influx count unavailable db=%s error=%s", database, exc)
        return None
    return sum(int(r["count"]) for r in rows)
