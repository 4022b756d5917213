"""The map's pure functions (serve/static/scales.js) in headless Chromium on a blank
page, no server: its Web Mercator is Leaflet's, its CAQI classes are aircast.aqi's,
staleness and hexagon colours follow the layer's columns, API errors read as text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aircast import aqi

from . import test_map_network as net

pytestmark = [pytest.mark.browser]

STATIC = Path(__file__).resolve().parent.parent / "serve" / "static"


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with net.chromium(tmp_path_factory.mktemp("chromium")) as driver:
        driver.get("about:blank")
        for script in ("vendor/leaflet/leaflet.js", "scales.js"):
            driver.execute_script((STATIC / script).read_text(encoding="utf-8"))
        yield driver


def js(page: Any, expression: str, *args: Any) -> Any:
    return page.execute_script(f"const S = window.aircastScales; return {expression};", *args)


def layer(**columns: Any) -> dict[str, Any]:
    """A /v1/map body of three sensors (the third stale), overridable per column."""
    body: dict[str, Any] = {
        "measure": "P2", "label": "PM2.5", "unit": "µg/m³", "index": "caqi",
        "generated_at": 10_000, "stale_after_s": 3600, "count": 3,
        "id": [1, 2, 3], "lat": [48.0, 48.1, 48.2], "lon": [9.0, 9.1, 9.2],
        "value": [5.0, 40.0, 80.0], "time": [9_900, 9_000, 5_000],
        "mean_1h": [6.0, 35.0, None], "mean_24h": [7.0, 20.0, 30.0],
        "aqi_1h": [10, 60, None], "aqi_24h": [17, 50, 75], "city": ["A", "B", "C"],
    }  # fmt: skip
    body.update(columns)
    return body


@pytest.mark.parametrize("lat, lon", [(0.0, 0.0), (48.78, 9.18), (-33.9, 151.2), (84.9, -179.9)])
def test_mercator_is_leaflets(page: Any, lat: float, lon: float) -> None:
    ours = js(page, "S.mercator(arguments[0], arguments[1])", lat, lon)
    leaflet = js(
        page,
        "(() => { const p = L.CRS.EPSG3857.latLngToPoint(L.latLng(arguments[0], arguments[1]), 0);"
        " return [p.x, p.y]; })()",
        lat,
        lon,
    )
    assert ours == pytest.approx(leaflet, abs=1e-9)


def test_caqi_classes_are_the_domain_layers(page: Any) -> None:
    values = [v / 2 for v in range(0, 301)]  # 0 .. 150 in half steps
    names = js(page, "arguments[0].map((v) => S.CAQI[S.caqiClass(v)][2])", values)
    expected = [aqi._category(v, aqi.CAQI_CLASSES, "very high") for v in values]
    assert names == expected


def test_pm_layer_colours_by_caqi_of_the_chosen_mean(page: Any) -> None:
    one_hour = js(page, "(() => { const s = S.scaleFor(arguments[0], '1h');"
                  " return [s.kind, Array.from(S.buckets(arguments[0], s)), s.legend.title]; })()",
                  layer())  # fmt: skip
    assert one_hour == ["caqi", [0, 2, -1], "PM2.5: CAQI of the 1 h mean"]
    day = js(page, "Array.from(S.buckets(arguments[0], S.scaleFor(arguments[0], '24h')))", layer())
    assert day == [0, 1, -1]  # 17 very low, 50 low (closed bound); the stale one grey
    # A fresh sensor without a 1 h mean yet has no colour of its own.
    no_mean = layer(aqi_1h=[None, 60, None])
    assert js(page, "Array.from(S.buckets(arguments[0], S.scaleFor(arguments[0], '1h')))",
              no_mean) == [-2, 2, -1]  # fmt: skip


def test_other_measures_use_a_sequential_scale_with_units(page: Any) -> None:
    pressure = layer(
        measure="pressure_at_sealevel", label="pressure reduced to sea level", unit="Pa",
        index=None, value=[98_000.0, 101_000.0, 104_000.0], mean_1h=[98_000.0, None, None],
        aqi_1h=[None] * 3, aqi_24h=[None] * 3,
    )  # fmt: skip
    kind, buckets, title, ticks = js(
        page,
        "(() => { const s = S.scaleFor(arguments[0], '1h');"
        " return [s.kind, Array.from(S.buckets(arguments[0], s)), s.legend.title,"
        " s.legend.ticks]; })()",
        pressure,
    )
    assert kind == "sequential"
    assert title == "pressure reduced to sea level (hPa), 1 h mean"
    assert ticks == ["980", "1010", "1040"]
    # 980 hPa (the 1 h mean) at the bottom, 1010 hPa (latest: no mean) mid-way.
    assert buckets[0] == 0 and buckets[1] == 8 and buckets[2] == -1
    # A measure outside the switch: its domain is the data's own spread.
    noise_max = layer(measure="noise_LA_max", label="maximum noise level", unit="dB(A)",
                      index=None, time=[9_900] * 3, mean_1h=[60.0, 70.0, 80.0])  # fmt: skip
    low, high = js(
        page,
        "(() => { const s = S.scaleFor(arguments[0], '1h');"
        " return [s.bucket(60.0), s.bucket(80.0)]; })()",
        noise_max,
    )
    assert (low, high) == (0, 15)


def test_hexagon_takes_the_median_of_its_fresh_sensors(page: Any) -> None:
    body = layer(count=4, id=[1, 2, 3, 4], time=[9_900, 9_900, 9_900, 1_000],
                 aqi_1h=[10, 30, 80, 99])  # fmt: skip
    summary = js(
        page,
        "(() => { const s = S.scaleFor(arguments[0], '1h'), b = S.buckets(arguments[0], s);"
        " return S.binSummary([0, 1, 2, 3], b, s); })()",
        body,
    )
    assert summary == {"bucket": 1, "score": 30, "fresh": 3, "stale": 1}
    all_stale = js(
        page,
        "(() => { const s = S.scaleFor(arguments[0], '1h'), b = S.buckets(arguments[0], s);"
        " return S.binSummary([2], b, s); })()",
        layer(),
    )
    assert all_stale == {"bucket": -1, "score": None, "fresh": 0, "stale": 1}


def test_api_errors_read_as_one_line(page: Any) -> None:
    fastapi_422 = [
        {"type": "enum", "loc": ["query", "measure"], "msg": "Input should be 'P1' or 'P2'"},
        {"type": "missing", "loc": ["query", "x"], "msg": "Field required"},
    ]
    assert js(page, "S.detailText(arguments[0])", fastapi_422) == (
        "Input should be 'P1' or 'P2'; Field required"
    )
    assert js(page, "S.detailText('storage unavailable')") == "storage unavailable"
    assert js(page, "S.ago(30)") == "30 s ago"
    assert js(page, "S.ago(7200)") == "2 h ago"
