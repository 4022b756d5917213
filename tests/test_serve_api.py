"""The Serve HTTP API, deployed on the session stack's Ray, reading the session's real
InfluxDB and Redis (fresh databases and key prefix): sensors with AQI and flags,
readings, forecasts (stored lookups, batched misses, registry entries, fallbacks),
4xx validation, 404s, admin auth, and schemathesis over the OpenAPI spec (no 500s)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from aircast.cache import key, redis_client
from aircast.influx import InfluxV1
from aircast.localhost import free_port
from aircast.records import AGGREGATE_WINDOW_S, Aggregate, Reading
from aircast.registry import ModelEntry, Registry
from aircast.settings import Settings

from .conftest import unique

ADMIN = "test-admin-token"
# Ray Serve 2.60's own config models still pass extra kwargs to pydantic's Field.
RAY_SERVE_WARNINGS = pytest.mark.filterwarnings(
    "ignore:Using extra keyword arguments on `Field` is deprecated"
    ":pydantic.warnings.PydanticDeprecatedSince20"
)
pytestmark = [RAY_SERVE_WARNINGS]


# The port Serve's proxy was last started on in this test process.
_proxy_port: list[int] = []


def serve_port() -> int:
    """The port for this module's app: the port of the Serve proxy already up in this
    session, else a free one. Serve (its controller and proxy) starts at a session's
    first deploy and stays up: each module deploys its app over the last one and deletes
    it at its end (:func:`delete_app`), instead of shutting Serve down for the next
    module to start again (seconds each way). A test that takes Serve down leaves the
    next module a fresh start, on a fresh port."""
    import ray
    from ray import serve

    assert ray.is_initialized(), "serve_port() needs this process connected (ray_session)"
    try:
        up = bool(serve.status().proxies)
    except Exception:  # a controller shut down from another process: not up
        up = False
    if not (up and _proxy_port):
        _proxy_port[:] = [free_port()]
    return _proxy_port[0]


def shut_serve_down() -> None:
    """Serve off in this session, if this process had it up (:func:`serve_port`): for a
    test that starts Serve itself, on a port of its own."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()  # type: ignore[no-untyped-call]  # unannotated in Ray Serve


def delete_app() -> None:
    """Delete this module's app (waits until it is gone), leaving Serve up."""
    from ray import serve

    from serve.app import APP_NAME

    if APP_NAME in serve.status().applications:
        serve.delete(APP_NAME)


def serve_settings(base: Settings, registry_dir: Path) -> Settings:
    """``base`` with fresh databases, key prefix and registry folder, on the session's
    Serve port (:func:`serve_port`)."""
    tag = unique("serve")
    return base.model_copy(
        update={
            "influx": base.influx.model_copy(
                update={
                    "raw_database": f"{tag}_raw",
                    "aggregates_database": f"{tag}_agg",
                    "predictions_database": f"{tag}_pred",
                }
            ),
            "redis": base.redis.model_copy(update={"key_prefix": f"{tag}:"}),
            "train": base.train.model_copy(update={"registry_dir": registry_dir}),
            "serve": base.serve.model_copy(
                update={
                    "port": serve_port(),
                    "admin_token": SecretStr(ADMIN),
                    "sensors_cache_s": 0.0,
                    # No per-replica memo: tests delete cached forecasts and expect a miss.
                    "forecast_memo_s": 0.0,
                }
            ),
        }
    )


@dataclass(frozen=True)
class Seeded:
    now: int
    last_window: int  # start of the newest aggregate window


def _reading(sid: int, loc: int, lat: float, lon: float, measure: str, value: float, t: int) -> str:
    stype = "DHT22" if measure in ("humidity", "temperature") else "SDS011"
    return Reading(
        sid, stype, loc, lat, lon, "DE", "Germany", "Esslingen", measure, value, t
    ).line()


def _aggregate(sid: int, measure: str, mean: float, start: int) -> str:
    return Aggregate(
        sid, "SDS011", 11, 48.74, 9.32, "DE", "Germany", "Esslingen", measure,
        start, start + AGGREGATE_WINDOW_S, mean, mean - 1.0, mean + 1.0, 5,
    ).line()  # fmt: skip


