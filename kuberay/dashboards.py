"""Generate the Grafana dashboards of kuberay/base/grafana/dashboards from the domain.

One dashboard per measure of ``aircast.measures`` (units and valid ranges come from the
table, never copied), a map of every location, and the pipeline's health from the metric
names of ``aircast.telemetry``. Queries are InfluxQL against the v1 API; measurement,
field and tag names are those of ``Reading.line()`` / ``Aggregate.line()``.

    .venv/bin/python kuberay/dashboards.py          # rewrite the JSON files
    .venv/bin/python kuberay/dashboards.py --check  # exit 1 if they are stale

tests/test_kuberay.py checks that the files are current and that every query names
measurements, fields and tags the collector writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aircast import telemetry
from aircast.measures import MEASURES, Measure
from aircast.settings import InfluxSettings

OUT = Path(__file__).resolve().parent / "base" / "grafana" / "dashboards"
RAW, AGGREGATES, PROMETHEUS = "aircast-raw", "aircast-aggregates", "prometheus"
# Data source uid -> the InfluxDB database behind it (datasources.yaml).
DATASOURCE_DATABASES = {
    RAW: InfluxSettings().raw_database,
    AGGREGATES: InfluxSettings().aggregates_database,
}
_FILTER = '"country" =~ /^$country$/ AND "city" =~ /^$city$/'


def _influx(uid: str, query: str, ref: str = "A", alias: str = "") -> dict[str, Any]:
    target: dict[str, Any] = {
        "refId": ref,
        "datasource": {"type": "influxdb", "uid": uid},
        "rawQuery": True,
        "resultFormat": "time_series",
        "query": query,
    }
    if alias:
        target["alias"] = alias
    return target


def _prom(expr: str, legend: str, ref: str = "A") -> dict[str, Any]:
    return {
        "refId": ref,
        "datasource": {"type": "prometheus", "uid": PROMETHEUS},
        "expr": expr,
        "legendFormat": legend,
    }


def _panel(pid: int, title: str, kind: str, targets: list[dict[str, Any]], **extra: Any) -> Any:
    x, y = (pid - 1) % 2 * 12, (pid - 1) // 2 * 9
    return {
        "id": pid,
        "title": title,
        "type": kind,
        "gridPos": {"h": 9, "w": 12, "x": x, "y": y},
        "datasource": targets[0]["datasource"],
        "targets": targets,
        **extra,
    }


def _dashboard(uid: str, title: str, panels: list[Any], variables: list[Any]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["aircast"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": variables},
        "panels": panels,
    }


def _tag_variable(name: str, measure: str, where: str = "") -> dict[str, Any]:
    query = f'SHOW TAG VALUES FROM "{measure}" WITH KEY = "{name}"'
    if where:
        query += f" WHERE {where}"
    return {
        "name": name,
        "type": "query",
        "datasource": {"type": "influxdb", "uid": AGGREGATES},
        "query": query,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "refresh": 2,
        "current": {"text": "All", "value": "$__all"},
    }


def _geomap(pid: int, title: str, target: dict[str, Any], **extra: Any) -> Any:
    # The coordinates are tags (grouped by): a table result makes them columns, as text,
    # and the geomap's coordinates must be numbers.
    numbers = [{"targetField": name, "destinationType": "number"} for name in ("lat", "lon")]
    return _panel(
        pid,
        title,
        "geomap",
        [{**target, "resultFormat": "table"}],
        transformations=[{"id": "convertFieldType", "options": {"conversions": numbers}}],
        options={
            "view": {"id": "europe", "lat": 50, "lon": 10, "zoom": 4},
            "layers": [
                {
                    "type": "markers",
                    "name": "sensors",
                    "location": {"mode": "coords", "latitude": "lat", "longitude": "lon"},
                }
            ],
        },
        **extra,
    )


def measure_dashboard(m: Measure) -> dict[str, Any]:
    unit = {"unit": f"suffix: {m.unit}", "min": m.low, "max": m.high}
    field = {"fieldConfig": {"defaults": unit, "overrides": []}}
    q = f'FROM "{m.name}" WHERE $timeFilter AND {_FILTER}'
    panels = [
        _panel(
            1,
            f"{m.label}: 10-minute mean by city",
            "timeseries",
            [
                _influx(
                    AGGREGATES,
                    f'SELECT mean("mean") {q} GROUP BY time($__interval), "city" fill(none)',
                    alias="$tag_city",
                )
            ],
            **field,
        ),
        _panel(
            2,
            f"{m.label}: range",
            "timeseries",
            [
                _influx(
                    AGGREGATES,
                    f'SELECT min("min") AS "min", mean("mean") AS "mean", max("max") AS "max" '
                    f"{q} GROUP BY time($__interval) fill(none)",
                )
            ],
            **field,
        ),
        _panel(
            3,
            f"{m.label}: latest reading per sensor",
            "table",
            [
                _influx(
                    RAW,
                    f'SELECT last("value") AS "value" {q} '
                    'GROUP BY "sensor_id", "sensor_type", "city", "country"',
                )
            ],
            **field,
        ),
        _panel(
            4,
            f"{m.label}: readings per interval",
            "timeseries",
            [
                _influx(
                    AGGREGATES,
                    f'SELECT sum("count") {q} GROUP BY time($__interval) fill(0)',
                    alias="readings",
                )
            ],
        ),
        _geomap(
            5,
            f"{m.label}: where",
            _influx(
                AGGREGATES,
                f'SELECT last("mean") AS "mean" {q} GROUP BY "location_id", "lat", "lon"',
            ),
            **field,
        ),
    ]
    variables = [
        _tag_variable("country", m.name),
        _tag_variable("city", m.name, '"country" =~ /^$country$/'),
    ]
    return _dashboard(f"aircast-{m.name}", f"aircast · {m.label} ({m.name})", panels, variables)


def map_dashboard() -> dict[str, Any]:
    variable = {
        "name": "measure",
        "type": "custom",
        "query": ",".join(m.name for m in MEASURES),
        "options": [
            {"text": m.name, "value": m.name, "selected": i == 0} for i, m in enumerate(MEASURES)
        ],
        "current": {"text": MEASURES[0].name, "value": MEASURES[0].name},
    }
    panel = _geomap(
        1,
        "Latest 10-minute mean of $measure per location",
        _influx(
            AGGREGATES,
            'SELECT last("mean") AS "mean" FROM "$measure" WHERE $timeFilter '
            'GROUP BY "location_id", "lat", "lon", "city", "country"',
        ),
        gridPos={"h": 20, "w": 24, "x": 0, "y": 0},
    )
    return _dashboard("aircast-map", "aircast · map", [panel], [variable])


def pipeline_dashboard() -> dict[str, Any]:
    p = telemetry.published
    rate = "rate({}[5m])"
    panels = [
        _panel(
            1,
            "Collector lag (messages behind, by topic)",
            "timeseries",
            [
                _prom(f"sum by (topic) ({p(telemetry.COLLECT_LAG)})", "{{topic}}"),
                _prom(
                    "sum by (consumergroup, topic) (kafka_consumergroup_lag)",
                    "kafka {{consumergroup}} {{topic}}",
                    "B",
                ),
            ],
        ),
        _panel(
            2,
            "Throughput: feed records/s by outcome, points/s by database",
            "timeseries",
            [
                _prom(
                    f"sum by (outcome) ({rate.format(p(telemetry.INGEST_RECORDS))})",
                    "ingest {{outcome}}",
                ),
                _prom(
                    f"sum by (database) ({rate.format(p(telemetry.COLLECT_POINTS))})",
                    "written {{database}}",
                    "B",
                ),
            ],
        ),
        _panel(
            3,
            "Dead letters/s by stage and reason",
            "timeseries",
            [
                _prom(
                    f"sum by (stage, reason) ({rate.format(p(telemetry.DEAD_LETTERS))})",
                    "{{stage}} {{reason}}",
                )
            ],
        ),
        _panel(
            4,
            "Batch write time (p95, s)",
            "timeseries",
            [
                _prom(
                    "histogram_quantile(0.95, sum by (le, database) "
                    f"({rate.format(p(telemetry.COLLECT_BATCH_SECONDS) + '_bucket')}))",
                    "{{database}}",
                )
            ],
        ),
        _panel(
            5,
            "Snapshots/s by source",
            "timeseries",
            [
                _prom(
                    f"sum by (source) ({rate.format(p(telemetry.INGEST_SNAPSHOTS))})",
                    "{{source}}",
                )
            ],
        ),
        _panel(
            6,
            "Forecasts served/s by kind",
            "timeseries",
            [_prom(f"sum by (kind) ({rate.format(p(telemetry.FORECASTS))})", "{{kind}}")],
        ),
    ]
    return _dashboard("aircast-pipeline", "aircast · pipeline health", panels, [])


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON object."""
    out = {f"measure-{m.name}.json": measure_dashboard(m) for m in MEASURES}
    out["map.json"] = map_dashboard()
    out["pipeline-health.json"] = pipeline_dashboard()
    return out


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for name, dashboard in dashboards().items():
        path = OUT / name
        text = render(dashboard)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("stale dashboards (run kuberay/dashboards.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
