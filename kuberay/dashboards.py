"""Generate Grafana's dashboards and alert rules (kuberay/base/grafana) from the domain.

* one dashboard per measure of ``aircast.measures`` (units and valid ranges come from
  the table, never copied), drilled down by country, city and ``sensor_id`` variables;
* a map of every location;
* forecasts against what then happened: the predictions database (what the Serve
  refresher wrote, ``aircast.queries.forecast_lines``: one point per horizon at the
  start of the window it predicts) beside the 10-minute aggregate of that same window;
* the pipeline's health from the metric names of ``aircast.telemetry``;
* Grafana alert rules for the pipeline's health (consumer lag, dead-letter rate, a stage
  down, InfluxDB write errors), made from the Prometheus rules of
  ``prometheus/alerts.yml`` so the two never disagree, provisioned with the dashboards.

Queries are InfluxQL against the v1 API (only statements of docs/influxdb.md's shared
column); measurement, field and tag names are those of ``Reading.line()``,
``Aggregate.line()`` and ``forecast_lines()``.

    .venv/bin/python kuberay/dashboards.py          # rewrite the files
    .venv/bin/python kuberay/dashboards.py --check  # exit 1 if they are stale

tests/test_kuberay.py checks that the files are current, that every query names
measurements, fields and tags the code writes, and that every alert rule is valid.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from aircast import telemetry
from aircast.measures import MEASURES, Measure
from aircast.settings import InfluxSettings, TrainSettings

GRAFANA = Path(__file__).resolve().parent / "base" / "grafana"
OUT = GRAFANA / "dashboards"
ALERT_RULES = GRAFANA / "alerting" / "rules.yaml"
PROMETHEUS_RULES = Path(__file__).resolve().parent / "base" / "prometheus" / "alerts.yml"
RAW, AGGREGATES, PREDICTIONS = "aircast-raw", "aircast-aggregates", "aircast-predictions"
PROMETHEUS = "prometheus"
# Data source uid -> the InfluxDB database behind it (datasources.yaml).
DATASOURCE_DATABASES = {
    RAW: InfluxSettings().raw_database,
    AGGREGATES: InfluxSettings().aggregates_database,
    PREDICTIONS: InfluxSettings().predictions_database,
}
_FILTER = '"country" =~ /^$country$/ AND "city" =~ /^$city$/ AND "sensor_id" =~ /^$sensor_id$/'
_MIXED = {"type": "datasource", "uid": "-- Mixed --"}


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


def _tag_variable(
    name: str, measure: str, where: str = "", label: str = "", all_values: bool = True
) -> dict[str, Any]:
    query = f'SHOW TAG VALUES FROM "{measure}" WITH KEY = "{name}"'
    if where:
        query += f" WHERE {where}"
    variable: dict[str, Any] = {
        "name": name,
        "label": label or name,
        "type": "query",
        "datasource": {"type": "influxdb", "uid": AGGREGATES},
        "query": query,
        "includeAll": all_values,
        "multi": all_values,
        "refresh": 2,
        "sort": 3,  # numerically: sensor ids
    }
    if all_values:
        variable |= {"allValue": ".*", "current": {"text": "All", "value": "$__all"}}
    return variable


def _custom_variable(name: str, label: str, values: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "query": ",".join(values),
        "options": [{"text": v, "value": v, "selected": i == 0} for i, v in enumerate(values)],
        "current": {"text": values[0], "value": values[0]},
    }


def _drill_down(measure: str) -> list[dict[str, Any]]:
    """A link from a sensor's cell to this dashboard filtered to that sensor."""
    return [
        {
            "title": "Drill down to sensor ${__value.raw}",
            "url": f"/d/aircast-{measure}?var-sensor_id=${{__value.raw}}&${{__url_time_range}}",
        }
    ]


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
            fieldConfig={
                "defaults": unit,
                "overrides": [
                    {
                        "matcher": {"id": "byName", "options": "sensor_id"},
                        "properties": [{"id": "links", "value": _drill_down(m.name)}],
                    }
                ],
            },
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
    panels.append(
        _panel(
            6,
            f"{m.label}: 10-minute mean per sensor (choose sensors above)",
            "timeseries",
            [
                _influx(
                    AGGREGATES,
                    f'SELECT mean("mean") {q} GROUP BY time($__interval), "sensor_id" fill(none)',
                    alias="sensor $tag_sensor_id",
                )
            ],
            **field,
        )
    )
    variables = [
        _tag_variable("country", m.name),
        _tag_variable("city", m.name, '"country" =~ /^$country$/'),
        _tag_variable(
            "sensor_id",
            m.name,
            '"country" =~ /^$country$/ AND "city" =~ /^$city$/',
            label="sensor",
        ),
    ]
    return _dashboard(f"aircast-{m.name}", f"aircast · {m.label} ({m.name})", panels, variables)


