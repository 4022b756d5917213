"""Read models for the HTTP API and the forecast refresher: InfluxQL over
:class:`~aircast.influx.InfluxV1`, nothing else.

Every name and value that reaches a query goes through :func:`quote_ident` /
:func:`quote_str` or is an ``int`` the caller validated; user text is never pasted
into InfluxQL.

Shapes read (see :meth:`Reading.line` / :meth:`Aggregate.line`):

* raw database: measurement = measure, tags ``city, country, country_code, lat,
  location_id, lon, sensor_id, sensor_type``, field ``value``;
* aggregates database: same tags, fields ``count, max, mean, min`` at the
  10-minute window's start;
* predictions database (written here): measurement = measure, tags ``sensor_id,
  horizon`` (10-minute steps), ``kind``, ``version``; field ``value``, at the predicted
  window's start. When it was issued follows from those two: ``time - (horizon - 1) *
  600`` (see :func:`forecast_lines`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aircast.influx import InfluxV1, quote_ident, quote_str
from aircast.measures import BY_NAME
from aircast.records import AGGREGATE_WINDOW_S

Resolution = Literal["raw", "10m"]
_NS = 1_000_000_000
# Sensors per InfluxQL statement when fetching histories (the OR list stays short).
_SENSORS_PER_QUERY = 200
# Queries over every sensor are answered in chunks of this many rows (see
# InfluxV1.query): influxd then streams the answer instead of building it whole, which
# for 100,000 series (a measure at 10x the network) is about half its memory.
_CHUNK_ROWS = 10_000
# Histories of every sensor are read in pages of about this many series (sensor_id
# mod 10**k): at 10x the network one measure has ~100,000 series, and influxd holds a
# query's every series on its heap while it answers (gigabytes for all of them), while
# a page's cost is bounded by its size.
_SERIES_PER_PAGE = 2_000
_MAX_PAGE_DIGITS = 4


@dataclass(frozen=True, slots=True)
class Latest:
    """The latest raw reading of one measure."""

    value: float
    time: int  # epoch s


@dataclass(slots=True)
class SensorSummary:
    """A sensor where it was last seen, with its latest value per measure."""

    sensor_id: int
    sensor_type: str
    location_id: int
    latitude: float
    longitude: float
    city: str
    country: str
    country_code: str
    latest: dict[str, Latest] = field(default_factory=dict)
    last_seen: int = 0


@dataclass(frozen=True, slots=True)
class Point:
    """One reading (``raw``) or one 10-minute aggregate (``10m``: value = mean)."""

    time: int  # epoch s
    value: float
    min: float | None = None
    max: float | None = None
    count: int | None = None


def _measure_regex() -> str:
    # Only the measure table's names: other measurements in the database are ignored.
    names = "|".join(sorted(BY_NAME))
    return f"/^({names})$/"


def _sensor_clause(sensor_ids: Iterable[int]) -> str:
    return " OR ".join(f"{quote_ident('sensor_id')} = {quote_str(str(int(s)))}" for s in sensor_ids)


def latest_readings(influx: InfluxV1, database: str, lookback_s: int) -> list[SensorSummary]:
    """Every sensor seen in the last ``lookback_s`` seconds, with its latest value per
    measure and its latest location (a moved sensor is reported where it is now)."""
    q = (
        f'SELECT "value" FROM {_measure_regex()} '
        f"WHERE time > now() - {int(lookback_s)}s GROUP BY * ORDER BY time DESC LIMIT 1"
    )
    sensors: dict[int, SensorSummary] = {}
    for series in influx.query(q, database, epoch="s", chunk_size=_CHUNK_ROWS):
        tags: dict[str, str] = series.get("tags", {})
        columns: list[str] = series["columns"]
        for values in series.get("values", []):
            row = dict(zip(columns, values, strict=True))
            if row.get("value") is None or not tags.get("sensor_id", "").isdigit():
                continue
            sensor_id = int(tags["sensor_id"])
            when = int(row["time"])
            summary = sensors.get(sensor_id)
            if summary is None or when > summary.last_seen:
                summary = _summary(sensor_id, tags, row, summary)
                sensors[sensor_id] = summary
            current = summary.latest.get(series["name"])
            if current is None or when > current.time:
                summary.latest[series["name"]] = Latest(float(row["value"]), when)
    return sorted(sensors.values(), key=lambda s: s.sensor_id)


def _coordinate(text: str | None) -> float:
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.nan


def _summary(
    sensor_id: int, tags: dict[str, str], row: dict[str, Any], previous: SensorSummary | None
) -> SensorSummary:
    location = tags.get("location_id", "")
    return SensorSummary(
        sensor_id=sensor_id,
        sensor_type=tags.get("sensor_type", ""),
        location_id=int(location) if location.isdigit() else 0,
        latitude=_coordinate(tags.get("lat")),
        longitude=_coordinate(tags.get("lon")),
        city=tags.get("city", ""),
        country=tags.get("country", ""),
        country_code=tags.get("country_code", ""),
        latest=previous.latest if previous else {},
        last_seen=int(row["time"]),
    )


def sensor_known(influx: InfluxV1, databases: Sequence[str], sensor_id: int) -> bool:
    """True if any raw reading or aggregate of ``sensor_id`` is stored."""
    q = f"SHOW SERIES FROM {_measure_regex()} WHERE {_sensor_clause([sensor_id])} LIMIT 1"
    return any(influx.query(q, db) for db in databases)


def readings(
    influx: InfluxV1,
    database: str,
    sensor_id: int,
    measure: str,
    start: int,
    end: int,
    resolution: Resolution,
    limit: int,
) -> list[Point]:
    """A sensor's readings of one measure in ``[start, end)`` (epoch s), oldest first,
    at most ``limit`` points (the earliest ones)."""
    fields = '"value"' if resolution == "raw" else '"mean", "min", "max", "count"'
    q = (
        f"SELECT {fields} FROM {quote_ident(measure)} WHERE {_sensor_clause([sensor_id])} "
        f"AND time >= {int(start) * _NS} AND time < {int(end) * _NS} "
        f"ORDER BY time ASC LIMIT {int(limit)}"
    )
    out: list[Point] = []
    for row in influx.rows(q, database, epoch="s"):
        if resolution == "raw":
            if row.get("value") is not None:
                out.append(Point(int(row["time"]), float(row["value"])))
        elif row.get("mean") is not None:
            out.append(
                Point(
                    int(row["time"]),
                    float(row["mean"]),
                    min=_opt_float(row.get("min")),
                    max=_opt_float(row.get("max")),
                    count=None if row.get("count") is None else int(row["count"]),
                )
            )
    return out


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class History:
    """The last ``window`` 10-minute means of one sensor and measure, oldest first,
    NaN where a window has no aggregate; ``last_window`` is the newest window's start."""

    sensor_id: int
    measure: str
    last_window: int
    means: tuple[float, ...]


