"""The job's transformations as plain functions: no PyFlink import, so they are unit
tested in either virtualenv and the Flink functions in :mod:`flink.functions` stay thin.

Shapes (see :mod:`aircast.records` for the records themselves):

* in: one raw-topic message value (text) — a feed record enriched with ``place``;
* :func:`split_message` → per value, a :class:`~aircast.records.Reading` or a
  :class:`~aircast.records.DeadLetter` (stage ``flink``) carrying the message as received;
* readings → :func:`sink_row` ``(key "<sensor_id>:<measure>", Reading JSON)``;
* a repeated (sensor, measure, timestamp) → :func:`duplicate_letter`;
* a reading behind the watermark beyond the allowed lateness → :func:`late_letter`;
* a window's readings → :func:`window_aggregate` → :class:`~aircast.records.Aggregate`;
* between the job's two Python stages a reading travels as :func:`carried` — its JSON
  text and a tuple of its fields (pickling a tuple is ~10x cheaper than a dataclass);
* one key's open windows (``{window start: [fields, ...]}``) are kept, fired and closed
  by :func:`add_to_window` and :func:`on_timer`, with Flink's window semantics.

Parsing, validation, ranges and reason codes all come from :mod:`aircast.records`;
nothing here decides whether a value is valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from operator import attrgetter, itemgetter
from typing import Any

import orjson

from aircast.records import (
    AGGREGATE_WINDOW_S,
    DUPLICATE,
    LATE,
    MALFORMED,
    Aggregate,
    DeadLetter,
    Reading,
    Rejection,
    format_timestamp,
    split_record,
    window_start,
)

STAGE = "flink"
PRUNE_EVERY = 64

Outcome = Reading | DeadLetter
Fields = tuple[Any, ...]  # a Reading's fields, in declaration order
Carried = tuple[str, Fields]  # (Reading JSON, fields)
Windows = dict[int, list[Fields]]  # window start (epoch s) → its readings' fields

READING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Reading))
_fields_of = attrgetter(*READING_FIELDS)
_timestamp_of = itemgetter(READING_FIELDS.index("timestamp"))


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
        obj = orjson.loads(text)
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


def reading_json(reading: Reading) -> str:
    """A reading's readings-topic value (its ``to_json``), as text for Flink's sinks."""
    return reading.to_json().decode()


def carried(reading: Reading) -> Carried:
    """What the job's keyed stage receives of a reading: its JSON and its fields."""
    return reading_json(reading), _fields_of(reading)


def reading_of(fields_: Fields) -> Reading:
    return Reading(*fields_)


def timestamp_of(fields_: Fields) -> int:
    return int(_timestamp_of(fields_))


def sink_row(reading: Reading) -> tuple[str, str]:
    """(Kafka key, value) of a reading on the readings topic."""
    return reading.key, reading_json(reading)


def letter_row(letter: DeadLetter) -> tuple[str | None, str]:
    """(Kafka key, value) of a dead letter."""
    return letter.key, letter.to_json().decode()


def aggregate_json(aggregate: Aggregate) -> str:
    """An aggregate's aggregates-topic value (its ``to_json``), as text."""
    return aggregate.to_json().decode()


def aggregate_row(aggregate: Aggregate) -> tuple[str, str]:
    """(Kafka key, value) of an aggregate: same key as its readings."""
    return aggregate.key, aggregate_json(aggregate)


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
        reading_json(reading),
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
        reading_json(reading),
        reading.key,
        0,
        at,
        None,
    )


def window_aggregate(readings: Iterable[Reading], window_start_ms: int) -> Aggregate:
    """The aggregate of one key's readings in one window (Flink's window start in ms)."""
    ordered = sorted(readings, key=lambda r: r.timestamp)  # the latest carries the location
    return Aggregate.of(ordered, window_start_ms // 1000)


# -- one key's event-time windows ---------------------------------------------------
# Flink's tumbling event-time windows with allowed lateness, kept by the job's keyed
# function itself (one operator, one shuffle, one state read per reading, instead of
# PyFlink's Python window operator behind a second shuffle). The rules are Flink's
# (WindowOperator + EventTimeTrigger):
# * a window [start, end) fires when the watermark reaches end - 1 (its max timestamp);
# * a reading for a window whose max timestamp + allowed lateness <= watermark is late:
#   dropped from the aggregates (dead letter ``late``);
# * any other reading for a window that already fired fires it again at once, with all
#   its readings (the collector overwrites the same point);
# * a window's readings are forgotten at max timestamp + allowed lateness.


def fire_time_ms(start_s: int) -> int:
    """When a window fires: its max timestamp (end - 1 ms), as Flink's TimeWindow."""
    return (start_s + AGGREGATE_WINDOW_S) * 1000 - 1


def cleanup_time_ms(start_s: int, allowed_lateness_ms: int) -> int:
    """From this watermark on, the window is closed for good."""
    return fire_time_ms(start_s) + allowed_lateness_ms


def add_to_window(
    windows: Windows, fields_: Fields, watermark_ms: int, allowed_lateness_ms: int
) -> tuple[int, bool] | None:
    """Put a reading into its window: ``None`` if it is late, else ``(window start, new)``;
    ``new`` means the caller registers the window's timers (fire, cleanup)."""
    start = window_start(timestamp_of(fields_))
    if cleanup_time_ms(start, allowed_lateness_ms) <= watermark_ms:
        return None
    contents = windows.get(start)
    if contents is None:
        windows[start] = [fields_]
        return start, True
    contents.append(fields_)
    return start, False


def fires_now(start_s: int, watermark_ms: int) -> bool:
    """Whether a window, just given a reading, fires at once (its time has passed)."""
    return fire_time_ms(start_s) <= watermark_ms


def aggregate_of(windows: Windows, start_s: int) -> Aggregate:
    """The aggregate of one window: :meth:`Aggregate.of` over its readings in time order."""
    ordered = sorted(windows[start_s], key=_timestamp_of)  # stable: ties keep arrival
    return Aggregate.of([Reading(*f) for f in ordered], start_s)


def on_timer(windows: Windows, time_ms: int, allowed_lateness_ms: int) -> list[Aggregate]:
    """An event-time timer of this key: the windows due now fire (their aggregates are
    returned), then the windows closed for good are dropped. One timer can be both one
    window's firing and another's cleanup (timers of one key are unique per time)."""
    fired = [aggregate_of(windows, s) for s in sorted(windows) if fire_time_ms(s) == time_ms]
    for start in [s for s in windows if cleanup_time_ms(s, allowed_lateness_ms) <= time_ms]:
        del windows[start]
    return fired
