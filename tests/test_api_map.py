"""``GET /v1/map``: the columnar layer the browser map draws (shape in
aircast/maplayer.py), deployed on the session stack's Ray over the real InfluxDB:
latest values, 1 h / 24 h means and their CAQI per sensor, ETag revalidation, gzip,
422 on an unknown measure; and the layer's build time at network size (15,000
sensors)."""

from __future__ import annotations

import gzip
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

from aircast import maplayer
from aircast.httpcache import CachedBody
from aircast.influx import InfluxV1
from aircast.queries import latest_located, window_means
from aircast.records import AGGREGATE_WINDOW_S, Aggregate, Reading
from aircast.settings import Settings

from .conftest import unique
from .test_serve_api import RAY_SERVE_WARNINGS, delete_app, serve_settings

pytestmark = [RAY_SERVE_WARNINGS]


def network_lines(
    sensors: int, now: int, *, windows: int = 144, first_id: int = 100_000, seed: int = 7
) -> tuple[list[str], list[str]]:
    """Synthetic line protocol of ``sensors`` PM sensors spread over Europe: three raw
    readings each of P1 and P2 in the last 15 minutes, and ``windows`` 10-minute P2
    aggregates back from the last closed window."""
    rng = random.Random(seed)
    last = now - now % AGGREGATE_WINDOW_S - AGGREGATE_WINDOW_S
    raw: list[str] = []
    agg: list[str] = []
    for i in range(sensors):
        sid = first_id + i
        lat, lon = round(rng.uniform(36.0, 70.0), 3), round(rng.uniform(-10.0, 30.0), 3)
        city = f"City{i % 500}"
        for k in range(3):
            for measure in ("P1", "P2"):
                raw.append(
                    Reading(sid, "SDS011", sid, lat, lon, "DE", "Germany", city, measure,
                            round(rng.uniform(1.0, 60.0), 1), now - 30 - k * 300).line()
                )  # fmt: skip
        for w in range(windows):
            start, mean = last - w * AGGREGATE_WINDOW_S, round(rng.uniform(1.0, 60.0), 2)
            agg.append(
                Aggregate(sid, "SDS011", sid, lat, lon, "DE", "Germany", city, "P2", start,
                          start + AGGREGATE_WINDOW_S, mean, mean - 1, mean + 1, 5).line()
            )  # fmt: skip
    return raw, agg


def _reading(
    sid: int, lat: float, lon: float, city: str, measure: str, value: float, t: int
) -> str:
    return Reading(sid, "SDS011", sid, lat, lon, "DE", "Germany", city, measure, value, t).line()


def _aggregate(sid: int, measure: str, mean: float, start: int) -> str:
    return Aggregate(
        sid, "SDS011", sid, 48.7758, 9.1829, "DE", "Germany", "Stuttgart", measure,
        start, start + AGGREGATE_WINDOW_S, mean, mean - 1.0, mean + 1.0, 5,
    ).line()  # fmt: skip


@dataclass(frozen=True)
class MapApp:
    settings: Settings
    url: str
    now: int


def seed(settings: Settings) -> int:
    """11: PM2.5 in Stuttgart, 1 h mean 30 (five windows), 24 h mean 12.9 (with 95
    older windows of 12); 12: PM2.5 in Berlin two hours ago (stale), no aggregates;
    13: temperature only; 15: moved from Munich to Hamburg (the newer place counts)."""
    now = int(time.time())
    last = now - now % AGGREGATE_WINDOW_S - AGGREGATE_WINDOW_S
    raw = [
        _reading(11, 48.7758, 9.1829, "Stuttgart", "P2", 20.0, now - 360),
        _reading(11, 48.7758, 9.1829, "Stuttgart", "P2", 12.5, now - 60),
        _reading(12, 52.52, 13.405, "Berlin", "P2", 5.0, now - 7200),
        _reading(13, 50.9375, 6.9603, "Köln", "temperature", 21.5, now - 120),
        _reading(15, 48.1372, 11.5755, "München", "P2", 40.0, now - 3000),
        _reading(15, 53.5511, 9.9937, "Hamburg", "P2", 8.0, now - 100),
    ]
    aggregates = [_aggregate(11, "P2", 30.0, last - k * AGGREGATE_WINDOW_S) for k in range(5)]
    aggregates += [_aggregate(11, "P2", 12.0, last - k * AGGREGATE_WINDOW_S) for k in range(6, 101)]
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        influx.write(raw, settings.influx.raw_database, precision="s")
        influx.write(aggregates, settings.influx.aggregates_database, precision="s")
    return now


@pytest.fixture(scope="module")
def map_app(ray_session: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MapApp]:
    from serve.deploy import deploy

    base = serve_settings(ray_session, tmp_path_factory.mktemp("registry"))
    settings = base.model_copy(
        update={"serve": base.serve.model_copy(update={"map_cache_s": 30.0})}
    )
    now = seed(settings)
    urls = deploy(settings)
    try:
        yield MapApp(settings, urls.base, now)
    finally:
        delete_app()