def _points_to_histories(
    found: Iterable[dict[str, Any]], measure: str, window: int
) -> dict[int, History]:
    step = AGGREGATE_WINDOW_S
    points: dict[int, dict[int, float]] = {}
    for series in found:
        sid = series.get("tags", {}).get("sensor_id", "")
        if not sid.isdigit():
            continue
        target = points.setdefault(int(sid), {})
        for when, mean in series.get("values", []):
            if mean is not None:
                target[int(when) - int(when) % step] = float(mean)
    out: dict[int, History] = {}
    for sid, by_time in points.items():
        last = max(by_time)
        starts = range(last - (window - 1) * step, last + step, step)
        out[sid] = History(sid, measure, last, tuple(by_time.get(t, math.nan) for t in starts))
    return out


def _history_query(measure: str, lookback_s: int, clause: str | None) -> str:
    where = f"time > now() - {int(lookback_s)}s"
    if clause:
        where += f" AND ({clause})"
    return f'SELECT "mean" FROM {quote_ident(measure)} WHERE {where} GROUP BY "sensor_id"'


def sensor_count(influx: InfluxV1, database: str, measure: str) -> int:
    """How many sensors (distinct ``sensor_id`` values) ``measure`` holds, over every
    shard: what the pages below divide.

    Not ``SHOW SERIES CARDINALITY FROM``: influxd 1.x counts a series once per shard
    it has points in (a shard is a day at 7 days' retention), so it read twice the
    sensors for data either side of midnight, and up to seven times over a week."""
    q = f'SHOW TAG VALUES CARDINALITY FROM {quote_ident(measure)} WITH KEY = "sensor_id"'
    return sum(int(r.get("count") or 0) for r in influx.rows(q, database))


