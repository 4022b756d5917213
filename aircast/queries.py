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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aircast import tuning
from aircast.influx import InfluxV1, quote_ident, quote_str
from aircast.measures import BY_NAME
from aircast.records import AGGREGATE_WINDOW_S

Resolution = Literal["raw", "10m"]
_NS = 1_000_000_000
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


# The tags of the raw and aggregates databases (aircast.records), grouped by explicitly
# rather than with GROUP BY *: other tags would split a sensor's series.
_PLACE_TAGS = (
    "city", "country", "country_code", "lat", "location_id", "lon", "sensor_id", "sensor_type"
)  # fmt: skip
_GROUP_BY_PLACE = ", ".join(quote_ident(t) for t in _PLACE_TAGS)


def _sensor_clause(sensor_ids: Iterable[int]) -> str:
    return " OR ".join(f"{quote_ident('sensor_id')} = {quote_str(str(int(s)))}" for s in sensor_ids)


def latest_readings(influx: InfluxV1, database: str, lookback_s: int) -> list[SensorSummary]:
    """Every sensor seen in the last ``lookback_s`` seconds, with its latest value per
    measure and its latest location (a moved sensor is reported where it is now)."""
    sensors: dict[int, SensorSummary] = {}
    for found in _every_sensor(
        influx,
        database,
        _measure_regex(),
        lambda clause: (
            f'SELECT last("value") FROM {_measure_regex()} '
            f"WHERE {_recent(lookback_s, clause)} GROUP BY {_GROUP_BY_PLACE}"
        ),
    ):
        for series in found:
            tags: dict[str, str] = series.get("tags", {})
            if not tags.get("sensor_id", "").isdigit():
                continue
            sensor_id = int(tags["sensor_id"])
            for when, value in series.get("values", []):
                if value is None:
                    continue
                summary = sensors.get(sensor_id)
                if summary is None or int(when) > summary.last_seen:
                    summary = _summary(sensor_id, tags, int(when), summary)
                    sensors[sensor_id] = summary
                current = summary.latest.get(series["name"])
                if current is None or int(when) > current.time:
                    summary.latest[series["name"]] = Latest(float(value), int(when))
    return sorted(sensors.values(), key=lambda s: s.sensor_id)


def _coordinate(text: str | None) -> float:
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.nan


def _summary(
    sensor_id: int, tags: dict[str, str], when: int, previous: SensorSummary | None
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
        last_seen=when,
    )


def sensor_known(influx: InfluxV1, databases: Sequence[str], sensor_id: int) -> bool:
    """True if any raw reading or aggregate of ``sensor_id`` is stored (a tag value
    lookup: ``SHOW SERIES`` is not served by InfluxDB 3.x)."""
    q = (
        f'SHOW TAG VALUES FROM {_measure_regex()} WITH KEY = "sensor_id" '
        f"WHERE {_sensor_clause([sensor_id])}"
    )
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
            out.append(_summary_point(row))
    return out


def grouped_readings(
    influx: InfluxV1,
    database: str,
    sensor_id: int,
    measure: str,
    start: int,
    end: int,
    interval: Literal["1h", "1d"],
    limit: int,
    *,
    from_raw: bool = False,
) -> list[Point]:
    """A sensor's values of one measure per ``interval`` (UTC-aligned windows, at their
    start) in ``[start, end)``, oldest first, at most ``limit``: from the 10-minute
    aggregates the mean of their means (each window weighs the same: a time average),
    the min of their mins, the max of their maxes and the sum of their counts; or, with
    ``from_raw``, the same figures of the raw readings. Empty windows are left out."""
    if interval not in ("1h", "1d"):
        raise ValueError(f"interval must be 1h or 1d, not {interval!r}")
    fields = (
        'mean("value") AS "mean", min("value") AS "min", max("value") AS "max", '
        'count("value") AS "count"'
        if from_raw
        else 'mean("mean") AS "mean", min("min") AS "min", max("max") AS "max", '
        'sum("count") AS "count"'
    )
    q = (
        f"SELECT {fields} FROM {quote_ident(measure)} WHERE {_sensor_clause([sensor_id])} "
        f"AND time >= {int(start) * _NS} AND time < {int(end) * _NS} "
        f"GROUP BY time({interval}) fill(none) LIMIT {int(limit)}"
    )
    return [
        _summary_point(row)
        for row in influx.rows(q, database, epoch="s")
        if row.get("mean") is not None
    ]


def _summary_point(row: dict[str, Any]) -> Point:
    """A window's mean, min, max and count (an aggregate row, or a GROUP BY time row)."""
    return Point(
        int(row["time"]),
        float(row["mean"]),
        min=_opt_float(row.get("min")),
        max=_opt_float(row.get("max")),
        count=None if row.get("count") is None else int(row["count"]),
    )


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


def _recent(lookback_s: int, clause: str | None) -> str:
    """A WHERE condition: the last ``lookback_s`` seconds, and ``clause`` if any."""
    where = f"time > now() - {int(lookback_s)}s"
    return f"{where} AND ({clause})" if clause else where


