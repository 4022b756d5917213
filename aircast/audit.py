"""Conservation audit: every record that entered is in InfluxDB (as its readings) or in
the dead-letter topic with a reason, for a span of time.

What is counted, per stage, for the raw-topic records stamped in [since, until]. The
ingest stamps each raw message with its record's measurement time (the Flink job's
watermarks come from it), so the span is one of measurement times; every later message
about a record (its readings, its dead letters) is written after it was measured, so
each topic is read from ``since`` on:

* **raw topic** — records and the values they carry. Each record is split again with the
  domain's own :func:`~aircast.records.split_record` (the function the Flink job runs), so
  the audit knows, independently of the job, which readings must exist and which values
  must have been rejected and why.
* **ingest** — dead letters of records refused before the raw topic (malformed envelopes,
  in-snapshot duplicates): reported, not part of the balance (they never entered).
* **flink** — its dead letters *for these records* (matched by payload: a rejected
  value's letter carries the raw message as received, a duplicate's carries the
  reading) by reason must equal the expected rejections (a repeated reading must be one
  ``duplicate``); letters for records outside the span are not counted, however late
  the job wrote them. Readings-topic messages and distinct readings are reported.
* **collect / InfluxDB** — every distinct expected reading must be a point in the raw
  database (same measurement, sensor and time) unless the collector dead-lettered it
  (``beyond_retention``, ``storage_rejected``). A reading stored under two series (the
  same sensor, measure and time with different tags) is *written twice*.

Dead letters are at-least-once: a letter replayed after a crash is recognised (same
stage, reason, key, detail, payload and source) and counted once; replays are reported.
A raw message repeated byte for byte (a producer's retry) has its rejected values
lettered again identically, so they are expected once; its readings are duplicates.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from aircast import tuning
from aircast.errors import InvalidRecord
from aircast.influx import InfluxV1, quote_ident
from aircast.kafka import scan
from aircast.queries import page_clause, page_digits, sensor_count
from aircast.records import (
    BEYOND_RETENTION,
    DUPLICATE,
    LATE,
    MALFORMED,
    STORAGE_REJECTED,
    DeadLetter,
    Reading,
    Rejection,
    split_record,
)
from aircast.settings import Settings

ReadingId = tuple[str, int, int]  # (measure, sensor id, timestamp): one reading


def reading_id(reading: Reading) -> ReadingId:
    return (reading.measure, reading.sensor_id, reading.timestamp)


def outcomes_of_message(value: bytes | None) -> list[Reading | Rejection]:
    """What the processing stage must make of one raw-topic message."""
    return _outcomes_and_identity(value)[0]


def _outcomes_and_identity(
    value: bytes | None,
) -> tuple[list[Reading | Rejection], tuple[object, object] | bytes | None]:
    """The message's outcomes and its record's identity (sensor id, timestamp; a
    message that is not a record is its bytes), from one decoding."""
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        return [Rejection(MALFORMED, f"not JSON: {exc}")], value
    try:
        identity: tuple[object, object] | bytes | None = (obj["sensor"]["id"], obj["timestamp"])
    except (KeyError, TypeError):
        identity = value
    return split_record(obj), identity


@dataclass
class Audit:
    since: float
    until: float
    raw_records: int = 0
    raw_distinct: int = 0  # distinct records (sensor id, timestamp): a retry may repeat one
    values_in: int = 0
    occurrences: Counter[ReadingId] = field(default_factory=Counter)
    # (measure, sensor id) → the sum of its distinct readings' values (the first of a
    # repeated reading's): what the InfluxDB check compares per series besides counts.
    value_sums: defaultdict[tuple[str, int], float] = field(
        default_factory=lambda: defaultdict(float)
    )
    payloads: set[int] = field(default_factory=set)  # hashes of the span's raw messages
    rejected_expected: Counter[str] = field(default_factory=Counter)  # values by reason
    ingest_rejected: Counter[str] = field(default_factory=Counter)
    lettered: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    letter_replays: int = 0
    unreadable_letters: int = 0
    collect_lettered: set[ReadingId] = field(default_factory=set)
    readings_topic_messages: int = 0
    readings_topic_distinct: int = 0
    in_influx: set[ReadingId] = field(default_factory=set)
    doubled: dict[ReadingId, int] = field(default_factory=dict)
    seconds: float = 0.0

    # -- the balance ---------------------------------------------------------------

    @property
    def lost(self) -> list[ReadingId]:
        return sorted(self.occurrences.keys() - self.in_influx - self.collect_lettered)

    @property
    def stored(self) -> int:
        return len(self.in_influx)  # only the span's readings are ever added

    @property
    def rejection_differences(self) -> dict[str, tuple[int, int]]:
        """reason → (values the domain rejects, values the Flink job dead-lettered)."""
        flink = self.lettered.get("flink", Counter())
        reasons = (set(self.rejected_expected) | set(flink)) - {LATE}
        return {
            r: (self.rejected_expected[r], flink[r])
            for r in sorted(reasons)
            if self.rejected_expected[r] != flink[r]
        }

    @property
    def ok(self) -> bool:
        return not self.lost and not self.doubled and not self.rejection_differences

    def summary(self) -> dict[str, Any]:
        rejected = sum(self.rejected_expected.values())
        return {
            "since": int(self.since),
            "until": int(self.until),
            "raw_records": self.raw_records,
            "raw_distinct": self.raw_distinct,
            "values_in": self.values_in,
            "readings_expected": len(self.occurrences),
            "values_rejected_expected": rejected,
            "readings_topic_messages": self.readings_topic_messages,
            "readings_topic_distinct": self.readings_topic_distinct,
            "in_influxdb": self.stored,
            "collect_dead_lettered": len(self.collect_lettered),
            "dead_letters": {s: dict(c) for s, c in sorted(self.lettered.items())},
            "dead_letter_replays": self.letter_replays,
            "ingest_rejected": dict(self.ingest_rejected),
            "lost": len(self.lost),
            "written_twice": len(self.doubled),
            "rejection_differences": {r: list(v) for r, v in self.rejection_differences.items()},
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
        }


# Sets of hashes, not of the messages or tuples themselves: an hour at 10x the network
# is ~5 million records and ~11 million readings, and the audit must fit beside the stack.


def read_raw(settings: Settings, audit: Audit) -> None:
    distinct: set[int] = set()
    for m in scan(
        settings.kafka,
        settings.kafka.raw_topic,
        int(audit.since * 1000),
        until_ms=int(audit.until * 1000),
    ):
        audit.raw_records += 1
        outcomes, identity = _outcomes_and_identity(m.value())
        distinct.add(hash(identity))
        payload = hash((m.value() or b"").decode("utf-8", errors="replace"))
        # The same message again (a producer's retry) gets its rejected values lettered
        # again with identical letters, which count once (as replays): so do they here.
        repeat = payload in audit.payloads
        audit.payloads.add(payload)
        for outcome in outcomes:
            if isinstance(outcome, Rejection):
                if not repeat:
                    audit.values_in += outcome.values
                    audit.rejected_expected[outcome.reason] += outcome.values
            else:
                audit.values_in += 1
                rid = reading_id(outcome)
                if rid in audit.occurrences:
                    audit.rejected_expected[DUPLICATE] += 1
                else:
                    audit.value_sums[(rid[0], rid[1])] += outcome.value
                audit.occurrences[rid] += 1
    audit.raw_distinct = len(distinct)


def read_dead_letters(settings: Settings, audit: Audit) -> None:
    seen: set[int] = set()
    for m in scan(settings.kafka, settings.kafka.dead_letter_topic, int(audit.since * 1000)):
        try:
            letter = DeadLetter.from_json(m.value() or b"")
        except (ValueError, TypeError):
            audit.unreadable_letters += 1
            continue
        identity = hash(
            (letter.stage, letter.reason, letter.key, letter.detail, letter.payload, letter.source)
        )
        if identity in seen:
            audit.letter_replays += 1
            continue
        seen.add(identity)
        if letter.stage == "ingest":
            # Refused before the raw topic: not attributable to the span's raw records,
            # reported by the time they were written.
            audit.ingest_rejected[letter.reason] += letter.values
            continue
        if _belongs(audit, letter):
            audit.lettered[letter.stage][letter.reason] += letter.values
        if letter.stage == "collect" and letter.reason in (BEYOND_RETENTION, STORAGE_REJECTED):
            rid = _reading_of(letter.payload)
            if rid is not None and rid in audit.occurrences:
                audit.collect_lettered.add(rid)


def _reading_of(payload: str) -> ReadingId | None:
    try:
        return reading_id(Reading.from_json(payload))
    except InvalidRecord:
        return None  # an aggregate, or not a message at all


def _belongs(audit: Audit, letter: DeadLetter) -> bool:
    """Whether a letter is about one of the span's raw records."""
    if hash(letter.payload) in audit.payloads:
        return True  # the raw message itself: a rejected value or a whole record
    rid = _reading_of(letter.payload)
    return rid is not None and rid in audit.occurrences  # a reading of the span