@pytest.fixture()
def client(map_app: MapApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=map_app.url, timeout=60.0) as c:
        yield c


def test_map_layer_columns_per_the_contract(map_app: MapApp, client: httpx.Client) -> None:
    r = client.get("/v1/map", params={"measure": "P2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in ("measure", "label", "unit", "index", "stale_after_s")} == {
        "measure": "P2", "label": "PM2.5", "unit": "µg/m³", "index": "caqi", "stale_after_s": 3600
    }  # fmt: skip
    assert body["licence"] == {
        "name": "ODbL-1.0",
        "url": "https://opendatacommons.org/licenses/odbl/1-0/",
        "attribution": "sensor.community contributors",
    }
    assert abs(body["generated_at"] - time.time()) < 120
    now = map_app.now
    assert body["count"] == 3
    rows = list(zip(*(body[c] for c in maplayer.COLUMNS), strict=True))
    assert rows == [
        (11, 48.7758, 9.1829, 12.5, now - 60, 30.0, 12.9, 50, 32, "Stuttgart"),
        (12, 52.52, 13.405, 5.0, now - 7200, None, None, None, None, "Berlin"),
        (15, 53.5511, 9.9937, 8.0, now - 100, None, None, None, None, "Hamburg"),
    ]


def test_map_layer_of_a_measure_without_an_index(client: httpx.Client) -> None:
    body = client.get("/v1/map", params={"measure": "temperature"}).json()
    assert (body["index"], body["unit"], body["id"], body["value"]) == (None, "°C", [13], [21.5])
    assert body["aqi_1h"] == [None] and body["aqi_24h"] == [None] and body["city"] == ["Köln"]


def test_map_layer_defaults_to_pm25_and_refuses_unknown_measures(client: httpx.Client) -> None:
    assert client.get("/v1/map").json()["measure"] == "P2"
    r = client.get("/v1/map", params={"measure": "PM25"})
    assert r.status_code == 422
    detail = json.dumps(r.json()["detail"])
    assert all(name in detail for name in ("P1", "P2", "temperature", "noise_LAeq"))


def test_map_layer_is_gzipped_and_revalidated_with_its_etag(client: httpx.Client) -> None:
    with client.stream("GET", "/v1/map", headers={"Accept-Encoding": "gzip"}) as r:
        compressed = b"".join(r.iter_raw())
        etag = r.headers["etag"]
        assert r.headers["content-encoding"] == "gzip" and r.headers["vary"] == "Accept-Encoding"
    assert orjson.loads(gzip.decompress(compressed))["measure"] == "P2"
    plain = client.get("/v1/map", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.headers["etag"] == etag
    again = client.get("/v1/map", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    other = client.get("/v1/map", headers={"If-None-Match": 'W/"other"'})
    assert other.status_code == 200 and other.json()["count"] == 3


@pytest.mark.slow
def test_map_layer_build_time_at_network_size(stack_settings: Settings) -> None:
    """15,000 sensors (two hours of aggregates each): the layer's queries, columns and
    gzip; printed for the record, and bounded well above what a quiet machine needs
    (about 2 s) so a loaded CI host does not fail it."""
    tag = unique("map15k")
    s = stack_settings.influx.model_copy(
        update={"raw_database": f"{tag}_raw", "aggregates_database": f"{tag}_agg"}
    )
    now = int(time.time())
    raw, agg = network_lines(15_000, now, windows=12)
    with InfluxV1(s) as influx:
        influx.create_database(s.raw_database)
        influx.create_database(s.aggregates_database)
        for i in range(0, len(raw), 50_000):
            influx.write(raw[i : i + 50_000], s.raw_database, precision="s")
        for i in range(0, len(agg), 50_000):
            influx.write(agg[i : i + 50_000], s.aggregates_database, precision="s")
        started = time.monotonic()
        latest = latest_located(influx, s.raw_database, "P2", 86_400)
        mean_1h = window_means(influx, s.aggregates_database, "P2", 3600)
        mean_24h = window_means(influx, s.aggregates_database, "P2", 86_400)
        queried = time.monotonic() - started
        body = maplayer.layer("P2", latest, mean_1h, mean_24h, now, 3600)
        cached = CachedBody.of(maplayer.render(body))
        total = time.monotonic() - started
    print(
        json.dumps(
            {"sensors": body["count"], "query_s": round(queried, 2), "build_s": round(total, 2),
             "bytes": len(cached.body), "gzip_bytes": len(cached.gzipped)}
        )
    )  # fmt: skip
    assert body["count"] == 15_000
    assert sum(v is not None for v in body["aqi_1h"]) == 15_000
    assert len(cached.gzipped) < 400_000
    assert total < 30.0