def page_digits(series: int, per_page: int = _SERIES_PER_PAGE) -> int:
    """How many trailing digits of the sensor id pick a page: the fewest that keep a
    page at ``per_page`` series or fewer (sensor ids' last digits are about uniform)."""
    digits = 0
    while digits < _MAX_PAGE_DIGITS and series > per_page * 10**digits:
        digits += 1
    return digits


def page_clause(page: int, digits: int) -> str | None:
    """The tag condition of sensors whose id mod ``10**digits`` is ``page``
    (None: one page holds every sensor)."""
    if digits == 0:
        return None
    if not 0 <= page < 10**digits:
        raise ValueError(f"page {page} is not below 10**{digits}")
    # An id shorter than the suffix is the page number itself (7 is in page 7, not 07).
    pattern = f"^([0-9]*{page:0{digits}d}|{page})$"
    return f"{quote_ident('sensor_id')} =~ /{pattern}/"


def history_pages(
    influx: InfluxV1,
    database: str,
    measure: str,
    window: int,
    lookback_s: int,
    per_page: int = _SERIES_PER_PAGE,
) -> Iterator[dict[int, History]]:
    """Histories of every sensor with an aggregate of ``measure`` in the last
    ``lookback_s`` seconds, one page of sensors at a time (each sensor whole in one
    page), so neither influxd nor the caller holds every series at once."""
    digits = page_digits(sensor_count(influx, database, measure), per_page)
    for page in range(10**digits):
        q = _history_query(measure, lookback_s, page_clause(page, digits))
        yield _points_to_histories(
            influx.query(q, database, epoch="s", chunk_size=_CHUNK_ROWS), measure, window
        )


def histories(
    influx: InfluxV1,
    database: str,
    measure: str,
    window: int,
    lookback_s: int,
    sensor_ids: Sequence[int] | None = None,
) -> dict[int, History]:
    """Histories of ``measure`` for the given sensors (all sensors with an aggregate in
    the last ``lookback_s`` seconds when ``sensor_ids`` is None), each anchored at its
    own latest aggregate."""
    out: dict[int, History] = {}
    if sensor_ids is None:
        for page in history_pages(influx, database, measure, window, lookback_s):
            out.update(page)
        return out
    size = _SENSORS_PER_QUERY
    for i in range(0, len(sensor_ids), size):
        q = _history_query(measure, lookback_s, _sensor_clause(sensor_ids[i : i + size]))
        found = influx.query(q, database, epoch="s", chunk_size=_CHUNK_ROWS)
        out.update(_points_to_histories(found, measure, window))
    return out


def measures_with_aggregates(influx: InfluxV1, database: str) -> list[str]:
    """The measure-table measures the aggregates database holds."""
    rows = influx.rows("SHOW MEASUREMENTS", database)
    return [r["name"] for r in rows if r.get("name") in BY_NAME]


@dataclass(frozen=True, slots=True)
class StoredForecast:
    sensor_id: int
    measure: str
    kind: str
    version: str
    issued_at: int  # epoch s: end of the latest window the forecast is based on
    values: dict[int, float]  # horizon (10-minute steps) → predicted mean


def forecast_lines(forecasts: Iterable[StoredForecast]) -> list[str]:
    """Line protocol for the predictions database, one point per horizon at the
    predicted window's start (so a forecast lines up with the aggregate it predicts).

    No ``issued_at`` field: it is ``time - (horizon - 1) * AGGREGATE_WINDOW_S``, and
    stored it would be a second cache entry in influxd for each of the ~1.4 million
    points a refresh writes at 10x the network (465,000 series): more time per refresh
    and more of influxd's memory, for a value the time already gives."""
    lines: list[str] = []
    for f in forecasts:
        for horizon, value in sorted(f.values.items()):
            if not math.isfinite(value):
                continue
            target = f.issued_at - AGGREGATE_WINDOW_S + horizon * AGGREGATE_WINDOW_S
            lines.append(
                f"{_escape_measurement(f.measure)},horizon={int(horizon)},"
                f"kind={_escape_tag(f.kind or 'unknown')},sensor_id={int(f.sensor_id)},"
                f"version={_escape_tag(f.version or 'none')} "
                f"value={float(value)!r} {target}"
            )
    return lines


def _escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _escape_measurement(value: str) -> str:
    return value.replace(",", r"\,").replace(" ", r"\ ")