def read_readings_topic(settings: Settings, audit: Audit) -> None:
    distinct: set[int] = set()  # hashes of the span's readings seen on the topic
    for m in scan(settings.kafka, settings.kafka.readings_topic, int(audit.since * 1000)):
        audit.readings_topic_messages += 1
        try:  # the three fields only: a full Reading per message cost 3x as much
            d = orjson.loads(m.value() or b"")
            rid = (str(d["measure"]), int(d["sensor_id"]), int(d["timestamp"]))
        except (ValueError, KeyError, TypeError):
            continue
        if rid in audit.occurrences:
            distinct.add(hash(rid))
    audit.readings_topic_distinct = len(distinct)


def read_influx(settings: Settings, audit: Audit) -> None:
    """The expected readings' points in the raw database, per measure over their span.

    First counted and summed per series (``count(), sum() ... GROUP BY *``, an hour at
    a time): a sensor whose one series holds as many points as readings are expected of
    it in the span, with the same sum of values, has them all (a lost reading could
    hide only behind a point of no span record, at another time, with the same value).
    Only the other sensors (fewer points, more, another sum, or more than one series: a
    move, or a reading written twice) have their points read one by one.
    Reading every point of a 10x-network hour (11 million, 460,000 series) took InfluxDB
    1.6 longer per query than any timeout, however the span was sliced."""
    if not audit.occurrences:
        return
    by_measure: dict[str, list[ReadingId]] = defaultdict(list)
    for rid in audit.occurrences:
        by_measure[rid[0]].append(rid)
    # A batch tool: a count over every series of an hour may take InfluxDB a while.
    patient = settings.influx.model_copy(
        update={"timeout_s": max(settings.influx.timeout_s, tuning.AUDIT_TIMEOUT_S)}
    )
    with InfluxV1(patient) as influx:
        for measure, rids in sorted(by_measure.items()):
            first, last = min(r[2] for r in rids), max(r[2] for r in rids)
            expected: Counter[int] = Counter(sensor for _, sensor, _ in rids)
            stored: dict[int, Counter[tuple[Any, ...]]] = defaultdict(Counter)
            sums: defaultdict[int, float] = defaultdict(float)
            for sensor, tags, count, total in _series_counts(
                influx, measure, first, last, settings
            ):
                stored[sensor][tags] += count
                sums[sensor] += total
            suspects = {
                sensor
                for sensor, n in expected.items()
                if len(stored.get(sensor, ())) != 1
                or sum(stored[sensor].values()) != n
                or not _close(sums[sensor], audit.value_sums[(measure, sensor)])
            }
            found, twice = _read_suspects(influx, settings, measure, suspects, first, last)
            for rid in rids:
                if rid[1] not in suspects:
                    audit.in_influx.add(rid)
                    continue
                point = (rid[1], rid[2])
                if point in found:
                    audit.in_influx.add(rid)
                    if point in twice:
                        audit.doubled[rid] = len(twice[point])


