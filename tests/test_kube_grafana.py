"""Grafana's generated dashboards and alert rules (kuberay/dashboards.py).

* Against the real InfluxDB of the session stack: the code's own lines are written
  (``Reading.line()``, ``Aggregate.line()``, ``forecast_lines()``), then every InfluxQL
  query of every dashboard and variable runs with Grafana's macros and variables
  filled in. Each must parse, and each SELECT and SHOW must find the written data: an
  InfluxQL query naming a field or tag that does not exist answers nothing rather than
  failing, so "answers something" is what proves the names are the written schema's.
* Offline: the drill-down variables and links, the predictions dashboard, and the alert
  rules made from the Prometheus rules (valid provisioning, the same expressions, the
  metrics published).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from types import ModuleType
from typing import Any

import pytest
import yaml

from aircast.influx import InfluxV1
from aircast.measures import MEASURES
from aircast.queries import StoredForecast, forecast_lines
from aircast.records import Aggregate, Reading
from aircast.settings import Settings, TrainSettings
from tests.test_kuberay import KUBERAY, datasource_databases, prometheus_problems

from .conftest import unique

GRAFANA = KUBERAY / "base" / "grafana"
SENSOR = 4242
WINDOW_S = 600


def _generator() -> ModuleType:
    path = KUBERAY / "dashboards.py"
    spec = importlib.util.spec_from_file_location("aircast_dashboards", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _dashboards() -> dict[str, dict[str, Any]]:
    return {
        p.name: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


# -- against the real server -------------------------------------------------------------------


def _fill(query: str, values: dict[str, str]) -> str:
    """Grafana's macros and the dashboard's variables, as Grafana would send them."""
    query = query.replace("$timeFilter", "time > now() - 2d").replace("$__interval", "10m")
    for name in sorted(values, key=len, reverse=True):
        query = query.replace(f"${name}", values[name])
    assert "$" not in re.sub(r"/\^.*?\$/", "", query), query  # every variable filled
    return query


def _influx_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(data source uid, query) of every InfluxDB target and query variable."""
    out = [
        (t["datasource"]["uid"], t["query"])
        for p in dashboard["panels"]
        for t in p["targets"]
        if t["datasource"]["type"] == "influxdb"
    ]
    out += [
        (v["datasource"]["uid"], v["query"])
        for v in dashboard.get("templating", {}).get("list", [])
        if v["type"] == "query"
    ]
    return out


@pytest.fixture(scope="module")
def written(stack_settings: Settings) -> dict[str, str]:
    """Fresh databases holding the code's own lines for one sensor of P1: data source
    uid -> database."""
    names = {
        "raw_database": unique("graw"),
        "aggregates_database": unique("gagg"),
        "predictions_database": unique("gpred"),
    }
    influx_settings = stack_settings.influx.model_copy(update=names)
    window = int(time.time()) // WINDOW_S * WINDOW_S - 2 * WINDOW_S
    place: dict[str, Any] = dict(
        sensor_id=SENSOR,
        sensor_type="SDS011",
        location_id=77,
        latitude=48.7,
        longitude=9.3,
        country_code="DE",
        country="Germany",
        city="Stuttgart",
        measure="P1",
    )
    reading = Reading(**place, value=12.5, timestamp=window + 60)
    aggregate = Aggregate(
        **place, window_start=window, window_end=window + WINDOW_S, mean=12, min=11, max=13, count=3
    )
    # Issued at the end of the window before: horizon 1 predicts the aggregate's window.
    forecast = StoredForecast(SENSOR, "P1", "persistence", "v1", window, {1: 11.5, 6: 10.0})
    with InfluxV1(influx_settings) as influx:
        influx.ensure_databases()
        influx.write([reading.line()], names["raw_database"], precision="s")
        influx.write([aggregate.line()], names["aggregates_database"], precision="s")
        influx.write(forecast_lines([forecast]), names["predictions_database"], precision="s")
    by_default = {db: uid for uid, db in datasource_databases().items()}
    defaults = Settings().influx
    return {
        by_default[defaults.raw_database]: names["raw_database"],
        by_default[defaults.aggregates_database]: names["aggregates_database"],
        by_default[defaults.predictions_database]: names["predictions_database"],
    }


@pytest.mark.parametrize(
    "name", ["measure-P1.json", "map.json", "predictions.json"], ids=lambda n: n
)
def test_every_dashboard_query_finds_what_the_code_writes(
    name: str, stack_settings: Settings, written: dict[str, str]
) -> None:
    dashboard = _dashboards()[name]
    values = {
        "measure": "P1",
        "country": ".*",
        "city": ".*",
        "sensor_id": str(SENSOR),
        "horizon": "1",
    }
    queries = _influx_queries(dashboard)
    assert queries
    empty: list[str] = []
    with InfluxV1(stack_settings.influx) as influx:
        for uid, query in queries:
            filled = _fill(query, values)
            if not influx.query(filled, written[uid], epoch="s"):  # raises if it does not parse
                empty.append(f"{uid}: {filled}")
    assert not empty, "\n".join(empty)


def test_the_forecast_and_the_aggregate_it_predicts_line_up(
    stack_settings: Settings, written: dict[str, str]
) -> None:
    """The predictions dashboard compares points at the same time: a horizon-1 forecast
    issued at the end of a window is stored at the start of the next window, where that
    window's aggregate is."""
    dashboard = _dashboards()["predictions.json"]
    (panel,) = [p for p in dashboard["panels"] if "vs. the measured" in p["title"]]
    values = {"measure": "P1", "sensor_id": str(SENSOR), "horizon": "1"}
    times = []
    with InfluxV1(stack_settings.influx) as influx:
        for target in panel["targets"]:
            filled = _fill(target["query"], values)
            (series,) = influx.query(filled, written[target["datasource"]["uid"]], epoch="s")
            times.append({t for t, v in series["values"] if v is not None})
    assert times[0] and times[0] == times[1], times


