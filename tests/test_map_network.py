"""A synthetic network at the live network's size for the map's browser tests and
benchmark (15,000 PM sensors spread over Europe as the real one is: dense around the
cities, thinner between them), written into a real InfluxDB as the pipeline writes it
(raw readings and 10-minute aggregates, the project's line protocol); and the headless
Chromium those tests drive. The tests here check the network itself."""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aircast.influx import InfluxV1
from aircast.measures import BY_NAME
from aircast.records import AGGREGATE_WINDOW_S, Aggregate, Reading
from aircast.settings import Settings
from aircast.simulator import CITIES

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

NETWORK_SIZE = 15_000
# Companion sensors at a PM sensor's place (the real network pairs an SDS011 with a
# DHT22 or BME280 under the same location id); their ids are the PM sensor's + this.
COMPANION = 1_000_000
NOISE = 2_000_000
STALE_S = 2 * 3600  # a stale sensor's last reading is this old (stale_after_s 1 h)
# Pollution hot spots (lat, lon, extra PM2.5 µg/m³ at the centre) so every CAQI class
# shows up: Krakow, the Po valley, Sofia, the Ruhr.
HOT_SPOTS = ((50.06, 19.94, 60.0), (45.46, 9.19, 35.0), (42.70, 23.32, 45.0), (51.45, 7.0, 18.0))


@dataclass(frozen=True)
class Site:
    """A PM sensor's place and what reports there."""

    sensor_id: int
    lat: float
    lon: float
    city: str
    country_code: str
    weather: str | None  # "DHT22" / "BME280" companion, or none
    noise: bool
    stale: bool
    pm25: float  # this sensor's 1 h level

    @property
    def location_id(self) -> int:
        return self.sensor_id + 500_000


def sites(n: int = NETWORK_SIZE, seed: int = 7) -> list[Site]:
    """``n`` PM sensors: four fifths within ~30 km of a city of the simulator's table,
    the rest scattered up to ~200 km around one (deterministic for ``seed``)."""
    rng = random.Random(seed)
    out: list[Site] = []
    for k in range(n):
        city, cc, clat, clon = CITIES[rng.randrange(len(CITIES))]
        spread = 0.3 if rng.random() < 0.8 else 1.5
        lat = round(clat + rng.gauss(0, spread), 4)
        lon = round(clon + rng.gauss(0, spread * 1.5), 4)
        roll = rng.random()
        weather = "DHT22" if roll < 0.3 else "BME280" if roll < 0.45 else None
        pm25 = (
            6.0
            + 4.0 * rng.random()
            + sum(
                top * math.exp(-((lat - hl) ** 2 + (lon - ho) ** 2) / 2.0)
                for hl, ho, top in HOT_SPOTS
            )
        )
        out.append(
            Site(
                sensor_id=10_000 + k,
                lat=lat,
                lon=lon,
                city=city,
                country_code=cc,
                weather=weather,
                noise=rng.random() < 0.05,
                stale=rng.random() < 0.03,
                pm25=round(pm25 * (0.8 + 0.4 * rng.random()), 2),
            )
        )
    return out


def _weather(site: Site, rng: random.Random) -> dict[str, float]:
    values = {
        "temperature": round(14.0 - 0.45 * (site.lat - 45.0) + rng.gauss(0, 1.5), 2),
        "humidity": round(min(100.0, max(20.0, 62.0 + 0.8 * (site.lat - 45) + rng.gauss(0, 8))), 2),
    }
    if site.weather == "BME280":
        values["pressure_at_sealevel"] = round(
            101_325 + 600 * math.sin(site.lon / 7) + rng.gauss(0, 80), 1
        )
    return values


@dataclass(frozen=True)
class Lines:
    raw: list[str]
    aggregates: list[str]


# The sensors whose whole last day of 10-minute means is written: their panels show a
# real history and a forecast; the other sensors get what the map layer reads (the
# latest reading, the last hour's windows and a few older ones for the 24 h mean).
FULL_HISTORY = 3