def _close(a: float, b: float) -> bool:
    """Sums of the same floats in another order."""
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _hours(first: int, last: int) -> Iterator[str]:
    """InfluxQL time conditions covering [first, last] (seconds) an hour at a time."""
    for start in range(first, last + 1, tuning.AUDIT_SLICE_S):
        yield f"time >= {start}s AND time <= {min(start + tuning.AUDIT_SLICE_S - 1, last)}s"


def _series_counts(
    influx: InfluxV1, measure: str, first: int, last: int, settings: Settings
) -> Iterator[tuple[int, tuple[Any, ...], int, float]]:
    """(sensor id, the series' tags, its points, their sum) per series, hour slice and
    page of sensors."""
    database = settings.influx.raw_database
    digits = page_digits(sensor_count(influx, database, measure), tuning.AUDIT_SERIES_PER_QUERY)
    pages = [page_clause(page, digits) for page in range(10**digits)]
    for hour, page in ((h, p) for h in _hours(first, last) for p in pages):
        where = hour if page is None else f"{hour} AND {page}"
        q = (
            f'SELECT count("value"), sum("value") FROM {quote_ident(measure)} '
            f"WHERE {where} GROUP BY *"
        )
        for series in influx.query(q, database, epoch="s"):
            tags = series.get("tags") or {}
            if tags.get("sensor_id") in (None, ""):
                continue
            values = series.get("values", [])
            count = sum(int(v[1] or 0) for v in values)
            total = sum(float(v[2] or 0.0) for v in values)
            yield int(tags["sensor_id"]), tuple(sorted(tags.items())), count, total


