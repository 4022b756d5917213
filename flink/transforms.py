"""The job's transformations as plain functions: no PyFlink import, so they are unit
tested in either virtualenv and the Flink functions in :mod:`flink.functions` stay thin.

Shapes (see :mod:`aircast.records` for the records themselves):

* in: one raw-topic message value (text) — a feed record enriched with ``place``;
* :func:`split_message` → per value, a :class:`~aircast.records.ReadingRow` (the
  domain's :func:`~aircast.records.split_record_rows`) or a
  :class:`~aircast.records.DeadLetter` (stage ``flink``) carrying the message as received;
* per valid value, :func:`job_row` ``(event ms, key "<sensor_id>:<measure>", Reading
  JSON, value)``: what the job's SQL dedupes, delivers and aggregates;
* a repeated (sensor, measure, timestamp), or a reading behind a window that already
  fired → :func:`letter_json_sql`, the SQL that writes its ``duplicate`` or ``late``
  letter;
* a window's figures and latest reading → an :class:`~aircast.records.Aggregate`'s
  JSON, written by the job's JVM function ``aircast.flink.Windows`` in the layout
  :func:`aggregate_layout` gives it.

Parsing, validation, ranges and reason codes all come from :mod:`aircast.records`;
nothing here decides whether a value is valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

import orjson

from aircast.measures import MEASURES
from aircast.records import (
    DUPLICATE,
    LATE,
    MALFORMED,
    Aggregate,
    DeadLetter,
    Reading,
    ReadingRow,
    Rejection,
    split_record_rows,
)
from flink.config import sql_string

STAGE = "flink"

Outcome = ReadingRow | DeadLetter


def _message_key(obj: object) -> str | None:
    """The raw topic's key is the sensor id; rebuilt from the record, since PyFlink's
    KafkaSource hands Python the message value only."""
    if isinstance(obj, dict):
        sensor = obj.get("sensor")
        if isinstance(sensor, dict) and sensor.get("id") not in (None, ""):
            return str(sensor["id"])
    return None


def split_message(text: str, at: int, source: str | None = None) -> list[Outcome]:
    """One raw message → one outcome per value (the domain's
    :func:`~aircast.records.split_record_rows`: :func:`~aircast.records.split_record`'s
    outcomes, the readings as rows made without building Reading objects).

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
    for outcome in split_record_rows(obj):
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


def measure_table() -> str:
    """The measure table as the JVM fast lane (``aircast.flink.FastSplit``) takes it: one
    measure a line, ``name low high``, the bounds as Python writes them (read back as the
    same doubles), so names and ranges stay defined once, in :mod:`aircast.measures`."""
    for m in MEASURES:
        if not m.name or any(c.isspace() for c in m.name):
            raise ValueError(f"measure name {m.name!r} cannot be passed to the JVM lane")
    return "\n".join(f"{m.name} {m.low!r} {m.high!r}" for m in MEASURES)


def job_row(row: ReadingRow) -> tuple[int, str, str, float]:
    """The split's output row: event time (ms), key, the reading's JSON, value."""
    return row.timestamp * 1000, row.key, row.json, row.value


def letter_row(letter: DeadLetter) -> tuple[str | None, str]:
    """(Kafka key, value) of a dead letter."""
    return letter.key, letter.to_json().decode()


# -- what the job's SQL writes --------------------------------------------------------
# The job's dedupe, windows and their letters run in Flink SQL (see flink.topology):
# their JSON is built there, by SQL generated here from the domain's dataclasses, so a
# field added to Aggregate or DeadLetter cannot be forgotten (ValueError at start).


def _json_object_sql(cls: type, exprs: Mapping[str, str]) -> str:
    missing = [f.name for f in fields(cls) if f.name not in exprs]
    if missing:
        raise ValueError(f"no SQL for {cls.__name__} fields {missing}")
    parts = ", ".join(f"KEY '{f.name}' VALUE {exprs[f.name]}" for f in fields(cls))
    return f"JSON_OBJECT({parts})"


def _feed_time_sql(ts_ms: str) -> str:
    # format_timestamp's format; the job's session time zone is UTC.
    return f"DATE_FORMAT(TO_TIMESTAMP_LTZ({ts_ms}, 3), 'yyyy-MM-dd HH:mm:ss')"


def letter_json_sql(reason: str, key: str, reading: str, ts_ms: str, lateness_s: int) -> str:
    """SQL for the JSON of a reading's ``duplicate`` or ``late`` letter (columns: its key,
    Reading JSON and event ms). The payload is the reading. A duplicate accounts for
    its value (kept out of the readings and the aggregates); a late reading was
    delivered as a reading and only the aggregate misses it, so its letter accounts for
    no value (``values=0``) and the conservation count still holds."""
    if reason == DUPLICATE:
        detail = f"CONCAT({key}, ' at ', {_feed_time_sql(ts_ms)}, ' already taken in')"
        values = 1
    elif reason == LATE:
        tail = (
            " arrived after its 10-minute window closed "
            f"(allowed lateness {lateness_s} s); not in the aggregate"
        )
        detail = f"CONCAT({key}, ' at ', {_feed_time_sql(ts_ms)}, {sql_string(tail)})"
        values = 0
    else:
        raise ValueError(f"the job's SQL writes no {reason!r} letters")
    return _json_object_sql(
        DeadLetter,
        {
            "stage": sql_string(STAGE),
            "reason": sql_string(reason),
            "detail": detail,
            "payload": reading,
            "key": key,
            "values": str(values),
            "at": "UNIX_TIMESTAMP()",
            "source": "CAST(NULL AS STRING)",
        },
    )


def aggregate_layout() -> tuple[str, list[str]]:
    """An :class:`~aircast.records.Aggregate`'s JSON as the job writes it: the sensor and
    its place are the window's latest reading's JSON text up to ``marker`` (its first
    field an Aggregate does not share), then ``figures``, the Aggregate's other fields in
    order, each as ``,"<name>":<number>``.

    The Aggregate's leading fields are the Reading's leading fields, in the same order
    (checked here): they are cut from the reading's JSON text, not parsed and written
    again (that, in SQL, was a tenth of the job's Java CPU samples). The cut is safe:
    inside a JSON string every ``"`` is escaped, so ``,"<key>":`` only appears as a key.
    """
    reading = [f.name for f in fields(Reading)]
    aggregate = [f.name for f in fields(Aggregate)]
    shared = 0
    while shared < min(len(reading), len(aggregate)) and reading[shared] == aggregate[shared]:
        shared += 1
    rest = aggregate[shared:]
    if not shared or shared == len(reading) or set(rest) & set(reading):
        raise ValueError(
            f"Aggregate fields {aggregate} do not start with Reading's sensor and place "
            f"fields in Reading's order {reading}"
        )
    return f',"{reading[shared]}":', rest
