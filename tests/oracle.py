"""An audit oracle written apart from the code under test: the readings a span of raw
records must produce, decided by a small reader of its own (json, kafka-python, httpx
against InfluxDB's HTTP API), not by ``aircast.records.split_record`` nor the audit.

Its rules are the feed's contract as the README states it, written again here: a value
becomes a reading when its record has a sensor id, a ``YYYY-MM-DD HH:MM:SS`` (or ISO)
UTC timestamp, a location other than 0,0 that is not indoor, and the value is a finite
number inside its measure's range. A disagreement with the pipeline fails the test that
uses it, whichever of the two is wrong."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
from kafka import KafkaConsumer, TopicPartition

from aircast.measures import MEASURES
from aircast.settings import Settings

# Measure → (low, high): the measure table is the definition being checked against.
RANGES: dict[str, tuple[float, float]] = {m.name: (m.low, m.high) for m in MEASURES}
Key = tuple[str, int, int]  # measure, sensor id, epoch s


def _epoch(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
        try:
            return int(datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp())
        except ValueError:
            continue
    return None


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def readings_of(record: Any) -> Iterator[tuple[Key, float]]:
    """The readings one raw record must give, by the rules above."""
    if not isinstance(record, dict):
        return
    sensor, location = record.get("sensor"), record.get("location")
    if not isinstance(sensor, dict) or not isinstance(location, dict):
        return
    sensor_id, at = sensor.get("id"), _epoch(record.get("timestamp"))
    lat, lon = _number(location.get("latitude")), _number(location.get("longitude"))
    if not isinstance(sensor_id, int) or at is None or lat is None or lon is None:
        return
    if (lat, lon) == (0.0, 0.0) or str(location.get("indoor", 0)) in ("1", "true", "True"):
        return
    for item in record.get("sensordatavalues") or ():
        measure = item.get("value_type") if isinstance(item, dict) else None
        value = _number(item.get("value")) if isinstance(item, dict) else None
        if measure in RANGES and value is not None:
            low, high = RANGES[measure]
            if low <= value <= high:
                yield (measure, sensor_id, at), value


def raw_ends(settings: Settings) -> dict[int, int]:
    """Each raw-topic partition's current end offset (kafka-python's ListOffsets)."""
    k = settings.kafka
    consumer = KafkaConsumer(bootstrap_servers=k.bootstrap_servers.split(","))
    try:
        parts = [TopicPartition(k.raw_topic, p) for p in consumer.partitions_for_topic(k.raw_topic)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def raw_records(
    settings: Settings, since: float, until: float, below: dict[int, int] | None = None
) -> Iterator[Any]:
    """The raw topic's records stamped in [since, until], parsed with json; with
    ``below``, only those appended before those offsets (:func:`raw_ends`). Read until
    each partition's position passes its first high watermark seen after ``until`` (a
    fetch's, exact; ListOffsets may under-report the end by a batch)."""
    k = settings.kafka
    consumer = KafkaConsumer(bootstrap_servers=k.bootstrap_servers.split(","))
    low, high = int(since * 1000), int(until * 1000)
    try:
        parts = [TopicPartition(k.raw_topic, p) for p in consumer.partitions_for_topic(k.raw_topic)]
        consumer.assign(parts)
        starts = consumer.offsets_for_times({tp: low for tp in parts})
        floors = consumer.end_offsets(parts)
        for tp in parts:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found is not None else floors[tp])
        stops: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 120
        while len(stops) < len(parts) or any(consumer.position(tp) < stops[tp] for tp in parts):
            assert time.monotonic() < deadline, (stops, floors)
            for messages in consumer.poll(timeout_ms=500).values():
                for m in messages:
                    appended = below is None or m.offset < below.get(m.partition, 0)
                    if appended and low <= m.timestamp <= high:
                        yield json.loads(m.value)
            for tp in parts:
                mark = consumer.highwater(tp)
                if tp not in stops and mark is not None:
                    stops[tp] = max(mark, floors[tp])
    finally:
        consumer.close()


def expected(records: Iterable[Any]) -> dict[Key, set[float]]:
    """Each reading key with the values its records gave it (a repeated record gives the
    same value again; the pipeline keeps the first it sees)."""
    out: dict[Key, set[float]] = defaultdict(set)
    for record in records:
        for key, value in readings_of(record):
            out[key].add(value)
    return out


def stored(settings: Settings, keys: Iterable[Key]) -> dict[Key, list[float]]:
    """The raw database's points at those keys, read over InfluxDB's HTTP API."""
    by_measure: dict[str, list[int]] = defaultdict(list)
    for measure, _, at in keys:
        by_measure[measure].append(at)
    influx = settings.influx
    auth = (influx.username or "", influx.password.get_secret_value() if influx.password else "")
    out: dict[Key, list[float]] = defaultdict(list)
    with httpx.Client(base_url=influx.url, auth=auth, timeout=60.0) as client:
        for measure, times in by_measure.items():
            q = (
                f'SELECT "value" FROM "{measure}" WHERE time >= {min(times)}s '
                f'AND time <= {max(times)}s GROUP BY "sensor_id"'
            )
            response = client.get(
                "/query", params={"db": influx.raw_database, "q": q, "epoch": "s"}
            )
            response.raise_for_status()
            for result in response.json().get("results", []):
                assert "error" not in result, result
                for series in result.get("series", []):
                    sensor = int(series["tags"]["sensor_id"])
                    for at, value in series["values"]:
                        out[(measure, sensor, int(at))].append(float(value))
    return out
