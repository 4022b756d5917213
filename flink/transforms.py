"""The job's transformations as plain functions: no PyFlink import, so they are unit
tested in either virtualenv and the Flink functions in :mod:`flink.functions` stay thin.

Shapes (see :mod:`aircast.records` for the records themselves):

* in: one raw-topic message value (text) — a feed record enriched with ``place``;
* :func:`split_message` → per value, a :class:`~aircast.records.Reading` or a
  :class:`~aircast.records.DeadLetter` (stage ``flink``) carrying the message as received;
* readings → :func:`sink_row` ``(key "<sensor_id>:<measure>", Reading JSON)``;
* a repeated (sensor, measure, timestamp) → :func:`duplicate_letter`;
* a reading behind the watermark beyond the allowed lateness → :func:`late_letter`;
* a window's readings → :func:`window_aggregates` → :class:`~aircast.records.Aggregate`;
* between the job's two Python stages a record's valid readings travel together as
  :func:`carried_record` — per reading its key, JSON text and a tuple of its fields
  (pickling a tuple is ~10x cheaper than a dataclass);
* one sensor's dedupe memory and open windows are kept, fired and closed by
  :func:`take_record` and :func:`fire`, with Flink's window semantics, over any
  key-value store (:class:`Store`: Flink's MapState in the job, a dict in tests).

Parsing, validation, ranges and reason codes all come from :mod:`aircast.records`;
nothing here decides whether a value is valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from operator import attrgetter, itemgetter
from typing import Any, Protocol, TypeVar

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

Outcome = Reading | DeadLetter
Fields = tuple[Any, ...]  # a Reading's fields, in declaration order
Carried = tuple[str, str, Fields]  # (reading key, Reading JSON, fields)
CarriedRecord = tuple[Carried, ...]  # one record's valid readings: one sensor, one time

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
    """What the job's keyed stage receives of a reading: its key, JSON and fields."""
    return reading.key, reading_json(reading), _fields_of(reading)


def carried_record(readings: list[Reading]) -> tuple[str, CarriedRecord, int]:
    """One record's valid readings as the keyed stage takes them, with their key (the
    sensor id) and event time (ms). A record is one sensor at one time, so its readings
    share both: the keyed stage runs once per record, not once per value."""
    first = readings[0]
    return str(first.sensor_id), tuple(carried(r) for r in readings), event_time_ms(first)


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


# -- one sensor's dedupe memory and event-time windows ------------------------------
# Flink's tumbling event-time windows with allowed lateness, kept by the job's keyed
# function itself (one operator, one shuffle, keyed by sensor so one call and two state
# accesses serve a whole record), instead of PyFlink's Python window operator behind a
# second shuffle. The rules are Flink's (WindowOperator + EventTimeTrigger):
# * a window [start, end) fires when the watermark reaches end - 1 (its max timestamp);
# * a reading for a window whose max timestamp + allowed lateness <= watermark is late:
#   dropped from the aggregates (dead letter ``late``);
# * any other reading for a window that already fired fires it again at once (the
#   aggregates of the measures it changed; the collector overwrites the same point);
# * a window's readings are dropped at max timestamp + allowed lateness (its cleanup).
# One state entry per sensor and window start holds both the window's readings and the
# dedupe memory of its times (which outlives the readings, until the state's TTL): a
# duplicate always has the same window start as the reading it repeats.

K = TypeVar("K")
V = TypeVar("V")

READING = 0
LETTER = 1
AGGREGATE = 2
Output = tuple[int, tuple[str | None, str]]  # (READING | LETTER | AGGREGATE, (key, value))
# (event time (s) → keys of the readings taken then, the window's readings' fields in
# arrival order, or None once the window is closed for good)
Entry = tuple[dict[int, tuple[str, ...]], list[Fields] | None]


class Store(Protocol[K, V]):
    """The part of Flink's ``MapState`` the keyed stage uses (one sensor's entries)."""

    def get(self, key: K) -> V | None: ...
    def put(self, key: K, value: V) -> None: ...


class DictStore(dict[K, V]):
    """A :class:`Store` over a dict: the keyed stage's logic without Flink."""

    def put(self, key: K, value: V) -> None:
        self[key] = value


Windows = Store[int, Entry]  # window start (s) → entry

_WINDOW_MS = AGGREGATE_WINDOW_S * 1000