def _history_query(measure: str, lookback_s: int, clause: str | None) -> str:
    where = _recent(lookback_s, clause)
    return f'SELECT "mean" FROM {quote_ident(measure)} WHERE {where} GROUP BY "sensor_id"'


def sensor_ids(influx: InfluxV1, database: str, source: str) -> set[int]:
    """The distinct ``sensor_id`` tag values of ``source`` (a quoted measurement or a
    measurement regex), over every shard.

    Counted from ``SHOW TAG VALUES`` rows, not a cardinality query: 2.x and 3.x serve
    no ``SHOW ... CARDINALITY``, and 1.x's series cardinality counts a series once per
    shard it has points in (a day's shard at 7 days' retention), which read up to seven
    times the sensors over a week."""
    q = f'SHOW TAG VALUES FROM {source} WITH KEY = "sensor_id"'
    return {int(v) for r in influx.rows(q, database) if (v := str(r.get("value", ""))).isdigit()}


def sensor_count(influx: InfluxV1, database: str, measure: str) -> int:
    """How many sensors ``measure`` holds: what the pages below divide."""
    return len(sensor_ids(influx, database, quote_ident(measure)))


def page_digits(series: int, per_page: int = tuning.SERIES_PER_PAGE) -> int:
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


def _every_sensor(
    influx: InfluxV1,
    database: str,
    source: str,
    query: Callable[[str | None], str],
    per_page: int = tuning.SERIES_PER_PAGE,
) -> Iterator[list[dict[str, Any]]]:
    """The series of ``query`` over every sensor of ``source``, one page of sensors per
    statement (each sensor whole in one page). ``query`` gets the page's tag condition
    (None when one page holds every sensor)."""
    digits = page_digits(len(sensor_ids(influx, database, source)), per_page)
    for page in range(10**digits):
        yield influx.query(query(page_clause(page, digits)), database, epoch="s")


def history_pages(
    influx: InfluxV1,
    database: str,
    measure: str,
    window: int,
    lookback_s: int,
    per_page: int = tuning.SERIES_PER_PAGE,
) -> Iterator[dict[int, History]]:
    """Histories of every sensor with an aggregate of ``measure`` in the last
    ``lookback_s`` seconds, one page of sensors at a time (each sensor whole in one
    page), so neither influxd nor the caller holds every series at once."""
    for found in _every_sensor(
        influx,
        database,
        quote_ident(measure),
        lambda clause: _history_query(measure, lookback_s, clause),
        per_page,
    ):
        yield _points_to_histories(found, measure, window)


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
    size = tuning.HISTORY_SENSORS_PER_QUERY
    for i in range(0, len(sensor_ids), size):
        q = _history_query(measure, lookback_s, _sensor_clause(sensor_ids[i : i + size]))
        found = influx.query(q, database, epoch="s")
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


# -- the map layer and area listings ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Located:
    """A sensor's latest raw reading of one measure, with where and when it was taken."""

    sensor_id: int
    latitude: float
    longitude: float
    city: str
    value: float
    time: int  # epoch s


def latest_located(
    influx: InfluxV1, database: str, measure: str, lookback_s: int
) -> dict[int, Located]:
    """The latest reading of ``measure`` of every sensor seen in the last ``lookback_s``
    seconds, at the place it was taken (a moved sensor has one series per place: the
    newest wins). One statement, one series per sensor and place."""
    out: dict[int, Located] = {}
    for found in _every_sensor(
        influx,
        database,
        quote_ident(measure),
        lambda clause: (
            f'SELECT last("value") FROM {quote_ident(measure)} '
            f'WHERE {_recent(lookback_s, clause)} GROUP BY "sensor_id", "lat", "lon", "city"'
        ),
    ):
        for series in found:
            tags: dict[str, str] = series.get("tags", {})
            sid = tags.get("sensor_id", "")
            if not sid.isdigit():
                continue
            for when, value in series.get("values", []):
                current = out.get(int(sid))
                if value is not None and (current is None or int(when) > current.time):
                    out[int(sid)] = Located(
                        int(sid),
                        _coordinate(tags.get("lat")),
                        _coordinate(tags.get("lon")),
                        tags.get("city", ""),
                        float(value),
                        int(when),
                    )
    return out


def window_means(influx: InfluxV1, database: str, measure: str, window_s: int) -> dict[int, float]:
    """Per sensor, the mean of the 10-minute means of ``measure`` whose windows start in
    the last ``window_s`` seconds (each window weighs the same: a time average)."""
    out: dict[int, float] = {}
    for found in _every_sensor(
        influx,
        database,
        quote_ident(measure),
        lambda clause: (
            f'SELECT mean("mean") FROM {quote_ident(measure)} '
            f'WHERE {_recent(window_s, clause)} GROUP BY "sensor_id"'
        ),
    ):
        for series in found:
            sid = series.get("tags", {}).get("sensor_id", "")
            values = series.get("values") or []
            if sid.isdigit() and values and values[0][1] is not None:
                out[int(sid)] = float(values[0][1])
    return out