def seed(settings: Settings) -> Seeded:
    """Sensors: 101 (PM, location 11) beside 102 (humidity 85 % at location 11);
    201 (PM at location 22, no aggregates); 301 and 401 (PM aggregates, registry
    entries: a promoted seasonal-naive baseline and an rnn whose file is missing)."""
    now = int(time.time())
    last = now - now % AGGREGATE_WINDOW_S - AGGREGATE_WINDOW_S
    raw: list[str] = []
    for k in range(12):  # one reading every 5 minutes for an hour, newest = k 0
        t = now - 60 - k * 300
        raw.append(_reading(101, 11, 48.74, 9.32, "P1", 30.0 if k == 0 else 40.0 + k, t))
        raw.append(_reading(101, 11, 48.74, 9.32, "P2", 12.0 if k == 0 else 20.0 + k, t))
        raw.append(_reading(102, 11, 48.74, 9.32, "humidity", 85.0, t))
        raw.append(_reading(201, 22, 52.52, 13.40, "P2", 5.0, t))
    aggregates: list[str] = []
    for k in range(40):
        start = last - k * AGGREGATE_WINDOW_S
        aggregates.append(_aggregate(101, "P1", 30.0 + k, start))
        aggregates.append(_aggregate(301, "P1", 50.0 + k, start))
        aggregates.append(_aggregate(401, "P2", 70.0 + k, start))
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        influx.write(raw, settings.influx.raw_database, precision="s")
        influx.write(aggregates, settings.influx.aggregates_database, precision="s")
    registry = Registry(
        settings.train.registry_dir, redis_client(settings.redis), settings.redis.key_prefix
    )
    registry.register(
        ModelEntry(301, "P1", "v-seasonal", "seasonal_naive", (1, 6, 36), 36,
                   metrics={"1h": {"model_mae": 2.0, "persistence_mae": 2.5}},
                   skill=0.2, promoted=True, trained_at=now - 3600)
    )  # fmt: skip
    registry.register(
        ModelEntry(401, "P2", "v-rnn", "rnn", (1, 6, 36), 36, skill=0.3, promoted=True,
                   trained_at=now - 3600, path="P2/401/v-rnn")
    )  # fmt: skip
    return Seeded(now, last)


@dataclass(frozen=True)
class App:
    settings: Settings
    url: str
    seeded: Seeded


@pytest.fixture(scope="module")
def app(ray_session: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    from serve.deploy import deploy

    settings = serve_settings(ray_session, tmp_path_factory.mktemp("registry"))
    seeded = seed(settings)
    urls = deploy(settings)
    try:
        yield App(settings, urls.base, seeded)
    finally:
        delete_app()


@pytest.fixture()
def client(app: App) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app.url, timeout=60.0) as c:
        yield c


def test_health(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "influx": True, "redis": True}


def test_sensors_have_place_latest_values_aqi_and_humidity_flags(client: httpx.Client) -> None:
    r = client.get("/sensors")
    assert r.status_code == 200
    body = r.json()
    by_id = {s["id"]: s for s in body["sensors"]}
    assert {101, 102, 201} <= set(by_id)
    s = by_id[101]
    assert s["place"] == {"city": "Esslingen", "country": "Germany", "country_code": "DE"}
    assert (s["latitude"], s["longitude"], s["location_id"]) == (48.74, 9.32, 11)
    assert s["latest"]["P1"]["value"] == 30.0 and s["latest"]["P2"]["value"] == 12.0
    assert s["latest"]["P1"]["unit"] == "µg/m³"
    # PM10 30 → CAQI 30 (low); PM2.5 12.0 → US AQI 56 (moderate, 2024 breakpoints)
    assert s["aqi"]["caqi"] == {"value": 30, "category": "low", "pollutant": "P1"}
    assert s["aqi"]["us_epa"] == {"value": 56, "category": "moderate", "pollutant": "P2"}
    # Humidity 85 % from sensor 102 at the same location flags 101's PM readings.
    assert s["flags"] == ["humidity_above_70"]
    assert s["latest"]["P2"]["flags"] == ["humidity_above_70"]
    assert by_id[102]["aqi"] == {"caqi": None, "us_epa": None} and by_id[102]["flags"] == []
    assert by_id[201]["flags"] == [] and by_id[201]["aqi"]["caqi"]["value"] == 8


def test_readings_raw_and_10m(app: App, client: httpx.Client) -> None:
    raw = client.get("/sensors/101/readings", params={"measure": "P1", "resolution": "raw"})
    assert raw.status_code == 200
    points = raw.json()["points"]
    assert len(points) == 12
    assert [p["time"] for p in points] == sorted(p["time"] for p in points)
    assert points[-1]["value"] == 30.0
    agg = client.get("/sensors/101/readings", params={"measure": "P1"}).json()
    assert agg["resolution"] == "10m"
    assert agg["points"][-1] == {
        "time": app.seeded.last_window, "value": 30.0, "min": 29.0, "max": 31.0, "count": 5
    }  # fmt: skip
    # from/to select a half-open range; limit truncates and says so.
    start, end = app.seeded.last_window - 3 * 600, app.seeded.last_window
    window = client.get(
        "/sensors/101/readings", params={"measure": "P1", "from": start, "to": end}
    ).json()
    assert [p["time"] for p in window["points"]] == [start, start + 600, start + 1200]
    limited = client.get("/sensors/101/readings", params={"measure": "P1", "limit": 2}).json()
    assert len(limited["points"]) == 2 and limited["truncated"] is True
    iso = client.get(
        "/sensors/101/readings",
        params={"measure": "P1", "from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00"},
    )
    assert iso.status_code == 200 and iso.json()["points"] == []


