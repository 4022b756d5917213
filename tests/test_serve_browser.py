"""The live map in a real headless Chromium against the real API (Serve on the session
stack's Ray, reading its real InfluxDB): the offline page says so when no sensor has
reported yet and when the measure is unknown; at network size (15,000 sensors) the
first full render takes under 2 s and panning and zooming cause no long task over
200 ms; a click on a sensor opens its panel (readings, history, forecast with its 80 %
interval, the humidity flag in words, API links); when the API goes away the page says
so. Screenshots of the network and of the panel are written to docs/."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aircast.cache import redis_client
from aircast.influx import InfluxV1
from aircast.records import Reading
from aircast.registry import ModelEntry, Registry
from aircast.settings import Settings

from . import test_map_network as net
from .test_serve_api import RAY_SERVE_WARNINGS, delete_app, serve_settings

pytestmark = [pytest.mark.browser, pytest.mark.slow, RAY_SERVE_WARNINGS]

DOCS = Path(__file__).resolve().parent.parent / "docs"
# The screenshots under docs/ are refreshed on request only (a test run leaves the
# checkout as it found it): AIRCAST_SCREENSHOTS=1 make test.
SCREENSHOTS = os.environ.get("AIRCAST_SCREENSHOTS") == "1"


def _screenshot(browser: Any, name: str, tmp: Path) -> None:
    browser.save_screenshot(str((DOCS if SCREENSHOTS else tmp) / name))


RENDER_BUDGET_MS = 2_000.0
LONG_TASK_BUDGET_MS = 200.0
CAQI_COLOURS = ("#79bc6a", "#bbcf4c", "#eec20b", "#f29305", "#e8416f")


@dataclass
class MapApp:
    settings: Settings
    url: str
    network: list[net.Site] | None = None


@pytest.fixture(scope="module")
def app(ray_session: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MapApp]:
    """The Serve app over empty (but existing) databases; the network is written by
    the ``network`` fixture, so the first tests see a deployment with no sensors."""
    from serve.deploy import deploy

    settings = serve_settings(ray_session, tmp_path_factory.mktemp("registry"))
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
    urls = deploy(settings)
    try:
        yield MapApp(settings, urls.base)
    finally:
        delete_app()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with net.chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


@pytest.fixture(scope="module")
def network(app: MapApp) -> list[net.Site]:
    """15,000 PM sensors (and their companions) written into the app's databases; the
    first one (the panel's) beside a humid companion and with a promoted baseline that
    carries an 80 % interval."""
    sites = net.sites()
    now = int(time.time())
    net.write(app.settings, sites, now)
    hero = sites[0]
    humid = Reading(
        hero.sensor_id + net.COMPANION, "DHT22", hero.location_id, hero.lat, hero.lon,
        hero.country_code, hero.country_code, hero.city, "humidity", 88.0, now - 20,
    ).line()  # fmt: skip
    with InfluxV1(app.settings.influx) as influx:
        influx.write([humid], app.settings.influx.raw_database, precision="s")
    registry = Registry(
        app.settings.train.registry_dir,
        redis_client(app.settings.redis),
        app.settings.redis.key_prefix,
    )
    registry.register(
        ModelEntry(hero.sensor_id, "P2", "v-seasonal", "seasonal_naive", (1, 6, 36), 36,
                   metrics={"1h": {"model_mae": 2.0, "persistence_mae": 2.5}}, skill=0.2,
                   promoted=True, trained_at=now - 3600,
                   intervals={"10m": (-1.0, 1.2), "1h": (-2.5, 3.0), "6h": (-5.0, 6.5)})
    )  # fmt: skip
    # One request builds the layer (the API keeps it serve.map_cache_s): the page's
    # first render is measured against the served layer, as a visitor meets it.
    body = httpx.get(f"{app.url}/v1/map", params={"measure": "P2"}, timeout=120).json()
    assert body["count"] == net.NETWORK_SIZE
    app.network = sites
    return sites


def _message(browser: Any) -> tuple[str, str]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = browser.find_element(By.ID, "message")
    WebDriverWait(browser, 60).until(lambda d: box.get_attribute("data-kind") != "none")
    return str(box.get_attribute("data-kind")), str(box.text)


def _severe(browser: Any, *expected: str) -> list[dict[str, Any]]:
    """Console errors other than the failed requests a scenario causes on purpose."""
    return [
        e
        for e in browser.get_log("browser")
        if e.get("level") == "SEVERE" and not any(x in e.get("message", "") for x in expected)
    ]


def test_no_sensors_yet_says_so(app: MapApp, browser: Any) -> None:
    # PM10: the layer the API builds (and keeps for map_cache_s) here is not the PM2.5
    # one the later tests measure.
    browser.get(f"{app.url}/ui/?measure=P1")
    kind, text = _message(browser)
    assert kind == "empty"
    assert "No sensor has reported PM10 recently" in text
    assert browser.execute_script("return document.body.dataset.rendered") == "0"
    assert _severe(browser) == []


def test_unknown_measure_names_the_valid_ones(app: MapApp, browser: Any) -> None:
    browser.get(f"{app.url}/ui/?measure=ozone")
    kind, text = _message(browser)
    assert kind == "error"
    assert "Unknown measure “ozone”" in text
    assert "'P2'" in text and "'noise_LAeq'" in text  # the API's 422 lists them
    assert _severe(browser, "/v1/map?measure=ozone") == []


def _pixel(browser: Any, lat: float, lon: float) -> str:
    """The sensor canvas's colour at a place, as #rrggbb (alpha ignored)."""
    return str(
        browser.execute_script(
            """
            const [lat, lon] = arguments;
            const canvas = document.querySelector("canvas.aircast-network");
            const p = aircast.map.latLngToContainerPoint([lat, lon]);
            const c = canvas.getBoundingClientRect();
            const m = aircast.map.getContainer().getBoundingClientRect();
            const dpr = window.devicePixelRatio || 1;
            const x = Math.round((p.x + m.left - c.left) * dpr);
            const y = Math.round((p.y + m.top - c.top) * dpr);
            const [r, g, b] = canvas.getContext("2d").getImageData(x, y, 1, 1).data;
            return "#" + [r, g, b].map((v) => v.toString(16).padStart(2, "0")).join("");
            """,
            lat,
            lon,
        )
    )


# Alone on the machine (make test's exclusive phase): its budgets are wall-clock times,
# which the other worker's drills would otherwise eat into.
@pytest.mark.exclusive
def test_network_renders_within_budget_and_pans_without_long_tasks(
    app: MapApp, browser: Any, network: list[net.Site], tmp_path: Path
) -> None:
    first = net.load_map(browser, f"{app.url}/ui/")
    print(f"first render: data {first.data_ms:.0f} ms, drawn {first.render_ms:.0f} ms")
    assert first.count == net.NETWORK_SIZE
    assert first.drawn == net.NETWORK_SIZE  # every sensor binned into a hexagon
    assert first.render_ms < RENDER_BUDGET_MS
    assert browser.execute_script("return document.body.dataset.mode") == "hexbin"
    _screenshot(browser, "map.png", tmp_path)

    # The observer is live: a deliberate 300 ms task is reported.
    browser.execute_script(net.OBSERVE_LONG_TASKS)
    browser.execute_script(
        "setTimeout(() => { const t = performance.now(); while (performance.now() - t < 300); });"
        "return new Promise((r) => setTimeout(r, 600));"
    )
    assert max(browser.execute_script("return window.__longTasks"), default=0) >= 250

    stuttgart = next(s for s in network if s.city == "Stuttgart")
    long_tasks = net.pan_and_zoom(browser, (stuttgart.lat, stuttgart.lon))
    print(f"long tasks during pan/zoom: {sorted(long_tasks)}")
    assert max(long_tasks, default=0.0) < LONG_TASK_BUDGET_MS

    # Zoomed to single sensors: a fresh sensor's dot has its CAQI class colour, a
    # stale one is grey.
    layer = httpx.get(f"{app.url}/v1/map", params={"measure": "P2"}, timeout=60).json()
    row = {sid: k for k, sid in enumerate(layer["id"])}
    fresh = next(s for s in network[1:] if not s.stale and _alone(s, network))
    stale = next(s for s in network if s.stale and _alone(s, network))
    k = row[fresh.sensor_id]
    browser.execute_script(
        "aircast.map.setView(arguments[0], 13, {animate: false})", [fresh.lat, fresh.lon]
    )
    net.settle(browser, lambda: browser.execute_script("aircast.network.redraw()"))
    assert browser.execute_script("return document.body.dataset.mode") == "points"
    expected = CAQI_COLOURS[_caqi_class(layer["aqi_1h"][k])]
    assert _close(_pixel(browser, fresh.lat, fresh.lon), expected, 12)
    browser.execute_script(
        "aircast.map.setView(arguments[0], 13, {animate: false})", [stale.lat, stale.lon]
    )
    net.settle(browser, lambda: browser.execute_script("aircast.network.redraw()"))
    assert _grey(_pixel(browser, stale.lat, stale.lon))
    assert _severe(browser) == []


def _caqi_class(value: int) -> int:
    """The class of a CAQI value (upper bounds closed, as aircast.aqi reads them)."""
    for k, upper in enumerate((25, 50, 75, 100)):
        if value <= upper:
            return k
    return 4


def _grey(colour: str) -> bool:
    """A stale dot: grey, darker than the land under it."""
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return max(rgb) - min(rgb) < 16 and max(rgb) < 0xE0


def _alone(site: net.Site, network: list[net.Site], degrees: float = 0.003) -> bool:
    """No other sensor's dot near this one's (a dot drawn later could cover it)."""
    return all(
        abs(o.lat - site.lat) > degrees or abs(o.lon - site.lon) > degrees
        for o in network
        if o is not site
    )


def _close(actual: str, expected: str, tolerance: int) -> bool:
    """Same colour up to blending with what lies under a translucent dot."""
    a = [int(actual[i : i + 2], 16) for i in (1, 3, 5)]
    b = [int(expected[i : i + 2], 16) for i in (1, 3, 5)]
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def test_sensor_panel_shows_readings_forecast_interval_and_humidity_flag(
    app: MapApp, browser: Any, network: list[net.Site], tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    hero = network[0]
    net.load_map(browser, f"{app.url}/")  # redirects to /ui/, PM2.5 by default
    net.settle(
        browser,
        lambda: browser.execute_script(
            "aircast.map.setView(arguments[0], 14, {animate: false})", [hero.lat, hero.lon]
        ),
    )
    # A real click on the canvas where the sensor's dot is.
    x, y = browser.execute_script(
        "const p = aircast.map.latLngToContainerPoint(arguments[0]); return [p.x, p.y];",
        [hero.lat, hero.lon],
    )
    map_el = browser.find_element(By.ID, "map")
    size = map_el.size
    ActionChains(browser).move_to_element_with_offset(
        map_el, round(x - size["width"] / 2), round(y - size["height"] / 2)
    ).click().perform()
    wait = WebDriverWait(browser, 60)
    wait.until(ec.text_to_be_present_in_element((By.ID, "title"), f"Sensor {hero.sensor_id}"))
    chart = browser.find_element(By.ID, "chart")
    wait.until(lambda d: chart.get_attribute("data-ready") == "1")
    assert chart.get_attribute("data-measure") == "P2"
    assert int(chart.get_attribute("data-points") or 0) >= 100  # a day of 10-min means
    assert int(chart.get_attribute("data-forecast") or 0) == 3
    assert int(chart.get_attribute("data-interval") or 0) == 3
    horizons = browser.find_elements(By.CSS_SELECTOR, "#forecast tr[data-horizon]")
    assert [h.get_attribute("data-horizon") for h in horizons] == ["10m", "1h", "6h"]
    assert all("–" in h.text for h in horizons)  # each with its interval
    # The latest readings of the place: the sensor's PM and its companion's humidity.
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#latest tr[data-measure='humidity']"))
    measures = {
        r.get_attribute("data-measure")
        for r in browser.find_elements(By.CSS_SELECTOR, "#latest tr[data-measure]")
    }
    assert {"P1", "P2", "humidity"} <= measures
    flag = browser.find_element(By.ID, "flag")
    assert flag.is_displayed() and "over-read in humid air" in flag.text and "88" in flag.text
    links = [
        a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#api-links a")
    ]
    assert any(f"/v1/sensors/{hero.sensor_id}/forecast?measure=P2" in str(h) for h in links)
    for href in links:  # every link the panel offers answers
        assert httpx.get(str(href), timeout=60).status_code == 200, href
    _screenshot(browser, "map-panel.png", tmp_path)
    assert _severe(browser) == []


def test_api_down_is_reported(app: MapApp, browser: Any, network: list[net.Site]) -> None:
    """The page is open, then the API goes away: the next request says so."""
    from ray import serve
    from selenium.webdriver.common.by import By

    net.load_map(browser, f"{app.url}/ui/")
    serve.shutdown()  # type: ignore[no-untyped-call]  # unannotated in Ray Serve
    browser.find_element(By.CSS_SELECTOR, "#measure-switch button[data-measure='P1']").click()
    kind, text = _message(browser)
    assert kind == "error"
    assert "The aircast API is not answering" in text or "cannot answer right now" in text
