"""Backfill: archive days → InfluxDB through the live pipeline's validation and write path.

Per day: every archive row (:mod:`aircast.archive`) is split by
:func:`aircast.records.split_record` into readings and rejections, exactly as the
Flink job does; readings go to the raw database as ``Reading.line()``, and the
10-minute aggregates (``Aggregate.of``, the collector's own function) to the aggregates
database as ``Aggregate.line()``. Days are aligned to UTC midnight and windows to 10
minutes, so one day's readings hold complete windows.

Idempotent: a point is identified by series (measurement + tags) and time, so writing
the same day again overwrites the same points and adds none. A reading repeated in the
archive (same sensor, measure and time) is rejected as ``duplicate`` so it does not
count twice in an aggregate.

Nothing vanishes: readings older than the raw database's retention (InfluxDB refuses
them) are counted as ``beyond_retention`` — their aggregates are still written — and
every rejection is counted per reason and handed to ``on_reject`` (the command sends it
to the dead-letter topic). ``values == readings_written + sum(rejected)``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from aircast import tuning
from aircast.archive import days, iter_day_records
from aircast.errors import BackpressureError
from aircast.geocode import Geocoder
from aircast.influx import InfluxV1, duration_seconds, line_batches
from aircast.records import (
    AGGREGATE_WINDOW_S,
    BEYOND_RETENTION,
    DUPLICATE,
    Aggregate,
    Reading,
    Rejection,
    split_record,
    window_start,
)
from aircast.retry import Backoff, retrying
from aircast.settings import InfluxSettings
from aircast.simulator import Network

log = logging.getLogger(__name__)


@dataclass
class BackfillReport:
    days: int = 0
    records: int = 0
    values: int = 0  # values the records stand for (the unit of accounting)
    readings_written: int = 0
    aggregates_written: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # values per reason

    def balanced(self) -> bool:
        return self.values == self.readings_written + sum(self.rejected.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "records": self.records,
            "values": self.values,
            "readings_written": self.readings_written,
            "aggregates_written": self.aggregates_written,
            "rejected": dict(sorted(self.rejected.items())),
        }


RejectHook = Callable[[Rejection, Any], None]


@dataclass
class DayResult:
    readings: list[Reading]
    rejections: list[tuple[Rejection, Any]]
    records: int


def _attach_places(records: list[dict[str, Any]], geocoder: Geocoder | None) -> None:
    """Add the geocoder's ``place`` to each record, as the scraper does (same tags)."""
    if geocoder is None:
        return
    points: dict[tuple[float, float], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        location = record.get("location")
        if not isinstance(location, dict):
            continue
        try:
            point = (float(location["latitude"]), float(location["longitude"]))
        except (KeyError, TypeError, ValueError):
            continue  # the validation rejects it; nothing to geocode
        points[point].append(record)
    keys = list(points)
    for point, place in zip(keys, geocoder.places(keys), strict=True):
        if place is not None:
            for record in points[point]:
                record["place"] = place.to_dict()


def split_day(records: Iterable[dict[str, Any]], geocoder: Geocoder | None = None) -> DayResult:
    """A day's records → valid readings (duplicates removed) and rejections."""
    batch = list(records)
    _attach_places(batch, geocoder)
    readings: list[Reading] = []
    rejections: list[tuple[Rejection, Any]] = []
    seen: set[tuple[int, str, int]] = set()
    for record in batch:
        for outcome in split_record(record):
            if isinstance(outcome, Rejection):
                rejections.append((outcome, record))
                continue
            key = (outcome.sensor_id, outcome.measure, outcome.timestamp)
            if key in seen:
                detail = f"{outcome.key} at {outcome.timestamp} repeated in the archive"
                rejections.append((Rejection(DUPLICATE, detail), record))
                continue
            seen.add(key)
            readings.append(outcome)
    return DayResult(readings, rejections, len(batch))


def aggregates(readings: Iterable[Reading]) -> list[Aggregate]:
    """10-minute aggregates per sensor and measure (readings in time order per group)."""
    groups: dict[tuple[int, str, int], list[Reading]] = defaultdict(list)
    for r in readings:
        groups[(r.sensor_id, r.measure, window_start(r.timestamp))].append(r)
    return [
        Aggregate.of(sorted(group, key=lambda r: r.timestamp), start)
        for (_, _, start), group in sorted(groups.items())
    ]


class Backfill:
    """Writes archive days into InfluxDB; one instance per run (it keeps the counts)."""

    def __init__(
        self,
        influx: InfluxV1,
        settings: InfluxSettings,
        *,
        geocoder: Geocoder | None = None,
        on_reject: RejectHook | None = None,
        batch_lines: int = tuning.BACKFILL_BATCH_LINES,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.influx = influx
        self.settings = settings
        self.geocoder = geocoder
        self.on_reject = on_reject
        self.batch_lines = batch_lines
        self.now = now
        self.retention_s = duration_seconds(settings.raw_retention)
        self.report = BackfillReport()

    def _raw_lines(self, readings: list[Reading]) -> Iterator[str]:
        cutoff = (
            None
            if self.retention_s is None
            else self.now() - self.retention_s + tuning.RETENTION_MARGIN_S
        )
        for r in readings:
            if cutoff is not None and r.timestamp < cutoff:
                self.report.rejected[BEYOND_RETENTION] += 1
                continue
            self.report.readings_written += 1
            yield r.line()

    def _write(self, lines: Iterable[str], database: str) -> int:
        """Write in batches; when InfluxDB pushes back (:class:`BackpressureError`) the
        batch waits out its ``retry_after`` and is sent again, up to
        ``tuning.BACKFILL_BACKPRESSURE_ATTEMPTS`` times (the client itself retries only
        failures)."""
        policy = retrying(
            attempts=tuning.BACKFILL_BACKPRESSURE_ATTEMPTS,
            backoff=Backoff(*tuning.BACKFILL_BACKPRESSURE_BACKOFF_S),
            retry_on=lambda exc: isinstance(exc, BackpressureError),
            log=log,
            event=f"backfill write slowed down db={database}",
        )
        written = 0
        for batch in line_batches(lines, self.batch_lines):
            policy(self.influx.write, batch, database, precision="s")
            written += len(batch)
        return written

    def day(self, source: str | Path, day: date) -> None:
        """Backfill one day (raw readings, then aggregates)."""
        self.report.days += 1
        self.records(iter_day_records(source, day), label=str(day))

    def records(
        self,
        records: Iterable[dict[str, Any]],
        *,
        label: str,
        windows_before: int | None = None,
    ) -> None:
        """Backfill a batch of feed records (raw readings, then aggregates). With
        ``windows_before`` only the aggregates of windows that end by then are written:
        a later window is the live pipeline's to aggregate, from all of its readings."""
        result = split_day(records, self.geocoder)
        report = self.report
        report.records += result.records
        report.values += len(result.readings) + sum(r.values for r, _ in result.rejections)
        for rejection, record in result.rejections:
            report.rejected[rejection.reason] += rejection.values
            if self.on_reject is not None:
                self.on_reject(rejection, record)
        self._write(self._raw_lines(result.readings), self.settings.raw_database)
        aggs = aggregates(result.readings)
        if windows_before is not None:
            aggs = [a for a in aggs if a.window_start + AGGREGATE_WINDOW_S <= windows_before]
        report.aggregates_written += self._write(
            (a.line() for a in aggs), self.settings.aggregates_database
        )
        log.info(
            "backfill batch=%s records=%d readings=%d aggregates=%d",
            label,
            result.records,
            len(result.readings),
            len(aggs),
        )

    def run(
        self,
        source: str | Path,
        start: date,
        end: date,
        progress: Callable[[date], None] | None = None,
    ) -> BackfillReport:
        for day in days(start, end):
            self.day(source, day)
            if progress is not None:
                progress(day)
        return self.report


def seed_simulator_history(
    backfill: Backfill,
    network: Network,
    start: int,
    end: int,
    *,
    chunk_s: int = 3_600,
    progress: Callable[[int], None] | None = None,
) -> BackfillReport:
    """The simulator's readings of ``[start, end)`` (epoch seconds) into InfluxDB, an
    hour at a time, through the backfill's validation and write path, so a fresh local
    stack has history to chart and forecast from before the live feed adds to it.
    ``end`` is where the live feed's first snapshot starts: the window it falls in is
    left to the pipeline to aggregate. ``progress`` gets each chunk's end."""
    at = start
    while at < end:
        upto = min(end, at + chunk_s)
        backfill.records(
            network.snapshot(upto, upto - at), label=f"simulator<{upto}", windows_before=end
        )
        if progress is not None:
            progress(upto)
        at = upto
    return backfill.report


def archive_aggregates(source: str | Path, start: date, end: date) -> Iterator[Aggregate]:
    """The 10-minute aggregates of archive days, in memory (no InfluxDB): the same
    validation and aggregation as a backfill, for evaluation and benchmarks."""
    for day in days(start, end):
        yield from aggregates(split_day(iter_day_records(source, day)).readings)