def predictions_dashboard() -> dict[str, Any]:
    """Forecasts against what then happened, for one sensor, measure and horizon.

    A forecast point sits at the start of the 10-minute window it predicts, where the
    aggregate of that window sits too, so the two series line up in time as stored; the
    error panel joins them on time and subtracts."""
    horizons = [str(h) for h in TrainSettings().horizons]
    where = '$timeFilter AND "sensor_id" =~ /^$sensor_id$/'
    forecast = _influx(
        PREDICTIONS,
        f'SELECT mean("value") FROM "$measure" WHERE {where} AND "horizon" = \'$horizon\' '
        "GROUP BY time(10m) fill(none)",
        alias="forecast",
    )
    measured = _influx(
        AGGREGATES,
        f'SELECT mean("mean") FROM "$measure" WHERE {where} GROUP BY time(10m) fill(none)',
        ref="B",
        alias="measured",
    )
    panels = [
        _panel(
            1,
            "Forecast $horizon × 10 min ahead vs. the measured 10-minute mean",
            "timeseries",
            [forecast, measured],
            datasource=_MIXED,
            gridPos={"h": 10, "w": 24, "x": 0, "y": 0},
        ),
        _panel(
            2,
            "Forecast error (forecast − measured)",
            "timeseries",
            [forecast, measured],
            datasource=_MIXED,
            gridPos={"h": 9, "w": 12, "x": 0, "y": 10},
            transformations=[
                {"id": "joinByField", "options": {"byField": "Time", "mode": "inner"}},
                {
                    "id": "calculateField",
                    "options": {
                        "mode": "binary",
                        "binary": {"left": "forecast", "operator": "-", "right": "measured"},
                        "alias": "error",
                        "replaceFields": True,
                    },
                },
            ],
        ),
        _panel(
            3,
            "Forecasts stored per model kind (every horizon)",
            "timeseries",
            [
                _influx(
                    PREDICTIONS,
                    f'SELECT count("value") FROM "$measure" WHERE {where} '
                    'GROUP BY time($__interval), "kind" fill(0)',
                    alias="$tag_kind",
                )
            ],
            gridPos={"h": 9, "w": 12, "x": 12, "y": 10},
        ),
    ]
    variables = [
        _custom_variable("measure", "measure", [m.name for m in MEASURES]),
        _custom_variable("horizon", "horizon (10-minute steps)", horizons),
        _tag_variable("sensor_id", "$measure", label="sensor", all_values=False),
    ]
    dashboard = _dashboard(
        "aircast-predictions", "aircast · forecasts vs. what happened", panels, variables
    )
    dashboard["description"] = (predictions_dashboard.__doc__ or "").split("\n\n")[0]
    return dashboard


def map_dashboard() -> dict[str, Any]:
    variable = _custom_variable("measure", "measure", [m.name for m in MEASURES])
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
    out["predictions.json"] = predictions_dashboard()
    out["pipeline-health.json"] = pipeline_dashboard()
    return out


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