@pytest.mark.parametrize(("resolution", "seconds"), [("1h", 3600), ("1d", 86_400)])
def test_hourly_and_daily_readings_summarise_the_10_minute_aggregates(
    client: httpx.Client, resolution: str, seconds: int
) -> None:
    """Each window: the mean of the 10-minute means, the min of their mins, the max of
    their maxes, the sum of their counts (computed here from the 10m answer); as CSV
    the same rows."""
    now = int(time.time())
    params_10m = {"measure": "P1", "from": now - 30 * 86_400, "to": now + 600}
    tens = client.get("/v1/sensors/101/readings", params=params_10m).json()["points"]
    assert tens
    want: dict[int, list[dict[str, float]]] = {}
    for p in tens:
        want.setdefault(p["time"] // seconds * seconds, []).append(p)
    got = client.get(
        "/v1/sensors/101/readings", params={**params_10m, "resolution": resolution}
    ).json()
    assert got["resolution"] == resolution
    assert [p["time"] for p in got["points"]] == sorted(want)
    for point in got["points"]:
        group = want[point["time"]]
        assert point["value"] == pytest.approx(sum(g["value"] for g in group) / len(group))
        assert point["min"] == min(g["min"] for g in group)
        assert point["max"] == max(g["max"] for g in group)
        assert point["count"] == sum(g["count"] for g in group)
    csv = client.get(
        "/v1/sensors/101/readings",
        params={**params_10m, "resolution": resolution, "format": "csv"},
    )
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    rows = [line for line in csv.text.splitlines() if line and not line.startswith("#")]
    assert len(rows) == 1 + len(got["points"]), csv.text[:500]  # a header, then a row each


@pytest.mark.parametrize(
    ("path", "params", "needle"),
    [
        ("/sensors/101/readings", {"measure": "PM25"}, "Input should be"),
        ("/sensors/101/readings", {}, "Field required"),
        ("/sensors/101/readings", {"measure": "P1", "resolution": "5m"}, "raw"),
        ("/v1/sensors/101/readings", {"measure": "P1", "format": "xml"}, "csv"),
        ("/v1/sensors/101/readings", {"measure": "P1", "resolution": "1h", "from": 0}, "at most"),
        ("/sensors/101/readings", {"measure": "P1", "from": 200, "to": 100}, "before"),
        ("/sensors/101/readings", {"measure": "P1", "from": "yesterday"}, "datetime"),
        ("/sensors/101/readings", {"measure": "P1", "from": "1900-01-01"}, "1970"),
        ("/sensors/101/readings", {"measure": "P1", "from": 0, "to": 10**9}, "at most"),
        ("/sensors/101/readings", {"measure": "P1", "limit": 0}, "greater than"),
        ("/sensors/abc/readings", {"measure": "P1"}, "integer"),
        ("/sensors/-5/forecast", {"measure": "P1"}, "greater than"),
        ("/sensors/101/forecast", {}, "Field required"),
    ],
)
def test_bad_input_is_a_clear_4xx(
    client: httpx.Client, path: str, params: dict[str, object], needle: str
) -> None:
    r = client.get(path, params=params)
    assert r.status_code == 422, r.text
    assert needle in json.dumps(r.json()["detail"])


@pytest.mark.parametrize("path", ["/sensors/999999/readings", "/sensors/999999/forecast"])
def test_unknown_sensor_is_404(client: httpx.Client, path: str) -> None:
    r = client.get(path, params={"measure": "P1"})
    assert r.status_code == 404
    assert r.json() == {"detail": "unknown sensor 999999"}


def test_forecast_without_aggregates_is_404_with_reason(client: httpx.Client) -> None:
    r = client.get("/sensors/201/forecast", params={"measure": "P2"})
    assert r.status_code == 404
    assert "no 10-minute aggregates" in r.json()["detail"]


def test_persistence_forecast_is_stored_and_then_a_lookup(app: App, client: httpx.Client) -> None:
    s = app.settings
    redis_client(s.redis).delete(f"{s.redis.key_prefix}forecast:P1:101")
    first = client.get("/sensors/101/forecast", params={"measure": "P1"}).json()
    assert first["source"] == "computed"
    assert first["served_by"] == "baseline" and first["model"]["kind"] == "persistence"
    assert first["model"]["skill"] == 0.0 and "no trained model" in first["note"]
    last = app.seeded.last_window
    assert (first["based_on"], first["issued_at"]) == (last, last + 600)
    assert [(p["horizon_steps"], p["horizon"], p["time"], p["value"]) for p in first["points"]] == [
        (h, label, last + h * 600, 30.0)
        for h, label in zip(s.train.horizons, ("10m", "1h", "6h"), strict=True)
    ]
    second = client.get("/sensors/101/forecast", params={"measure": "P1"}).json()
    assert second["source"] == "cache"
    assert {k: v for k, v in second.items() if k != "source"} == {
        k: v for k, v in first.items() if k != "source"
    }
    with InfluxV1(s.influx) as influx:
        rows = influx.rows(
            'SELECT "value" FROM "P1" WHERE "sensor_id" = \'101\' GROUP BY "horizon"',
            s.influx.predictions_database,
            epoch="s",
        )
    assert {(r["time"], r["horizon"], r["value"]) for r in rows} >= {
        (last + h * 600, str(h), 30.0) for h in s.train.horizons
    }
    # When a stored forecast was issued follows from its time and horizon (queries.py).
    mine = [r for r in rows if r["time"] - (int(r["horizon"]) - 1) * 600 == first["issued_at"]]
    assert sorted(int(r["horizon"]) for r in mine) == sorted(s.train.horizons)


def test_registry_entries_drive_the_forecast(client: httpx.Client) -> None:
    seasonal = client.get("/sensors/301/forecast", params={"measure": "P1"}).json()
    assert seasonal["model"]["kind"] == "seasonal_naive"
    assert seasonal["model"]["version"] == "v-seasonal" and seasonal["model"]["skill"] == 0.2
    assert seasonal["model"]["metrics"] == {"1h": {"model_mae": 2.0, "persistence_mae": 2.5}}
    assert seasonal["served_by"] == "baseline" and "promoted" in seasonal["note"]
    # An rnn entry whose model cannot be loaded: persistence serves, and says why.
    rnn = client.get("/sensors/401/forecast", params={"measure": "P2"}).json()
    assert rnn["served_by"] == "baseline" and rnn["model"]["kind"] == "persistence"
    assert "v-rnn unavailable" in rnn["note"]
    assert [p["value"] for p in rnn["points"]] == [70.0, 70.0, 70.0]


def test_concurrent_cache_misses_are_answered(app: App) -> None:
    """Misses go through the batched path; every one is answered correctly."""
    s = app.settings
    r = redis_client(s.redis)
    keys = [f"{s.redis.key_prefix}forecast:{m}:{sid}" for sid, m in ((101, "P1"), (301, "P1"))]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=app.url, timeout=60.0) as c:
            calls = [
                c.get(f"/sensors/{sid}/forecast", params={"measure": "P1"})
                for sid in (101, 301) * 8
            ]
            return list(await asyncio.gather(*calls))

    r.delete(*keys)
    responses = asyncio.run(burst())
    assert all(x.status_code == 200 for x in responses)
    values = {x.json()["sensor_id"]: x.json()["points"][0]["value"] for x in responses}
    assert values == {101: 30.0, 301: 50.0}
    assert {x.json()["source"] for x in responses} <= {"computed", "cache"}
    assert "computed" in {x.json()["source"] for x in responses}