# -- offline: dashboards ---------------------------------------------------------------------


def test_measure_dashboards_drill_down_to_a_sensor() -> None:
    for m in MEASURES:
        dashboard = _dashboards()[f"measure-{m.name}.json"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert list(variables) == ["country", "city", "sensor_id"]
        sensor = variables["sensor_id"]
        # Narrowed by the place chosen above it, and itself a filter of every panel.
        assert '"city" =~ /^$city$/' in sensor["query"] and sensor["multi"]
        assert sensor["query"].startswith(f'SHOW TAG VALUES FROM "{m.name}" WITH KEY = "sensor_id"')
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                assert '"sensor_id" =~ /^$sensor_id$/' in target["query"], panel["title"]
        (table,) = [p for p in dashboard["panels"] if p["type"] == "table"]
        (link,) = table["fieldConfig"]["overrides"][0]["properties"][0]["value"]
        assert link["url"].startswith(f"/d/{dashboard['uid']}?var-sensor_id=${{__value.raw}}")


def test_predictions_dashboard_compares_forecasts_with_aggregates() -> None:
    dashboard = _dashboards()["predictions.json"]
    sources = datasource_databases()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert [o["value"] for o in variables["horizon"]["options"]] == [
        str(h) for h in TrainSettings().horizons
    ]
    assert [o["value"] for o in variables["measure"]["options"]] == [m.name for m in MEASURES]
    assert variables["sensor_id"]["multi"] is False  # one sensor's forecast at a time
    (compare,) = [p for p in dashboard["panels"] if "vs. the measured" in p["title"]]
    used = {sources[t["datasource"]["uid"]] for t in compare["targets"]}
    influx = Settings().influx
    assert used == {influx.predictions_database, influx.aggregates_database}
    (error,) = [p for p in dashboard["panels"] if p["title"].startswith("Forecast error")]
    binary = next(t for t in error["transformations"] if t["id"] == "calculateField")
    aliases = {t["alias"] for t in error["targets"]}
    assert {binary["options"]["binary"]["left"], binary["options"]["binary"]["right"]} == aliases


# -- offline: alert rules ----------------------------------------------------------------------


def test_alert_rules_are_the_prometheus_rules_for_grafana() -> None:
    generator = _generator()
    provisioned = yaml.safe_load((GRAFANA / "alerting" / "rules.yaml").read_text())
    assert provisioned == generator.alert_rules()  # current (also: dashboards.py --check)
    source = yaml.safe_load((KUBERAY / "base" / "prometheus" / "alerts.yml").read_text())
    wanted = {
        r["alert"]: r
        for g in source["groups"]
        if g["name"] in generator.ALERT_GROUPS
        for r in g["rules"]
    }
    rules = [r for g in provisioned["groups"] for r in g["rules"]]
    assert {r["title"] for r in rules} == set(wanted)
    # Pipeline health: lag, dead letters, a stage down, InfluxDB's write errors.
    assert {"AircastCollectLagHigh", "AircastFlinkLagHigh"} <= set(wanted)
    assert {"AircastDeadLetterRateHigh", "AircastIngestStalled", "AircastTargetDown"} <= set(wanted)
    uids = [r["uid"] for r in rules]
    assert len(set(uids)) == len(uids) and all(len(u) <= 40 for u in uids)
    sources = {
        s["uid"] for s in yaml.safe_load((GRAFANA / "datasources.yaml").read_text())["datasources"]
    }
    for rule in rules:
        prometheus = wanted[rule["title"]]
        refs = {d["refId"]: d for d in rule["data"]}
        assert rule["condition"] in refs
        query, condition = refs["A"], refs[rule["condition"]]
        assert query["datasourceUid"] in sources
        expr = " ".join(str(prometheus["expr"]).split())
        assert query["model"]["expr"] == f"count(({expr})) or vector(0)"
        assert not prometheus_problems(query["model"]["expr"])
        assert condition["datasourceUid"] == "__expr__"
        assert condition["model"]["expression"] == "A"
        assert condition["model"]["conditions"][0]["evaluator"] == {"type": "gt", "params": [0]}
        assert rule["for"] == prometheus.get("for", "0s")
        assert rule["labels"]["severity"] == prometheus["labels"]["severity"]
        assert "{{" not in rule["annotations"]["summary"]
    folders = {g["folder"] for g in provisioned["groups"]}
    assert folders == {"aircast"} and provisioned["apiVersion"] == 1


def test_a_templated_summary_without_a_description_is_refused() -> None:
    generator = _generator()
    templated = {
        "groups": [
            {
                "name": "aircast-lag",
                "rules": [
                    {
                        "alert": "AircastX",
                        "expr": "ray_aircast_collect_lag_messages > 1",
                        "labels": {"severity": "warning"},
                        "annotations": {"summary": "{{ $value }} behind"},
                    }
                ],
            }
        ]
    }
    with pytest.raises(ValueError, match="plain description"):
        generator.alert_rules(templated)


def test_generated_files_are_the_ones_on_disk() -> None:
    generator = _generator()
    assert generator.main(["--check"]) == 0
    outputs = generator.outputs()
    assert GRAFANA / "alerting" / "rules.yaml" in outputs
    assert {p.name for p in outputs if p.suffix == ".json"} == set(_dashboards())