def fire_time_ms(start_s: int) -> int:
    """When a window fires: its max timestamp (end - 1 ms), as Flink's TimeWindow."""
    return (start_s + AGGREGATE_WINDOW_S) * 1000 - 1


def start_fired_at(time_ms: int) -> int | None:
    """The window start whose firing time is ``time_ms``, if it is one."""
    if (time_ms + 1) % _WINDOW_MS:
        return None
    return (time_ms + 1) // 1000 - AGGREGATE_WINDOW_S


def cleanup_time_ms(start_s: int, allowed_lateness_ms: int) -> int:
    """From this watermark on, the window is closed for good."""
    return fire_time_ms(start_s) + allowed_lateness_ms


def fires_now(start_s: int, watermark_ms: int) -> bool:
    """Whether a window, just given a reading, fires at once (its time has passed)."""
    return fire_time_ms(start_s) <= watermark_ms


def window_aggregates(
    contents: list[Fields], start_s: int, keys: Iterable[str] | None = None
) -> list[Aggregate]:
    """The aggregates of one sensor's window, one per measure (only ``keys``' if given),
    each over its readings in time order (stable: ties keep arrival order)."""
    by_key: dict[str, list[Reading]] = {}
    for f in contents:
        r = Reading(*f)
        by_key.setdefault(r.key, []).append(r)
    wanted = sorted(by_key) if keys is None else sorted(set(keys))
    return [Aggregate.of(sorted(by_key[k], key=attrgetter("timestamp")), start_s) for k in wanted]


def take_record(
    windows: Windows,
    record: CarriedRecord,
    watermark_ms: int,
    allowed_lateness_ms: int,
    at: int,
) -> tuple[list[Output], tuple[int, ...]]:
    """One record's readings through one sensor's dedupe and windows.

    Returns what leaves (readings, dead letters, aggregates of a window that fires at
    once) and the event-time timers to register (a new window's firing and cleanup). A
    reading whose (sensor, measure, time) was taken before is a ``duplicate`` letter; a
    taken reading for a window closed for good is delivered but ``late`` for the
    aggregate.
    """
    timestamp = _timestamp_of(record[0][2])
    start = window_start(timestamp)
    entry = windows.get(start)
    seen, contents = entry if entry is not None else ({}, None)
    before = seen.get(timestamp, ())
    out: list[Output] = []
    taken: list[Carried] = []
    keys = set(before)
    for item in record:
        key, text, fields_ = item
        if key in keys:
            out.append((LETTER, letter_row(duplicate_letter(Reading(*fields_), at))))
            continue
        keys.add(key)
        taken.append(item)
        out.append((READING, (key, text)))
    if not taken:
        return out, ()
    seen[timestamp] = before + tuple(k for k, _, _ in taken)
    cleanup = cleanup_time_ms(start, allowed_lateness_ms)
    # Closed for good: by the watermark, or by its cleanup timer (after a restart the
    # watermark starts over from nothing; the closed window stays closed).
    if cleanup <= watermark_ms or (entry is not None and contents is None):
        windows.put(start, (seen, contents))
        lateness_s = allowed_lateness_ms // 1000
        for _, _, fields_ in taken:
            out.append((LETTER, letter_row(late_letter(Reading(*fields_), at, lateness_s))))
        return out, ()
    contents = (contents or []) + [f for _, _, f in taken]
    windows.put(start, (seen, contents))
    now = fires_now(start, watermark_ms)
    if now:
        for aggregate in window_aggregates(contents, start, (k for k, _, _ in taken)):
            out.append((AGGREGATE, aggregate_row(aggregate)))
    if entry is not None:
        return out, ()
    return out, (cleanup,) if now else (fire_time_ms(start), cleanup)


def on_timer(windows: Windows, time_ms: int, allowed_lateness_ms: int) -> list[Output]:
    """An event-time timer: a window's firing (its aggregates), a window's cleanup (its
    readings dropped, its dedupe memory kept), or both at once (timers of one key are
    unique per time, so one timer can fire one window and close an earlier one)."""
    out: list[Output] = []
    fired = start_fired_at(time_ms)
    if fired is not None:
        entry = windows.get(fired)
        if entry is not None and entry[1]:
            out.extend((AGGREGATE, aggregate_row(a)) for a in window_aggregates(entry[1], fired))
    closed = start_fired_at(time_ms - allowed_lateness_ms)
    if closed is not None:
        entry = windows.get(closed)
        if entry is not None and entry[1] is not None:
            windows.put(closed, (entry[0], None))
    return out