def test_admin_routes_need_the_bearer_token(client: httpx.Client) -> None:
    assert client.post("/admin/reload").status_code == 401
    assert client.get("/admin/refresh").status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert (
        client.post("/admin/reload", headers={"Authorization": f"Basic {ADMIN}"}).status_code == 401
    )
    ok = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["error"] is None and body["forecasts"] == 3  # 101/P1, 301/P1, 401/P2
    assert body["cleared"] >= 1
    status = client.get("/admin/refresh", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert status["forecasts"] == 3
    again = client.get("/sensors/301/forecast", params={"measure": "P1"}).json()
    assert again["source"] == "cache"


def test_a_restarted_refresher_resumes_the_schedule(app: App, client: httpx.Client) -> None:
    """A refresh reads every sensor's history; a Refresher replica that restarts (here
    killed) keeps the stored forecasts and refreshes when the last interval ends."""
    import ray

    s = app.settings
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert client.post("/admin/reload", headers=auth).status_code == 200
    stored = float(redis_client(s.redis).get(key(s.redis, "forecasts", "refreshed_at")))
    assert abs(stored - time.time()) < 60
    before = client.get("/admin/refresh", headers=auth).json()
    assert before["finished_at"] is not None
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and "#Refresher#" in a["name"]
    ]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 120
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        r = client.get("/admin/refresh", headers=auth)
        if r.status_code == 200 and (status := r.json())["finished_at"] is None:
            break
        time.sleep(1)
    assert status.get("finished_at") is None, status  # a new replica, not refreshed
    assert status["next_at"] == pytest.approx(stored + s.serve.forecast_refresh_s, abs=2)
    # The stored forecasts still answer.
    assert client.get("/sensors/301/forecast", params={"measure": "P1"}).json()["source"] == "cache"