def _read_suspects(
    influx: InfluxV1,
    settings: Settings,
    measure: str,
    suspects: set[int],
    first: int,
    last: int,
) -> tuple[dict[tuple[int, int], tuple[Any, Any]], dict[tuple[int, int], set[tuple[Any, Any]]]]:
    """The suspect sensors' points one by one: (sensor, time) → its first tags, and the
    points found under more than one tag set (the same sensor and time in two series)."""
    series: dict[tuple[int, int], tuple[Any, Any]] = {}
    twice: dict[tuple[int, int], set[tuple[Any, Any]]] = {}
    ordered = sorted(suspects)
    for i in range(0, len(ordered), tuning.AUDIT_SUSPECTS_PER_QUERY):
        which = " OR ".join(
            f"sensor_id = '{s}'" for s in ordered[i : i + tuning.AUDIT_SUSPECTS_PER_QUERY]
        )
        for hour in _hours(first, last):
            q = (
                f'SELECT "value", "sensor_id", "location_id", "city" FROM {quote_ident(measure)} '
                f"WHERE ({which}) AND {hour}"
            )
            for row in influx.rows(q, settings.influx.raw_database, epoch="s"):
                if row.get("sensor_id") in (None, ""):
                    continue
                point = (int(row["sensor_id"]), int(row["time"]))
                tags = (row.get("location_id"), row.get("city"))
                first_tags = series.setdefault(point, tags)
                if first_tags != tags:
                    twice.setdefault(point, {first_tags}).add(tags)
    return series, twice


def run_audit(settings: Settings, since: float, until: float | None = None) -> Audit:
    """Audit the raw-topic records stamped (measured) in [since, until] (until: now)."""
    started = time.monotonic()
    audit = Audit(since=since, until=until if until is not None else time.time())
    read_raw(settings, audit)
    read_dead_letters(settings, audit)
    read_readings_topic(settings, audit)
    read_influx(settings, audit)
    audit.seconds = time.monotonic() - started
    return audit