def lines(network: list[Site], now: int) -> Lines:
    """Raw readings and 10-minute aggregates of ``network`` as of ``now``."""
    rng = random.Random(now // 3600)
    last = now - now % AGGREGATE_WINDOW_S - AGGREGATE_WINDOW_S
    raw: list[str] = []
    agg: list[str] = []

    def emit(sid: int, stype: str, site: Site, measure: str, value: float, full: bool) -> None:
        when = now - STALE_S if site.stale else now - 30 - sid % 240
        raw.append(
            Reading(sid, stype, site.location_id, site.lat, site.lon, site.country_code,
                    site.country_code, site.city, measure, value, when).line()
        )  # fmt: skip
        if site.stale:
            starts = [last - 6 * AGGREGATE_WINDOW_S * k for k in range(2, 5)]
        elif full:
            starts = [last - k * AGGREGATE_WINDOW_S for k in range(144)]
        elif measure == "P2":
            starts = [last - k * AGGREGATE_WINDOW_S for k in range(4)] + [
                last - 36 * AGGREGATE_WINDOW_S * k for k in range(1, 4)
            ]
        else:
            starts = [last, last - 2 * AGGREGATE_WINDOW_S]
        for start in starts:
            if full:  # a daily cycle, so the chart and the forecast have a shape
                mean = value * (1 + 0.3 * math.sin(2 * math.pi * (start % 86_400) / 86_400))
            else:
                mean = value * (0.9 + 0.2 * rng.random())
            m = BY_NAME[measure]
            mean = round(min(m.high, max(m.low, mean)), 2)
            agg.append(
                Aggregate(sid, stype, site.location_id, site.lat, site.lon, site.country_code,
                          site.country_code, site.city, measure, start, start + AGGREGATE_WINDOW_S,
                          mean, mean, mean, 4).line()
            )  # fmt: skip

    for k, site in enumerate(network):
        full = k < FULL_HISTORY
        emit(site.sensor_id, "SDS011", site, "P2", site.pm25, full)
        emit(site.sensor_id, "SDS011", site, "P1", round(site.pm25 * 1.6, 2), full)
        if site.weather:
            for measure, value in _weather(site, rng).items():
                emit(site.sensor_id + COMPANION, site.weather, site, measure, value, full)
        if site.noise:
            emit(site.sensor_id + NOISE, "DNMS (Laerm)", site, "noise_LAeq",
                 round(50 + 10 * rng.random(), 2), full)  # fmt: skip
    return Lines(raw, agg)


def write(settings: Settings, network: list[Site], now: int) -> Lines:
    """Writes ``network`` into the raw and aggregates databases of ``settings``."""
    out = lines(network, now)
    with InfluxV1(settings.influx) as influx:
        influx.ensure_databases()
        for batch in range(0, len(out.raw), 20_000):
            influx.write(
                out.raw[batch : batch + 20_000], settings.influx.raw_database, precision="s"
            )
        for batch in range(0, len(out.aggregates), 20_000):
            chunk = out.aggregates[batch : batch + 20_000]
            influx.write(chunk, settings.influx.aggregates_database, precision="s")
    return out


@contextmanager
def chromium(tmp: Path, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Debian Chromium driven by chromedriver (what `make setup` installs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "make setup installs chromium"
    profile = tmp / "chromium-profile"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# -- measuring the map in the browser ---------------------------------------------------

# Long tasks (main-thread tasks over 50 ms) from now on, kept on the page (one
# observer per page; a second run only empties the list).
OBSERVE_LONG_TASKS = """
window.__longTasks = [];
if (!window.__longTaskObserver) {
  window.__longTaskObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__longTasks.push(e.duration);
  });
  window.__longTaskObserver.observe({type: "longtask"});
}
"""


@dataclass(frozen=True)
class FirstRender:
    data_ms: float  # navigation start → the layer fetched and parsed ("aircast:data")
    render_ms: float  # navigation start → its first full draw ("aircast:rendered")
    drawn: int  # sensors binned or dotted in that draw
    count: int  # sensors in the layer


def load_map(driver: Any, url: str, timeout_s: float = 60.0) -> FirstRender:
    """Opens the map at ``url`` and waits for its first full render."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout_s).until(
        lambda d: d.execute_script(
            "return performance.getEntriesByName('aircast:rendered').length > 0"
        )
    )
    data, render, drawn, count = driver.execute_script(
        "const m = (n) => performance.getEntriesByName(n)[0].startTime;"
        "return [m('aircast:data'), m('aircast:rendered'),"
        " Number(document.body.dataset.rendered), aircast.state.layer.count];"
    )
    return FirstRender(float(data), float(render), int(drawn), int(count))


def draws(driver: Any) -> int:
    return int(driver.execute_script("return Number(document.body.dataset.draws || 0)"))


def settle(driver: Any, action: Any, timeout_s: float = 20.0) -> None:
    """Runs ``action`` (a pan or a zoom) and waits until the map has redrawn."""
    from selenium.webdriver.support.ui import WebDriverWait

    before = draws(driver)
    action()
    WebDriverWait(driver, timeout_s).until(lambda d: draws(d) > before)


def pan_and_zoom(driver: Any, centre: tuple[float, float]) -> list[float]:
    """Real input on the loaded map: drags (short ones, within the drawn margin, and
    long ones that need a redraw), then zoom-control clicks from the network view down
    to single sensors around ``centre`` and back out. Returns the durations (ms) of the
    long tasks seen meanwhile."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.execute_script(OBSERVE_LONG_TASKS)
    map_el = driver.find_element(By.ID, "map")
    for dx, dy in ((-150, 0), (150, 0), (-500, 0), (0, -400), (500, 0), (0, 400)):
        settle(
            driver,
            # From the far side of the centre, so a long drag stays on the map.
            lambda dx=dx, dy=dy: (
                ActionChains(driver)
                .move_to_element_with_offset(map_el, -dx // 2, -dy // 2)
                .click_and_hold()
                .move_by_offset(dx // 2, dy // 2)
                .move_by_offset(dx - dx // 2, dy - dy // 2)
                .release()
                .perform()
            ),
        )
    settle(
        driver,
        lambda: driver.execute_script(
            "aircast.map.setView(arguments[0], 5)", [centre[0], centre[1]]
        ),
    )
    zoom_in = driver.find_element(By.CSS_SELECTOR, ".leaflet-control-zoom-in")
    zoom_out = driver.find_element(By.CSS_SELECTOR, ".leaflet-control-zoom-out")
    for button in [zoom_in] * 5 + [zoom_out] * 3:
        settle(driver, button.click)
    driver.execute_script("return new Promise((r) => setTimeout(r, 200))")
    return [float(d) for d in driver.execute_script("return window.__longTasks")]


# -- the network itself ----------------------------------------------------------------


def test_sites_are_deterministic_and_spread_over_europe() -> None:
    network = sites()
    assert network == sites()
    assert len(network) == NETWORK_SIZE == len({s.sensor_id for s in network})
    lats = sorted(s.lat for s in network)
    lons = sorted(s.lon for s in network)
    # Europe, from Lisbon to Moscow and Athens to Helsinki (a few scattered beyond).
    assert 34 < lats[len(lats) // 100] < lats[-len(lats) // 100] < 64
    assert -14 < lons[len(lons) // 100] < lons[-len(lons) // 100] < 42
    # Not a handful of points: thousands of distinct ~1 km cells.
    assert len({(round(s.lat, 2), round(s.lon, 2)) for s in network}) > 10_000
    assert 0.01 < sum(s.stale for s in network) / len(network) < 0.06


def test_lines_cover_every_sensor_and_every_caqi_class() -> None:
    from aircast import aqi

    network = sites()
    out = lines(network, now=1_765_000_000)
    p2 = [line for line in out.raw if line.startswith("P2,")]
    assert len(p2) == NETWORK_SIZE
    classes = {aqi.caqi(None, s.pm25).category for s in network}  # type: ignore[union-attr]
    assert classes >= {"very low", "low", "medium", "high"}
    # Every measure of the map's switch has sensors.
    for measure in ("P1", "temperature", "humidity", "pressure_at_sealevel", "noise_LAeq"):
        assert any(line.startswith(f"{measure},") for line in out.raw), measure


@pytest.mark.parametrize("stale", [False, True])
def test_a_stale_sensor_has_no_recent_reading(stale: bool) -> None:
    now = 1_765_000_000
    site = Site(1, 48.7, 9.2, "Stuttgart", "DE", None, False, stale, 10.0)
    out = lines([site], now)
    times = [int(line.rsplit(" ", 1)[1]) for line in out.raw]
    assert all((now - t > 3600) == stale for t in times)