def test_dashboard_is_served_offline(client: httpx.Client) -> None:
    root = client.get("/")
    assert root.status_code == 307 and root.headers["location"].endswith("/ui/")
    page = client.get("/ui/")
    assert page.status_code == 200 and "vendor/leaflet/leaflet.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
    for asset in ("vendor/leaflet/leaflet.js", "vendor/uplot/uPlot.iife.min.js", "app.js"):
        assert client.get(f"/ui/{asset}").status_code == 200
    assert client.get("/dashboard/config").json()["tile_url"] is None


# -- schemathesis: property-based requests from the OpenAPI spec --------------------
# The Python API rather than schemathesis' pytest plugin, whose fixture loader does not
# work with pytest 9 ("'Function' object has no attribute '_nodeid'").


def test_alert_rules_over_http(client: httpx.Client) -> None:
    """The alert rule routes, mounted in the served app behind the admin token."""
    auth = {"Authorization": f"Bearer {ADMIN}"}
    rule = {"name": "PM2.5 over 25", "measure": "P2", "threshold": 25, "sensors": [101]}
    assert client.post("/v1/alerts/rules", json=rule).status_code == 401
    assert (
        client.post(
            "/v1/alerts/rules", json=rule, headers={"Authorization": "Bearer x"}
        ).status_code
        == 403
    )
    created = client.post("/v1/alerts/rules", json=rule, headers=auth)
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    listed = client.get("/v1/alerts/rules", headers=auth).json()
    assert rule_id in [r["id"] for r in listed["rules"]] and listed["count"] == len(listed["rules"])
    assert client.get(f"/v1/alerts/rules/{rule_id}", headers=auth).json()["threshold"] == 25
    bad = client.post("/v1/alerts/rules", json={**rule, "measure": "PM9"}, headers=auth)
    assert bad.status_code == 422 and "PM9" in bad.text
    both = client.post(
        "/v1/alerts/rules",
        json={**rule, "bbox": {"south": 1, "west": 1, "north": 2, "east": 2}},
        headers=auth,
    )
    assert both.status_code == 422, both.text
    assert client.delete(f"/v1/alerts/rules/{rule_id}", headers=auth).json()["deleted"] is True
    assert client.get(f"/v1/alerts/rules/{rule_id}", headers=auth).status_code == 404
    assert client.delete(f"/v1/alerts/rules/{rule_id}", headers=auth).status_code == 404


def test_openapi_no_server_errors(app: App) -> None:
    """Valid and invalid requests generated from the spec; none may answer 5xx."""
    spec = schemathesis.openapi.from_url(f"{app.url}/openapi.json")
    cases = st.one_of(
        spec.as_strategy(generation_mode=GenerationMode.POSITIVE),
        spec.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    seen: list[int] = []

    @hypothesis.given(case=cases)
    @hypothesis.settings(
        max_examples=80,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def no_server_error(case: schemathesis.Case) -> None:
        response = case.call_and_validate(checks=[not_a_server_error], timeout=60)
        seen.append(response.status_code)

    no_server_error()
    # The run reached the app: some requests succeeded and some were refused.
    assert any(code < 300 for code in seen) and any(400 <= code < 500 for code in seen)


def test_application_builder_reads_a_config_file(tmp_path: Path) -> None:
    """The KubeRay import path ``serve.app:build_app`` with ``args: {config: ...}``."""
    from ray.serve import Application

    from aircast.errors import ConfigError
    from serve.app import build_app

    config = tmp_path / "aircast.yaml"
    config.write_text("serve:\n  replicas: 2\n  port: 8123\n", encoding="utf-8")
    assert isinstance(build_app({"config": str(config)}), Application)
    with pytest.raises(ConfigError, match="unknown application args"):
        build_app({"confg": str(config)})
    with pytest.raises(ConfigError, match="cannot read config file"):
        build_app({"config": str(tmp_path / "missing.yaml")})