# -- alert rules -------------------------------------------------------------------------------

# Prometheus's rule groups that become Grafana alert rules (all of pipeline health).
ALERT_GROUPS = ("aircast-stages", "aircast-lag", "aircast-dead-letters", "aircast-influxdb")


def _summary(annotations: dict[str, str]) -> str:
    """The rule's plain ``description``, else its ``summary``, which must then have no
    template: ``{{ $labels.x }}`` names no label once the Grafana rule counts series."""
    text = annotations.get("description") or annotations.get("summary", "")
    if "{{" in text:
        raise ValueError(f"{text!r}: give the Prometheus rule a plain description")
    return text


def _rule_uid(alert: str) -> str:
    """``AircastCollectLagHigh`` -> ``aircast-collect-lag-high`` (Grafana: at most 40)."""
    words = re.findall(r"[A-Z][a-z0-9]*", alert.removeprefix("Aircast"))
    return "-".join(["aircast", *(w.lower() for w in words)])[:40]


def alert_rules(prometheus_rules: dict[str, Any] | None = None) -> dict[str, Any]:
    """Grafana's alerting provisioning file: one rule per Prometheus alert of
    :data:`ALERT_GROUPS`, same expression, duration and severity.

    A Prometheus alert expression returns the series that fire and nothing otherwise;
    Grafana alerts on a number. So each rule asks Prometheus for ``count((expr)) or
    vector(0)`` (how many series fire, 0 when none) and fires when it is above 0."""
    source = prometheus_rules or yaml.safe_load(PROMETHEUS_RULES.read_text(encoding="utf-8"))
    groups = []
    for group in source["groups"]:
        if group["name"] not in ALERT_GROUPS:
            continue
        rules = []
        for rule in group["rules"]:
            expr = " ".join(str(rule["expr"]).split())
            rules.append(
                {
                    "uid": _rule_uid(rule["alert"]),
                    "title": rule["alert"],
                    "condition": "B",
                    "data": [
                        {
                            "refId": "A",
                            "relativeTimeRange": {"from": 600, "to": 0},
                            "datasourceUid": PROMETHEUS,
                            "model": {
                                "refId": "A",
                                "expr": f"count(({expr})) or vector(0)",
                                "instant": True,
                            },
                        },
                        {
                            "refId": "B",
                            "datasourceUid": "__expr__",
                            "model": {
                                "refId": "B",
                                "type": "threshold",
                                "expression": "A",
                                "conditions": [{"evaluator": {"type": "gt", "params": [0]}}],
                            },
                        },
                    ],
                    "for": rule.get("for", "0s"),
                    # No answer from Prometheus is itself a problem of the pipeline's
                    # monitoring; an evaluation error too.
                    "noDataState": "Alerting",
                    "execErrState": "Error",
                    "labels": dict(rule.get("labels", {})),
                    "annotations": {
                        "summary": _summary(rule.get("annotations", {})),
                        "prometheus_expr": expr,
                    },
                }
            )
        groups.append(
            {
                "orgId": 1,
                "name": group["name"],
                "folder": "aircast",
                "interval": "1m",
                "rules": rules,
            }
        )
    return {"apiVersion": 1, "groups": groups}


def render_rules(rules: dict[str, Any]) -> str:
    header = (
        "# Generated by kuberay/dashboards.py from prometheus/alerts.yml: do not edit.\n"
        "# Grafana alert rules for the pipeline's health (provisioning/alerting).\n"
    )
    return header + yaml.safe_dump(rules, sort_keys=False, allow_unicode=True, width=1000)


def outputs() -> dict[Path, str]:
    """Every generated file and its text."""
    out = {OUT / name: render(d) for name, d in dashboards().items()}
    out[ALERT_RULES] = render_rules(alert_rules())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        name = path.relative_to(GRAFANA).as_posix()
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("stale Grafana files (run kuberay/dashboards.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
