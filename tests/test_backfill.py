"""Backfill against the session's real InfluxDB: a real 2019 day lands exactly the
aggregate points computed here independently (csv module, measure table), its raw
readings are counted beyond retention rather than lost, a second run adds nothing, and
a recent day lands its raw readings too."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from aircast.backfill import Backfill
from aircast.influx import InfluxV1, duration_seconds
from aircast.measures import BY_NAME
from aircast.records import BEYOND_RETENTION, MISSING_FIELD
from aircast.settings import Settings

from .conftest import unique
from .test_archive import ARCHIVE

COLUMNS = {
    "P1": "P1",
    "P2": "P2",
    "temperature": "temperature",
    "humidity": "humidity",
    "pressure": "pressure",
    "pressure_sealevel": "pressure_at_sealevel",
}


def _expected_aggregates(day: date) -> dict[tuple[str, str, int], list[float]]:
    """(measure, sensor, window) → values, straight from the CSV files."""
    seen: set[tuple[str, str, int]] = set()
    windows: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for path in sorted((ARCHIVE / day.isoformat()).glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter=";"):
                stamp = datetime.fromisoformat(row["timestamp"]).replace(tzinfo=UTC)
                epoch = int(stamp.timestamp())
                for column, measure in COLUMNS.items():
                    text = row.get(column) or ""
                    if not text or not BY_NAME[measure].accepts(float(text)):
                        continue
                    if (measure, row["sensor_id"], epoch) in seen:
                        continue
                    seen.add((measure, row["sensor_id"], epoch))
                    windows[(measure, row["sensor_id"], epoch - epoch % 600)].append(float(text))
    return windows


def _settings(stack_settings: Settings) -> Settings:
    influx = stack_settings.influx.model_copy(
        update={"raw_database": unique("raw"), "aggregates_database": unique("agg")}
    )
    return stack_settings.model_copy(update={"influx": influx})


def _points(influx: InfluxV1, database: str, field: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in influx.query(f'SELECT count("{field}") FROM /.*/', database):
        out[s["name"]] = int(s["values"][0][1])
    return out


def test_duration() -> None:
    assert duration_seconds("30d") == 30 * 86400
    assert duration_seconds("1h30m") == 5400
    assert duration_seconds("INF") is None


def test_backfill_real_day_idempotent(stack_settings: Settings) -> None:
    settings = _settings(stack_settings)
    day = date(2019, 3, 9)  # holds an all-empty row
    expected = _expected_aggregates(day)
    per_measure: dict[str, int] = defaultdict(int)
    for measure, _, _ in expected:
        per_measure[measure] += 1
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        first = Backfill(influx, settings.influx, batch_lines=2_000).run(ARCHIVE, day, day)
        assert first.aggregates_written == len(expected)
        assert _points(influx, settings.influx.aggregates_database, "mean") == per_measure
        # 2019 is far beyond the raw database's 30 days: counted, not written, not lost.
        assert first.readings_written == 0
        assert first.rejected[BEYOND_RETENTION] > 0
        assert first.rejected[MISSING_FIELD] == 1
        assert first.balanced()
        assert _points(influx, settings.influx.raw_database, "value") == {}
        # One window checked value by value.
        key = min(expected)
        measure, sensor, window = key
        rows = influx.rows(
            f'SELECT "mean", "min", "max", "count" FROM "{measure}" '
            f"WHERE sensor_id = '{sensor}' AND time = {window}s",
            settings.influx.aggregates_database,
        )
        values = expected[key]
        assert rows[0]["count"] == len(values)
        assert abs(rows[0]["mean"] - statistics.fmean(values)) < 1e-9
        assert (rows[0]["min"], rows[0]["max"]) == (min(values), max(values))

        second = Backfill(influx, settings.influx).run(ARCHIVE, day, day)
        assert second.to_dict() == first.to_dict()
        assert _points(influx, settings.influx.aggregates_database, "mean") == per_measure


def test_backfill_recent_day_writes_raw(stack_settings: Settings, tmp_path: Path) -> None:
    settings = _settings(stack_settings)
    day = (datetime.now(UTC) - timedelta(days=2)).date()
    folder = tmp_path / day.isoformat()
    folder.mkdir()
    (folder / f"{day}_dht22_sensor_7.csv").write_text(
        "sensor_id;sensor_type;location;lat;lon;timestamp;temperature;humidity\n"
        f"7;DHT22;70;57.1;-2.1;{day}T10:00:10;5.0;80.0\n"
        f"7;DHT22;70;57.1;-2.1;{day}T10:02:40;7.0;101.0\n"  # humidity out of range
        f"7;DHT22;70;57.1;-2.1;{day}T10:02:40;7.0;90.0\n"  # repeated reading
        f"7;DHT22;70;57.1;-2.1;{day}T10:12:40;9.0;\n",
        encoding="utf-8",
    )
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        report = Backfill(influx, settings.influx).run(tmp_path, day, day)
        # 5.0, 80.0, 7.0, 90.0 (the first humidity at 10:02:40 was refused), 9.0
        assert report.readings_written == 5
        assert dict(report.rejected) == {"out_of_range": 1, "duplicate": 1}
        assert report.balanced()
        raw = _points(influx, settings.influx.raw_database, "value")
        assert raw == {"temperature": 3, "humidity": 2}
        aggs = influx.rows(
            'SELECT "mean", "count" FROM "temperature"', settings.influx.aggregates_database
        )
        assert [(a["mean"], a["count"]) for a in aggs] == [(6.0, 2), (9.0, 1)]
