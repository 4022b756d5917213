"""The job's transformations as plain functions: no PyFlink import, so they are unit
tested in either virtualenv and the Flink functions in :mod:`flink.functions` stay thin.

Shapes (see :mod:`aircast.records` for the records themselves):

* in: one raw-topic message value (text) — a feed record enriched with ``place``;
* :func:`split_message` → per value, a :class:`~aircast.records.Reading` or a
  :class:`~aircast.records.DeadLetter` (stage ``flink``) carrying the message as received;
* readings → :func:`sink_row` ``(key "<sensor_id>:<measure>", Reading JSON)``;
* a repeated (sensor, measure, timestamp) → :func:`duplicate_letter`;
* a reading behind the watermark beyond the allowed lateness → :func:`late_letter`;
* a window's readings → :func:`window_aggregate` → :class:`~aircast.records.Aggregate`.

Parsing, validation, ranges and reason codes all come from :mod:`aircast.records`;
nothing here decides whether a value is valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from aircast.records import (
    DUPLICATE,
    LATE,
    MALFORMED,
    Aggregate,
    DeadLetter,
    Reading,
    Rejection,
    format_timestamp,
    split_record,
)

STAGE = "flink"
PRUNE_EVERY = 64

Outcome = Reading | DeadLetter


def _message_key(obj: object) -> str | None:
    """The raw topic's key is the sensor id; rebuilt from the record, since PyFlink's
    KafkaSource hands Python the message value only."""
    if isinstance(obj, dict):
        sensor = obj.get("sensor")
        if isinstance(sensor, dict) and sensor.get("id") not in (None, ""):
            return str(sensor["id"])
    return None


def split_message(text: str, at: int, source: str | None = None) -> list[Outcome]:
    """One raw message → one outcome per value (the domain's :func:`split_record`).

    Text that is not JSON becomes one ``malformed`` letter; every rejection keeps the
    message as received, so nothing is lost and the letter can be replayed.
    """
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return [
            DeadLetter(STAGE, MALFORMED, f"not JSON: {exc}", text, None, 1, at, source),
        ]
    key = _message_key(obj)
    out: list[Outcome] = []
    for outcome in split_record(obj):
        if isinstance(outcome, Rejection):
            out.append(
                DeadLetter(
                    STAGE,
                    outcome.reason,
                    outcome.detail,
                    text,
                    key,
                    outcome.values,
                    at,
                    source,
                )
            )
        else:
            out.append(outcome)
    return out


def sink_row(reading: Reading) -> tuple[str, str]:
    """(Kafka key, value) of a reading on the readings topic."""
    return reading.key, reading.to_json().decode()


def letter_row(letter: DeadLetter) -> tuple[str | None, str]:
    """(Kafka key, value) of a dead letter."""
    return letter.key, letter.to_json().decode()


def aggregate_row(aggregate: Aggregate) -> tuple[str, str]:
    """(Kafka key, value) of an aggregate: same key as its readings."""
    return aggregate.key, aggregate.to_json().decode()


def event_time_ms(reading: Reading) -> int:
    """Flink's event time (milliseconds) of a reading: when it was measured."""
    return reading.timestamp * 1000


def is_duplicate(seen: set[int], timestamp: int, horizon_s: int) -> bool:
    """Whether ``timestamp`` was already seen for this sensor and measure; records it.

    ``seen`` holds the timestamps of one sensor's measure. Every ``PRUNE_EVERY`` new
    entries, timestamps more than ``horizon_s`` behind the newest are forgotten, so the
    set stays bounded by the sensor's rate (one value per 150 s over 2 days: ~1,150)
    and the cost per reading stays constant.
    """
    if timestamp in seen:
        return True
    seen.add(timestamp)
    if len(seen) % PRUNE_EVERY == 0:
        cutoff = max(seen) - horizon_s
        seen.difference_update([t for t in seen if t < cutoff])
    return False


def duplicate_letter(reading: Reading, at: int) -> DeadLetter:
    """A reading already taken in: kept out of the readings topic and the aggregates.

    It accounts for its one value; the payload is the reading (the value rejected).
    """
    return DeadLetter(
        STAGE,
        DUPLICATE,
        f"{reading.key} at {format_timestamp(reading.timestamp)} already taken in",
        reading.to_json().decode(),
        reading.key,
        1,
        at,
        None,
    )


def late_letter(reading: Reading, at: int, allowed_lateness_s: int) -> DeadLetter:
    """A reading whose window closed (watermark beyond end + allowed lateness).

    The reading itself was delivered to the readings topic (it is valid raw data);
    only the aggregate misses it, so the letter accounts for no value (``values=0``)
    and the conservation count (values in = readings + rejected values) still holds.
    """
    return DeadLetter(
        STAGE,
        LATE,
        f"{reading.key} at {format_timestamp(reading.timestamp)} arrived after its "
        f"10-minute window closed (allowed lateness {allowed_lateness_s} s); "
        "not in the aggregate",
        reading.to_json().decode(),
        reading.key,
        0,
        at,
        None,
    )


def window_aggregate(readings: Iterable[Reading], window_start_ms: int) -> Aggregate:
    """The aggregate of one key's readings in one window (Flink's window start in ms)."""
    ordered = sorted(readings, key=lambda r: r.timestamp)  # the latest carries the location
    return Aggregate.of(ordered, window_start_ms // 1000)
